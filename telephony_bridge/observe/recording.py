"""Call recordings: every frame of a call, written as the call goes, read back for export and replay.

One JSON Lines file per call (docs/recording-format.md). Line 1 is a header (the call, the
number's effective profile, the bridge version and dialect); every later line is one websocket
frame with its direction and the milliseconds since the call was answered, or (from version 2) a
Realtime session opening or being lost, so a call whose session was replaced replays too. The file is
line-buffered, so a bridge that crashes leaves a file readable up to its last whole line, and a
disk that fails stops that call's recording (logged once), never the call.

No disk write runs on the event loop that carries every live call's audio: a call's tap only
stamps each frame and queues it; one writer thread (`RecordingWriter`) parses, scrubs, writes and
opens the files. Its queue is bounded (`MAX_QUEUED_LINES`, about 15 s of 20 recorded calls' frames):
a recording whose lines cannot be queued is cut there rather than let the backlog grow. A recording
is also cut at `[recording] max_megabytes` (one flooding call wrote 130 MB in 7 s). A cut recording
ends with a line that says so, and reads back as a call that was cut.

Recordings hold callers' voices, so recording is opt-in per number, and `redact` writes every
audio payload as silence of the same length: the timing and shape of the call survive, the voice
does not. Secrets never reach the file: the API key and the auth token travel in HTTP headers the
tap never sees, and the stream token in `start.customParameters` is replaced by "<redacted>".

A recording of a call to Twilio is also its audio: `export_wav` lays both sides out on the call's
timeline, the caller on the left and what the caller heard on the right.
"""

from __future__ import annotations

import audioop
import base64
import binascii
import functools
import json
import logging
import os
import queue
import re
import threading
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO, get_args

import numpy as np

from telephony_bridge import __version__
from telephony_bridge.call.call_control import Dialled
from telephony_bridge.call.pump import Direction
from telephony_bridge.call.summary import CallSummary
from telephony_bridge.config import CallProfile, Dialect
from telephony_bridge.errors import RecordingError
from telephony_bridge.twilio.webhook import STREAM_TOKEN_PARAMETER
from telephony_bridge.wire import MODEL_AUDIO_DELTAS, ULAW_BYTES_PER_MS, ULAW_RATE_HZ, ULAW_SILENCE, loads

log = logging.getLogger(__name__)

FORMAT = "telephony-bridge-recording"
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
"""Version 1 has no socket lines, version 2 no `twilio-callback` lines nor `outbound` header; they read the same otherwise."""
REDACTED = "<redacted>"
DIRECTIONS: tuple[Direction, ...] = get_args(Direction)
SocketState = Literal["open", "closed"]
CutReason = Literal["max_bytes", "backlog"]
"""Why a recording stopped before its call did: it reached `max_megabytes`, or the disk fell too far behind."""

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
"""A recorded call writes about 130 KB a second: 50 MB is six minutes and a half."""
MAX_QUEUED_LINES = 50_000
"""Lines waiting for the writer thread across all calls: a recorded call makes about 150 a second."""

PCM_SILENCE = 0x00
_UNSAFE_IN_FILE_NAMES = re.compile(r"[^A-Za-z0-9_-]")


def _audio_field(direction: Direction, message: Any) -> tuple[dict[str, Any], str, int] | None:
    """Where a message carries base64 audio: (the object holding it, its key, the byte of silence)."""
    if not isinstance(message, dict):
        return None
    if direction in ("twilio>bridge", "bridge>twilio"):
        media = message.get("media")
        if message.get("event") == "media" and isinstance(media, dict) and isinstance(media.get("payload"), str):
            return media, "payload", ULAW_SILENCE
        return None
    kind = message.get("type")
    if direction == "bridge>realtime" and kind == "input_audio_buffer.append" and isinstance(message.get("audio"), str):
        return message, "audio", PCM_SILENCE
    if direction == "realtime>bridge" and kind in MODEL_AUDIO_DELTAS and isinstance(message.get("delta"), str):
        return message, "delta", PCM_SILENCE
    return None


@functools.lru_cache(maxsize=64)
def _silence_base64(fill: int, length: int) -> str:
    return base64.b64encode(bytes([fill]) * length).decode("ascii")


