-- 004: tenants. Devices belong to a tenant; tenants, users and device credentials are JSON
-- documents keyed by (kind, key).
ALTER TABLE devices ADD COLUMN tenant_id text NOT NULL DEFAULT 'default';
CREATE TABLE docs (
    kind text NOT NULL,
    key  text NOT NULL,
    doc  jsonb NOT NULL,
    PRIMARY KEY (kind, key)
);
