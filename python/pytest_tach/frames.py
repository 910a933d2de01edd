"""Length-prefixed msgpack frames between tach's Python processes and the supervisor.

A frame is a 4-byte big-endian length and that many bytes of msgpack encoding a map with
a string "t" (its type). The Go side (go/wire) validates everything it reads; this side
only ever reads frames from the supervisor.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import msgpack

_HEADER = struct.Struct(">I")
MAX_FRAME = 16 << 20  # go/wire.DefaultMaxFrame


class TooBig(ValueError):
    """A message that encodes to more than a frame may hold."""


def encode(msg: dict[str, Any]) -> bytes:
    payload: bytes = msgpack.packb(msg, use_bin_type=True, default=_fallback)
    if len(payload) > MAX_FRAME:
        raise TooBig(f"frame of {len(payload)} bytes exceeds the {MAX_FRAME}-byte cap")
    return _HEADER.pack(len(payload)) + payload


def _fallback(obj: object) -> object:
    # Reports are JSON-compatible by contract (pytest_report_to_serializable), but
    # plugins put odd things in user_properties and keywords: send their repr rather
    # than lose the whole report.
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    return repr(obj)


def send(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.sendall(encode(msg))


def recv(sock: socket.socket) -> dict[str, Any] | None:
    """Read one frame; None at a clean end of stream."""
    header = _recv_exact(sock, _HEADER.size)
    if header is None:
        return None
    (n,) = _HEADER.unpack(header)
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes from the supervisor exceeds the cap")
    body = _recv_exact(sock, n)
    if body is None:
        raise EOFError("connection closed inside a frame")
    return decode(body)


def decode(payload: bytes) -> dict[str, Any]:
    msg: dict[str, Any] = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    return msg


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if not buf:
                return None
            raise EOFError("connection closed inside a frame")
        buf += chunk
    return bytes(buf)
