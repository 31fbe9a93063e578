-- The declarative configuration a DB-less node last loaded whole (`POST /config`, or
-- `declarative_config` at start): its hash, as `GET /status` reports it and `check_hash` compares it.

CREATE TABLE declarative_config (
    cp TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    loaded_at BIGINT NOT NULL
);
