-- The API's own writes no longer call pg_notify inside their transaction: a NOTIFY makes
-- PostgreSQL take a cluster-wide lock from pre-commit until the commit record is flushed,
-- which serialises every commit (no group commit). The backend invalidates the cache for its
-- own writes right after commit instead. Its write sessions carry `bss.origin = api` (a
-- connection option); every other session (psql, scripts, other tools) still notifies, so
-- changes made outside the API keep invalidating the cache.
CREATE OR REPLACE FUNCTION bss_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
    cust uuid;
    ent_id uuid;
    tbl text := TG_TABLE_NAME;
BEGIN
    IF current_setting('bss.origin', true) = 'api' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    IF tbl = 'order_items' THEN
        tbl := 'orders';
        ent_id := r.order_id;
        SELECT customer_id INTO cust FROM orders WHERE id = r.order_id;
    ELSIF tbl = 'invoice_items' THEN
        tbl := 'invoices';
        ent_id := r.invoice_id;
        SELECT customer_id INTO cust FROM invoices WHERE id = r.invoice_id;
    ELSIF tbl = 'customers' THEN
        ent_id := r.id;
        cust := r.id;
    ELSIF tbl = 'products' THEN
        ent_id := r.id;
    ELSE
        ent_id := r.id;
        cust := r.customer_id;
    END IF;
    PERFORM pg_notify('bss_cache', json_build_object(
        'table', tbl, 'op', TG_OP, 'id', ent_id, 'customerId', cust)::text);
    RETURN NULL;
END;
$$;
