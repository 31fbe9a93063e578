-- Consumer groups, memberships, ACL groups, plugins scoped to a consumer group, and the rate-limiting
-- counters of the `cluster` policy.

CREATE TABLE consumer_groups (
    id TEXT PRIMARY KEY,
    cp TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    name TEXT,
    tags TEXT,
    body TEXT NOT NULL,
    UNIQUE (cp, name)
);

CREATE TABLE consumer_group_consumers (
    id TEXT PRIMARY KEY,
    cp TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    consumer_group_id TEXT NOT NULL REFERENCES consumer_groups (id) ON DELETE CASCADE,
    consumer_id TEXT NOT NULL REFERENCES consumers (id) ON DELETE CASCADE,
    cache_key TEXT NOT NULL,
    tags TEXT,
    body TEXT NOT NULL,
    UNIQUE (cp, cache_key)
);
CREATE INDEX consumer_group_consumers_group ON consumer_group_consumers (consumer_group_id);
CREATE INDEX consumer_group_consumers_consumer ON consumer_group_consumers (consumer_id);

CREATE TABLE acls (
    id TEXT PRIMARY KEY,
    cp TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    group_name TEXT NOT NULL,
    consumer_id TEXT NOT NULL REFERENCES consumers (id) ON DELETE CASCADE,
    cache_key TEXT NOT NULL,
    tags TEXT,
    body TEXT NOT NULL,
    UNIQUE (cp, cache_key)
);
CREATE INDEX acls_consumer_id ON acls (consumer_id);

ALTER TABLE plugins ADD COLUMN consumer_group_id TEXT REFERENCES consumer_groups (id) ON DELETE CASCADE;
CREATE INDEX plugins_consumer_group_id ON plugins (consumer_group_id);
-- The plugin scope key gained the consumer group.
UPDATE plugins SET cache_key = cache_key || '|';

-- `cluster` rate-limiting: one row per counter and window, shared by every node of the database.
CREATE TABLE ratelimiting_counters (
    key TEXT PRIMARY KEY,
    count BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX ratelimiting_counters_expires_at ON ratelimiting_counters (expires_at);
