"""Simulated edge nodes: a pure, seeded device model (model.py) and the runner that publishes
over MQTT with HTTP fallback (runner.py). It doubles as the reference device."""
