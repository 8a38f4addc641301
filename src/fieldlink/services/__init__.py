"""Asyncio services between transports and backends: ingest, status, device views.
No web-framework or gateway imports (enforced by tests/unit/test_boundaries.py)."""
