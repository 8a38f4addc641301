"""The ``fieldlink`` command: up | serve | simulate | migrate | bench."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer

from fieldlink.app.settings import Settings
from fieldlink.mqtt.broker import BrokerError, resolve_port

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="fieldlink: a real-time device hub."
)


def _run(coro: object) -> None:
    import uvloop

    try:
        uvloop.run(coro)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        pass
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _logging(level: str) -> None:
    from fieldlink.app.logs import configure

    configure(level)


def _extras(settings: Settings):  # type: ignore[no-untyped-def]
    """What runs beside the hub: simulated devices (--simulate) and a demo (--demo)."""
    if not settings.simulate and not settings.demo:
        return None

    async def run(runtime, http_port: int) -> None:  # type: ignore[no-untyped-def]
        from fieldlink.app.demo import RUNNERS
        from fieldlink.simulator.runner import run_fleet

        jobs = []
        if settings.simulate:
            jobs.append(
                run_fleet(
                    count=settings.simulate,
                    mqtt_url=runtime.mqtt_url,
                    http_url=f"http://{settings.http_host}:{http_port}",
                    interval_s=settings.simulate_interval_s,
                    seed=settings.simulate_seed,
                    prefix=settings.topic_prefix,
                )
            )
        if settings.demo:

            def say(text: str) -> None:
                sys.stderr.write(text)
                sys.stderr.flush()

            jobs.append(RUNNERS[settings.demo](runtime, http_port, say))
        await asyncio.gather(*jobs)

    return run


# Options shared by ``up`` and ``serve``. Each can also come from a FIELDLINK_* environment
# variable or from the TOML file given with --config (key = option name with underscores).
# Precedence: command line > environment > config file > default.
def _opt(default: Any, help: str, env: str) -> Any:
    return typer.Option(default, help=help, envvar=f"FIELDLINK_{env}")


CONFIG_HELP = "TOML file with any of these options (keys with underscores: redis_url = ...)"


def _from_config(ctx: typer.Context, params: dict[str, object]) -> dict[str, object]:
    """Fill options the user left at their default from the --config TOML file."""
    path = params.get("config")
    if path is None:
        return params
    import tomllib

    try:
        with open(str(path), "rb") as fh:
            config = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        typer.echo(f"error: cannot read config file {path}: {exc}", err=True)
        raise typer.Exit(2) from None
    unknown = sorted(set(config) - set(params))
    if unknown:
        typer.echo(f"error: unknown keys in {path}: {', '.join(unknown)}", err=True)
        raise typer.Exit(2)
    merged = dict(params)
    for key, value in config.items():
        source = ctx.get_parameter_source(key)
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            merged[key] = value
    return merged


def _settings(p: dict[str, object], http: int, mqtt: int) -> Settings:
    def path(v: object) -> Path | None:
        return None if v is None else Path(str(v))

    return Settings(
        http_host=str(p["host"]),
        http_port=http,
        mqtt_url=p["mqtt_url"],  # type: ignore[arg-type]
        mqtt_port=mqtt,
        data_dir=Path(str(p["data_dir"])),
        database_url=p["database_url"],  # type: ignore[arg-type]
        redis_url=p["redis_url"],  # type: ignore[arg-type]
        mqtt_shared_group=p["mqtt_shared_group"],  # type: ignore[arg-type]
        mqtt_client_id=p["mqtt_client_id"],  # type: ignore[arg-type]
        mqtt_session_expiry_s=int(p["mqtt_session_expiry"]),  # type: ignore[call-overload]
        routes_file=path(p["routes"]),
        alert_rules_file=path(p["alert_rules"]),
        simulate=int(p.get("simulate", 0)),  # type: ignore[call-overload]
        demo=p.get("demo"),  # type: ignore[arg-type]
        simulate_interval_s=float(p.get("interval", 5.0)),  # type: ignore[arg-type]
        simulate_seed=int(p.get("seed", 1)),  # type: ignore[call-overload]
        silence_timeout_s=float(p["silence_timeout"]),  # type: ignore[arg-type]
        cache_ttl_s=float(p["cache_ttl"]),  # type: ignore[arg-type]
        flap_window_s=float(p["flap_window"]),  # type: ignore[arg-type]
        command_timeout_s=float(p["command_timeout"]),  # type: ignore[arg-type]
        vpp_aggregate_hz=float(p["vpp_aggregate_hz"]),  # type: ignore[arg-type]
        vpp_max_age_s=float(p["vpp_max_age"]),  # type: ignore[arg-type]
        vpp_group_attribute=str(p["vpp_group_attribute"]),
        vpp_approval=str(p["vpp_approval"]),
        vpp_soc_min=float(p["vpp_soc_min"]),  # type: ignore[arg-type]
        vpp_soc_max=float(p["vpp_soc_max"]),  # type: ignore[arg-type]
        allowed_origins=tuple(p["allowed_origin"] or ()),  # type: ignore[arg-type]
        anonymous_devices=bool(p["anonymous_devices"]),
        device_auth=bool(p["device_auth"]),
        ws_max_per_user=int(p["ws_max_per_user"]),  # type: ignore[call-overload]
        mqtt_device_rate_per_s=float(p["mqtt_device_rate"]),  # type: ignore[arg-type]
        ws_max_connections=int(p["ws_max_connections"]),  # type: ignore[call-overload]
        ws_messages_per_s=float(p["ws_messages_per_s"]),  # type: ignore[arg-type]
        socketio_paths=tuple(
            "/" + str(path).strip("/") + "/"
            for path in (p["socketio_path"] or ())  # type: ignore[attr-defined]
        ),
        jwt_secret=p["jwt_secret"],  # type: ignore[arg-type]
        jwt_algorithm=str(p["jwt_algorithm"]),
        jwt_private_key_file=path(p["jwt_private_key"]),
        jwt_public_key_file=path(p["jwt_public_key"]),
        log_level=str(p["log_level"]),
    )


@app.command(
    "serve",
    help="Run the hub against an external MQTT broker (needs --mqtt-url): "
    "production and scale-out (docs/scale-out.md). Same options as up.",
)
@app.command("up")
def up(
    ctx: typer.Context,
    http_port: str = _opt(
        "8000", "HTTP/WebSocket port, or 'auto' (8000 if free, else any free port)", "HTTP_PORT"
    ),
    mqtt_port: str = _opt(
        "1883", "embedded broker port, or 'auto' (1883 if free, else any free port)", "MQTT_PORT"
    ),
    mqtt_url: str | None = _opt(
        None, "use this broker (mqtt://HOST:PORT) instead of the embedded one", "MQTT_URL"
    ),
    data_dir: Path = _opt(Path("data"), "where history and broker state live", "DATA_DIR"),
    database_url: str | None = _opt(
        None,
        "sqlite:///PATH or postgresql://USER:PASS@HOST:PORT/DB (default: DATA_DIR/fieldlink.db)",
        "DATABASE_URL",
    ),
    redis_url: str | None = _opt(
        None, "redis://HOST:PORT/DB for the bus and cache of several instances", "REDIS_URL"
    ),
    mqtt_shared_group: str | None = _opt(
        None, "consume telemetry through $share/GROUP/... (several instances)", "MQTT_SHARED_GROUP"
    ),
    mqtt_client_id: str | None = _opt(
        None, "MQTT client id (default: derived from host name and DATA_DIR)", "MQTT_CLIENT_ID"
    ),
    mqtt_session_expiry: int = _opt(
        86400,
        "seconds the broker keeps this instance's session while it is away",
        "MQTT_SESSION_EXPIRY",
    ),
    routes: Path | None = _opt(None, "TOML file with custom ingest routes", "ROUTES"),
    alert_rules: Path | None = _opt(
        None, "TOML file of alert rules ([[rules]], docs/alerts.md)", "ALERT_RULES"
    ),
    simulate: int = _opt(0, "also run N simulated devices", "SIMULATE"),
    demo: str | None = _opt(
        None,
        "set up a demo system with its devices: tenants (multi-tenant platform), gas (gas "
        "sensors and alarms), drones (drone registry events), vpp (virtual power plant: "
        "20 battery nodes, a demand-response event, manual approval)",
        "DEMO",
    ),
    interval: float = _opt(5.0, "simulated devices report every INTERVAL seconds", "INTERVAL"),
    seed: int = _opt(1, "simulator seed", "SEED"),
    silence_timeout: float = _opt(
        60.0, "seconds of silence before a device counts as offline", "SILENCE_TIMEOUT"
    ),
    cache_ttl: float = _opt(300.0, "seconds the latest state is kept per device", "CACHE_TTL"),
    flap_window: float = _opt(
        30.0,
        "seconds after an offline/online pair during which a device's status changes are held "
        "back from clients (0: off)",
        "FLAP_WINDOW",
    ),
    command_timeout: float = _opt(
        10.0, "seconds a device has to answer a command (default per command)", "COMMAND_TIMEOUT"
    ),
    vpp_aggregate_hz: float = _opt(
        2.0, "VPP: fleet aggregate events per second per tenant, at most", "VPP_AGGREGATE_HZ"
    ),
    vpp_max_age: float = _opt(
        60.0, "VPP: seconds a node's latest reading counts towards coverage", "VPP_MAX_AGE"
    ),
    vpp_group_attribute: str = _opt(
        "site", "VPP: the node meta attribute the aggregate groups by", "VPP_GROUP_ATTRIBUTE"
    ),
    vpp_approval: str = _opt(
        "manual",
        "VPP: agent proposals run at once (auto) or wait for an operator (manual); "
        "default of every tenant's policy",
        "VPP_APPROVAL",
    ),
    vpp_soc_min: float = _opt(
        10.0, "VPP: dispatches never take a node below this SoC %", "VPP_SOC_MIN"
    ),
    vpp_soc_max: float = _opt(
        95.0, "VPP: dispatches never take a node above this SoC %", "VPP_SOC_MAX"
    ),
    host: str = _opt("127.0.0.1", "HTTP bind address", "HOST"),
    log_level: str = _opt("warning", "debug, info, warning or error", "LOG_LEVEL"),
    allowed_origin: list[str] = _opt(
        [],
        "browser origin allowed to connect (repeatable; the hub's own is always)",
        "ALLOWED_ORIGIN",
    ),
    anonymous_devices: bool = _opt(
        True,
        "accept devices without credentials from loopback (default tenant)",
        "ANONYMOUS_DEVICES",
    ),
    device_auth: bool = _opt(
        False, "embedded broker: per-device credentials and ACL, no anonymous", "DEVICE_AUTH"
    ),
    mqtt_device_rate: float = _opt(
        500.0,
        "MQTT records per second per device, burst twice that (0: no limit)",
        "MQTT_DEVICE_RATE",
    ),
    ws_max_per_user: int = _opt(
        100, "WebSocket connections per user (0: no cap)", "WS_MAX_PER_USER"
    ),
    ws_max_connections: int = _opt(10_000, "WebSocket connections in all", "WS_MAX_CONNECTIONS"),
    ws_messages_per_s: float = _opt(
        50.0, "client messages per second per WebSocket", "WS_MESSAGES_PER_S"
    ),
    socketio_path: list[str] = _opt(
        ["/socket.io/"],
        "path of the Socket.IO endpoint (repeatable, e.g. /ws/events)",
        "SOCKETIO_PATH",
    ),
    jwt_secret: str | None = _opt(
        None,
        "HS256 secret (default: DATA_DIR/jwt.secret); instances must share it",
        "JWT_SECRET",
    ),
    jwt_algorithm: str = _opt("HS256", "HS256, RS256 or ES256", "JWT_ALGORITHM"),
    jwt_private_key: Path | None = _opt(None, "PEM private key (RS256/ES256)", "JWT_PRIVATE_KEY"),
    jwt_public_key: Path | None = _opt(None, "PEM public key (RS256/ES256)", "JWT_PUBLIC_KEY"),
    config: Path | None = _opt(None, CONFIG_HELP, "CONFIG"),
) -> None:
    """Everything embedded: broker, history, live gateway, REST, dashboard (+ simulated devices)."""
    # `fieldlink serve` is this same command for an external broker: it requires --mqtt-url.
    from fieldlink.app.server import serve

    p = _from_config(ctx, dict(locals()))
    from fieldlink.app.demo import DEMOS

    if p["demo"] is not None and p["demo"] not in DEMOS:
        typer.echo(f"error: --demo is one of {', '.join(DEMOS)}", err=True)
        raise typer.Exit(2)
    if ctx.info_name == "serve" and not p["mqtt_url"]:
        typer.echo("error: serve needs --mqtt-url (or FIELDLINK_MQTT_URL / mqtt_url)", err=True)
        raise typer.Exit(2)
    _logging(str(p["log_level"]))
    try:
        http = resolve_port(str(p["http_port"]), 8000, "--http-port", "stop what holds it")
        mqtt = 0
        if p["mqtt_url"] is None:
            mqtt = resolve_port(
                str(p["mqtt_port"]),
                1883,
                "--mqtt-port",
                "use the broker that holds it with --mqtt-url mqtt://127.0.0.1:PORT",
            )
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if p["http_port"] == "auto" and http != 8000:
        typer.echo(f"note: port 8000 is in use; HTTP/WebSocket use port {http}", err=True)
    if p["mqtt_url"] is None and p["mqtt_port"] == "auto" and mqtt != 1883:
        typer.echo(f"note: port 1883 is in use; the embedded broker uses port {mqtt}", err=True)
    from fieldlink.app.demo import demo_settings

    settings = demo_settings(_settings(p, http, mqtt))
    _run(serve(settings, _extras(settings)))


@app.command()
def simulate(
    count: int = typer.Option(5, "--count", "-n", help="number of devices"),
    mqtt_url: str = typer.Option("mqtt://127.0.0.1:1883"),
    http_url: str = typer.Option("http://127.0.0.1:8000", help="HTTP fallback base URL"),
    interval: float = typer.Option(5.0, help="seconds between reports"),
    seed: int = typer.Option(1),
    prefix: str = typer.Option("edge"),
    command_behavior: str = typer.Option(
        "ack", help="how devices answer commands: ack, fail, ignore or late"
    ),
    ack_delay: float = typer.Option(0.0, help="seconds before a device answers a command"),
    log_level: str = typer.Option("info"),
) -> None:
    """Run simulated edge nodes that report and carry out commands (MQTT, HTTP fallback)."""
    from fieldlink.simulator.runner import run_fleet

    if command_behavior not in ("ack", "fail", "ignore", "late"):
        typer.echo("error: --command-behavior must be ack, fail, ignore or late", err=True)
        raise typer.Exit(2)
    _logging(log_level)
    _run(
        run_fleet(
            count=count,
            mqtt_url=mqtt_url,
            http_url=http_url,
            interval_s=interval,
            seed=seed,
            prefix=prefix,
            command_behavior=command_behavior,  # type: ignore[arg-type]
            ack_delay_s=ack_delay,
        )
    )


@app.command()
def token(
    name: str = typer.Option(..., help="who the token is for (its subject: service:NAME)"),
    role: str = typer.Option("viewer", help="viewer, operator or admin"),
    tenant: str = typer.Option("default", help="the tenant it acts in"),
    days: float = typer.Option(30.0, help="lifetime in days"),
    data_dir: Path = typer.Option(
        Path("data"),
        help="the hub's data directory (holds jwt.secret)",
        envvar="FIELDLINK_DATA_DIR",
    ),
    jwt_secret: str | None = typer.Option(None, envvar="FIELDLINK_JWT_SECRET"),
    jwt_algorithm: str = typer.Option("HS256", envvar="FIELDLINK_JWT_ALGORITHM"),
    jwt_private_key: Path | None = typer.Option(None, envvar="FIELDLINK_JWT_PRIVATE_KEY"),
    jwt_public_key: Path | None = typer.Option(None, envvar="FIELDLINK_JWT_PUBLIC_KEY"),
) -> None:
    """Print a service token for scripts and services (signed with the hub's key)."""
    from fieldlink.app.wiring import token_config
    from fieldlink.core.access import Role
    from fieldlink.services.identity import TokenService

    try:
        chosen = Role(role)
    except ValueError:
        typer.echo("error: --role must be viewer, operator or admin", err=True)
        raise typer.Exit(2) from None
    if not (data_dir / "jwt.secret").exists() and jwt_secret is None and jwt_algorithm == "HS256":
        typer.echo(
            f"error: no {data_dir / 'jwt.secret'}: start the hub once, or pass --jwt-secret",
            err=True,
        )
        raise typer.Exit(2)
    settings = Settings(
        data_dir=data_dir,
        jwt_secret=jwt_secret,
        jwt_algorithm=jwt_algorithm,
        jwt_private_key_file=jwt_private_key,
        jwt_public_key_file=jwt_public_key,
    )
    service = TokenService(token_config(settings))
    typer.echo(service.issue(f"service:{name}", tenant, chosen, "service", int(days * 86_400)))


@app.command()
def migrate(
    database_url: str = typer.Option(
        ..., help="postgresql://USER@HOST:PORT/DB", envvar="FIELDLINK_DATABASE_URL"
    ),
) -> None:
    """Apply the missing numbered migrations to a PostgreSQL database (also done at start-up)."""
    from fieldlink.app.wiring import migrate_database as run_migrations

    _logging("info")
    applied = asyncio.run(run_migrations(database_url))
    typer.echo("applied: " + ", ".join(applied) if applied else "the schema is up to date")


alerts_app = typer.Typer(no_args_is_help=True, help="Alert rules: try them on stored history.")
app.add_typer(alerts_app, name="alerts")


def _duration_ms(text: str) -> int:
    units = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return int(float(text[:-1]) * units[text[-1]])
    raise typer.BadParameter("a duration like 30m, 12h or 7d")


@alerts_app.command("backtest")
def alerts_backtest(
    rule: Path = typer.Option(..., help="TOML file with one [[rules]] table (docs/alerts.md)"),
    since: str = typer.Option("7d", help="how far back: 30m, 12h, 7d ..."),
    tenant: str = typer.Option("default", help="the tenant whose devices the rule watches"),
    data_dir: Path = typer.Option(Path("data"), envvar="FIELDLINK_DATA_DIR"),
    database_url: str | None = typer.Option(None, envvar="FIELDLINK_DATABASE_URL"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per alert"),
) -> None:
    """The alerts a rule would have raised over stored history (nothing is stored or sent):
    tune a threshold before switching the rule on."""
    import json
    import time

    from fieldlink.app.wiring import load_alert_rules, store_from_url
    from fieldlink.services.alerts import replay

    try:
        rules = load_alert_rules(rule)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if len(rules) != 1:
        typer.echo(f"error: {rule} must hold exactly one [[rules]] table", err=True)
        raise typer.Exit(2)
    chosen = rules[0]
    if chosen.tenant_id != tenant:
        from dataclasses import replace

        chosen = replace(chosen, tenant_id=tenant)
    end_ms = int(time.time() * 1000) + 1
    start_ms = end_ms - _duration_ms(since)
    settings = Settings(data_dir=data_dir, database_url=database_url)

    async def run() -> list[dict[str, Any]]:
        store = store_from_url(settings.resolved_database_url())
        await store.start()
        try:
            found: list[dict[str, Any]] = []
            for device in await store.list_devices():
                if chosen.applies_to(device.tenant_id, device.id, device.kind):
                    records = await store.query_range(device.id, start_ms, end_ms, 10_000_000)
                    found.extend(replay(chosen, device.id, records))
            return sorted(found, key=lambda a: (a["raised"], a["device_id"]))
        finally:
            await store.close()

    found = asyncio.run(run())
    if as_json:
        for item in found:
            typer.echo(json.dumps(item))
        return
    typer.echo(f"{len(found)} alerts from rule {chosen.id} over the last {since}")
    for item in found:
        typer.echo(
            f"  {item['device_id']:<24} {item['level']:<16} raised {item['raised']} "
            f"{item['state']}" + (f" (cleared {item['cleared']})" if "cleared" in item else "")
        )


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Run the benchmark suite in bench/ (from a source checkout); extra args are passed on."""
    root = Path.cwd()
    script = root / "bench" / "run.py"
    if not script.exists():
        typer.echo(
            "error: bench/run.py not found: run from the fieldlink source checkout", err=True
        )
        raise typer.Exit(2)
    raise typer.Exit(subprocess.call([sys.executable, str(script), *ctx.args]))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
