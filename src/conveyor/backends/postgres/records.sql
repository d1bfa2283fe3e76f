-- Records: small JSON documents kept beside the jobs (API tokens, ...).
--
-- Table: records (kind, key) -> value (JSON text), updated_at (seconds since the epoch,
-- conveyor_now(%(now)s): the database's clock unless a test clock is injected).
-- Each statement runs alone on an autocommit connection, so each is atomic.


-- name: put_record
INSERT INTO records (kind, key, value, updated_at)
VALUES (%(kind)s, %(key)s, %(value)s, conveyor_now(%(now)s))
ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at;


-- name: get_record
SELECT value FROM records WHERE kind = %(kind)s AND key = %(key)s;


-- name: list_records
SELECT key, value FROM records WHERE kind = %(kind)s ORDER BY key;


-- name: delete_record
DELETE FROM records WHERE kind = %(kind)s AND key = %(key)s;
