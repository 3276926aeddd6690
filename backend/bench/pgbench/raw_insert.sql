-- (a) the database's own limit: one single-row INSERT per transaction.
INSERT INTO bench_raw (v) VALUES ('x');
