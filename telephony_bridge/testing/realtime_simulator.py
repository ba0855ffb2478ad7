"""A stand-in for the OpenAI / Azure OpenAI Realtime API, spoken over a real websocket.

Any path is accepted. A session speaks the GA dialect (docs/protocols.md section 4) unless its
path carries an ``api-version`` containing ``preview`` (Azure's
``/openai/realtime?api-version=2024-10-01-preview&deployment=...``) or the simulator was made
with ``dialect="preview"``; then it speaks the preview dialect (section 5). Every session
records what it received and sent, so tests can assert on what a bridge did.

The points a bridge can trip on behave as the real service does:

* Server VAD runs in *audio time*: speech is found on the audio's own timeline, so a client
  that sends faster or slower than real time sees the same ``audio_start_ms``/``audio_end_ms``.
* ``conversation.item.truncate`` past the audio an item holds is an ``error`` event
  ("Audio content of N ms is already shorter than M ms"); the session goes on.
* Barge-in (server VAD with ``interrupt_response``) cancels the response still being
  *generated*; audio already sent is the bridge's to ``clear`` at Twilio and truncate here.
* A malformed client event earns an ``error`` event, never a close. Unknown session fields are
  rejected whole (``unknown_parameter``), so a preview-shaped ``session.update`` sent to a GA
  endpoint fails, as it does against OpenAI. A GA session opened with the retired
  ``OpenAI-Beta: realtime=v1`` header gets ``beta_api_shape_disabled`` and close code 4000.
* Audio deltas arrive faster than real time (``speed``) and in varying sizes.

Not simulated: tools, text-only output, ``idle_timeout_ms``, rate limits, session expiry.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import functools
import json
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "DEFAULT_TRANSCRIPT",
    "RealtimeSimulator",
    "ServerVad",
    "SimulatedResponse",
    "SimulatedSession",
    "VadEvent",
    "serve_forever",
    "speech_like_pcm16",
    "vad_level_dbfs",
]

log = logging.getLogger(__name__)

Dialect = Literal["ga", "preview"]

DEFAULT_TRANSCRIPT = "Hello! This is the simulated assistant. How can I help you today?"

# Azure accepts appends up to 15 MiB; the websockets default of 1 MiB would be stricter.
_MAX_MESSAGE_BYTES = 16 * 2**20
# The real service refuses to commit less than this ("buffer too small").
_MIN_COMMIT_MS = 100.0
# Relative sizes of successive deltas: real deltas are not uniform, and a bridge that assumes
# they are (or that each is a whole number of 20 ms frames) should fail here, not in production.
_DELTA_SIZE_PATTERN = (1.0, 0.45, 1.6, 0.8, 1.15)


# --------------------------------------------------------------------------- audio


@functools.lru_cache(maxsize=16)
def speech_like_pcm16(
    duration_ms: int = 3000, *, rate: int = 24000, level_dbfs: float = -20.0, f0: float = 140.0
) -> bytes:
    """A deterministic speech-like signal: PCM16 LE mono at ``rate``.

    A voiced sound (harmonics of a gliding ``f0`` shaped by three formant-like bumps, nothing
    above 3.8 kHz) modulated at a syllable rate of 4 Hz, with a 150 ms pause every 0.8 s (well
    under the 500 ms a VAD needs to end a turn). ``level_dbfs`` is the RMS of the whole signal
    relative to a full-scale square wave. It starts and ends at zero, without clicks.
    """
    n = rate * duration_ms // 1000
    if n == 0:
        return b""
    t = np.arange(n) / rate
    pitch = f0 * (1.0 + 0.1 * np.sin(2 * np.pi * 0.8 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = np.zeros(n)
    for k in range(1, int(min(3800.0, 0.45 * rate) / f0) + 1):
        fk = k * f0
        weight = (
            np.exp(-(((fk - 600) / 250) ** 2))
            + 0.6 * np.exp(-(((fk - 1300) / 350) ** 2))
            + 0.3 * np.exp(-(((fk - 2500) / 500) ** 2))
            + 0.05
        ) / math.sqrt(k)
        voiced += weight * np.sin(k * phase)
    syllables = 0.55 - 0.45 * np.cos(2 * np.pi * 4.0 * t)
    in_word = t % 0.8
    words = np.clip((0.65 - in_word) / 0.02, 0, 1) * np.clip(in_word / 0.02, 0, 1)
    edges = np.clip(np.minimum(t, t[-1] - t) / 0.01, 0, 1)
    signal = voiced * syllables * words * edges
    rms = math.sqrt(float(np.mean(signal**2))) or 1.0
    signal *= 32768 * 10 ** (level_dbfs / 20) / rms
    return np.clip(np.round(signal), -32768, 32767).astype("<i2").tobytes()


def vad_level_dbfs(threshold: float) -> float:
    """The RMS level (dBFS) a 20 ms window must reach to count as speech.

    A linear map of the API's 0..1 ``threshold`` onto -70..-10 dBFS: the default 0.5 is
    -40 dBFS, well under speech at a normal telephone level (about -20 dBFS) and well over
    line noise (below -60 dBFS); 0.9 asks for -16 dBFS, i.e. a caller close to the microphone.
    """
    return -70.0 + 60.0 * threshold


@dataclass(frozen=True)
class VadEvent:
    """Speech started or stopped, at a position on the session's audio timeline (ms)."""

    kind: Literal["speech_started", "speech_stopped"]
    audio_ms: int


