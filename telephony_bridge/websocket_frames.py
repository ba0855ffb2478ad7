"""The websocket frames on the hot path, read and written by hand (RFC 6455 section 5).

A call's two sockets carry about 130 small messages a second between them. Almost all are whole,
unfragmented text frames: the caller's media and Twilio's mark echoes in (masked, from a client),
the model's events in (unmasked, from a server), the model's audio out to Twilio (unmasked, as the
server) and the caller's audio out to the service (masked, as a client). Framing those few shapes
by hand costs a fraction of going through websockets' sans-I/O parser and serializer, a generator
and a `Frame` object per message (4.8 us to parse a media frame there). The three functions that
do it are in C (`_frames.c`): in Python they still took 1.6 us to locate a media frame and 2.4 us
to frame an append.
Every other frame (control frames, fragments, binary, anything malformed) still goes to
websockets' protocol whole, which keeps the state machine, the close handshake and the error codes.

A client must mask every frame with a key from "a strong source of entropy" (RFC 6455 5.3);
websockets draws 4 bytes from `os.urandom` per frame, a system call each. `MaskKeys` draws them
from the same source a page at a time.
"""

from __future__ import annotations

import os

from websockets.frames import Opcode

from telephony_bridge._frames import OVERSIZED, client_text_frame, next_frame, server_text_frame

__all__ = ["OVERSIZED", "MaskKeys", "client_text_frame", "fragmenting", "next_frame", "server_text_frame"]

FIN = 0x80
_ENTROPY_BYTES = 4096


def fragmenting(frame: bytes, fragmented: bool) -> bool:
    """Whether a fragmented message is under way once the protocol has read `frame` (`fragmented`: before it).

    While one is, every data frame goes to the protocol too, which reassembles the message.
    """
    opcode, fin = frame[0] & 0x0F, frame[0] & FIN
    if opcode in (Opcode.TEXT, Opcode.BINARY) and not fin:
        return True
    if opcode == Opcode.CONT and fin:
        return False
    return fragmented


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
