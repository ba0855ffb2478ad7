"""HTTP range requests (RFC 9110 section 14) over a body of known length, without I/O.

A browser's audio element and `curl -r` ask for a recording a piece at a time; one range per request
is what they send, so a request for several is answered whole (which the RFC allows).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SINGLE_RANGE = re.compile(r"bytes=(?P<first>\d*)-(?P<last>\d*)", re.ASCII | re.IGNORECASE)


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int
    """Inclusive, as in `Content-Range`."""

    def content_range(self, length: int) -> str:
        return f"bytes {self.start}-{self.end}/{length}"


class Unsatisfiable(Exception):
    """The range lies past the body's end: answered 416 with `Content-Range: bytes */length`."""


def byte_range(header: str | None, length: int) -> ByteRange | None:
    """The one range `header` asks for; `None` for the whole body (no header, one we do not read, or several ranges).

    Raises `Unsatisfiable` for a range that starts past the end (or a suffix of zero bytes).
    """
    match = _SINGLE_RANGE.fullmatch((header or "").strip())
    if match is None or not (match["first"] or match["last"]):
        return None
    if not match["first"]:
        suffix = int(match["last"])
        if suffix == 0 or length == 0:
            raise Unsatisfiable
        return ByteRange(max(0, length - suffix), length - 1)
    start = int(match["first"])
    if start >= length:
        raise Unsatisfiable
    end = min(int(match["last"]), length - 1) if match["last"] else length - 1
    return ByteRange(start, end) if end >= start else None
