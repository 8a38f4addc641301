"""Server-to-client WebSocket frames built once and written as raw bytes (RFC 6455 §5.2).

Server frames are never masked, so one encoded frame can be written to every member of a
channel. Incoming frames are parsed by the websockets sans-I/O protocol, not here.
"""

from __future__ import annotations

import struct

PING_FRAME = b"\x89\x00"


def text_frame(payload: bytes) -> bytes:
    """A single unfragmented text frame (FIN + opcode 1) carrying ``payload``."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + struct.pack("!H", n) + payload
    return b"\x81\x7f" + struct.pack("!Q", n) + payload
