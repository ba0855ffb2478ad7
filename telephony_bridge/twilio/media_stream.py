"""Twilio Media Stream messages: JSON text frames in, controller events out, and back.

Twilio sends `connected`, `start`, `media` (20 ms of 8 kHz μ-law, base64), `dtmf`, `mark` and
`stop`; it accepts `media`, `mark` and `clear`. Anything else it sends us is rejected with a
reason the caller's call can log and count, never an exception.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

from telephony_bridge._audio_json import twilio_media_payload
from telephony_bridge._base64 import decode as base64_decode
from telephony_bridge._base64 import encode as base64_encode
from telephony_bridge.call.events import (
    CallerAudio,
    ClearTwilio,
    DigitPressed,
    Event,
    MarkEchoed,
    SendTwilioMark,
    SendTwilioMedia,
    StreamStarted,
    StreamStopped,
    TwilioMessage,
    TwilioMessageRejected,
)
from telephony_bridge.logs import LogThrottle
from telephony_bridge.wire import loads

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024
"""A 20 ms media frame is about 300 bytes of JSON; anything near this size is not from Twilio."""

DTMF_DIGITS = frozenset("0123456789*#ABCD")


def _reject(reason: str) -> TwilioMessageRejected:
    return TwilioMessageRejected(reason)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def parse_twilio_message(frame: str | bytes) -> Event | None:
    """Parse one websocket frame from Twilio. `None` means a message with nothing to act on (`connected`).

    Never raises: a frame that trips anything (say, `RecursionError` from an `event` nested a
    thousand deep) is a rejection, counted like any other malformed message.
    """
    try:
        if not isinstance(frame, str):
            return _reject("binary frame (Twilio sends text only)")
        if len(frame) > MAX_MESSAGE_BYTES:
            return _reject(f"oversized message ({len(frame)} bytes)")
        payload = twilio_media_payload(frame)
        if payload is not None:
            try:
                return CallerAudio(base64_decode(payload))
            except ValueError:
                pass  # the general parse below rejects it, and says why
        try:
            message = loads(frame)
        except ValueError:
            return _reject("not JSON")
        if not isinstance(message, dict):
            return _reject("not a JSON object")
        kind = message.get("event")
        body = message.get(kind) if isinstance(kind, str) else None
        if kind == "media":
            if not isinstance(body, dict) or (payload := _text(body.get("payload"))) is None:
                return _reject("media without a payload")
            if body.get("track", "inbound") != "inbound":
                return None
            try:
                return CallerAudio(base64_decode(payload))
            except ValueError:
                return _reject("media payload is not base64")
        if kind == "mark":
            name = _text(body.get("name")) if isinstance(body, dict) else None
            return MarkEchoed(name) if name is not None else _reject("mark without a name")
        if kind == "start":
            if not isinstance(body, dict):
                return _reject("start without a start object")
            call_sid = _text(body.get("callSid"))
            stream_sid = _text(message.get("streamSid")) or _text(body.get("streamSid"))
            parameters = body.get("customParameters") or {}
            if not call_sid or not stream_sid:
                return _reject("start without callSid or streamSid")
            if not isinstance(parameters, dict) or not all(isinstance(v, str) for v in parameters.values()):
                return _reject("start with malformed customParameters")
            return StreamStarted(stream_sid=stream_sid, call_sid=call_sid, custom_parameters=parameters)
        if kind == "dtmf":
            digit = _text(body.get("digit")) if isinstance(body, dict) else None
            if digit is None or digit not in DTMF_DIGITS:
                return _reject("dtmf without a valid digit")
            return DigitPressed(digit)
        if kind == "stop":
            return StreamStopped()
        if kind == "connected":
            return None
        return _reject(f"unknown event {str(kind)[:40]!r}")
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 -- a parser never raises: whatever a peer sends is counted, never fatal
        return _reject(f"unparseable message: {type(error).__name__}")


@functools.lru_cache(maxsize=4096)
def _quoted(stream_sid: str) -> str:
    """A stream's id as a JSON string, encoded once per stream rather than once per media frame."""
    return json.dumps(stream_sid)


def encode_for_twilio(action: TwilioMessage, stream_sid: str) -> str:
    """The JSON text frame Twilio expects for an action (the hot path builds media frames by hand)."""
    if isinstance(action, SendTwilioMedia):
        payload = base64_encode(action.ulaw)
        return f'{{"event":"media","streamSid":{_quoted(stream_sid)},"media":{{"payload":"{payload}"}}}}'
    if isinstance(action, SendTwilioMark):
        return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": action.name}})
    if isinstance(action, ClearTwilio):
        return json.dumps({"event": "clear", "streamSid": stream_sid})
    raise TypeError(f"{type(action).__name__} is not sent to Twilio as a message")


MAX_MESSAGES_PER_S = 400
"""Twilio sends 50 media frames a second plus an echo of each mark we send (at most one per chunk); 400 is far above that."""
FLOOD_MESSAGES_PER_S = 10 * MAX_MESSAGES_PER_S
FLOOD_SECONDS = 3
"""A socket over the cap for this many seconds running, or over `FLOOD_MESSAGES_PER_S` in any one,
is no peer of ours: it is closed rather than read on at its neighbours' expense. A short burst is not."""


class TwilioInbound:
    """One media socket's incoming messages: parsed, capped at `MAX_MESSAGES_PER_S`, rejections logged sparingly.

    The cap is decided here, at the edge, so the socket loop only reads and feeds: a message over
    the cap is rejected without being parsed, and a socket that keeps on is `flooding` and closed.
    The same rules hold before `start` as after it.
    """

    def __init__(self, clock: Callable[[], float], call_sid: str = "") -> None:
        self.call_sid = call_sid
        self._clock = clock
        self._window_start = clock()
        self._in_window = 0
        self._seconds_over_cap = 0
        self._logged = LogThrottle()

    @property
    def flooding(self) -> bool:
        over_now = self._in_window > MAX_MESSAGES_PER_S
        return self._in_window > FLOOD_MESSAGES_PER_S or over_now and self._seconds_over_cap + 1 >= FLOOD_SECONDS

    @property
    def rejected(self) -> int:
        return self._logged.seen

    def parse(self, frame: str | bytes) -> Event | None:
        now = self._clock()
        if now - self._window_start >= 1.0:
            over_cap = self._in_window > MAX_MESSAGES_PER_S and now - self._window_start < 2.0
            self._seconds_over_cap = self._seconds_over_cap + 1 if over_cap else 0
            self._window_start, self._in_window = now, 0
        self._in_window += 1
        if self._in_window > MAX_MESSAGES_PER_S:
            event: Event | None = TwilioMessageRejected("over the message rate cap")
        else:
            event = parse_twilio_message(frame)
        if isinstance(event, TwilioMessageRejected) and self._logged():
            log.warning("call %s: malformed Twilio message (%d so far): %s", self.call_sid, self._logged.seen, event.reason)
        return event
