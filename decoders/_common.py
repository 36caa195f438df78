"""Shared internals of the protocol modules: the stop signal, struct helpers, address text.

Protocol parsers raise :class:`Stop` for malformed input and let ``struct.error`` /
``IndexError`` escape for truncated input; :func:`decoders.core.decode` turns both into
``Decoded.error``. Exceptions cost nothing on the happy path (Python 3.11 zero-cost
``try``), and every packet takes the happy path almost always.
"""

from __future__ import annotations

from socket import AF_INET6, inet_ntoa, inet_ntop
from struct import Struct


class Stop(Exception):
    """Decoding stops here: ``args == (reason, byte_offset)``."""


u16 = Struct("!H").unpack_from
u16x2 = Struct("!HH").unpack_from
u32 = Struct("!I").unpack_from

# Address text is cached: a trace sees few distinct addresses, and a dict lookup is ~5x
# cheaper than inet_ntoa/inet_ntop. The caches are cleared when they grow too big.
_CACHE_MAX = 1 << 16
_v4: dict[bytes, str] = {}
_v6: dict[bytes, str] = {}
v4_get = _v4.get
v6_get = _v6.get


def v4_text(raw: bytes) -> str:
    """Dotted-quad text of a 4-byte address (cache miss path)."""
    if len(_v4) >= _CACHE_MAX:
        _v4.clear()
    text = _v4[raw] = inet_ntoa(raw)
    return text


def v6_text(raw: bytes) -> str:
    """RFC 5952 text of a 16-byte address (cache miss path)."""
    if len(_v6) >= _CACHE_MAX:
        _v6.clear()
    text = _v6[raw] = inet_ntop(AF_INET6, raw)
    return text