def _scrub(direction: Direction, message: Any, redact: bool) -> Any:
    """Hide the stream token and, with `redact`, the audio; `message` is a fresh parse, changed in place."""
    if direction == "twilio>bridge" and isinstance(message, dict) and message.get("event") == "start":
        start = message.get("start")
        parameters = start.get("customParameters") if isinstance(start, dict) else None
        if isinstance(parameters, dict) and STREAM_TOKEN_PARAMETER in parameters:
            parameters[STREAM_TOKEN_PARAMETER] = REDACTED
    if direction in ("bridge>realtime", "realtime>bridge") and isinstance(message, dict) and "session" in message:
        _scrub_mcp_headers(message)
    if redact:
        field = _audio_field(direction, message)
        if field is not None:
            holder, key, fill = field
            try:
                length = len(base64.b64decode(holder[key], validate=True))
            except (binascii.Error, ValueError):
                holder[key] = REDACTED
            else:
                holder[key] = _silence_base64(fill, length)
    return message


def _scrub_mcp_headers(message: dict[str, Any]) -> None:
    """An MCP server's header values (its token) travel in `session.update` (and the service's echo of the session):
    the recording keeps only their names."""
    session = message.get("session")
    tools = session.get("tools") if isinstance(session, dict) else None
    for tool in tools if isinstance(tools, list) else []:
        headers = tool.get("headers") if isinstance(tool, dict) else None
        if isinstance(headers, dict):
            tool["headers"] = dict.fromkeys(headers, REDACTED)


def frame_line(t_ms: float, direction: Direction, frame: str | bytes, *, redact: bool) -> str:
    """One line of a recording: the frame parsed as JSON, or as `raw` text (base64 with `binary`) if it is not JSON."""
    entry: dict[str, Any] = {"t": round(t_ms, 2), "dir": direction}
    if isinstance(frame, bytes):
        data = bytes(len(frame)) if redact else frame
        entry.update(raw=base64.b64encode(data).decode("ascii"), binary=True)
        return json.dumps(entry, separators=(",", ":")) + "\n"
    try:
        entry["msg"] = _scrub(direction, loads(frame), redact)
        return json.dumps(entry, separators=(",", ":"), allow_nan=False) + "\n"
    except (ValueError, RecursionError):
        entry.pop("msg", None)
        entry["raw"] = frame
        return json.dumps(entry, separators=(",", ":")) + "\n"


def socket_line(t_ms: float, state: SocketState, code: int | None = None) -> str:
    """A lifecycle line of the Realtime socket: a session opened, or the service closed or dropped it (with its close code)."""
    entry: dict[str, Any] = {"t": round(t_ms, 2), "dir": "realtime>bridge", "socket": state}
    if state == "closed":
        entry["code"] = code
    return json.dumps(entry, separators=(",", ":")) + "\n"


def cut_line(t_ms: float, reason: CutReason, limit_bytes: int) -> str:
    """The last line of a recording stopped before its call ended: when, and why."""
    return json.dumps({"t": round(t_ms, 2), "cut": reason, "max_bytes": limit_bytes}, separators=(",", ":")) + "\n"


def header(
    call_sid: str, called_number: str, profile: CallProfile, dialect: Dialect, started_at: datetime,
    dialled: Dialled | None = None,
) -> dict[str, Any]:
    """The first line of a recording: what a replay needs to set the bridge up as it was.

    A call the bridge placed has `outbound`: whom it dialled and the context its placeholders were filled
    from (`called_number` is then the bridge's number the call came from), so a replay places it again.
    """
    first: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "call_sid": call_sid,
        "called_number": called_number,
        "config": profile.model_dump(mode="json"),
        "bridge_version": __version__,
        "dialect": dialect,
        "started_at": started_at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "redacted": profile.redact,
    }
    if dialled is not None:
        first["outbound"] = {"to": dialled.callee, "context": dict(dialled.context)}
    return first


