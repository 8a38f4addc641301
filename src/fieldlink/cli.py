"""The ``fieldlink`` command: up | serve | simulate | migrate | bench."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

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
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _simulator(settings: Settings):  # type: ignore[no-untyped-def]
    if not settings.simulate:
        return None

    async def run(runtime, http_port: int) -> None:  # type: ignore[no-untyped-def]
        from fieldlink.simulator.runner import run_fleet

        await run_fleet(
            count=settings.simulate,
            mqtt_url=runtime.mqtt_url,
            http_url=f"http://{settings.http_host}:{http_port}",
            interval_s=settings.simulate_interval_s,
            seed=settings.simulate_seed,
            prefix=settings.topic_prefix,
        )

    return run


@app.command()
def up(
    http_port: str = typer.Option(
        "8000", help="HTTP/WebSocket port, or 'auto' (8000 if free, else any free port)"
    ),
    mqtt_port: str = typer.Option(
        "1883", help="embedded broker port, or 'auto' (1883 if free, else any free port)"
    ),
    mqtt_url: str | None = typer.Option(
        None, help="use this broker (mqtt://HOST:PORT) instead of the embedded one"
    ),
    data_dir: Path = typer.Option(Path("data"), help="where history and broker state live"),
    database_url: str | None = typer.Option(
        None, help="sqlite:///PATH (default: DATA_DIR/fieldlink.db)"
    ),
    routes: Path | None = typer.Option(None, help="TOML file with custom ingest routes"),
    simulate: int = typer.Option(0, help="also run N simulated devices"),
    interval: float = typer.Option(5.0, help="simulated devices report every INTERVAL seconds"),
    seed: int = typer.Option(1, help="simulator seed"),
    silence_timeout: float = typer.Option(
        60.0, help="seconds of silence before a device counts as offline"
    ),
    host: str = typer.Option("127.0.0.1", help="HTTP bind address"),
    log_level: str = typer.Option("warning"),
) -> None:
    """Everything embedded: broker, history, live gateway, REST, dashboard (+ simulated devices)."""
    from fieldlink.app.server import serve

    _logging(log_level)
    try:
        http = resolve_port(http_port, 8000, "--http-port", "stop what holds it")
        mqtt = 0
        if mqtt_url is None:
            mqtt = resolve_port(
                mqtt_port,
                1883,
                "--mqtt-port",
                "use the broker that holds it with --mqtt-url mqtt://127.0.0.1:PORT",
            )
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if http_port == "auto" and http != 8000:
        typer.echo(f"note: port 8000 is in use; HTTP/WebSocket use port {http}", err=True)
    if mqtt_url is None and mqtt_port == "auto" and mqtt != 1883:
        typer.echo(f"note: port 1883 is in use; the embedded broker uses port {mqtt}", err=True)
    settings = Settings(
        http_host=host,
        http_port=http,
        mqtt_url=mqtt_url,
        mqtt_port=mqtt,
        data_dir=data_dir,
        database_url=database_url,
        routes_file=routes,
        simulate=simulate,
        simulate_interval_s=interval,
        simulate_seed=seed,
        silence_timeout_s=silence_timeout,
        log_level=log_level,
    )
    _run(serve(settings, _simulator(settings)))


@app.command()
def serve(
    mqtt_url: str = typer.Option(..., help="the external broker, mqtt://HOST:PORT"),
    http_port: str = typer.Option("8000", help="HTTP/WebSocket port, or 'auto'"),
    data_dir: Path = typer.Option(Path("data")),
    database_url: str | None = typer.Option(None),
    routes: Path | None = typer.Option(None),
    silence_timeout: float = typer.Option(60.0),
    host: str = typer.Option("127.0.0.1"),
    log_level: str = typer.Option("warning"),
) -> None:
    """Run the hub against an external MQTT broker (no embedded broker)."""
    from fieldlink.app.server import serve as serve_hub

    _logging(log_level)
    http = resolve_port(http_port, 8000, "--http-port", "stop what holds it")
    settings = Settings(
        http_host=host,
        http_port=http,
        mqtt_url=mqtt_url,
        data_dir=data_dir,
        database_url=database_url,
        routes_file=routes,
        silence_timeout_s=silence_timeout,
        log_level=log_level,
    )
    _run(serve_hub(settings))


@app.command()
def simulate(
    count: int = typer.Option(5, "--count", "-n", help="number of devices"),
    mqtt_url: str = typer.Option("mqtt://127.0.0.1:1883"),
    http_url: str = typer.Option("http://127.0.0.1:8000", help="HTTP fallback base URL"),
    interval: float = typer.Option(5.0, help="seconds between reports"),
    seed: int = typer.Option(1),
    prefix: str = typer.Option("edge"),
    log_level: str = typer.Option("info"),
) -> None:
    """Run simulated edge nodes (MQTT first, HTTP fallback after 3 MQTT failures)."""
    from fieldlink.simulator.runner import run_fleet

    _logging(log_level)
    _run(
        run_fleet(
            count=count,
            mqtt_url=mqtt_url,
            http_url=http_url,
            interval_s=interval,
            seed=seed,
            prefix=prefix,
        )
    )


@app.command()
def migrate(
    database_url: str = typer.Option(..., help="postgresql://USER@HOST:PORT/DB"),
) -> None:
    """Apply the missing numbered migrations to a PostgreSQL database (also done at start-up)."""
    from fieldlink.backends.postgres import migrate as run_migrations

    _logging("info")
    applied = asyncio.run(run_migrations(database_url))
    typer.echo("applied: " + ", ".join(applied) if applied else "the schema is up to date")


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
