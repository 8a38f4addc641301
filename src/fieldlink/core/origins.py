"""Which browser origins may talk to the hub (pure).

An allowed origin is exact (``http://localhost:3000``) or a pattern with ``*`` standing for
one or more DNS labels (``https://*.vercel.app`` allows ``https://app.vercel.app`` and
``https://a.b.vercel.app``, never ``https://vercel.app.evil.com`` nor another scheme or port).
The same policy answers WebSocket handshakes, Socket.IO polling and REST CORS.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_LABELS = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"


def pattern_regex(pattern: str) -> str:
    """The regular expression (anchored) of one allowed origin or pattern."""
    return "^" + _LABELS.join(re.escape(part) for part in pattern.split("*")) + "$"


class OriginPolicy:
    def __init__(self, allowed: Iterable[str]) -> None:
        entries = {a.rstrip("/") for a in allowed if a}
        self.exact = frozenset(e for e in entries if "*" not in e)
        self.patterns = tuple(sorted(e for e in entries if "*" in e))
        self._regex = (
            re.compile("|".join(f"(?:{pattern_regex(p)})" for p in self.patterns))
            if (self.patterns)
            else None
        )

    def allows(self, origin: str) -> bool:
        if origin in self.exact:
            return True
        return self._regex is not None and self._regex.match(origin) is not None

    def regex(self) -> str | None:
        """One expression for every pattern (for a CORS middleware), or None."""
        return self._regex.pattern if self._regex is not None else None
