"""Settings, wiring (the one place backends are chosen), the ASGI app and the process runner."""