class RecordingWriter:
    """The thread that does every recording's disk work, in the order the calls queued it.

    Frames take a place in a bounded queue (`try_queue` says when there is none left); opening and
    closing a file always get through, so a recording is closed even when its frames were not.
    """

    def __init__(self, max_queued_lines: int = MAX_QUEUED_LINES) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._room = threading.Semaphore(max_queued_lines)
        self._thread = threading.Thread(target=self._run, name="call-recordings", daemon=True)
        self._thread.start()

    def try_queue(self, job: Callable[[], None]) -> bool:
        """Queue a frame's job if the queue has room; never blocks."""
        if not self._room.acquire(blocking=False):
            return False
        self._jobs.put(functools.partial(self._run_frame, job))
        return True

    def queue(self, job: Callable[[], None]) -> None:
        """Queue opening or closing a file: these are never refused."""
        self._jobs.put(job)

    def close(self, timeout_s: float = 5.0) -> None:
        """Finish what is queued (for up to `timeout_s`), then stop the thread."""
        self._jobs.put(None)
        self._thread.join(timeout_s)

    def _run_frame(self, job: Callable[[], None]) -> None:
        try:
            job()
        finally:
            self._room.release()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:  # one recording's bug must not stop every other recording
                log.exception("a recording job failed")


class CallRecorder:
    """One call's recording: the call tells it every frame and socket event (its `CallTap`); `writer` writes them.

    On the event loop it only stamps and queues; the file is opened, written and closed on the
    writer's thread, and only there is `_file` touched.
    """

    def __init__(
        self,
        writer: RecordingWriter,
        open_file: Callable[[], TextIO],
        first_line: dict[str, Any],
        clock: Callable[[], float],
        *,
        redact: bool,
        max_bytes: int,
        name: str = "",
    ) -> None:
        self.name = name
        self._writer = writer
        self._clock = clock
        self._started_at = clock()
        self._redact = redact
        self._max_bytes = max_bytes
        self._stopped = False
        """Set on the loop (the queue was full, or the call ended) or by the writer (a cut, a failed disk): no more lines."""
        self._file: TextIO | None = None
        self._written = 0
        writer.queue(functools.partial(self._open, open_file, json.dumps(first_line, separators=(",", ":")) + "\n"))

    @property
    def recording(self) -> bool:
        return not self._stopped

    def __call__(self, direction: Direction, frame: str | bytes) -> None:
        if not self._stopped:
            t_ms = self._elapsed_ms()
            self._queue(t_ms, functools.partial(frame_line, t_ms, direction, frame, redact=self._redact))

    def realtime_opened(self) -> None:
        if not self._stopped:
            t_ms = self._elapsed_ms()
            self._queue(t_ms, functools.partial(socket_line, t_ms, "open"))

    def realtime_lost(self, code: int | None) -> None:
        if not self._stopped:
            t_ms = self._elapsed_ms()
            self._queue(t_ms, functools.partial(socket_line, t_ms, "closed", code))

    def close(self) -> None:
        """The call ended: close the file once what is queued is written."""
        self._stopped = True
        self._writer.queue(self._close)

    def _elapsed_ms(self) -> float:
        return (self._clock() - self._started_at) * 1000.0

    def _queue(self, t_ms: float, line: Callable[[], str]) -> None:
        """Queue a line, built on the writer's thread; with no room left, the recording is cut here."""
        if not self._writer.try_queue(functools.partial(self._write, t_ms, line)):
            self._stopped = True
            self._writer.queue(functools.partial(self._cut, t_ms, "backlog"))

    # On the writer's thread.

    def _open(self, open_file: Callable[[], TextIO], first_line: str) -> None:
        try:
            self._file = open_file()
            self.name = self._file.name
            self._file.write(first_line)
        except OSError as error:
            self._stop(error)
            return
        self._written = len(first_line)

    def _write(self, t_ms: float, line: Callable[[], str]) -> None:
        if self._file is None:
            return
        text = line()
        if self._written + len(text) > self._max_bytes:
            self._cut(t_ms, "max_bytes")
            return
        try:
            self._file.write(text)
        except OSError as error:
            self._stop(error)
            return
        self._written += len(text)

    def _cut(self, t_ms: float, reason: CutReason) -> None:
        if self._file is None:
            return
        self._stopped = True
        log.warning("recording %s cut after %d bytes (%s); the call goes on unrecorded", self.name, self._written, reason)
        try:
            self._file.write(cut_line(t_ms, reason, self._max_bytes))
        except OSError as error:
            self._stop(error)
            return
        self._close()

    def _close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as error:
                log.error("recording %s may be incomplete: %s", self.name, error)
            self._file = None

    def _stop(self, error: OSError) -> None:
        self._stopped = True
        if self._file is None:
            log.error("call recording %s could not start; the call is not recorded (the call goes on): %s", self.name, error)
            return
        log.error("recording %s stopped (the call goes on): %s", self.name, error)
        try:
            self._file.close()
        except OSError:
            pass
        self._file = None


