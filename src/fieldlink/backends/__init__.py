"""Backend implementations of the ports. Only app/wiring.py chooses among them, by URL."""
