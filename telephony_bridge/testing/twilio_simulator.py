"""A stand-in for Twilio: the signed voice webhook and the Media Stream client of one call.

``SimulatedCall.dial()`` POSTs the voice webhook as Twilio does and reads the TwiML;
``connect()`` opens the Media Stream websocket and then, until the call ends, sends a 20 ms
frame of caller audio every 20 ms and plays what the bridge sends back in real time, echoing
marks when their audio has played (``TwilioPlayback`` models that; this class moves the bytes).

The Twilio facts a bridge can trip on, reproduced here:

* Both the webhook and the websocket upgrade are signed: the webhook over the public https URL
  plus the sorted form fields, the upgrade over the public **wss** URL with no parameters.
* Inbound media flows for the whole call, silence included, 50 frames a second on a
  drift-free schedule; ``sequenceNumber``, ``chunk`` and ``timestamp`` are strings, and the
  first ``timestamp`` is not 0. The media track is ``inbound``; DTMF arrives on
  ``inbound_track``. Every frame is a JSON text frame.
* Outbound audio is buffered and played in order in real time; a ``mark`` is echoed when the
  audio sent before it has played; ``clear`` drops the buffer and echoes every pending mark at
  once. Binary frames, bad JSON, bad audio and a wrong ``streamSid`` are not played; they are
  recorded in ``errors`` with the Twilio error code (31950, 31951, 31924).

The call also follows TwiML as Twilio does (``run()``; ``redirect()`` and ``complete()`` are what the REST
stand-in in ``twilio_api`` calls): ``<Connect><Stream>`` opens the stream with its ``<Parameter>``s and, when
it ends, POSTs ``<Connect action>`` or goes on; ``<Say>`` is recorded in ``spoken``; ``<Pause>``,
``<Hangup/>``, ``<Redirect>``; ``<Dial>`` rings the ``callees`` (anyone not listed answers at once),
POSTs the ``<Number url>`` whisper to whoever answers, bridges them, and when that leg ends POSTs the
``action`` with ``DialCallStatus`` and runs its answer. Every callback is signed like the webhook.
``timeline`` records what happened, in order. Not simulated: the callee's own audio, ``<Gather>``,
``<Play>``, GET callbacks, a whisper that hangs up, and ``<Dial>`` nouns ringing in parallel (the
quickest answering callee wins; if none answers, the first noun's outcome is reported).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import secrets
import warnings
import wave
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import urljoin, urlsplit

import httpx
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from telephony_bridge.testing.changes import Changes
from telephony_bridge.testing.twilio_playback import MarkEcho, TwilioPlayback
from telephony_bridge.testing.vad import speech_like_pcm16
from telephony_bridge.wire import (
    FRAME_MS,
    ULAW_BYTES_PER_MS,
    ULAW_FRAME_BYTES,
    ULAW_RATE_HZ,
    ULAW_SILENCE,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "Callback",
    "Callee",
    "SimulatedCall",
    "Step",
    "load_wav_ulaw",
    "pcm16_to_ulaw8k",
    "speech_like_ulaw",
    "ulaw_silence",
]

log = logging.getLogger(__name__)

# Twilio's first inbound media timestamp is a few tens of ms into the stream, never 0.
_FIRST_TIMESTAMP_MS = 52
# "Until something happens": a bridged callee or an open stream has no time limit of its own.
_FOREVER_S = 24 * 3600.0

CallStatus = Literal["ringing", "in-progress", "completed"]


class Step(NamedTuple):
    """One thing that happened to the call: ``event`` is stream-opened, stream-ended (detail: who ended it:
    bridge, twilio, caller, dropped), stream-failed, say, pause, redirected, dialling, whisper, bridged,
    unbridged, dial-ended (detail: the DialCallStatus), skipped (an unsupported verb) or hung-up (detail: by
    caller, twilio, twiml)."""

    at: float
    event: str
    detail: str


class Callback(NamedTuple):
    """A signed request Twilio made to the bridge while following TwiML (action, whisper, stream status)."""

    at: float
    url: str
    params: dict[str, str]
    status: int


@dataclass(frozen=True)
class Callee:
    """How the person a ``<Dial>`` rings behaves.

    ``ring_s``: how long it rings before they answer, are busy or fail (for ``no-answer``: unset means the
    ``<Dial timeout>``). ``hang_up_after_s``: once bridged, they hang up after this long; unset, they stay
    until the caller hangs up, Twilio is told otherwise, or ``SimulatedCall.callee_hangs_up()``.
    """

    behaviour: Literal["answer", "busy", "no-answer", "failed"] = "answer"
    ring_s: float | None = None
    hang_up_after_s: float | None = None


def ulaw_silence(ms: float) -> bytes:
    """``ms`` of 8 kHz mu-law silence (0xFF, the code for zero)."""
    return bytes([ULAW_SILENCE]) * round(ms * ULAW_BYTES_PER_MS)


def pcm16_to_ulaw8k(pcm: bytes, rate: int) -> bytes:
    """Mono PCM16 LE at ``rate`` to 8 kHz mu-law (naive resampling; fine for test audio)."""
    if rate != ULAW_RATE_HZ:
        pcm, _ = audioop.ratecv(pcm, 2, 1, rate, ULAW_RATE_HZ, None)
    return audioop.lin2ulaw(pcm, 2)


def speech_like_ulaw(ms: int, *, level_dbfs: float = -20.0, f0: float = 120.0) -> bytes:
    """Speech-like caller audio (see ``speech_like_pcm16``), made directly at 8 kHz mu-law."""
    return audioop.lin2ulaw(speech_like_pcm16(ms, rate=ULAW_RATE_HZ, level_dbfs=level_dbfs, f0=f0), 2)


def load_wav_ulaw(path: str | Path) -> bytes:
    """A WAV file (PCM, any rate, mono or stereo) as 8 kHz mono mu-law, ready for ``say``."""
    with wave.open(str(path), "rb") as wav:
        channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
        frames = wav.readframes(wav.getnframes())
    if width != 2:
        frames = audioop.lin2lin(frames, width, 2)
    if channels == 2:
        frames = audioop.tomono(frames, 2, 0.5, 0.5)
    elif channels != 1:
        raise ValueError(f"{path}: {channels} channels; expected mono or stereo")
    return pcm16_to_ulaw8k(frames, rate)


def _base64(text: str) -> bytes | None:
    """The bytes of strict base64, or `None`: the simulator refuses a payload the bridge should never send."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _random_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