class ServerVad:
    """An energy VAD over PCM16 that counts time in audio, never in wall-clock time.

    The audio is cut into 20 ms windows. The first window at or above
    ``vad_level_dbfs(threshold)`` starts speech; ``audio_start_ms`` is that window's start minus
    ``prefix_padding_ms`` (the real service counts the padding it keeps as part of the turn).
    ``silence_duration_ms`` of windows below the level stop it; ``audio_end_ms`` is where that
    silence ends (again as the real service reports it, silence included).
    """

    WINDOW_MS = 20

    def __init__(
        self,
        *,
        rate: int = 24000,
        threshold: float = 0.5,
        silence_duration_ms: int = 500,
        prefix_padding_ms: int = 300,
        start_ms: float = 0.0,
    ) -> None:
        self.rate = rate
        self.threshold = threshold
        self.silence_duration_ms = silence_duration_ms
        self.prefix_padding_ms = prefix_padding_ms
        self.speaking = False
        self._position_ms = start_ms
        self._silence_ms = 0
        self._pending = bytearray()
        self._window_bytes = rate * self.WINDOW_MS // 1000 * 2

    @property
    def position_ms(self) -> float:
        """Audio analysed so far, in ms since the session started (whole windows only)."""
        return self._position_ms

    def reset(self) -> None:
        """Forget any speech in progress (the input buffer was cleared or committed by hand)."""
        self.speaking = False
        self._silence_ms = 0

    def feed(self, pcm: bytes) -> list[VadEvent]:
        self._pending += pcm
        events: list[VadEvent] = []
        level = vad_level_dbfs(self.threshold)
        while len(self._pending) >= self._window_bytes:
            window = np.frombuffer(self._pending[: self._window_bytes], dtype="<i2")
            del self._pending[: self._window_bytes]
            start = self._position_ms
            self._position_ms += self.WINDOW_MS
            rms = math.sqrt(float(np.mean(window.astype(np.float64) ** 2)))
            loud = 20 * math.log10(max(rms, 1e-9) / 32768) >= level
            if not self.speaking:
                if loud:
                    self.speaking = True
                    self._silence_ms = 0
                    at = max(0, round(start - self.prefix_padding_ms))
                    events.append(VadEvent("speech_started", at))
            elif loud:
                self._silence_ms = 0
            else:
                self._silence_ms += self.WINDOW_MS
                if self._silence_ms >= self.silence_duration_ms:
                    self.speaking = False
                    events.append(VadEvent("speech_stopped", round(self._position_ms)))
        return events


@dataclass(frozen=True)
class _Codec:
    name: str
    rate: int
    sample_bytes: int

    @property
    def bytes_per_ms(self) -> float:
        return self.rate * self.sample_bytes / 1000

    def to_pcm16(self, data: bytes) -> bytes:
        if self.name == "ulaw":
            return audioop.ulaw2lin(data, 2)
        if self.name == "alaw":
            return audioop.alaw2lin(data, 2)
        return data

    def from_pcm16_24k(self, pcm: bytes) -> bytes:
        if self.name == "pcm16":
            return pcm
        # Naive resampling is good enough for a simulator: nobody listens to it critically.
        narrow, _ = audioop.ratecv(pcm, 2, 1, 24000, self.rate, None)
        return audioop.lin2ulaw(narrow, 2) if self.name == "ulaw" else audioop.lin2alaw(narrow, 2)


_PCM16 = _Codec("pcm16", 24000, 2)
_ULAW = _Codec("ulaw", 8000, 1)
_ALAW = _Codec("alaw", 8000, 1)
_GA_FORMATS = {"audio/pcm": _PCM16, "audio/pcmu": _ULAW, "audio/pcma": _ALAW}
_PREVIEW_FORMATS = {"pcm16": _PCM16, "g711_ulaw": _ULAW, "g711_alaw": _ALAW}


# --------------------------------------------------------------------------- session shapes

_EVENT_NAMES: dict[Dialect, dict[str, str]] = {
    "ga": {
        "audio_delta": "response.output_audio.delta",
        "audio_done": "response.output_audio.done",
        "transcript_delta": "response.output_audio_transcript.delta",
        "transcript_done": "response.output_audio_transcript.done",
        "item_added": "conversation.item.added",
    },
    "preview": {
        "audio_delta": "response.audio.delta",
        "audio_done": "response.audio.done",
        "transcript_delta": "response.audio_transcript.delta",
        "transcript_done": "response.audio_transcript.done",
        "item_added": "conversation.item.created",
    },
}

_GA_SESSION_KEYS = {
    "type", "model", "instructions", "output_modalities", "audio", "tools", "tool_choice",
    "max_output_tokens", "tracing", "truncation", "prompt", "include", "parallel_tool_calls",
    "reasoning",
}
_GA_AUDIO_KEYS = {"input", "output"}
_GA_INPUT_KEYS = {"format", "transcription", "noise_reduction", "turn_detection"}
_GA_OUTPUT_KEYS = {"format", "voice", "speed"}
_PREVIEW_SESSION_KEYS = {
    "model", "modalities", "instructions", "voice", "input_audio_format", "output_audio_format",
    "input_audio_transcription", "input_audio_noise_reduction", "turn_detection", "tools",
    "tool_choice", "temperature", "max_response_output_tokens", "speed", "tracing",
}
_SERVER_VAD_KEYS = {
    "type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response",
    "interrupt_response", "idle_timeout_ms",
}
_SEMANTIC_VAD_KEYS = {"type", "eagerness", "create_response", "interrupt_response"}
# semantic_vad is approximated by the energy VAD with an eagerness-dependent end of turn.
_EAGERNESS_SILENCE_MS = {"low": 1000, "medium": 500, "auto": 500, "high": 250}


