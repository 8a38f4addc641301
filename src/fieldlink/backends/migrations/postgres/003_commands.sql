-- 003: the command log. State changes are compare-and-set on status (UPDATE ... WHERE status).
CREATE TABLE commands (
    id          text   PRIMARY KEY,
    device_id   text   NOT NULL,
    status      text   NOT NULL,
    created_ms  bigint NOT NULL,
    deadline_ms bigint NOT NULL,
    doc         jsonb  NOT NULL
);
CREATE INDEX commands_device ON commands (device_id, created_ms);
CREATE INDEX commands_open ON commands (deadline_ms) WHERE status IN ('pending', 'sent');
