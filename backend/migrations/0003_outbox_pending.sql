-- Unsent outbox rows are listed in their own narrow table instead of being marked sent.
-- Marking a row sent (`UPDATE outbox SET sent_at = now()`) was a non-HOT update, because the
-- partial index named sent_at: it wrote the whole row again, payload included, plus two index
-- entries, into the WAL both replicas apply, for every event. Now a write adds its event's
-- seq to outbox_pending in the same statement, and the relay deletes the seqs it has
-- published (a small delete record each). Outbox rows are never updated again. No foreign
-- key: its check would lock the outbox row (a WAL record of its own) on every write; only the
-- backend's statements and the relay write this table, and the retention delete keeps rows
-- that are still pending.
CREATE TABLE outbox_pending (
    seq bigint PRIMARY KEY
);
INSERT INTO outbox_pending (seq) SELECT seq FROM outbox WHERE sent_at IS NULL;
DROP INDEX outbox_unsent_idx;
ALTER TABLE outbox DROP COLUMN sent_at;
