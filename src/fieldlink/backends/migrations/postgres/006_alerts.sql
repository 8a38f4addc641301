-- 006: alerts (at most one open per rule and device) and named leases (one leader per job).
CREATE TABLE alerts (
    id          text    PRIMARY KEY,
    tenant_id   text    NOT NULL,
    device_id   text    NOT NULL,
    rule_id     text    NOT NULL,
    state       text    NOT NULL,
    level       text    NOT NULL,
    updated_ms  bigint  NOT NULL,
    version     integer NOT NULL,
    doc         jsonb   NOT NULL
);
CREATE UNIQUE INDEX alerts_open ON alerts (rule_id, device_id) WHERE state <> 'cleared';
CREATE INDEX alerts_tenant ON alerts (tenant_id, updated_ms);
CREATE INDEX alerts_device ON alerts (device_id, updated_ms);

CREATE TABLE leases (
    name       text   PRIMARY KEY,
    holder     text   NOT NULL,
    expires_ms bigint NOT NULL
);
