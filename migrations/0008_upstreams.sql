-- Load balancing: upstreams (a name services point at, with its algorithm and health checks) and
-- their targets (host:port and weight, unique per upstream).

CREATE TABLE upstreams (
    id TEXT PRIMARY KEY,
    cp TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    name TEXT NOT NULL,
    client_certificate_id TEXT REFERENCES certificates (id),
    tags TEXT,
    body TEXT NOT NULL,
    UNIQUE (cp, name)
);
CREATE INDEX upstreams_client_certificate_id ON upstreams (client_certificate_id);

CREATE TABLE targets (
    id TEXT PRIMARY KEY,
    cp TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    target TEXT NOT NULL,
    upstream_id TEXT NOT NULL REFERENCES upstreams (id) ON DELETE CASCADE,
    cache_key TEXT NOT NULL,
    tags TEXT,
    body TEXT NOT NULL,
    UNIQUE (cp, cache_key)
);
CREATE INDEX targets_upstream_id ON targets (upstream_id);
