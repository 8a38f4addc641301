"""fieldlink: a real-time device hub (MQTT/HTTP ingest, history, live fan-out, commands)."""

__version__ = "0.1.0"
