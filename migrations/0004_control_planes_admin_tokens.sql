-- Control planes held by this store (the `cp` key of every entity row: `default`, or the control
-- plane's id) and the Admin API tokens of a control-plane node.

CREATE TABLE control_planes (
    id TEXT PRIMARY KEY,
    cp TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    cluster_type TEXT NOT NULL,
    labels TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE admin_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
