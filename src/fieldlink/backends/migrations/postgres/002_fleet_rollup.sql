-- 002: a per-minute rollup of every numeric metric over the whole fleet, so a fleet chart
-- (24 h at 1-minute buckets = 1,440 rows per metric) never scans raw telemetry. The writer
-- updates it in the same transaction as the raw rows it inserts (duplicates are not counted).
-- Values with |v| >= 1e300 are left out so a sum can never overflow and poison a batch.
CREATE TABLE telemetry_fleet_1m (
    bucket bigint NOT NULL,  -- epoch ms of the minute's start
    metric text   NOT NULL,
    n      bigint NOT NULL,
    total  float8 NOT NULL,
    lo     float8 NOT NULL,
    hi     float8 NOT NULL,
    PRIMARY KEY (bucket, metric)
);

INSERT INTO telemetry_fleet_1m (bucket, metric, n, total, lo, hi)
SELECT (t.ts / 60000) * 60000, kv.key, count(*), sum((kv.value #>> '{}')::float8),
       min((kv.value #>> '{}')::float8), max((kv.value #>> '{}')::float8)
FROM telemetry AS t, jsonb_each(t.data) AS kv
WHERE jsonb_typeof(kv.value) = 'number' AND abs((kv.value #>> '{}')::float8) < 1e300
GROUP BY 1, 2;

-- Time-range scans over the whole fleet (retention, ad-hoc raw queries): rows arrive in
-- roughly time order, which is what BRIN needs; it costs kilobytes, not a B-tree's gigabytes.
CREATE INDEX telemetry_ts_brin ON telemetry USING brin (ts);
