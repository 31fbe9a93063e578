-- TLS: certificates served by SNI, the SNI names, CA certificates trusted for upstream TLS, and the
-- client certificate a service presents to its upstream.

CREATE TABLE certificates (
    id TEXT PRIMARY KEY,
    cp TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    tags TEXT,
    body TEXT NOT NULL
);

CREATE TABLE snis (
    id TEXT PRIMARY KEY,
    cp TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    name TEXT NOT NULL,
    certificate_id TEXT NOT NULL REFERENCES certificates (id) ON DELETE CASCADE,
    tags TEXT,
    body TEXT NOT NULL,
    UNIQUE (cp, name)
);
CREATE INDEX snis_certificate_id ON snis (certificate_id);

CREATE TABLE ca_certificates (
    id TEXT PRIMARY KEY,
    cp TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    cert_digest TEXT,
    tags TEXT,
    body TEXT NOT NULL,
    UNIQUE (cp, cert_digest)
);

ALTER TABLE services ADD COLUMN client_certificate_id TEXT REFERENCES certificates (id);
CREATE INDEX services_client_certificate_id ON services (client_certificate_id);
