-- Migration 0003 (web): the records table, small JSON documents kept beside the jobs
-- (API tokens; later webhooks). Read and written by the statements in records.sql.
--
-- Applied by PostgresBackend.migrate() inside one transaction, with search_path set to
-- the store's schema, under an advisory lock; recorded in schema_migrations.

CREATE TABLE records (
    kind       text COLLATE "C" NOT NULL,
    key        text COLLATE "C" NOT NULL,
    value      text NOT NULL,
    updated_at double precision NOT NULL,
    PRIMARY KEY (kind, key)
);
