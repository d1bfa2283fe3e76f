-- Records: small JSON documents kept beside the jobs (API tokens, ...).
--
-- Table: records (kind, key) -> value (JSON text), updated_at (seconds since the epoch
-- from the backend's clock). Parameters are named: :kind, :key, :value, :now.


-- name: put_record
INSERT INTO records (kind, key, value, updated_at) VALUES (:kind, :key, :value, :now)
ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at;


-- name: get_record
SELECT value FROM records WHERE kind = :kind AND key = :key;


-- name: list_records
SELECT key, value FROM records WHERE kind = :kind ORDER BY key;


-- name: delete_record
DELETE FROM records WHERE kind = :kind AND key = :key;