class _ClientError(Exception):
    """A client event the real service would answer with an ``error`` event."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def _unknown(param: str) -> _ClientError:
    return _ClientError("unknown_parameter", f"Unknown parameter: '{param}'.", param)


def _missing(param: str) -> _ClientError:
    return _ClientError(
        "missing_required_parameter", f"Missing required parameter: '{param}'.", param
    )


def _invalid(param: str, value: Any, expected: str) -> _ClientError:
    return _ClientError(
        "invalid_value", f"Invalid value for '{param}': {value!r}. Expected {expected}.", param
    )


def _check_keys(obj: dict[str, Any], allowed: set[str], prefix: str) -> None:
    for key in obj:
        if key not in allowed:
            raise _unknown(f"{prefix}.{key}")


def _require_dict(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _ClientError("invalid_type", f"Invalid type for '{param}': expected an object.", param)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _turn_detection(value: Any, param: str, *, ga: bool) -> dict[str, Any] | None:
    """Validate a ``turn_detection`` object and fill in the service's defaults."""
    if value is None:
        return None
    value = _require_dict(value, param)
    kind = value.get("type")
    if kind is None:
        raise _missing(f"{param}.type")
    if kind == "server_vad":
        _check_keys(value, _SERVER_VAD_KEYS if ga else _SERVER_VAD_KEYS - {"idle_timeout_ms"}, param)
        result: dict[str, Any] = {
            "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
            "silence_duration_ms": 500, "create_response": True, "interrupt_response": True,
        }
        if ga:
            result["idle_timeout_ms"] = None
    elif kind == "semantic_vad":
        _check_keys(value, _SEMANTIC_VAD_KEYS, param)
        result = {"type": "semantic_vad", "eagerness": "auto", "create_response": True,
                  "interrupt_response": True}
    else:
        raise _invalid(f"{param}.type", kind, "'server_vad' or 'semantic_vad'")
    threshold = value.get("threshold", 0.5)
    if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
        raise _invalid(f"{param}.threshold", threshold, "a number between 0 and 1")
    for key in ("prefix_padding_ms", "silence_duration_ms"):
        if key in value and (not _is_int(value[key]) or value[key] < 0):
            raise _invalid(f"{param}.{key}", value[key], "a non-negative integer")
    for key in ("create_response", "interrupt_response"):
        if key in value and not isinstance(value[key], bool):
            raise _invalid(f"{param}.{key}", value[key], "a boolean")
    if "eagerness" in value and value["eagerness"] not in _EAGERNESS_SILENCE_MS:
        raise _invalid(f"{param}.eagerness", value["eagerness"], "low, medium, high or auto")
    idle = value.get("idle_timeout_ms")
    if idle is not None and (not _is_int(idle) or idle < 0):
        raise _invalid(f"{param}.idle_timeout_ms", idle, "a non-negative integer or null")
    result.update(value)
    return result


def _ga_format(value: Any, param: str) -> dict[str, Any]:
    value = _require_dict(value, param)
    _check_keys(value, {"type", "rate"}, param)
    kind = value.get("type", "audio/pcm")
    if kind not in _GA_FORMATS:
        raise _invalid(f"{param}.type", kind, "'audio/pcm', 'audio/pcmu' or 'audio/pcma'")
    if kind == "audio/pcm":
        if value.get("rate", 24000) != 24000:
            raise _invalid(f"{param}.rate", value["rate"], "24000")
        return {"type": kind, "rate": 24000}
    return {"type": kind}


def _default_session(dialect: Dialect, session_id: str, model: str) -> dict[str, Any]:
    vad = _turn_detection({"type": "server_vad"}, "session.turn_detection", ga=dialect == "ga")
    if dialect == "ga":
        return {
            "type": "realtime", "object": "realtime.session", "id": session_id, "model": model,
            "output_modalities": ["audio"], "instructions": "", "tools": [],
            "tool_choice": "auto", "max_output_tokens": "inf", "tracing": None,
            "truncation": "auto", "prompt": None,
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": None, "noise_reduction": None, "turn_detection": vad,
                },
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin",
                           "speed": 1.0},
            },
        }
    return {
        "object": "realtime.session", "id": session_id, "model": model,
        "modalities": ["text", "audio"], "instructions": "", "voice": "alloy",
        "input_audio_format": "pcm16", "output_audio_format": "pcm16",
        "input_audio_transcription": None, "turn_detection": vad, "tools": [],
        "tool_choice": "auto", "temperature": 0.8, "max_response_output_tokens": "inf",
    }