class SimulatedCall:
    """One inbound call, as Twilio would place it on the bridge.

    ``bridge_url`` is where the bridge listens (``http://127.0.0.1:PORT``); ``public_url`` is
    the PUBLIC_URL it was configured with: Twilio signs the URL it called, which is the public
    one, not the loopback one. ``auth_token=None`` sends no signatures. ``clock`` (default: the
    loop's clock) stamps everything recorded.

    After ``dial()``: ``dial_response``, ``twiml``, ``verbs`` (top-level TwiML verbs in order),
    ``stream_url``, ``stream_attributes``, ``parameters`` (the ``<Parameter>``s) and
    ``say_texts``. After ``connect()``, for assertions:

    * ``received``: ``(t, message)`` for every JSON message from the bridge;
    * ``said``: ``(t, audio)`` for every ``say``, stamped when its first frame goes out;
    * ``heard``: all mu-law audio played to the caller so far, in order (silence filler excluded);
    * ``playback``: ``(t_start, n_bytes)`` per run of bridge audio played without a pause;
    * ``clears``: ``(t, bytes_dropped)``; ``marks_echoed``: ``(t, name, played)``, where
      ``played`` is False for marks flushed by a ``clear`` before their audio played;
    * ``sent``: ``(t, message)`` for everything sent except media frames; ``media_sent``:
      number of media frames; ``errors``: ``(t, code, detail)`` for frames Twilio would reject;
    * ``closed_at``, ``closed_by_bridge``, ``close_code`` (of the latest stream: TwiML may open another).

    Following TwiML (``run()``, or ``redirect()`` from the REST stand-in): ``status`` (ringing,
    in-progress, completed), ``timeline`` of ``Step``s (``steps()`` without times), ``spoken`` (every
    ``<Say>`` said to the caller), ``whispers`` (``(target, text)`` said to a dialled person),
    ``bridged_to``, ``callbacks`` (every signed request made to the bridge) and ``callees``.
    """

    def __init__(
        self,
        *,
        bridge_url: str,
        public_url: str,
        auth_token: str | None,
        call_sid: str | None = None,
        account_sid: str | None = None,
        from_number: str = "+15005550006",
        to_number: str = "+15005550001",
        clock: Callable[[], float] | None = None,
        echo_delay_ms: float = 0.0,
    ) -> None:
        self.bridge_url = bridge_url.rstrip("/")
        self.echo_delay_ms = echo_delay_ms
        """How long each mark's echo takes to reach the bridge after its audio played (a real line's network)."""
        self.public_url = public_url.rstrip("/")
        self.auth_token = auth_token
        self.call_sid = call_sid or _random_sid("CA")
        self.account_sid = account_sid or _random_sid("AC")
        self.stream_sid = _random_sid("MZ")
        self.from_number = from_number
        self.to_number = to_number
        self._clock = clock

        self.dial_response: httpx.Response | None = None
        self.twiml: str | None = None
        self.verbs: list[str] = []
        self.stream_url: str | None = None
        self.stream_attributes: dict[str, str] = {}
        self.parameters: dict[str, str] = {}
        self.say_texts: list[str] = []

        self.received: list[tuple[float, dict[str, Any]]] = []
        self.sent: list[tuple[float, dict[str, Any]]] = []
        self.media_sent = 0
        self.said: list[tuple[float, bytes]] = []
        self.errors: list[tuple[float, int, str]] = []
        self.connected_at: float | None = None
        self.closed_at: float | None = None
        self.closed_by_bridge = False
        self.close_code: int | None = None

        self.status: CallStatus = "ringing"
        self.timeline: list[Step] = []
        self.spoken: list[str] = []
        self.whispers: list[tuple[str, str]] = []
        self.bridged_to: str | None = None
        self.callbacks: list[Callback] = []
        self.callees: dict[str, Callee] = {}

        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: asyncio.Task[None] | None = None
        self._callee_gone = False
        self._changes = Changes()
        self._sequence = 0
        self._caller_audio = bytearray()
        self._playback = TwilioPlayback()
        self._played_something = asyncio.Event()
        self._closing = False

    # ---- the webhook

    @property
    def webhook_params(self) -> dict[str, str]:
        """The form fields of the voice webhook, as Twilio sends them for an inbound call."""
        return {
            "AccountSid": self.account_sid, "ApiVersion": "2010-04-01",
            "CallSid": self.call_sid, "CallStatus": "ringing", "Called": self.to_number,
            "Caller": self.from_number, "Direction": "inbound", "From": self.from_number,
            "To": self.to_number,
        }

    def _new_stream(self) -> None:
        """A second stream of the same call (TwiML that connects again): a new streamSid and a fresh player."""
        self.stream_sid = _random_sid("MZ")
        self._ws = None
        self._tasks = []
        self._sequence = 0
        self._caller_audio.clear()
        self._playback = TwilioPlayback()
        self._closing = False
        self.closed_at = None
        self.closed_by_bridge = False
        self.close_code = None

    def _signature(self, url: str, params: dict[str, str]) -> str:
        assert self.auth_token is not None
        return RequestValidator(self.auth_token).compute_signature(url, params)

    async def dial(self) -> httpx.Response:
        """POST the voice webhook, signed over the public URL, and read the TwiML answer."""
        params = self.webhook_params
        headers = {"User-Agent": "TwilioProxy/1.1"}
        if self.auth_token is not None:
            headers["X-Twilio-Signature"] = self._signature(
                self.public_url + "/twilio/voice", params
            )
        async with httpx.AsyncClient() as client:
            response = await client.post(
                self.bridge_url + "/twilio/voice", data=params, headers=headers
            )
        self.dial_response = response
        if response.status_code == 200 and response.text.lstrip().startswith("<"):
            self._read_twiml(response.text)
        return response

    def _read_twiml(self, twiml: str) -> None:
        self.twiml = twiml
        root = ET.fromstring(twiml)
        self.verbs = [child.tag for child in root]
        stream = root.find("./Connect/Stream")
        if stream is not None:
            self.stream_url = stream.get("url")
            self.stream_attributes = dict(stream.attrib)
            self.parameters = {
                p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")
            }
        self.say_texts = [(say.text or "").strip() for say in root.iter("Say")]

    # ---- the media stream

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def _next_sequence(self) -> str:
        self._sequence += 1
        return str(self._sequence)

    async def connect(
        self,
        *,
        sign: bool = True,
        parameters: dict[str, str] | None = None,
        call_sid: str | None = None,
        stream_url: str | None = None,
    ) -> None:
        """Open the Media Stream and start sending caller audio and playing bridge audio.

        The websocket goes to the bridge's host and the stream URL's path; the signature
        covers the public wss URL from the TwiML (or ``stream_url``). ``parameters`` and
        ``call_sid`` override what goes into ``start`` (to test forged tokens). A refused
        upgrade raises ``websockets.exceptions.InvalidStatus``.
        """
        public = stream_url or self.stream_url
        if public is None:
            raise RuntimeError("no stream URL: dial() first, or pass stream_url=")
        if self._ws is not None:
            if self.closed_at is None:
                raise RuntimeError("a media stream is open already")
            self._new_stream()
        parts = urlsplit(public)
        bridge = urlsplit(self.bridge_url)
        scheme = "wss" if bridge.scheme == "https" else "ws"
        target = f"{scheme}://{bridge.netloc}{parts.path or '/'}"
        if parts.query:
            target += "?" + parts.query
        headers: dict[str, str] = {}
        if sign and self.auth_token is not None:
            headers["X-Twilio-Signature"] = self._signature(public, {})
        self._ws = await connect(
            target, additional_headers=headers, user_agent_header="Twilio.TmeWs/1.0",
            compression=None, max_size=None,
        )
        self.connected_at = self._now()
        self.status = "in-progress"
        self._record("stream-opened", self.stream_sid)
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self._send({
            "event": "start",
            "sequenceNumber": self._next_sequence(),
            "start": {
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": call_sid or self.call_sid,
                "tracks": ["inbound"],
                "customParameters": dict(self.parameters if parameters is None else parameters),
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": ULAW_RATE_HZ, "channels": 1},
            },
            "streamSid": self.stream_sid,
        })
        self._tasks = [
            asyncio.create_task(self._receive(), name="twilio-sim-receive"),
            asyncio.create_task(self._send_media(), name="twilio-sim-media"),
            asyncio.create_task(self._play(), name="twilio-sim-play"),
        ]

    async def _send(self, message: dict[str, Any]) -> bool:
        if self._ws is None:
            raise RuntimeError("not connected")
        if message.get("event") == "media":
            self.media_sent += 1
        else:
            self.sent.append((self._now(), message))
        try:
            await self._ws.send(json.dumps(message))
        except ConnectionClosed:
            return False
        return True

    def say(self, ulaw: bytes) -> None:
        """Queue caller audio; it goes out in real time as 20 ms frames after what is queued."""
        ahead_ms = FRAME_MS + len(self._caller_audio) / ULAW_BYTES_PER_MS
        self.said.append((self._now() + ahead_ms / 1000, ulaw))
        self._caller_audio += ulaw

    @property
    def saying(self) -> bool:
        """Whether queued caller audio is still waiting to be sent."""
        return bool(self._caller_audio)

    async def wait_said(self, timeout: float = 10.0) -> None:
        """Until every queued caller frame has been sent."""
        await self._changes.wait_until(lambda: not self._caller_audio, timeout, "caller audio sent")

    async def send_dtmf(self, digit: str) -> None:
        await self._send({
            "event": "dtmf", "streamSid": self.stream_sid, "sequenceNumber": self._next_sequence(),
            "dtmf": {"track": "inbound_track", "digit": digit},
        })

    async def send_raw(self, data: str | bytes) -> None:
        """Send a frame as is (junk, binary, forged messages) to test the bridge's defences."""
        if self._ws is None:
            raise RuntimeError("not connected")
        try:
            await self._ws.send(data)
        except ConnectionClosed:
            pass

    async def hang_up(self) -> None:
        """The caller hangs up: the media stream (if open) gets ``stop`` and closes, and the call is over."""
        await self._end_stream("caller")
        self._finish("caller")

    async def _end_stream(self, by: str) -> None:
        """Twilio's end of a stream, for a hang-up or new TwiML: a ``stop`` message, then the socket closes."""
        if self._ws is None or self.closed_at is not None:
            return
        # Nothing follows a stop: silence the media and playback tasks before sending it.
        self._closing = True
        await self._stop_tasks(keep_receiving=True)
        await self._send({
            "event": "stop", "sequenceNumber": self._next_sequence(), "streamSid": self.stream_sid,
            "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
        })
        await self._close(by)

    async def drop(self, *, abrupt: bool = False) -> None:
        """The stream ends without a ``stop``: a close frame, or with ``abrupt`` a TCP reset."""
        if self._ws is None or self.closed_at is not None:
            return
        if abrupt:
            self._closing = True
            self._ws.transport.abort()
        await self._close("dropped")

    async def _close(self, by: str) -> None:
        assert self._ws is not None
        self._closing = True
        await self._ws.close()
        await self._stop_tasks()
        self._mark_closed(by)

    async def _stop_tasks(self, *, keep_receiving: bool = False) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current
                 and not (keep_receiving and t.get_name() == "twilio-sim-receive")]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _mark_closed(self, by: str) -> None:
        if self.closed_at is not None:
            return
        self.closed_at = self._now()
        self.closed_by_bridge = by == "bridge"
        assert self._ws is not None
        self.close_code = self._ws.close_code
        self._record("stream-ended", by)
        self._changes.fire()

    async def wait_closed_by_bridge(self, timeout: float = 5.0) -> float | None:
        """When the bridge closed the socket, or None if it has not within ``timeout``
        (or the caller side closed it first)."""
        try:
            await self._changes.wait_until(lambda: self.closed_at is not None, timeout, "close")
        except TimeoutError:
            return None
        return self.closed_at if self.closed_by_bridge else None

    async def close(self) -> None:
        """Tidy up whatever state the call is in (for fixtures' teardown)."""
        await self._cancel_runner()
        if self._ws is not None and self.closed_at is None:
            await self._close("caller")

    # ---- background tasks

    async def _send_media(self) -> None:
        """One 160-byte frame every 20 ms, scheduled from the start so it never drifts."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        chunk = 0
        while True:
            delay = start + chunk * FRAME_MS / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            frame = bytes(self._caller_audio[:ULAW_FRAME_BYTES])
            del self._caller_audio[:ULAW_FRAME_BYTES]
            if len(frame) < ULAW_FRAME_BYTES:
                frame += ulaw_silence(FRAME_MS)[len(frame):]
            chunk += 1
            sent = await self._send({
                "event": "media", "sequenceNumber": self._next_sequence(),
                "streamSid": self.stream_sid,
                "media": {
                    "track": "inbound", "chunk": str(chunk),
                    "timestamp": str(_FIRST_TIMESTAMP_MS + (chunk - 1) * FRAME_MS),
                    "payload": base64.b64encode(frame).decode("ascii"),
                },
            })
            if not sent:
                return
            self._changes.fire()

    async def _play(self) -> None:
        """Echo each mark when its audio has played; while audio plays, wake waiters every 20 ms."""
        while True:
            now = self._now()
            await self._echo_marks(self._playback.advance(now))
            due = self._playback.next_mark_at()
            wait = FRAME_MS / 1000 if self._playback.playing(now) else None
            if due is not None:
                wait = min(wait if wait is not None else due - now, due - now)
            self._changes.fire()
            try:
                async with asyncio.timeout(None if wait is None else max(0.0, wait)):
                    await self._played_something.wait()
            except TimeoutError:
                pass
            self._played_something.clear()

    async def _echo_marks(self, echoes: list[MarkEcho]) -> None:
        if echoes and self.echo_delay_ms:
            self._tasks.append(asyncio.get_running_loop().create_task(self._echo_later(echoes)))
            return
        for echo in echoes:
            await self._send({
                "event": "mark", "sequenceNumber": self._next_sequence(),
                "streamSid": self.stream_sid, "mark": {"name": echo.name},
            })

    async def _echo_later(self, echoes: list[MarkEcho]) -> None:
        await asyncio.sleep(self.echo_delay_ms / 1000)
        for echo in echoes:
            await self._send({
                "event": "mark", "sequenceNumber": self._next_sequence(),
                "streamSid": self.stream_sid, "mark": {"name": echo.name},
            })

    async def _receive(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                await self._on_frame(raw)
        except ConnectionClosed:
            pass
        except Exception:  # a bug here must not vanish as "Task exception was never retrieved"
            log.exception("simulated Twilio call: error handling a bridge message")
            self.errors.append((self._now(), 0, "simulator error; see log"))
        if not self._closing:
            # The bridge closed the stream: Twilio would move on to the next TwiML verb.
            self._closing = True
            await self._stop_tasks()
            self._mark_closed("bridge")

    def _reject(self, code: int, detail: str) -> None:
        self.errors.append((self._now(), code, detail))
        self._changes.fire()

    async def _on_frame(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            self._reject(31950, "binary frame")
            return
        try:
            message = json.loads(raw)
        except ValueError:
            self._reject(31951, "not JSON")
            return
        if not isinstance(message, dict):
            self._reject(31951, "not a JSON object")
            return
        self.received.append((self._now(), message))
        self._changes.fire()
        event = message.get("event")
        if event not in ("media", "mark", "clear"):
            self._reject(31951, f"unknown event {event!r}")
            return
        if message.get("streamSid") != self.stream_sid:
            self._reject(31951, f"{event} for streamSid {message.get('streamSid')!r}")
            return
        if event == "media":
            payload = (message.get("media") or {}).get("payload")
            audio = _base64(payload) if isinstance(payload, str) else None
            if audio is None:
                self._reject(31924, "media payload is not base64")
                return
            echoes = self._playback.media(self._now(), audio)
        elif event == "mark":
            name = (message.get("mark") or {}).get("name")
            if not isinstance(name, str):
                self._reject(31951, "mark without a name")
                return
            echoes = self._playback.mark(self._now(), name)
        else:
            echoes = self._playback.clear(self._now())
        await self._echo_marks(echoes)
        self._played_something.set()

    # ---- the TwiML interpreter

    def _record(self, event: str, detail: str = "") -> None:
        self.timeline.append(Step(self._now(), event, detail))
        self._changes.fire()

    def _finish(self, by: str) -> None:
        """The call is over (``by`` the caller, Twilio, the TwiML or its running out)."""
        if self.status == "completed":
            return
        self.status = "completed"
        self._record("hung-up", by)

    @property
    def over(self) -> bool:
        return self.status == "completed"

    def steps(self, event: str | None = None) -> list[tuple[str, str]]:
        """The timeline without its times, optionally only one ``event``: for assertions."""
        return [(step.event, step.detail) for step in self.timeline if event is None or step.event == event]

    async def wait_for_step(self, event: str, detail: str | None = None, timeout: float = 5.0) -> Step:
        """The first step of the timeline with that event (and detail)."""
        return await self._changes.wait_until(
            lambda: next((s for s in self.timeline if s.event == event and detail in (None, s.detail)), None),
            timeout, f"{event} {detail or ''}".strip(),
        )

    async def wait_over(self, timeout: float = 5.0) -> None:
        """Until the call has ended, and whatever Twilio does after that (an action posted) is done."""
        await self._changes.wait_until(lambda: self.over and (self._runner is None or self._runner.done()), timeout, "call over")

    async def run(self) -> httpx.Response:
        """``dial()``, then follow the TwiML the webhook answered in the background, as Twilio does."""
        response = await self.dial()
        if self.twiml is None:
            self._finish("twilio")
        else:
            self._start_runner(self.twiml, self.public_url + "/twilio/voice")
        return response

    def follow(self, twiml: str) -> None:
        """Run TwiML given inline (an outbound call's ``Twiml=``) in the background, as Twilio does once the callee answers."""
        self._read_twiml(twiml)
        self._start_runner(twiml, self.public_url + "/")

    async def redirect(self, twiml: str) -> None:
        """New TwiML for the live call (REST ``Twiml=``): its stream gets ``stop``, what it was doing
        (the old TwiML's next verbs included) is dropped, and the new TwiML runs."""
        await self._cancel_runner()
        self._record("redirected")
        await self._end_stream("twilio")
        self._unbridge()
        self._start_runner(twiml, self.public_url + "/")

    async def complete(self) -> None:
        """Twilio ends the call (REST ``Status=completed``): its stream gets ``stop`` and closes."""
        await self._cancel_runner()
        await self._end_stream("twilio")
        self._unbridge()
        self._finish("twilio")

    def callee_hangs_up(self) -> None:
        """The person a ``<Dial>`` bridged the caller to hangs up."""
        self._callee_gone = True
        self._changes.fire()

    def _unbridge(self) -> None:
        if self.bridged_to is not None:
            self._record("unbridged", self.bridged_to)
            self.bridged_to = None

    def _start_runner(self, twiml: str, url: str) -> None:
        self._runner = asyncio.create_task(self._run(twiml, url), name="twilio-sim-twiml")

    async def _cancel_runner(self) -> None:
        runner = self._runner
        if runner is not None and runner is not asyncio.current_task() and not runner.done():
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    async def _run(self, twiml: str, url: str) -> None:
        """Run a TwiML document verb by verb; an action's answer replaces the rest of it."""
        document: tuple[str, str] | None = (twiml, url)
        try:
            while document is not None and not self.over:
                text, url = document
                document = None
                try:
                    root = ET.fromstring(text)
                except ET.ParseError as error:
                    self.errors.append((self._now(), 12100, f"TwiML does not parse: {error}"))
                    break
                self.status = "in-progress"
                for verb in root:
                    if self.over:
                        return
                    document = await self._verb(verb, url)
                    if document is not None:
                        break
            self._finish("twilio")  # the TwiML ran out: Twilio hangs up
        except Exception:  # a bug here must not vanish as "Task exception was never retrieved"
            log.exception("simulated Twilio call: error running TwiML")
            self.errors.append((self._now(), 0, "simulator error running TwiML; see log"))
            self._finish("twilio")

    async def _verb(self, verb: ET.Element, url: str) -> tuple[str, str] | None:
        """Do one verb; a new TwiML document (and its URL) when the verb's action answered one."""
        if verb.tag == "Say":
            text = (verb.text or "").strip()
            self.spoken.append(text)
            self._record("say", text)
        elif verb.tag == "Pause":
            self._record("pause", verb.get("length", "1"))
            await self._wait_or_over(float(verb.get("length", "1")))
        elif verb.tag == "Hangup":
            self._finish("twiml")
        elif verb.tag == "Redirect":
            return await self._fetch((verb.text or "").strip(), url, self._call_params())
        elif verb.tag == "Connect":
            return await self._connect_verb(verb, url)
        elif verb.tag == "Dial":
            return await self._dial_verb(verb, url)
        else:
            self._record("skipped", verb.tag)
        return None

    async def _wait_or_over(self, seconds: float, also: Callable[[], bool] = lambda: False) -> None:
        try:
            await self._changes.wait_until(lambda: self.over or also(), seconds, "wait")
        except TimeoutError:
            pass

    def _call_params(self) -> dict[str, str]:
        return {**self.webhook_params, "CallStatus": self.status}

    async def _connect_verb(self, verb: ET.Element, url: str) -> tuple[str, str] | None:
        stream = verb.find("Stream")
        if stream is None or not stream.get("url"):
            self._record("skipped", "Connect without a Stream")
            return None
        self.stream_attributes = dict(stream.attrib)
        callback = stream.get("statusCallback")
        try:
            parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
            await self.connect(stream_url=stream.get("url"), parameters=parameters)
        except (OSError, InvalidHandshake) as error:
            self._record("stream-failed", type(error).__name__)
            if callback:
                await self._stream_event(callback, url, stream, "stream-error", StreamError=f"31920 {type(error).__name__}")
            return await self._action(verb, url, {})
        if callback:
            await self._stream_event(callback, url, stream, "stream-started")
        await self._changes.wait_until(lambda: self.closed_at is not None, _FOREVER_S, "stream end")
        if callback:
            await self._stream_event(callback, url, stream, "stream-stopped")
        if self.over:
            return None
        return await self._action(verb, url, {})

    async def _stream_event(self, callback: str, url: str, stream: ET.Element, event: str, **extra: str) -> None:
        params = {
            "AccountSid": self.account_sid, "CallSid": self.call_sid, "StreamSid": self.stream_sid,
            "StreamName": stream.get("name", self.stream_sid), "StreamEvent": event,
            "Timestamp": datetime.now(UTC).isoformat(), **extra,
        }
        await self._post(urljoin(url, callback), params)

    async def _action(self, verb: ET.Element, url: str, extra: dict[str, str]) -> tuple[str, str] | None:
        """POST the verb's ``action`` (signed) and return the TwiML it answers; none: go on with the next verb."""
        action = verb.get("action")
        if not action:
            return None
        return await self._fetch(action, url, {**self._call_params(), **extra})

    async def _fetch(self, target: str, url: str, params: dict[str, str]) -> tuple[str, str] | None:
        absolute = urljoin(url, target)
        text = await self._post(absolute, params)
        if self.over:
            return None  # the caller has gone: Twilio tells the action, and runs nothing it answers
        if text is None:
            self.errors.append((self._now(), 11200, f"{absolute} did not answer TwiML"))
            self._finish("twilio")
            return None
        return text, absolute

    async def _post(self, url: str, params: dict[str, str]) -> str | None:
        """POST a signed callback to ``url`` (a public URL of the bridge goes to the bridge on loopback); its TwiML."""
        parts, public = urlsplit(url), urlsplit(self.public_url)
        target = url
        if (parts.scheme, parts.netloc) == (public.scheme, public.netloc):
            target = self.bridge_url + parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {"User-Agent": "TwilioProxy/1.1"}
        if self.auth_token is not None:
            headers["X-Twilio-Signature"] = self._signature(url, params)
        async with httpx.AsyncClient() as client:
            response = await client.post(target, data=params, headers=headers)
        self.callbacks.append(Callback(self._now(), url, params, response.status_code))
        self._changes.fire()
        ok = response.status_code == 200 and response.text.lstrip().startswith("<")
        return response.text if ok else None

    async def _dial_verb(self, verb: ET.Element, url: str) -> tuple[str, str] | None:
        timeout_s = float(verb.get("timeout", "30"))
        caller_id = verb.get("callerId") or self.from_number
        targets = [((noun.text or "").strip(), noun.get("url")) for noun in verb if noun.tag in ("Number", "Sip", "Client")]
        if not targets and (verb.text or "").strip():
            targets = [((verb.text or "").strip(), None)]
        self._record("dialling", ", ".join(t for t, _ in targets))
        callees = [(target, whisper, self.callees.get(target, Callee())) for target, whisper in targets]
        answering = [c for c in callees if c[2].behaviour == "answer" and (c[2].ring_s or 0.0) < timeout_s]
        if not answering:
            behaviour = callees[0][2].behaviour if callees else "failed"
            status = "no-answer" if behaviour == "answer" else behaviour
            ring_s = callees[0][2].ring_s if callees else 0.0
            await self._wait_or_over(timeout_s if status == "no-answer" and ring_s is None else min(timeout_s, ring_s or 0.0))
            self._record("dial-ended", status)
            return await self._action(verb, url, {"DialCallStatus": status, "DialCallDuration": "0"})
        target, whisper, callee = min(answering, key=lambda c: c[2].ring_s or 0.0)
        await self._wait_or_over(callee.ring_s or 0.0)
        if self.over:
            return None
        leg_sid = _random_sid("CA")
        if whisper:
            await self._whisper(target, urljoin(url, whisper), leg_sid, caller_id)
        self._callee_gone = False
        self.bridged_to = target
        self._record("bridged", target)
        bridged_at = self._now()
        await self._wait_or_over(
            callee.hang_up_after_s if callee.hang_up_after_s is not None else _FOREVER_S, lambda: self._callee_gone
        )
        ended = "answered" if self.over else "completed"
        self._unbridge()
        self._record("dial-ended", ended)
        duration = str(round(self._now() - bridged_at))
        return await self._action(verb, url, {"DialCallStatus": ended, "DialCallSid": leg_sid, "DialCallDuration": duration})

    async def _whisper(self, target: str, url: str, leg_sid: str, caller_id: str) -> None:
        """The ``<Number url>`` TwiML runs for the person who answered, before the two are joined."""
        params = {
            "AccountSid": self.account_sid, "ApiVersion": "2010-04-01", "CallSid": leg_sid, "ParentCallSid": self.call_sid,
            "CallStatus": "in-progress", "Direction": "outbound-dial", "From": caller_id, "Caller": caller_id,
            "To": target, "Called": target,
        }
        text = await self._post(url, params)
        if text is None:
            self.errors.append((self._now(), 11200, f"whisper {url} did not answer TwiML"))
            return
        for say in ET.fromstring(text).iter("Say"):
            self.whispers.append((target, (say.text or "").strip()))
            self._record("whisper", (say.text or "").strip())


    # ---- what happened

    def messages(self, event: str | None = None) -> list[dict[str, Any]]:
        """Messages received from the bridge, optionally only one ``event`` type."""
        return [m for _, m in self.received if event is None or m.get("event") == event]

    async def wait_for_message(
        self, match: str | Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """The first received message of that event type (or matching the predicate)."""
        predicate = match if callable(match) else (lambda m: m.get("event") == match)
        return await self._changes.wait_until(
            lambda: next((m for _, m in self.received if predicate(m)), None), timeout,
            f"a message matching {match!r}",
        )

    @property
    def heard(self) -> bytes:
        return self._playback.heard(self._now())

    @property
    def playback(self) -> list[tuple[float, int]]:
        return [(run.start, run.n_bytes) for run in self._playback.played(self._now())]

    @property
    def clears(self) -> list[tuple[float, int]]:
        return list(self._playback.clears)

    @property
    def marks_echoed(self) -> list[tuple[float, str, bool]]:
        return [(echo.at, echo.name, echo.played) for echo in self._playback.echoes]

    def heard_ms(self) -> float:
        return self._playback.heard_ms(self._now())

    @property
    def audio_ends_at(self) -> float:
        """When the bridge audio queued so far will have played (on the call's clock)."""
        return self._playback.queued_until

    def played_ms_at(self, t: float) -> float:
        """How much bridge audio had actually played by ``t`` (on the call's clock)."""
        return self._playback.heard_ms(t)

    async def wait_heard(self, ms: float, timeout: float = 5.0) -> None:
        """Until at least ``ms`` of bridge audio has been played to the caller."""
        await self._changes.wait_until(lambda: self.heard_ms() >= ms, timeout, f"{ms} ms heard")
