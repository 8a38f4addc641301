"""The live gateway: WebSocket sessions, channel rooms and corked fan-out. No web-framework
imports except the uvicorn protocol hook in ws.py; no service imports (snapshots come in
through a callback)."""
