"""Hub settings: one dataclass, filled by the CLI from flags, FIELDLINK_* variables and the
--config TOML file (cli.py), read by the wiring."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fieldlink.core.codec import DEFAULT_LIMITS, Limits


@dataclass
class Settings:
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    mqtt_url: str | None = None  # None: start the embedded broker on mqtt_port
    mqtt_port: int = 1883
    data_dir: Path = Path("data")
    database_url: str | None = None  # None: sqlite:///<data_dir>/fieldlink.db
    mqtt_client_id: str | None = None  # None: derived from data_dir (stable across restarts)
    mqtt_shared_group: str | None = None  # set with several instances: $share/<group>/...
    mqtt_session_expiry_s: int = 24 * 3600  # how long the broker keeps our session
    redis_url: str | None = None  # None: in-process bus and cache (single instance)
    topic_prefix: str = "edge"
    routes_file: Path | None = None
    alert_rules_file: Path | None = None  # TOML [[rules]] (docs/alerts.md)
    cache_ttl_s: float = 300.0
    silence_timeout_s: float = 60.0
    flap_window_s: float = 30.0  # at most one offline/online pair per window reaches clients
    status_sweep_s: float = 1.0
    ws_path: str = "/ws"
    ws_max_pending_bytes: int = 1024 * 1024
    ws_slow_timeout_s: float = 10.0
    ws_ping_interval_s: float = 20.0
    socketio_paths: tuple[str, ...] = ("/socket.io/",)  # each with leading and trailing slash
    socketio_ping_interval_s: float = 25.0
    socketio_ping_timeout_s: float = 20.0
    limits: Limits = field(default_factory=lambda: DEFAULT_LIMITS)
    simulate: int = 0
    demo: str | None = None  # app/demo.py: tenants
    simulate_interval_s: float = 5.0
    simulate_seed: int = 1
    log_level: str = "info"
    # ---- the virtual power plant (docs/vpp.md) ----
    vpp_aggregate_hz: float = 2.0  # at most this many aggregate events per second per tenant
    vpp_max_age_s: float = 60.0  # a node's latest reading counts for coverage this long
    vpp_group_attribute: str = "site"  # device meta attribute that groups nodes
    vpp_approval: str = "manual"  # default approval policy of agent proposals
    vpp_soc_min: float = 10.0  # dispatches never take a node below / above these
    vpp_soc_max: float = 95.0
    vpp_agent_interval_s: float = 5.0
    vpp_sample_s: float = 2.0  # a running dispatch records what it achieves this often
    command_timeout_s: float = 10.0  # default answer deadline of a command
    command_sweep_s: float = 0.1  # how often deadlines are enforced
    stop_timeout_s: float = 10.0  # how long shutdown waits for pending writes
    # ---- security (docs/security.md) ----
    allowed_origins: tuple[str, ...] = ()  # besides the hub's own http://HOST:PORT
    anonymous_devices: bool = True  # devices without credentials, from loopback only
    device_auth: bool = False  # embedded broker: per-device credentials and ACL, no anonymous
    device_rate_per_s: float = 20.0  # HTTP ingest requests per device
    mqtt_device_rate_per_s: float = 500.0  # MQTT records per device (burst twice); 0: no limit
    device_rate_burst: float = 40.0
    ws_max_connections: int = 10_000
    ws_max_per_user: int = 100  # 0: no per-user cap
    ws_messages_per_s: float = 50.0  # per connection
    handshake_timeout_s: float = 10.0  # a request's headers must arrive within this
    jwt_algorithm: str = "HS256"
    jwt_secret: str | None = None  # None: <data_dir>/jwt.secret (created on first start)
    jwt_private_key_file: Path | None = None  # RS256 / ES256
    jwt_public_key_file: Path | None = None

    def mqtt_credentials(self) -> tuple[str, str] | None:
        """User and password from ``mqtt://user:pass@host:port`` (an external broker)."""
        if self.mqtt_url is None:
            return None
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(self.mqtt_url)
        if parts.username is None:
            return None
        return unquote(parts.username), unquote(parts.password or "")

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'fieldlink.db').resolve()}"