def _apply_ga_update(current: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    if "type" not in update:
        raise _missing("session.type")
    if update["type"] != "realtime":
        raise _invalid("session.type", update["type"], "'realtime' (the simulator has no "
                       "transcription sessions)")
    _check_keys(update, _GA_SESSION_KEYS, "session")
    if "instructions" in update and not isinstance(update["instructions"], str):
        raise _invalid("session.instructions", update["instructions"], "a string")
    new = copy.deepcopy(current)
    for key, value in update.items():
        if key != "audio":
            new[key] = copy.deepcopy(value)
            continue
        audio = _require_dict(value, "session.audio")
        _check_keys(audio, _GA_AUDIO_KEYS, "session.audio")
        for side, allowed in (("input", _GA_INPUT_KEYS), ("output", _GA_OUTPUT_KEYS)):
            if side not in audio:
                continue
            prefix = f"session.audio.{side}"
            part = _require_dict(audio[side], prefix)
            _check_keys(part, allowed, prefix)
            for name, item in part.items():
                if name == "format":
                    item = _ga_format(item, f"{prefix}.format")
                elif name == "turn_detection":
                    item = _turn_detection(item, f"{prefix}.turn_detection", ga=True)
                elif name == "voice" and not isinstance(item, (str, dict)):
                    raise _invalid(f"{prefix}.voice", item, "a voice name")
                new["audio"][side][name] = copy.deepcopy(item)
    return new


_FIRST_PREVIEW = "2024-10-01-preview"
_FIRST_PREVIEW_VAD_KEYS = {"type", "threshold", "prefix_padding_ms", "silence_duration_ms"}
_FIRST_PREVIEW_VOICES = {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse"}
"""What the first preview (Azure's 2024-10-01-preview models) accepts: no create/interrupt flags,
no semantic VAD, and the voices before marin and cedar. Later previews accept more."""


def _check_first_preview(update: dict[str, Any]) -> None:
    turn_detection = update.get("turn_detection")
    if isinstance(turn_detection, dict):
        _check_keys(turn_detection, _FIRST_PREVIEW_VAD_KEYS, "session.turn_detection")
        if turn_detection.get("type") != "server_vad":
            raise _invalid("session.turn_detection.type", turn_detection.get("type"), "'server_vad'")
    if "voice" in update and update["voice"] not in _FIRST_PREVIEW_VOICES:
        raise _invalid("session.voice", update["voice"], ", ".join(sorted(_FIRST_PREVIEW_VOICES)))


def _apply_preview_update(current: dict[str, Any], update: dict[str, Any], *, first_preview: bool) -> dict[str, Any]:
    _check_keys(update, _PREVIEW_SESSION_KEYS, "session")
    if first_preview:
        _check_first_preview(update)
    new = copy.deepcopy(current)
    for key, value in update.items():
        if key in ("input_audio_format", "output_audio_format") and value not in _PREVIEW_FORMATS:
            raise _invalid(f"session.{key}", value, "'pcm16', 'g711_ulaw' or 'g711_alaw'")
        if key == "temperature" and (not _is_number(value) or not 0.6 <= value <= 1.2):
            raise _invalid("session.temperature", value, "a number between 0.6 and 1.2")
        if key in ("instructions", "voice") and not isinstance(value, str):
            raise _invalid(f"session.{key}", value, "a string")
        if key == "turn_detection":
            value = _turn_detection(value, "session.turn_detection", ga=False)
        new[key] = copy.deepcopy(value)
    return new


# --------------------------------------------------------------------------- sessions


class _Changes:
    """Wakes waiters whenever something is recorded; they re-check their own condition."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_until(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        """The first truthy ``check()``; ``TimeoutError`` naming ``what`` after ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    result = check()
                    if result is not None and result is not False:
                        return result
                    await self._event.wait()
        except TimeoutError as exc:
            if exc.args:
                raise
            raise TimeoutError(f"{what} did not happen within {timeout} s") from None


@dataclass
class SimulatedResponse:
    """One model response: how it started, how it ended, how much audio it sent."""

    id: str
    item_id: str
    trigger: Literal["server_vad", "response.create"]
    created_at: float
    index: int = 0
    """Its place among the session's responses, which picks its answer from ``answers``."""
    status: str = "in_progress"
    reason: str | None = None
    audio_ms: float = 0.0
    deltas: int = 0
    done_at: float | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)


class SimulatedSession:
    """One accepted connection: its state, and a record of everything that happened.

    ``received`` holds every client event that parsed as a JSON object, valid or not; ``sent``
    every server event. ``item_audio_ms`` maps each assistant item to the audio sent for it
    (reduced by a truncate); ``truncates`` lists the truncations that were acknowledged.
    """

    def __init__(self, simulator: RealtimeSimulator, ws: ServerConnection, index: int) -> None:
        self._simulator = simulator
        self._ws = ws
        self._loop = asyncio.get_running_loop()
        self.index = index
        request = ws.request
        assert request is not None
        self.path: str = request.path
        self.headers: Headers = request.headers
        query = parse_qs(urlsplit(self.path).query)
        self.api_version: str | None = (query.get("api-version") or [None])[0]
        if simulator.dialect is not None:
            self.dialect: Dialect = simulator.dialect
        elif any("preview" in v for v in query.get("api-version", [])):
            self.dialect = "preview"
        else:
            self.dialect = "ga"
        model = (query.get("model") or query.get("deployment") or [None])[0]
        model = model or ("gpt-realtime" if self.dialect == "ga" else "gpt-4o-realtime-preview")
        self.opened_at: float = self._loop.time()
        self.closed_at: float | None = None
        self.close_code: int | None = None
        self.received: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.truncates: list[dict[str, Any]] = []
        self.input_audio_ms: float = 0.0
        self.item_audio_ms: dict[str, float] = {}
        self.items: dict[str, dict[str, Any]] = {}
        self.responses: list[SimulatedResponse] = []
        self.config: dict[str, Any] = _default_session(self.dialect, f"sess_sim{index}", model)
        self._names = _EVENT_NAMES[self.dialect]
        self._counters: dict[str, int] = {}
        self._changes = _Changes()
        self._buffer_ms = 0.0
        self._speech_item_id: str | None = None
        self._active: SimulatedResponse | None = None
        self._input_codec = _PCM16
        self._vad = ServerVad()
        self._configure_audio()

    # ---- what tests read

    @property
    def instructions(self) -> str:
        return self.config.get("instructions", "")

    @property
    def voice(self) -> Any:
        if self.dialect == "ga":
            return self.config["audio"]["output"].get("voice")
        return self.config.get("voice")

    @property
    def turn_detection(self) -> dict[str, Any] | None:
        if self.dialect == "ga":
            return self.config["audio"]["input"].get("turn_detection")
        return self.config.get("turn_detection")

    @property
    def active_response(self) -> SimulatedResponse | None:
        return self._active

    def events(self, event_type: str, *, sent: bool = False) -> list[dict[str, Any]]:
        """Received (or, with ``sent=True``, sent) events of one type, in order."""
        return [e for e in (self.sent if sent else self.received) if e.get("type") == event_type]

    async def wait_for(
        self,
        match: str | Callable[[dict[str, Any]], bool],
        timeout: float = 5.0,
        *,
        sent: bool = False,
        since: int = 0,
    ) -> dict[str, Any]:
        """The first received (or sent) event from index ``since`` on that matches.

        ``match`` is an event type or a predicate. Raises ``TimeoutError`` if none comes, at
        once if the session has closed and none can come.
        """
        events = self.sent if sent else self.received
        predicate = match if callable(match) else (lambda e: e.get("type") == match)

        def check() -> dict[str, Any] | None:
            for event in events[since:]:
                if predicate(event):
                    return event
            if self.closed_at is not None:
                raise TimeoutError(f"session {self.index} closed before {match!r} was seen")
            return None

        return await self._changes.wait_until(check, timeout, f"an event matching {match!r}")

    async def wait_closed(self, timeout: float = 5.0) -> float:
        return await self._changes.wait_until(lambda: self.closed_at, timeout, "session close")

    # ---- fault injection

    async def send_error(
        self,
        code: str,
        message: str,
        *,
        error_type: str = "server_error",
        param: str | None = None,
        event_id: str | None = None,
    ) -> None:
        """Send an ``error`` event out of the blue, as the service does when it fails."""
        await self._send_error(code, message, param, event_id, error_type=error_type)

    async def send_raw(self, data: str | bytes) -> None:
        """Send a frame as is (junk, deep nesting, binary) to test the bridge's defences."""
        try:
            await self._ws.send(data)
        except ConnectionClosed:
            pass

    async def drop(self, code: int = 1011, reason: str = "simulated server failure") -> None:
        """Close the connection from the server side."""
        await self._halt_streaming()
        await self._ws.close(code, reason)

    # ---- the connection

    async def run(self) -> None:
        try:
            beta = self.headers.get("OpenAI-Beta", "")
            if self.dialect == "ga" and "realtime=v1" in beta:
                await self._send_error(
                    "beta_api_shape_disabled",
                    "The beta Realtime API shape is no longer supported; remove the "
                    "'OpenAI-Beta: realtime=v1' header and use the GA interface.",
                    None, None,
                )
                await self._ws.close(4000, "beta_api_shape_disabled")
                return
            await self._send("session.created", session=copy.deepcopy(self.config))
            async for message in self._ws:
                await self._on_message(message)
        except ConnectionClosed:
            pass
        finally:
            await self._halt_streaming()
            self.closed_at = self._loop.time()
            self.close_code = self._ws.close_code
            self._changes.fire()

    def _next_id(self, prefix: str) -> str:
        n = self._counters.get(prefix, 0) + 1
        self._counters[prefix] = n
        return f"{prefix}_sim{self.index}_{n:04d}"

    async def _send(self, event_type: str, **fields: Any) -> None:
        event = {"type": event_type, "event_id": self._next_id("event"), **fields}
        self.sent.append(event)
        self._changes.fire()
        try:
            await self._ws.send(json.dumps(event))
        except ConnectionClosed:
            pass

    async def _send_error(
        self,
        code: str | None,
        message: str,
        param: str | None,
        client_event_id: str | None,
        *,
        error_type: str = "invalid_request_error",
    ) -> None:
        await self._send("error", error={
            "type": error_type, "code": code, "message": message, "param": param,
            "event_id": client_event_id,
        })

    async def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            await self._send_error("invalid_json", "Binary frames are not supported; send JSON "
                                   "text events.", None, None)
            return
        try:
            event = json.loads(message)
        except ValueError:
            await self._send_error("invalid_json", "The server could not parse the JSON event.",
                                   None, None)
            return
        if not isinstance(event, dict):
            await self._send_error("invalid_json", "A client event must be a JSON object.",
                                   None, None)
            return
        self.received.append(event)
        self._changes.fire()
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        try:
            event_type = event.get("type")
            if not isinstance(event_type, str):
                raise _missing("type")
            handler = self._handlers.get(event_type)
            if handler is None:
                raise _ClientError(
                    "invalid_value",
                    f"Invalid value: '{event_type}'. Supported values are: "
                    + ", ".join(f"'{name}'" for name in self._handlers) + ".",
                    "type",
                )
            await handler(self, event)
        except _ClientError as error:
            await self._send_error(error.code, error.message, error.param, event_id)

    # ---- client events

    async def _on_session_update(self, event: dict[str, Any]) -> None:
        if "session" not in event:
            raise _missing("session")
        update = _require_dict(event["session"], "session")
        if self.dialect == "ga":
            self.config = _apply_ga_update(self.config, update)
        else:
            self.config = _apply_preview_update(self.config, update, first_preview=self.api_version == _FIRST_PREVIEW)
        self._configure_audio()
        await self._send("session.updated", session=copy.deepcopy(self.config))

    def _configure_audio(self) -> None:
        if self.dialect == "ga":
            codec = _GA_FORMATS[self.config["audio"]["input"]["format"]["type"]]
            self._output_codec = _GA_FORMATS[self.config["audio"]["output"]["format"]["type"]]
        else:
            codec = _PREVIEW_FORMATS[self.config["input_audio_format"]]
            self._output_codec = _PREVIEW_FORMATS[self.config["output_audio_format"]]
        if codec is not self._input_codec:
            self._input_codec = codec
            self._vad = ServerVad(rate=codec.rate, start_ms=self.input_audio_ms)
        vad = self.turn_detection or {}
        if vad.get("type") == "semantic_vad":
            self._vad.threshold = 0.5
            self._vad.silence_duration_ms = _EAGERNESS_SILENCE_MS[vad["eagerness"]]
            self._vad.prefix_padding_ms = 300
        elif vad:
            self._vad.threshold = vad["threshold"]
            self._vad.silence_duration_ms = vad["silence_duration_ms"]
            self._vad.prefix_padding_ms = vad["prefix_padding_ms"]

    async def _on_append(self, event: dict[str, Any]) -> None:
        audio = event.get("audio")
        if audio is None:
            raise _missing("audio")
        if not isinstance(audio, str):
            raise _invalid("audio", type(audio).__name__, "a base64 string")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise _ClientError("invalid_value", "Invalid 'audio'. Expected base64-encoded audio "
                               "bytes.", "audio") from None
        codec = self._input_codec
        if len(data) % codec.sample_bytes:
            raise _ClientError("invalid_value", f"Invalid 'audio': {len(data)} bytes is not a "
                               f"whole number of {codec.name} samples.", "audio")
        ms = len(data) / codec.bytes_per_ms
        self.input_audio_ms += ms
        self._buffer_ms += ms
        vad = self.turn_detection
        for vad_event in self._vad.feed(codec.to_pcm16(data)):
            if vad is None:
                continue
            if vad_event.kind == "speech_started":
                await self._on_speech_started(vad_event.audio_ms, vad)
            else:
                await self._on_speech_stopped(vad_event.audio_ms, vad)

    async def _on_speech_started(self, audio_ms: int, vad: dict[str, Any]) -> None:
        self._speech_item_id = self._next_id("item")
        await self._send("input_audio_buffer.speech_started", audio_start_ms=audio_ms,
                         item_id=self._speech_item_id)
        if self._active is not None and vad["interrupt_response"]:
            await self._cancel_response("turn_detected")

    async def _on_speech_stopped(self, audio_ms: int, vad: dict[str, Any]) -> None:
        item_id = self._speech_item_id or self._next_id("item")
        self._speech_item_id = None
        await self._send("input_audio_buffer.speech_stopped", audio_end_ms=audio_ms,
                         item_id=item_id)
        await self._commit(item_id)
        if vad["create_response"] and self._active is None:
            await self._start_response("server_vad")

    async def _commit(self, item_id: str) -> None:
        previous = self._last_item_id()
        await self._send("input_audio_buffer.committed", previous_item_id=previous,
                         item_id=item_id)
        self._buffer_ms = 0.0
        item = {"id": item_id, "object": "realtime.item", "type": "message", "status":
                "completed", "role": "user",
                "content": [{"type": "input_audio", "transcript": None}]}
        await self._add_item(item, previous)
        transcription = (self.config["audio"]["input"].get("transcription")
                         if self.dialect == "ga" else self.config.get("input_audio_transcription"))
        if transcription:
            await self._send("conversation.item.input_audio_transcription.completed",
                             item_id=item_id, content_index=0,
                             transcript="(simulated caller speech)")

    async def _add_item(self, item: dict[str, Any], previous: str | None) -> None:
        self.items[item["id"]] = item
        await self._send(self._names["item_added"], previous_item_id=previous,
                         item=copy.deepcopy(item))
        if self.dialect == "ga" and item.get("status") != "in_progress":
            await self._send("conversation.item.done", previous_item_id=previous,
                             item=copy.deepcopy(item))

    def _last_item_id(self) -> str | None:
        return next(reversed(self.items), None)

    async def _on_commit(self, event: dict[str, Any]) -> None:
        if self._buffer_ms < _MIN_COMMIT_MS:
            raise _ClientError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"100ms of audio, but buffer only has {self._buffer_ms:.2f}ms of audio.",
            )
        self._vad.reset()
        item_id = self._speech_item_id or self._next_id("item")
        self._speech_item_id = None
        await self._commit(item_id)

    async def _on_clear_input(self, event: dict[str, Any]) -> None:
        self._buffer_ms = 0.0
        self._vad.reset()
        self._speech_item_id = None
        await self._send("input_audio_buffer.cleared")

    async def _on_clear_output(self, event: dict[str, Any]) -> None:
        """Recorded and otherwise ignored: there is no server-side playback on a websocket."""

    async def _on_item_create(self, event: dict[str, Any]) -> None:
        if "item" not in event:
            raise _missing("item")
        item = copy.deepcopy(_require_dict(event["item"], "item"))
        kind = item.get("type")
        if kind is None:
            raise _missing("item.type")
        if kind not in ("message", "function_call", "function_call_output"):
            raise _invalid("item.type", kind, "'message', 'function_call' or "
                           "'function_call_output'")
        if kind == "message":
            if item.get("role") not in ("user", "assistant", "system"):
                raise _invalid("item.role", item.get("role"), "'user', 'assistant' or 'system'")
            if not isinstance(item.get("content"), list):
                raise _missing("item.content")
        if "id" in item and item["id"] in self.items:
            raise _ClientError("invalid_value", f"Item with id '{item['id']}' already exists.",
                               "item.id")
        previous = event.get("previous_item_id", self._last_item_id())
        if previous is not None and previous != "root" and previous not in self.items:
            raise _ClientError("invalid_value", f"Previous item with id '{previous}' not found.",
                               "previous_item_id")
        item.setdefault("id", self._next_id("item"))
        item.setdefault("object", "realtime.item")
        item.setdefault("status", "completed")
        await self._add_item(item, previous)

    async def _on_item_delete(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        if not isinstance(item_id, str):
            raise _missing("item_id")
        if item_id not in self.items:
            raise _ClientError("invalid_value", f"Item with item_id '{item_id}' not found.",
                               "item_id")
        del self.items[item_id]
        await self._send("conversation.item.deleted", item_id=item_id)

    async def _on_truncate(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        if not isinstance(item_id, str):
            raise _missing("item_id")
        content_index = event.get("content_index")
        if not _is_int(content_index):
            raise _missing("content_index")
        audio_end_ms = event.get("audio_end_ms")
        if not _is_int(audio_end_ms) or audio_end_ms < 0:
            if audio_end_ms is None:
                raise _missing("audio_end_ms")
            raise _invalid("audio_end_ms", audio_end_ms, "a non-negative integer")
        item = self.items.get(item_id)
        if item is None:
            raise _ClientError("invalid_value", f"Item with item_id '{item_id}' not found.",
                               "item_id")
        if item.get("role") != "assistant" or item_id not in self.item_audio_ms:
            raise _ClientError("invalid_value", "Only assistant messages with audio can be "
                               "truncated.", "item_id")
        if content_index != 0:
            raise _invalid("content_index", content_index, "0")
        audio_ms = self.item_audio_ms[item_id]
        if audio_end_ms > audio_ms:
            shown = int(audio_ms) if audio_ms == int(audio_ms) else round(audio_ms, 1)
            raise _ClientError(
                "invalid_value",
                f"Audio content of {shown} ms is already shorter than {audio_end_ms} ms",
                "audio_end_ms",
            )
        self.item_audio_ms[item_id] = float(audio_end_ms)
        self.truncates.append({
            "item_id": item_id, "content_index": content_index, "audio_end_ms": audio_end_ms,
            "audio_sent_ms": audio_ms, "at": self._loop.time(),
        })
        await self._send("conversation.item.truncated", item_id=item_id,
                         content_index=content_index, audio_end_ms=audio_end_ms)

    async def _on_response_create(self, event: dict[str, Any]) -> None:
        if "response" in event and event["response"] is not None:
            _require_dict(event["response"], "response")
        if self._active is not None:
            raise _ClientError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self._active.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        await self._start_response("response.create")

    async def _on_response_cancel(self, event: dict[str, Any]) -> None:
        if self._active is None:
            raise _ClientError("response_cancel_not_active",
                               "Cancellation failed: no active response found")
        await self._cancel_response("client_cancelled")

    _handlers: dict[str, Callable[[SimulatedSession, dict[str, Any]], Any]] = {
        "session.update": _on_session_update,
        "input_audio_buffer.append": _on_append,
        "input_audio_buffer.commit": _on_commit,
        "input_audio_buffer.clear": _on_clear_input,
        "output_audio_buffer.clear": _on_clear_output,
        "conversation.item.create": _on_item_create,
        "conversation.item.delete": _on_item_delete,
        "conversation.item.truncate": _on_truncate,
        "response.create": _on_response_create,
        "response.cancel": _on_response_cancel,
    }

    # ---- responses

    def _assistant_item(self, response: SimulatedResponse, status: str) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if status != "in_progress":
            content_type = "output_audio" if self.dialect == "ga" else "audio"
            content = [{"type": content_type, "transcript": self._simulator.transcript_for(response.index)}]
        return {"id": response.item_id, "object": "realtime.item", "type": "message",
                "status": status, "role": "assistant", "content": content}

    def _response_object(self, response: SimulatedResponse, output: list[dict[str, Any]],
                         ) -> dict[str, Any]:
        status_details = None
        if response.status == "cancelled":
            status_details = {"type": "cancelled", "reason": response.reason}
        body: dict[str, Any] = {
            "object": "realtime.response", "id": response.id, "status": response.status,
            "status_details": status_details, "output": output,
            "conversation_id": f"conv_sim{self.index}", "usage": None,
        }
        if self.dialect == "ga":
            body["output_modalities"] = ["audio"]
        else:
            body["modalities"] = ["text", "audio"]
        return body

    async def _start_response(self, trigger: Literal["server_vad", "response.create"]) -> None:
        response = SimulatedResponse(self._next_id("resp"), self._next_id("item"), trigger,
                                     self._loop.time(), index=len(self.responses))
        self._active = response
        self.responses.append(response)
        await self._send("response.created", response=self._response_object(response, []))
        item = self._assistant_item(response, "in_progress")
        await self._send("response.output_item.added", response_id=response.id,
                         output_index=0, item=copy.deepcopy(item))
        await self._add_item(item, self._last_item_id())
        self.item_audio_ms[response.item_id] = 0.0
        await self._send("response.content_part.added", response_id=response.id,
                         item_id=response.item_id, output_index=0, content_index=0,
                         part={"type": "audio", "transcript": ""})
        response._task = asyncio.create_task(self._stream(response))

    def _delta_sizes(self, total: int) -> list[int]:
        codec = self._output_codec
        sizes: list[int] = []
        pattern = _DELTA_SIZE_PATTERN if self._simulator.vary_deltas else (1.0,)
        i = 0
        while sum(sizes) < total:
            ms = self._simulator.delta_ms * pattern[i % len(pattern)]
            samples = max(1, round(ms * codec.rate / 1000))
            sizes.append(min(samples * codec.sample_bytes, total - sum(sizes)))
            i += 1
        return sizes

    async def _stream(self, response: SimulatedResponse) -> None:
        """Send the answer's deltas, paced at ``speed`` times real time, then finish it."""
        codec = self._output_codec
        audio = self._simulator._answer_for(codec, response.index)
        sizes = self._delta_sizes(len(audio))
        transcript = self._simulator.transcript_for(response.index)
        words = transcript.split()
        speed = self._simulator.speed
        started = self._loop.time()
        offset = 0
        for index, size in enumerate(sizes):
            sent_ms = offset / codec.bytes_per_ms
            delay = started + sent_ms / 1000 / speed - self._loop.time() if speed > 0 else 0
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await response._stop.wait()
                except TimeoutError:
                    pass
            if response._stop.is_set():
                return
            chunk = audio[offset:offset + size]
            offset += size
            response.deltas += 1
            response.audio_ms += size / codec.bytes_per_ms
            self.item_audio_ms[response.item_id] = response.audio_ms
            await self._send(self._names["audio_delta"], response_id=response.id,
                             item_id=response.item_id, output_index=0, content_index=0,
                             delta=base64.b64encode(chunk).decode("ascii"))
            first, last = index * len(words) // len(sizes), (index + 1) * len(words) // len(sizes)
            if last > first:
                text = " ".join(words[first:last])
                await self._send(self._names["transcript_delta"], response_id=response.id,
                                 item_id=response.item_id, output_index=0, content_index=0,
                                 delta=text if first == 0 else " " + text)
        if response._stop.is_set():
            return
        await self._finish(response, "completed")

    async def _finish(self, response: SimulatedResponse, status: str,
                      reason: str | None = None) -> None:
        response.status = status
        response.reason = reason
        response.done_at = self._loop.time()
        self._active = None
        ids = {"response_id": response.id, "item_id": response.item_id, "output_index": 0,
               "content_index": 0}
        item_status = "completed" if status == "completed" else "incomplete"
        item = self._assistant_item(response, item_status)
        self.items[response.item_id] = item
        if status == "completed":
            transcript = self._simulator.transcript_for(response.index)
            await self._send(self._names["audio_done"], **ids)
            await self._send(self._names["transcript_done"], **ids,
                             transcript=transcript)
            await self._send("response.content_part.done", **ids,
                             part={"type": "audio", "transcript": transcript})
        await self._send("response.output_item.done", response_id=response.id, output_index=0,
                         item=copy.deepcopy(item))
        if self.dialect == "ga":
            await self._send("conversation.item.done", item=copy.deepcopy(item))
        await self._send("response.done", response=self._response_object(response, [item]))

    async def _cancel_response(self, reason: str) -> None:
        response = self._active
        if response is None:
            return
        response._stop.set()
        if response._task is not None:
            await response._task
        if response.status == "in_progress":
            await self._finish(response, "cancelled", reason)

    async def _halt_streaming(self) -> None:
        response = self._active
        if response is not None and response._task is not None:
            response._stop.set()
            await response._task


# --------------------------------------------------------------------------- the server


class RealtimeSimulator:
    """A websocket server standing in for OpenAI / Azure OpenAI Realtime.

    ``answer_audio`` is PCM16 LE 24 kHz mono that the model "says" in every response (default:
    ``speech_like_pcm16(3000)``); it is sent in deltas of about ``delta_ms`` (varying in size
    unless ``vary_deltas=False``), ``speed`` times faster than real time (``float("inf")`` for
    no pacing). With ``require_key``, handshakes without ``Authorization: Bearer <key>`` or
    ``api-key: <key>`` are refused with HTTP 401 and recorded in ``rejected``. ``dialect``
    forces a dialect for every session; by default it follows each session's path. ``answers``
    scripts a conversation instead: a session's n-th response says the n-th ``(pcm, transcript)``
    (the last one again when they run out).

    Use ``async with RealtimeSimulator() as sim:`` or ``await sim.start()`` / ``await
    sim.stop()``.
    """

    def __init__(
        self,
        *,
        answer_audio: bytes | None = None,
        delta_ms: int = 100,
        speed: float = 4.0,
        require_key: str | None = None,
        dialect: Dialect | None = None,
        transcript: str = DEFAULT_TRANSCRIPT,
        vary_deltas: bool = True,
        answers: Sequence[tuple[bytes, str]] = (),
    ) -> None:
        if dialect not in (None, "ga", "preview"):
            raise ValueError(f"dialect must be 'ga', 'preview' or None, not {dialect!r}")
        if answer_audio is not None and len(answer_audio) % 2:
            raise ValueError("answer_audio must be PCM16: an even number of bytes")
        if delta_ms <= 0:
            raise ValueError("delta_ms must be positive")
        self.answer_audio = speech_like_pcm16(3000) if answer_audio is None else answer_audio
        self.delta_ms = delta_ms
        self.speed = speed
        self.require_key = require_key
        self.dialect: Dialect | None = dialect
        self.transcript = transcript
        self.answers = list(answers)
        self.vary_deltas = vary_deltas
        self.sessions: list[SimulatedSession] = []
        self.rejected: list[dict[str, Any]] = []
        self.host = "127.0.0.1"
        self.port = 0
        self._server: Server | None = None
        self._encoded: dict[tuple[str, int], bytes] = {}
        self._changes: _Changes | None = None

    @property
    def url(self) -> str:
        """The GA-style URL; any other path (and query) is accepted too."""
        return f"ws://{self.host}:{self.port}/v1/realtime"

    @property
    def preview_url(self) -> str:
        """An Azure preview-style URL: sessions opened on it speak the preview dialect."""
        return (f"ws://{self.host}:{self.port}/openai/realtime"
                "?api-version=2024-10-01-preview&deployment=gpt-4o-realtime-preview")

    @property
    def answer_ms(self) -> float:
        """Length of the answer every response carries."""
        return len(self.answer_audio) / _PCM16.bytes_per_ms

    def transcript_for(self, response_index: int) -> str:
        """What the model says in a session's `response_index`-th response (counted from 0)."""
        if self.answers:
            return self.answers[min(response_index, len(self.answers) - 1)][1]
        return self.transcript

    def _answer_for(self, codec: _Codec, response_index: int) -> bytes:
        index = min(response_index, len(self.answers) - 1) if self.answers else 0
        pcm = self.answers[index][0] if self.answers else self.answer_audio
        if (codec.name, index) not in self._encoded:
            self._encoded[codec.name, index] = codec.from_pcm16_24k(pcm)
        return self._encoded[codec.name, index]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._changes = _Changes()
        self._server = await serve(
            self._handle, host, port, process_request=self._check_key,
            max_size=_MAX_MESSAGE_BYTES,
        )
        self.host = host
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every session (code 1001, as a restarting service does) and the listener."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> RealtimeSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def wait_for_session(self, index: int = 0, timeout: float = 5.0) -> SimulatedSession:
        if self._changes is None:
            raise RuntimeError("the simulator is not started")
        return await self._changes.wait_until(
            lambda: self.sessions[index] if len(self.sessions) > index else None, timeout,
            f"session {index}",
        )

    def _check_key(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.require_key is None:
            return None
        headers = request.headers
        if (headers.get("Authorization") == f"Bearer {self.require_key}"
                or headers.get("api-key") == self.require_key):
            return None
        self.rejected.append({"path": request.path, "headers": headers, "status": 401})
        body = json.dumps({"error": {
            "type": "invalid_request_error", "code": "invalid_api_key", "param": None,
            "message": "Incorrect API key provided (simulator).",
        }})
        response = connection.respond(401, body)
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

    async def _handle(self, ws: ServerConnection) -> None:
        session = SimulatedSession(self, ws, len(self.sessions))
        self.sessions.append(session)
        assert self._changes is not None
        self._changes.fire()
        await session.run()


async def serve_forever(host: str = "127.0.0.1", port: int = 8765, **kwargs: Any) -> None:
    """Run a ``RealtimeSimulator`` until cancelled (``telephony-bridge simulate-realtime``)."""
    simulator = RealtimeSimulator(**kwargs)
    await simulator.start(host, port)
    log.info("Realtime simulator listening on %s (GA) and %s (preview)", simulator.url,
             simulator.preview_url)
    try:
        await asyncio.Future()
    finally:
        await simulator.stop()
