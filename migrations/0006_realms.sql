-- Realms: consumers kept once, outside any control plane, used by the control planes a realm
-- allows. Key secrets are kept only as hashes.

CREATE TABLE realms (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE realm_consumers (
    id TEXT PRIMARY KEY,
    realm_id TEXT NOT NULL REFERENCES realms (id) ON DELETE CASCADE,
    username TEXT NOT NULL,
    custom_id TEXT,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (realm_id, username)
);
CREATE INDEX realm_consumers_realm ON realm_consumers (realm_id);

CREATE TABLE realm_keys (
    id TEXT PRIMARY KEY,
    realm_id TEXT NOT NULL REFERENCES realms (id) ON DELETE CASCADE,
    consumer_id TEXT NOT NULL REFERENCES realm_consumers (id) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (realm_id, secret_hash)
);
CREATE INDEX realm_keys_consumer ON realm_keys (consumer_id);
