"""The websocket frames on the hot path, read and written by hand (RFC 6455 section 5).

A call's two sockets carry about 130 small messages a second between them. Almost all are whole,
unfragmented text frames: the caller's media and Twilio's mark echoes in (masked, from a client),
the model's events in (unmasked, from a server), the model's audio out to Twilio (unmasked, as the
server) and the caller's audio out to the service (masked, as a client). Framing those few shapes
by hand costs a fraction of going through websockets' sans-I/O parser and serializer, a generator
and a `Frame` object per message (4.8 us to parse a media frame there, against about 1 us here).
Every other frame (control frames, fragments, binary, anything malformed) still goes to
websockets' protocol whole, which keeps the state machine, the close handshake and the error codes.

A client must mask every frame with a key from "a strong source of entropy" (RFC 6455 5.3);
websockets draws 4 bytes from `os.urandom` per frame, a system call each. `MaskKeys` draws them
from the same source a page at a time.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from websockets.frames import Opcode

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets' wheels carry the C version; a build without it has the pure-Python one
    from websockets.utils import apply_mask

FIN = 0x80
FIN_TEXT = FIN | Opcode.TEXT
"""The first byte of a whole text frame: FIN set, no extension bits."""
MASKED = 0x80
_ENTROPY_BYTES = 4096


class MaskKeys:
    """Masking keys for a client's frames, drawn from `os.urandom` a page at a time."""

    def __init__(self) -> None:
        self._pool = b""
        self._next = 0

    def take(self) -> bytes:
        start = self._next
        if start + 4 > len(self._pool):
            self._pool, start = os.urandom(_ENTROPY_BYTES), 0
        self._next = start + 4
        return self._pool[start : start + 4]


def _header(first: int, mask_bit: int, length: int) -> bytes:
    if length < 126:
        return bytes((first, mask_bit | length))
    if length < 1 << 16:
        return bytes((first, mask_bit | 126)) + length.to_bytes(2, "big")
    return bytes((first, mask_bit | 127)) + length.to_bytes(8, "big")


def server_text_frame(payload: bytes) -> bytes:
    """A whole text frame as a server sends it: unmasked."""
    return _header(FIN_TEXT, 0, len(payload)) + payload


def client_text_frame(payload: bytes, keys: MaskKeys) -> bytes:
    """A whole text frame as a client sends it: masked with a fresh key."""
    key = keys.take()
    return _header(FIN_TEXT, MASKED, len(payload)) + key + apply_mask(payload, key)


class WireFrame(NamedTuple):
    """One frame a peer sent, located in the buffer it was read from."""

    end: int | None
    """Where the frame ends in the buffer; None for a frame over the size limit, which the protocol refuses from its header."""
    text: bytes | None
    """The unmasked payload of a whole text frame; None for any other frame, which goes to the protocol whole."""


OVERSIZED = WireFrame(None, None)


def next_frame(buffer: bytes, start: int, max_size: int, *, from_client: bool) -> WireFrame | None:
    """The frame at `start` of `buffer`, or None while it has not arrived in full.

    `from_client`: the peer is a client, whose frames must be masked (a server's must not be); a
    text frame masked the wrong way is left to the protocol, which refuses it. A frame declared
    longer than `max_size` is `OVERSIZED` as soon as its header is in, with no payload waited for:
    the protocol refuses it (1009) without it being buffered.
    """
    available = len(buffer) - start
    if available < 2:
        return None
    first, second = buffer[start], buffer[start + 1]
    length = second & 0x7F
    header = 2
    if length == 126:
        if available < 4:
            return None
        length = int.from_bytes(buffer[start + 2 : start + 4], "big")
        header = 4
    elif length == 127:
        if available < 10:
            return None
        length = int.from_bytes(buffer[start + 2 : start + 10], "big")
        header = 10
    if length > max_size:
        return OVERSIZED
    masked = bool(second & MASKED)
    end = start + header + (4 if masked else 0) + length
    if end > len(buffer):
        return None
    if first != FIN_TEXT or masked is not from_client:
        return WireFrame(end, None)
    if not masked:
        return WireFrame(end, buffer[start + header : end])
    key_at = start + header
    return WireFrame(end, apply_mask(buffer[key_at + 4 : end], buffer[key_at : key_at + 4]))
