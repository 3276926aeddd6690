-- Core schema of the BSS backend: entities, the transactional outbox, and the
-- triggers that drive cache invalidation through pg_notify.

CREATE TABLE customers (
    id           uuid PRIMARY KEY,
    first_name   text NOT NULL,
    last_name    text NOT NULL,
    email        text NOT NULL UNIQUE,
    phone        text,
    national_id  text UNIQUE,
    status       text NOT NULL CHECK (status IN ('ACTIVE','INACTIVE','SUSPENDED','TERMINATED')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    version      bigint NOT NULL DEFAULT 1
);
CREATE INDEX customers_status_idx ON customers (status, created_at);

CREATE TABLE products (
    id             uuid PRIMARY KEY,
    code           text NOT NULL UNIQUE,
    name           text NOT NULL,
    description    text,
    product_type   text NOT NULL CHECK (product_type IN ('SERVICE','TARIFF','BUNDLE','ADDON')),
    category       text NOT NULL CHECK (category IN ('MOBILE','BROADBAND','TV','CLOUD','BASIC')),
    price          numeric(19,2) NOT NULL CHECK (price >= 0),
    currency       char(3) NOT NULL,
    billing_period text NOT NULL CHECK (billing_period IN ('MONTHLY','QUARTERLY','YEARLY','ONE_TIME')),
    features       jsonb NOT NULL DEFAULT '{}'::jsonb,
    status         text NOT NULL CHECK (status IN ('ACTIVE','INACTIVE','DEPRECATED','SUSPENDED','DISCONTINUED')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    version        bigint NOT NULL DEFAULT 1
);

CREATE TABLE orders (
    id            uuid PRIMARY KEY,
    order_number  text NOT NULL UNIQUE,
    customer_id   uuid NOT NULL REFERENCES customers(id),
    order_type    text NOT NULL CHECK (order_type IN ('NEW','CHANGE','UPGRADE','CANCEL','SUSPEND','RESUME')),
    priority      text NOT NULL CHECK (priority IN ('LOW','NORMAL','HIGH','URGENT')),
    status        text NOT NULL CHECK (status IN ('PENDING','APPROVED','IN_PROGRESS','PROCESSING','COMPLETED','REJECTED','CANCELLED')),
    currency      char(3) NOT NULL,
    subtotal      numeric(19,2) NOT NULL,
    tax_amount    numeric(19,2) NOT NULL,
    total_amount  numeric(19,2) NOT NULL,
    notes         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    version       bigint NOT NULL DEFAULT 1
);
CREATE INDEX orders_customer_idx ON orders (customer_id, created_at);
CREATE INDEX orders_status_idx ON orders (status, created_at);

CREATE TABLE order_items (
    id          uuid PRIMARY KEY,
    order_id    uuid NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    line_no     integer NOT NULL,
    product_id  uuid NOT NULL REFERENCES products(id),
    quantity    integer NOT NULL CHECK (quantity > 0),
    unit_price  numeric(19,2) NOT NULL CHECK (unit_price >= 0),
    tax_rate    numeric(7,4) NOT NULL CHECK (tax_rate >= 0),
    line_total  numeric(19,2) NOT NULL,
    UNIQUE (order_id, line_no)
);
CREATE INDEX order_items_product_idx ON order_items (product_id);

CREATE TABLE subscriptions (
    id                  uuid PRIMARY KEY,
    subscription_number text NOT NULL UNIQUE,
    customer_id         uuid NOT NULL REFERENCES customers(id),
    product_id          uuid NOT NULL REFERENCES products(id),
    order_id            uuid REFERENCES orders(id),
    status              text NOT NULL CHECK (status IN ('ACTIVE','SUSPENDED','CANCELLED','EXPIRED')),
    start_date          date NOT NULL,
    end_date            date,
    next_billing_date   date NOT NULL,
    price               numeric(19,2) NOT NULL CHECK (price >= 0),
    discount            numeric(19,2) NOT NULL CHECK (discount >= 0 AND discount <= price),
    currency            char(3) NOT NULL,
    auto_renew          boolean NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    version             bigint NOT NULL DEFAULT 1
);
CREATE INDEX subscriptions_customer_idx ON subscriptions (customer_id, created_at);

CREATE TABLE invoices (
    id              uuid PRIMARY KEY,
    invoice_number  text NOT NULL UNIQUE,
    customer_id     uuid NOT NULL REFERENCES customers(id),
    invoice_type    text NOT NULL CHECK (invoice_type IN ('RECURRING','ONE_TIME','USAGE','ADJUSTMENT')),
    status          text NOT NULL CHECK (status IN ('DRAFT','SENT','VIEWED','PAID','CANCELLED')),
    issue_date      date NOT NULL,
    due_date        date NOT NULL CHECK (due_date >= issue_date),
    paid_date       date,
    currency        char(3) NOT NULL,
    subtotal        numeric(19,2) NOT NULL,
    tax_amount      numeric(19,2) NOT NULL,
    total_amount    numeric(19,2) NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    version         bigint NOT NULL DEFAULT 1
);
CREATE INDEX invoices_customer_idx ON invoices (customer_id, created_at);
CREATE INDEX invoices_status_idx ON invoices (status, due_date);

CREATE TABLE invoice_items (
    id           uuid PRIMARY KEY,
    invoice_id   uuid NOT NULL REFERENCES invoices(id) ON DELETE CASCADE,
    line_no      integer NOT NULL,
    description  text NOT NULL,
    quantity     integer NOT NULL CHECK (quantity > 0),
    unit_price   numeric(19,2) NOT NULL,
    tax_rate     numeric(7,4) NOT NULL CHECK (tax_rate >= 0),
    line_total   numeric(19,2) NOT NULL,
    UNIQUE (invoice_id, line_no)
);

CREATE TABLE payments (
    id              uuid PRIMARY KEY,
    payment_number  text NOT NULL UNIQUE,
    customer_id     uuid NOT NULL REFERENCES customers(id),
    invoice_id      uuid REFERENCES invoices(id),
    amount          numeric(19,2) NOT NULL CHECK (amount > 0),
    currency        char(3) NOT NULL,
    method          text NOT NULL CHECK (method IN ('CARD','BANK_TRANSFER','CASH','DIRECT_DEBIT','MOBILE_PAY')),
    status          text NOT NULL CHECK (status IN ('PENDING','PROCESSING','COMPLETED','FAILED','CANCELLED','REFUNDED')),
    failure_reason  text,
    refund_reason   text,
    processed_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    version         bigint NOT NULL DEFAULT 1
);
CREATE INDEX payments_customer_idx ON payments (customer_id, created_at);
CREATE INDEX payments_invoice_idx ON payments (invoice_id);

-- Transactional outbox: written in the same transaction as the change it describes.
CREATE TABLE outbox (
    seq           bigserial PRIMARY KEY,
    event_id      uuid NOT NULL UNIQUE,
    topic         text NOT NULL,
    aggregate_id  uuid NOT NULL,
    event_type    text NOT NULL,
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    sent_at       timestamptz
);
CREATE INDEX outbox_unsent_idx ON outbox (seq) WHERE sent_at IS NULL;

-- Offset snapshots of consumer groups (replay / time travel).
CREATE TABLE offset_snapshots (
    id          uuid PRIMARY KEY,
    group_id    text NOT NULL,
    taken_at    timestamptz NOT NULL DEFAULT now(),
    offsets     jsonb NOT NULL
);

-- State of the stream processors: exactly-once effects by event id.
CREATE TABLE stream_processed_events (
    processor  text NOT NULL,
    event_id   text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (processor, event_id)
);

CREATE TABLE analytics_customers (
    customer_id       uuid PRIMARY KEY,
    status            text,
    orders_total      bigint NOT NULL DEFAULT 0,
    orders_completed  bigint NOT NULL DEFAULT 0,
    orders_cancelled  bigint NOT NULL DEFAULT 0,
    order_value       numeric(19,2) NOT NULL DEFAULT 0,
    events_seen       bigint NOT NULL DEFAULT 0,
    aggregate_version bigint NOT NULL DEFAULT 0,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE analytics_orders (
    order_id          uuid PRIMARY KEY,
    customer_id       uuid,
    status            text NOT NULL,
    status_since      timestamptz NOT NULL,
    status_durations  jsonb NOT NULL DEFAULT '{}'::jsonb,
    item_count        bigint NOT NULL DEFAULT 0,
    total_amount      numeric(19,2) NOT NULL DEFAULT 0,
    transitions       bigint NOT NULL DEFAULT 0,
    aggregate_version bigint NOT NULL DEFAULT 0,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Cache invalidation: every change of a cached row notifies channel bss_cache with
-- {"table", "op", "id", "customerId"}; the backend LISTENs and deletes the keys.
CREATE FUNCTION bss_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
    cust uuid;
    ent_id uuid;
    tbl text := TG_TABLE_NAME;
BEGIN
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

CREATE TRIGGER customers_notify AFTER INSERT OR UPDATE OR DELETE ON customers FOR EACH ROW EXECUTE FUNCTION bss_notify_change();
CREATE TRIGGER products_notify AFTER INSERT OR UPDATE OR DELETE ON products FOR EACH ROW EXECUTE FUNCTION bss_notify_change();
CREATE TRIGGER orders_notify AFTER INSERT OR UPDATE OR DELETE ON orders FOR EACH ROW EXECUTE FUNCTION bss_notify_change();
CREATE TRIGGER order_items_notify AFTER INSERT OR UPDATE OR DELETE ON order_items FOR EACH ROW EXECUTE FUNCTION bss_notify_change();
CREATE TRIGGER subscriptions_notify AFTER INSERT OR UPDATE OR DELETE ON subscriptions FOR EACH ROW EXECUTE FUNCTION bss_notify_change();
CREATE TRIGGER invoices_notify AFTER INSERT OR UPDATE OR DELETE ON invoices FOR EACH ROW EXECUTE FUNCTION bss_notify_change();
CREATE TRIGGER invoice_items_notify AFTER INSERT OR UPDATE OR DELETE ON invoice_items FOR EACH ROW EXECUTE FUNCTION bss_notify_change();
CREATE TRIGGER payments_notify AFTER INSERT OR UPDATE OR DELETE ON payments FOR EACH ROW EXECUTE FUNCTION bss_notify_change();
