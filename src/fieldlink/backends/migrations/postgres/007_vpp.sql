-- 007: the VPP's fleet power history (ports.FleetPower, docs/vpp.md), kept at ingest so a
-- 24-hour chart reads 1,440 rows per tenant instead of a day of raw rows.
--
-- A node is a device whose meta has a positive number capacity_kw. P(m) is the sum of the
-- nodes' average power_kw in minute m, so a minute needs each node's count and total (a
-- node-minute can be split over several batches, and over instances): vpp_node_1m. The
-- writer folds each batch into it and moves vpp_fleet_1m by the change of each node's
-- average (see _MOVE in postgres.py). Whether a device is a node is read from its devices
-- row when its rows are written, its capacity when a node-minute is first seen: meta changes
-- apply to rows written after them, never to the history.
-- Values with |v| >= 1e300 are left out, as in the fleet rollup (no overflow).
--
-- The tenant is in vpp_node_1m's key: a device moved to another tenant mid-minute counts as
-- a node of each tenant for that minute, as its rows do. Each node-minute keeps the capacity
-- it was counted with, so vpp_fleet_1m can always be rebuilt from vpp_node_1m alone.
CREATE TABLE vpp_node_1m (
    tenant_id   text   NOT NULL,
    device_id   text   NOT NULL,
    bucket      bigint NOT NULL,  -- epoch ms of the minute's start
    n           int    NOT NULL,  -- power_kw values seen
    total       float8 NOT NULL,  -- their sum
    capacity_kw float8 NOT NULL,  -- the node's capacity when the minute was first seen
    -- What the latest fold added: the writer reads it back through RETURNING to tell the
    -- node's average before the fold (RETURNING shows only the new row).
    batch_n     int    NOT NULL,
    batch_total float8 NOT NULL,
    PRIMARY KEY (device_id, bucket, tenant_id)
);

CREATE TABLE vpp_fleet_1m (
    tenant_id   text   NOT NULL,
    bucket      bigint NOT NULL,  -- epoch ms of the minute's start
    power_kw    float8 NOT NULL,  -- P(m): the sum of the nodes' averages
    nodes       int    NOT NULL,  -- N(m)
    capacity_kw float8 NOT NULL,  -- C(m)
    PRIMARY KEY (tenant_id, bucket)
);
-- The system administrator's chart spans tenants: a range scan by minute.
CREATE INDEX vpp_fleet_1m_bucket ON vpp_fleet_1m (bucket);

-- Backfill from the history of today's nodes (as an upgrade finds them).
INSERT INTO vpp_node_1m (tenant_id, device_id, bucket, n, total, capacity_kw, batch_n,
                         batch_total)
SELECT t.tenant_id, t.device_id, (t.ts / 60000) * 60000, count(*), sum(p.power),
       max(d.capacity), count(*), sum(p.power)
FROM (
    SELECT id, CASE WHEN jsonb_typeof(meta -> 'capacity_kw') = 'number'
                    THEN (meta ->> 'capacity_kw')::float8 END AS capacity
    FROM devices
) AS d
JOIN telemetry AS t ON t.device_id = d.id
CROSS JOIN LATERAL (
    SELECT CASE WHEN jsonb_typeof(t.data -> 'power_kw') = 'number'
                THEN (t.data ->> 'power_kw')::float8 END AS power
) AS p
WHERE d.capacity > 0 AND d.capacity < 1e300 AND abs(p.power) < 1e300
GROUP BY 1, 2, 3;

INSERT INTO vpp_fleet_1m (tenant_id, bucket, power_kw, nodes, capacity_kw)
SELECT tenant_id, bucket, sum(total / n), count(*), sum(capacity_kw)
FROM vpp_node_1m
GROUP BY 1, 2;
