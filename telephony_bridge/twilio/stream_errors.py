"""Twilio's reports of a failed media stream, from `<Stream statusCallback>`, as a value the call log and metrics take.

Twilio posts `StreamEvent` (`stream-started`, `stream-stopped`, `stream-error`) with `CallSid`, `StreamSid`
and, for an error, `StreamError`: a message that carries the Twilio error code (31920 the websocket handshake
failed, 31921 the websocket closed in error, 31924 audio it could not play, 31950/31951 frames it could not
read). The code is the metric's label, bounded to the codes known here plus `other`: the text comes from
outside, and a label per distinct text would mint series without bound.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STREAM_ERROR_CODES = frozenset({"31920", "31921", "31922", "31924", "31950", "31951"})
OTHER_CODE = "other"
MAX_DETAIL_CHARS = 300
_CODE = re.compile(r"\b(3\d{4})\b")


@dataclass(frozen=True)
class StreamError:
    """One stream error: `code` for the metric (known or `other`), `detail` Twilio's text, cut to a bounded length."""

    call_sid: str
    stream_sid: str
    code: str
    detail: str


def stream_error_of(params: dict[str, str]) -> StreamError | None:
    """The error a status callback reports, or `None` for the stream's other events."""
    if params.get("StreamEvent") != "stream-error":
        return None
    text = params.get("StreamError", "")
    found = _CODE.search(text) or _CODE.search(params.get("ErrorCode", ""))
    code = found.group(1) if found and found.group(1) in STREAM_ERROR_CODES else OTHER_CODE
    return StreamError(params.get("CallSid", "")[:64], params.get("StreamSid", "")[:64], code, text[:MAX_DETAIL_CHARS])
