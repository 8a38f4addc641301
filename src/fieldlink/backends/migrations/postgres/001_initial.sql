-- 001: devices and raw telemetry history.
CREATE TABLE devices (
    id           text PRIMARY KEY,
    kind         text NOT NULL,
    meta         jsonb NOT NULL DEFAULT '{}',
    created_ms   bigint NOT NULL,
    last_seen_ms bigint
);

CREATE TABLE telemetry (
    device_id text   NOT NULL,
    ts        bigint NOT NULL,  -- epoch milliseconds
    seq       bigint,
    data      jsonb  NOT NULL
);
CREATE INDEX telemetry_device_ts ON telemetry (device_id, ts);
CREATE UNIQUE INDEX telemetry_device_seq ON telemetry (device_id, seq) WHERE seq IS NOT NULL;
