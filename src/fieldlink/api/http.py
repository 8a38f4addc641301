"""uvicorn's HTTP protocol with a deadline for the request head (slowloris protection).

uvicorn closes idle keep-alive connections but puts no limit on how long a client may take to
send a request's headers, so a client dribbling one byte every few seconds holds a connection
(and a file descriptor) forever. Here the head of every request must be complete within
``header_timeout_s`` of the connection opening or of its first byte; otherwise the connection
is closed and counted. WebSocket upgrades are covered too: the upgrade request is an HTTP
request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fieldlink.core.measures import Measure, counter, measures_of


@dataclass(slots=True)
class HandshakeStats:
    timed_out: int = counter(
        "fieldlink_http_header_timeouts",
        "Connections closed because a request head was too slow (slowloris)",
    )

    def measures(self) -> Iterator[Measure]:
        return measures_of(self)


def guarded_http_protocol(header_timeout_s: float, stats: HandshakeStats) -> type[Any]:
    """An ``HttpToolsProtocol`` subclass bound to a timeout, for ``uvicorn.Config(http=...)``."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _too_slow(self) -> None:
            self._head_timer = None
            stats.timed_out += 1
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedHttpToolsProtocol
