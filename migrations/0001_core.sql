-- Core entities of one control plane (`cp`), each row holding its full Kong-shaped JSON in `body`
-- plus the columns that carry unique and foreign-key constraints.

CREATE TABLE config_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO config_version (id, version) VALUES (1, 0);

-- One row per entity touched by a write, in commit order; nodes replay it to update their snapshot.
CREATE TABLE changes (
    version BIGINT NOT NULL,
    seq INTEGER NOT NULL,
    cp TEXT NOT NULL,
    kind TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    op TEXT NOT NULL,
    PRIMARY KEY (version, seq)
);

CREATE TABLE consumers (
    id TEXT PRIMARY KEY,
    cp TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    username TEXT,
    custom_id TEXT,
    tags TEXT,
    body TEXT NOT NULL,
    UNIQUE (cp, username),
    UNIQUE (cp, custom_id)
);

CREATE TABLE services (
    id TEXT PRIMARY KEY,
    cp TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    name TEXT,
    tags TEXT,
    body TEXT NOT NULL,
    UNIQUE (cp, name)
);

CREATE TABLE routes (
    id TEXT PRIMARY KEY,
    cp TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    name TEXT,
    service_id TEXT REFERENCES services (id),
    tags TEXT,
    body TEXT NOT NULL,
    UNIQUE (cp, name)
);
CREATE INDEX routes_service_id ON routes (service_id);

CREATE TABLE plugins (
    id TEXT PRIMARY KEY,
    cp TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    instance_name TEXT,
    route_id TEXT REFERENCES routes (id) ON DELETE CASCADE,
    service_id TEXT REFERENCES services (id) ON DELETE CASCADE,
    consumer_id TEXT REFERENCES consumers (id) ON DELETE CASCADE,
    cache_key TEXT NOT NULL,
    tags TEXT,
    body TEXT NOT NULL,
    UNIQUE (cp, instance_name),
    UNIQUE (cp, cache_key)
);
CREATE INDEX plugins_route_id ON plugins (route_id);
CREATE INDEX plugins_service_id ON plugins (service_id);
CREATE INDEX plugins_consumer_id ON plugins (consumer_id);

CREATE TABLE keyauth_credentials (
    id TEXT PRIMARY KEY,
    cp TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    key TEXT NOT NULL,
    consumer_id TEXT NOT NULL REFERENCES consumers (id) ON DELETE CASCADE,
    expires_at BIGINT,
    tags TEXT,
    body TEXT NOT NULL,
    UNIQUE (cp, key)
);
CREATE INDEX keyauth_credentials_consumer_id ON keyauth_credentials (consumer_id);
