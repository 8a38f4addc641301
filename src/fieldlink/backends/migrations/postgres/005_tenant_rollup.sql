-- 005: telemetry rows carry their tenant, and the fleet rollup is per tenant, so each tenant
-- gets its own fleet chart. Existing rows take their device's tenant; the rollup is rebuilt.
ALTER TABLE telemetry ADD COLUMN tenant_id text NOT NULL DEFAULT 'default';
UPDATE telemetry AS t SET tenant_id = d.tenant_id
FROM devices AS d WHERE d.id = t.device_id AND d.tenant_id <> 'default';

DROP TABLE telemetry_fleet_1m;
CREATE TABLE telemetry_fleet_1m (
    tenant_id text   NOT NULL,
    bucket    bigint NOT NULL,  -- epoch ms of the minute's start
    metric    text   NOT NULL,
    n         bigint NOT NULL,
    total     float8 NOT NULL,
    lo        float8 NOT NULL,
    hi        float8 NOT NULL,
    PRIMARY KEY (tenant_id, bucket, metric)
);
INSERT INTO telemetry_fleet_1m (tenant_id, bucket, metric, n, total, lo, hi)
SELECT t.tenant_id, (t.ts / 60000) * 60000, kv.key, count(*), sum((kv.value #>> '{}')::float8),
       min((kv.value #>> '{}')::float8), max((kv.value #>> '{}')::float8)
FROM telemetry AS t, jsonb_each(t.data) AS kv
WHERE jsonb_typeof(kv.value) = 'number' AND abs((kv.value #>> '{}')::float8) < 1e300
GROUP BY 1, 2, 3;
-- The system administrator's chart spans tenants: a range scan by minute.
CREATE INDEX telemetry_fleet_1m_bucket ON telemetry_fleet_1m (bucket);
