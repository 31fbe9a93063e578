-- Cluster tokens: a data plane presents one to join the control plane it was minted for.
CREATE TABLE data_plane_tokens (
    id TEXT PRIMARY KEY,
    control_plane_id TEXT NOT NULL REFERENCES control_planes (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE INDEX data_plane_tokens_cp ON data_plane_tokens (control_plane_id);