def _owner_only(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def _create(path: Path) -> TextIO:
    """Open a new line-buffered file only its owner can read, never an existing one.

    A second recording of the same call gets a numbered name.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    for number in range(1, 100):
        candidate = path if number == 1 else path.with_name(f"{path.stem}-{number}{path.suffix}")
        try:
            return open(candidate, "x", encoding="utf-8", buffering=1, opener=_owner_only)
        except FileExistsError:
            continue
    raise FileExistsError(f"{path} and 98 numbered variants exist")


class CallRecordings:
    """Starts a recorder for each call to a number with `record = true` and closes it when the call ends.

    Its `tap_for` and `call_ended` are the switchboard's hooks.
    """

    def __init__(
        self,
        folder: Path,
        dialect: Dialect,
        clock: Callable[[], float],
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.folder = folder
        self._dialect = dialect
        self._clock = clock
        self._wall_clock = wall_clock
        self._max_bytes = max_bytes
        self._recorders: dict[str, CallRecorder] = {}
        self._writer = RecordingWriter()

    def tap_for(
        self, call_sid: str, called_number: str, profile: CallProfile, dialled: Dialled | None = None
    ) -> CallRecorder | None:
        if not profile.record:
            return None
        started_at = self._wall_clock()
        name = f"{started_at.astimezone(UTC):%Y%m%dT%H%M%S}-{_UNSAFE_IN_FILE_NAMES.sub('_', call_sid)}.jsonl"
        first_line = header(call_sid, called_number, profile, self._dialect, started_at, dialled)
        recorder = CallRecorder(
            self._writer, functools.partial(_create, self.folder / name), first_line, self._clock,
            redact=profile.redact, max_bytes=self._max_bytes, name=name,
        )
        previous = self._recorders.pop(call_sid, None)
        if previous is not None:
            previous.close()
        self._recorders[call_sid] = recorder
        return recorder

    def call_ended(self, summary: CallSummary) -> None:
        recorder = self._recorders.pop(summary.call_sid, None)
        if recorder is not None:
            recorder.close()

    def close(self, timeout_s: float = 5.0) -> None:
        """Write and close what the ended calls queued (for up to `timeout_s`); blocks, so run it off the loop."""
        for recorder in self._recorders.values():
            recorder.close()
        self._recorders.clear()
        self._writer.close(timeout_s)


# Reading recordings back.


@dataclass(frozen=True)
class RealtimeSocketChange:
    """A socket line (version 2): a Realtime session opened, or the service closed or dropped the one in use."""

    t_ms: float
    state: SocketState
    code: int | None
    """The close code the service sent; `None` for an open, or a connection lost without a close frame."""
    position: int
    """How many frames precede it in the recording: where it falls among them when two share a `t`."""


@dataclass(frozen=True)
class RecordingCut:
    """The last line of a recording stopped before its call ended; nothing after `t_ms` was recorded."""

    t_ms: float
    reason: str
    """`max_bytes` (it reached `max_megabytes`) or `backlog` (the disk fell behind); another bridge may say more."""


@dataclass(frozen=True)
class RecordedFrame:
    """One line after the header: a frame as the bridge sent or received it."""

    t_ms: float
    direction: Direction
    message: Any
    """The parsed JSON message; `None` for a frame that was not JSON (see `raw`)."""
    raw: str | bytes | None = None

    @property
    def kind(self) -> str:
        """The Twilio `event`, Realtime `type`, REST or callback `kind`; "raw" for a frame that is not a JSON object with one."""
        if isinstance(self.message, dict):
            key = {"twilio>bridge": "event", "bridge>twilio": "event", "twilio-rest": "kind",
                   "twilio-callback": "kind"}.get(self.direction, "type")
            kind = self.message.get(key)
            if isinstance(kind, str):
                return kind
        return "raw"

    def wire_frame(self) -> str | bytes:
        """The frame as it crossed the socket (JSON re-serialised: equal as JSON, not byte for byte)."""
        if self.raw is not None:
            return self.raw
        return json.dumps(self.message, separators=(",", ":"))

    def audio(self) -> bytes | None:
        """The decoded audio it carries (μ-law 8 kHz on the Twilio side, PCM16 24 kHz on the Realtime side), if any."""
        field = _audio_field(self.direction, self.message)
        if field is None:
            return None
        holder, key, _ = field
        try:
            return base64.b64decode(holder[key], validate=True)
        except (binascii.Error, ValueError):
            return None


@dataclass(frozen=True)
class RecordedDial:
    """The header's `outbound`: the call was placed by the bridge, to `callee`, its placeholders filled from `context`."""

    callee: str
    context: dict[str, str]


@dataclass(frozen=True)
class RecordedCall:
    path: Path
    header: dict[str, Any]
    frames: list[RecordedFrame]
    socket_changes: list[RealtimeSocketChange] = field(default_factory=list)
    """Empty for version 1, which did not record them."""
    cut: RecordingCut | None = None
    """Set when the bridge stopped recording before the call ended: the call went on past its last frame."""

    def timeline(self) -> list[RecordedFrame | RealtimeSocketChange]:
        """Frames and socket changes in the order the bridge saw them (the file's order)."""
        merged: list[RecordedFrame | RealtimeSocketChange] = []
        changes = iter(self.socket_changes)
        change = next(changes, None)
        for index, frame in enumerate(self.frames):
            while change is not None and change.position <= index:
                merged.append(change)
                change = next(changes, None)
            merged.append(frame)
        if change is not None:
            merged += [change, *changes]
        return merged

    @property
    def call_sid(self) -> str:
        return str(self.header["call_sid"])

    @property
    def called_number(self) -> str:
        return str(self.header["called_number"])

    @property
    def dialect(self) -> Dialect:
        return self.header["dialect"]

    @property
    def outbound(self) -> RecordedDial | None:
        """For a call the bridge placed (version 3): whom it dialled and with what context; `None` for a call it answered."""
        placed = self.header.get("outbound")
        if not isinstance(placed, dict):
            return None
        context = placed.get("context")
        items = context.items() if isinstance(context, dict) else ()
        return RecordedDial(str(placed.get("to", "")), {str(key): str(value) for key, value in items})

    @property
    def duration_ms(self) -> float:
        last = [entries[-1].t_ms for entries in (self.frames, self.socket_changes) if entries]
        return max(last, default=0.0)

    def profile(self) -> CallProfile:
        """The number's profile as it was recorded; `RecordingError` if this bridge no longer accepts it."""
        try:
            return CallProfile.model_validate(self.header["config"])
        except ValueError as error:
            raise RecordingError(str(self.path), f"the recorded config is not valid here: {error}") from None


def read_recording(path: Path) -> RecordedCall:
    """Read a recording; a last line cut short (the bridge crashed mid-write) is skipped."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as error:
        raise RecordingError(str(path), f"cannot be read: {error}") from None
    if lines and lines[-1] == "":
        lines.pop()
    elif len(lines) > 1 and not _is_json(lines[-1]):
        lines.pop()
    if not lines:
        raise RecordingError(str(path), "empty: no header line")
    try:
        first = json.loads(lines[0])
    except ValueError:
        raise RecordingError(str(path), "line 1 is not JSON: not a recording") from None
    if not isinstance(first, dict) or first.get("format") != FORMAT:
        raise RecordingError(str(path), f"line 1 is not a {FORMAT} header")
    if first.get("version") not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise RecordingError(str(path), f"format version {first.get('version')!r}; this bridge reads versions {readable}")
    for key in ("call_sid", "called_number", "config", "dialect"):
        if key not in first:
            raise RecordingError(str(path), f"the header has no {key!r}")
    frames: list[RecordedFrame] = []
    socket_changes: list[RealtimeSocketChange] = []
    cut: RecordingCut | None = None
    for number, line in enumerate(lines[1:], start=2):
        if cut is not None:
            raise RecordingError(str(path), f"line {number}: a line after the line that says the recording was cut")
        entry = _line(path, number, line, len(frames))
        if isinstance(entry, RecordedFrame):
            frames.append(entry)
        elif isinstance(entry, RecordingCut):
            cut = entry
        else:
            socket_changes.append(entry)
    return RecordedCall(path, first, frames, socket_changes, cut)


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _line(path: Path, number: int, line: str, position: int) -> RecordedFrame | RealtimeSocketChange | RecordingCut:
    try:
        entry = json.loads(line)
        if "cut" in entry:
            return RecordingCut(float(entry["t"]), str(entry["cut"]))
        t_ms, direction = float(entry["t"]), entry["dir"]
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}")
        if "socket" in entry:
            return _socket_change(t_ms, direction, entry, position)
        if "msg" in entry:
            return RecordedFrame(t_ms, direction, entry["msg"])
        raw = entry["raw"]
        if entry.get("binary"):
            return RecordedFrame(t_ms, direction, None, base64.b64decode(raw, validate=True))
        return RecordedFrame(t_ms, direction, None, str(raw))
    except (ValueError, KeyError, TypeError, binascii.Error) as error:
        raise RecordingError(str(path), f"line {number}: not a frame line ({type(error).__name__}: {error})") from None


def _socket_change(t_ms: float, direction: Direction, entry: dict[str, Any], position: int) -> RealtimeSocketChange:
    state, code = entry["socket"], entry.get("code")
    if direction != "realtime>bridge" or state not in get_args(SocketState):
        raise ValueError(f"unknown socket line {direction!r} {state!r}")
    if code is not None and (not isinstance(code, int) or isinstance(code, bool)):
        raise ValueError(f"close code {code!r} is not a number")
    return RealtimeSocketChange(t_ms, state, code, position)


# The call's audio as a WAV file.


def stereo_pcm8k(call: RecordedCall) -> tuple[np.ndarray, np.ndarray]:
    """Both sides of the call as 8 kHz PCM16 on the recording's timeline: (caller, what the caller heard).

    The caller's frames sit at their Twilio `timestamp` (the stream's own audio clock), aligned to
    the recording by the first one. The bridge's audio plays as Twilio plays it: in order, each
    chunk from when it was sent or when the one before it ends, whichever is later; a `clear`
    drops whatever had not played by then.
    """
    caller: list[tuple[int, bytes]] = []
    heard: list[tuple[int, bytes]] = []
    offset_ms: float | None = None
    caller_end = play_end = 0
    for frame in call.frames:
        if frame.direction == "twilio>bridge" and frame.kind == "media":
            audio = frame.audio()
            if audio is None or frame.message["media"].get("track", "inbound") != "inbound":
                continue
            stamp = _number(frame.message["media"].get("timestamp"))
            if stamp is None:
                start = max(caller_end, round(frame.t_ms * ULAW_BYTES_PER_MS))
            else:
                if offset_ms is None:
                    offset_ms = frame.t_ms - stamp
                start = round((stamp + offset_ms) * ULAW_BYTES_PER_MS)
            caller.append((start, audio))
            caller_end = start + len(audio)
        elif frame.direction == "bridge>twilio" and frame.kind == "media":
            audio = frame.audio()
            if audio is None:
                continue
            start = max(play_end, round(frame.t_ms * ULAW_BYTES_PER_MS))
            heard.append((start, audio))
            play_end = start + len(audio)
        elif frame.direction == "bridge>twilio" and frame.kind == "clear":
            cleared_at = round(frame.t_ms * ULAW_BYTES_PER_MS)
            heard = [(start, audio[: max(0, cleared_at - start)]) for start, audio in heard if start < cleared_at]
            play_end = min(play_end, cleared_at)
    length = max(
        round(call.duration_ms * ULAW_BYTES_PER_MS),
        *(start + len(audio) for start, audio in caller + heard),
        0,
    )
    return _lay_out(caller, length), _lay_out(heard, length)


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _lay_out(pieces: list[tuple[int, bytes]], length: int) -> np.ndarray:
    track = np.zeros(length, dtype="<i2")
    for start, ulaw in pieces:
        if start < 0 or not ulaw:
            continue
        samples = np.frombuffer(audioop.ulaw2lin(ulaw, 2), dtype="<i2")
        track[start : start + len(samples)] = samples[: max(0, length - start)]
    return track


def write_stereo_wav8k(path: Path, left: np.ndarray, right: np.ndarray) -> None:
    """Two equally long 8 kHz PCM16 tracks as one stereo WAV file."""
    stereo = np.empty(2 * len(left), dtype="<i2")
    stereo[0::2], stereo[1::2] = left, right
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(ULAW_RATE_HZ)
        wav.writeframes(stereo.tobytes())


def export_wav(call: RecordedCall, path: Path) -> float:
    """Write the call as a stereo 8 kHz 16-bit WAV (left: the caller; right: what they heard); returns its seconds."""
    caller, heard = stereo_pcm8k(call)
    write_stereo_wav8k(path, caller, heard)
    return len(caller) / ULAW_RATE_HZ
