-- Target health set by hand on one node, for the other nodes of the same database (Kong's
-- `balancer:post_health` cluster event). Rows are swept after five minutes.

CREATE TABLE target_health_events (
    id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    upstream_id TEXT NOT NULL,
    host TEXT NOT NULL,
    port BIGINT NOT NULL,
    healthy BIGINT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX target_health_events_at ON target_health_events (at);
