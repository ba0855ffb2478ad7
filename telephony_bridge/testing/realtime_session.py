"""One simulated Realtime session: the conversation state the real service keeps, and a record for tests.

The points a bridge can trip on behave as the real service does:

* ``conversation.item.truncate`` past the audio an item holds is an ``error`` event
  ("Audio content of N ms is already shorter than M ms"); the session goes on.
* Barge-in (server VAD with ``interrupt_response``) cancels the response still being
  *generated*; audio already sent is the bridge's to ``clear`` at Twilio and truncate here.
* A malformed client event earns an ``error`` event, never a close. A GA session opened with the
  retired ``OpenAI-Beta: realtime=v1`` header gets ``beta_api_shape_disabled`` and close code 4000.
* Audio deltas arrive faster than real time (``speed``) and in varying sizes.
* Function calls (scripted with ``ScriptedAnswer``/``ScriptedCall``) stream as ``function_call``
  output items: ``response.output_item.added``, ``response.function_call_arguments.delta`` (one or
  more), ``.done``, ``response.output_item.done``, and again in ``response.done``'s ``output``; the
  event names are the same in both dialects. The model only calls functions the session (or the
  ``response.create``) declared in ``tools``, and none with ``tool_choice`` ``none``. A
  ``function_call_output`` must answer a ``call_id`` the conversation holds.
* A response that sent a call's ``arguments.done`` and is then cut by barge-in still ends
  ``cancelled`` with the call in its ``output``: a client must act only on a ``completed`` one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed

from telephony_bridge.config import Dialect
from telephony_bridge.testing.changes import Changes
from telephony_bridge.testing.session_config import (
    EAGERNESS_SILENCE_MS,
    FIRST_PREVIEW,
    GA_FORMATS,
    PCM16,
    PREVIEW_FORMATS,
    ClientError,
    apply_ga_update,
    apply_preview_update,
    default_session,
    function_names,
    invalid_value,
    is_int,
    missing_parameter,
    require_dict,
    tool_choice,
    tools,
)
from telephony_bridge.testing.vad import ServerVad
from telephony_bridge.wire import SERVER_EVENTS

if TYPE_CHECKING:
    from telephony_bridge.testing.realtime_simulator import RealtimeSimulator

__all__ = ["ScriptedAnswer", "ScriptedCall", "SimulatedResponse", "SimulatedSession"]

# The real service refuses to commit less than this ("buffer too small").
_MIN_COMMIT_MS = 100.0
# Relative sizes of successive deltas: real deltas are not uniform, and a bridge that assumes
# they are (or that each is a whole number of 20 ms frames) should fail here, not in production.
_DELTA_SIZE_PATTERN = (1.0, 0.45, 1.6, 0.8, 1.15)
# Arguments stream in token-sized pieces, so a client that parses each delta as JSON fails here.
_ARGUMENT_DELTA_CHARS = 6


def _first(values: list[str] | None) -> str | None:
    """The first value of a query parameter, if it was given."""
    return values[0] if values else None


@dataclass(frozen=True)
class ScriptedCall:
    """A function the model calls in a scripted answer.

    ``arguments`` go out as JSON; a string goes out as is, to try a client on arguments that are
    not valid JSON. The call follows the answer's audio, as a model says "goodbye" and then hangs
    up, unless ``before_audio``.
    """

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    before_audio: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.arguments, str):
            json.dumps(self.arguments)  # a TypeError now, not in the middle of a test's call

    @property
    def arguments_json(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


@dataclass(frozen=True)
class ScriptedAnswer:
    """What the model does in one response: says ``pcm`` (PCM16 24 kHz; ``None`` for no audio), then calls ``calls``."""

    pcm: bytes | None
    transcript: str = ""
    calls: tuple[ScriptedCall, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "calls", tuple(self.calls))
        if self.pcm is not None and len(self.pcm) % 2:
            raise ValueError("a scripted answer's pcm must be PCM16: an even number of bytes")
        if self.pcm is None and (self.transcript or not self.calls):
            raise ValueError("a scripted answer without audio has no transcript and calls at least one function")


@dataclass
class SimulatedResponse:
    """One model response: how it started, how it ended, how much audio it sent, which functions it called."""

    id: str
    item_id: str | None
    """Its audio message item; ``None`` when the answer only calls functions."""
    trigger: Literal["server_vad", "response.create"]
    created_at: float
    index: int = 0
    """Its place among the session's responses, which picks its answer from ``answers``."""
    status: str = "in_progress"
    reason: str | None = None
    audio_ms: float = 0.0
    deltas: int = 0
    done_at: float | None = None
    audio_index: int = 0
    """The audio item's ``output_index``: after the calls made ``before_audio``."""
    withheld_calls: list[str] = field(default_factory=list)
    """Scripted calls the model did not make: their function was not in ``tools``, or ``tool_choice`` was ``none``."""
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Its output items by id, in ``output_index`` order, each as last sent."""
    _stop: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)


class SimulatedSession:
    """One accepted connection: its state, and a record of everything that happened.

    ``received`` holds every client event that parsed as a JSON object, valid or not; ``sent``
    every server event. ``item_audio_ms`` maps each assistant item to the audio sent for it
    (reduced by a truncate); ``truncates`` lists the truncations that were acknowledged.
    ``function_calls`` maps each ``call_id`` in the conversation (the model's and the client's) to
    its ``function_call`` item; ``function_call_outputs`` maps the ``call_id``s the client answered
    to the output it sent, in order (a second output for a call replaces the first; ``received`` keeps both).
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
        self.api_version = _first(query.get("api-version"))
        if simulator.dialect is not None:
            self.dialect: Dialect = simulator.dialect
        elif any("preview" in v for v in query.get("api-version", [])):
            self.dialect = "preview"
        else:
            self.dialect = "ga"
        model = _first(query.get("model") or query.get("deployment"))
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
        self.function_calls: dict[str, dict[str, Any]] = {}
        self.function_call_outputs: dict[str, str] = {}
        self.config: dict[str, Any] = default_session(self.dialect, f"sess_sim{index}", model)
        self._names = SERVER_EVENTS[self.dialect]
        self._counters: dict[str, int] = {}
        self._changes = Changes()
        self._buffer_ms = 0.0
        self._speech_item_id: str | None = None
        self._active: SimulatedResponse | None = None
        self._input_codec = PCM16
        self._vad = ServerVad()
        self._answered_audio_tokens = 0
        self._answered_text_tokens = 0
        self._last_input_tokens = 0
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

    async def wait_for_function_output(self, call: str, timeout: float = 5.0) -> str:
        """The output the client sent for ``call``: a ``call_id``, or a function's name (its first answered call)."""

        def check() -> str | None:
            for call_id, output in self.function_call_outputs.items():
                if call in (call_id, self.function_calls.get(call_id, {}).get("name")):
                    return output
            if self.closed_at is not None:
                raise TimeoutError(f"session {self.index} closed before an output for {call!r} came")
            return None

        return await self._changes.wait_until(check, timeout, f"a function_call_output for {call!r}")

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
                raise missing_parameter("type")
            handler = self._handlers.get(event_type)
            if handler is None:
                raise ClientError(
                    "invalid_value",
                    f"Invalid value: '{event_type}'. Supported values are: "
                    + ", ".join(f"'{name}'" for name in self._handlers) + ".",
                    "type",
                )
            await handler(self, event)
        except ClientError as error:
            await self._send_error(error.code, error.message, error.param, event_id)

    # ---- client events

    async def _on_session_update(self, event: dict[str, Any]) -> None:
        if "session" not in event:
            raise missing_parameter("session")
        update = require_dict(event["session"], "session")
        if self.dialect == "ga":
            self.config = apply_ga_update(self.config, update)
        else:
            self.config = apply_preview_update(self.config, update, first_preview=self.api_version == FIRST_PREVIEW)
        self._configure_audio()
        await self._send("session.updated", session=copy.deepcopy(self.config))

    def _configure_audio(self) -> None:
        if self.dialect == "ga":
            codec = GA_FORMATS[self.config["audio"]["input"]["format"]["type"]]
            self._output_codec = GA_FORMATS[self.config["audio"]["output"]["format"]["type"]]
        else:
            codec = PREVIEW_FORMATS[self.config["input_audio_format"]]
            self._output_codec = PREVIEW_FORMATS[self.config["output_audio_format"]]
        if codec is not self._input_codec:
            self._input_codec = codec
            self._vad = ServerVad(rate=codec.rate, start_ms=self.input_audio_ms)
        vad = self.turn_detection or {}
        if vad.get("type") == "semantic_vad":
            self._vad.threshold = 0.5
            self._vad.silence_duration_ms = EAGERNESS_SILENCE_MS[vad["eagerness"]]
            self._vad.prefix_padding_ms = 300
        elif vad:
            self._vad.threshold = vad["threshold"]
            self._vad.silence_duration_ms = vad["silence_duration_ms"]
            self._vad.prefix_padding_ms = vad["prefix_padding_ms"]

    async def _on_append(self, event: dict[str, Any]) -> None:
        audio = event.get("audio")
        if audio is None:
            raise missing_parameter("audio")
        if not isinstance(audio, str):
            raise invalid_value("audio", type(audio).__name__, "a base64 string")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise ClientError("invalid_value", "Invalid 'audio'. Expected base64-encoded audio "
                               "bytes.", "audio") from None
        codec = self._input_codec
        if len(data) % codec.sample_bytes:
            raise ClientError("invalid_value", f"Invalid 'audio': {len(data)} bytes is not a "
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
            if self._simulator.vad_response_delay_ms:
                # The service's own answer starts a moment after speech_stopped; what the client sends meanwhile
                # is read only afterwards, so a response.create sent in that gap collides, as it does there.
                await asyncio.sleep(self._simulator.vad_response_delay_ms / 1000)
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
        await self._send(self._names.item_added, previous_item_id=previous,
                         item=copy.deepcopy(item))
        if self.dialect == "ga" and item.get("status") != "in_progress":
            await self._send("conversation.item.done", previous_item_id=previous,
                             item=copy.deepcopy(item))

    def _last_item_id(self) -> str | None:
        return next(reversed(self.items), None)

    async def _on_commit(self, event: dict[str, Any]) -> None:
        if self._buffer_ms < _MIN_COMMIT_MS:
            raise ClientError(
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
            raise missing_parameter("item")
        item = copy.deepcopy(require_dict(event["item"], "item"))
        kind = item.get("type")
        if kind is None:
            raise missing_parameter("item.type")
        if kind not in ("message", "function_call", "function_call_output"):
            raise invalid_value("item.type", kind, "'message', 'function_call' or "
                           "'function_call_output'")
        if kind == "message":
            if item.get("role") not in ("user", "assistant", "system"):
                raise invalid_value("item.role", item.get("role"), "'user', 'assistant' or 'system'")
            if not isinstance(item.get("content"), list):
                raise missing_parameter("item.content")
        elif kind == "function_call_output":
            self._check_function_call_output(item)
        if "id" in item and item["id"] in self.items:
            raise ClientError("invalid_value", f"Item with id '{item['id']}' already exists.",
                               "item.id")
        previous = event.get("previous_item_id", self._last_item_id())
        if previous is not None and previous != "root" and previous not in self.items:
            raise ClientError("invalid_value", f"Previous item with id '{previous}' not found.",
                               "previous_item_id")
        item.setdefault("id", self._next_id("item"))
        item.setdefault("object", "realtime.item")
        item.setdefault("status", "completed")
        if kind == "function_call" and isinstance(item.get("call_id"), str):
            self.function_calls[item["call_id"]] = item
        elif kind == "function_call_output":
            self.function_call_outputs[item["call_id"]] = item["output"]
        await self._add_item(item, previous)

    def _check_function_call_output(self, item: dict[str, Any]) -> None:
        call_id = item.get("call_id")
        if call_id is None:
            raise missing_parameter("item.call_id")
        if not isinstance(call_id, str) or call_id not in self.function_calls:
            raise ClientError("invalid_value", f"Tool call ID '{call_id}' not found in conversation.", "item.call_id")
        if "output" not in item:
            raise missing_parameter("item.output")
        if not isinstance(item["output"], str):
            raise ClientError("invalid_type", "Invalid type for 'item.output': expected a string.", "item.output")

    async def _on_item_delete(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        if not isinstance(item_id, str):
            raise missing_parameter("item_id")
        if item_id not in self.items:
            raise ClientError("invalid_value", f"Item with item_id '{item_id}' not found.",
                               "item_id")
        del self.items[item_id]
        await self._send("conversation.item.deleted", item_id=item_id)

    async def _on_truncate(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        if not isinstance(item_id, str):
            raise missing_parameter("item_id")
        content_index = event.get("content_index")
        if not is_int(content_index):
            raise missing_parameter("content_index")
        audio_end_ms = event.get("audio_end_ms")
        if not is_int(audio_end_ms) or audio_end_ms < 0:
            if audio_end_ms is None:
                raise missing_parameter("audio_end_ms")
            raise invalid_value("audio_end_ms", audio_end_ms, "a non-negative integer")
        item = self.items.get(item_id)
        if item is None:
            raise ClientError("invalid_value", f"Item with item_id '{item_id}' not found.",
                               "item_id")
        if item.get("role") != "assistant" or item_id not in self.item_audio_ms:
            raise ClientError("invalid_value", "Only assistant messages with audio can be "
                               "truncated.", "item_id")
        if content_index != 0:
            raise invalid_value("content_index", content_index, "0")
        audio_ms = self.item_audio_ms[item_id]
        if audio_end_ms > audio_ms:
            shown = int(audio_ms) if audio_ms == int(audio_ms) else round(audio_ms, 1)
            raise ClientError(
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
        overrides: dict[str, Any] = {}
        if "response" in event and event["response"] is not None:
            asked = require_dict(event["response"], "response")
            ga = self.dialect == "ga"
            if "tools" in asked:
                overrides["tools"] = tools(asked["tools"], "response.tools", ga=ga)
            if "tool_choice" in asked:
                declared = overrides.get("tools", self.config["tools"])
                overrides["tool_choice"] = tool_choice(asked["tool_choice"], "response.tool_choice", declared, ga=ga)
        if self._active is not None:
            raise ClientError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self._active.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        await self._start_response("response.create", overrides)

    async def _on_response_cancel(self, event: dict[str, Any]) -> None:
        if self._active is None:
            raise ClientError("response_cancel_not_active",
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

    def _assistant_item(self, response: SimulatedResponse, item_id: str, status: str) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if status != "in_progress":
            content_type = "output_audio" if self.dialect == "ga" else "audio"
            content = [{"type": content_type, "transcript": self._simulator.transcript_for(response.index)}]
        return {"id": item_id, "object": "realtime.item", "type": "message",
                "status": status, "role": "assistant", "content": content}

    def _response_object(self, response: SimulatedResponse, output: list[dict[str, Any]],
                         ) -> dict[str, Any]:
        status_details = None
        if response.status == "cancelled":
            status_details = {"type": "cancelled", "reason": response.reason}
        body: dict[str, Any] = {
            "object": "realtime.response", "id": response.id, "status": response.status,
            "status_details": status_details, "output": output,
            "conversation_id": f"conv_sim{self.index}", "usage": self._usage(response),
        }
        if self.dialect == "ga":
            body["output_modalities"] = ["audio"]
        else:
            body["modalities"] = ["text", "audio"]
        return body

    def _usage(self, response: SimulatedResponse) -> dict[str, Any]:
        """Token usage as the service reports it: input is the whole conversation the model read (instructions, the
        caller's audio so far, its own earlier answers), of which a prefix seen before is cached; output is this
        answer. Rates as OpenAI documents them: caller audio 10 tokens a second, the model's 20, text ~4 characters
        a token, prompt caching from 1,024 tokens in steps of 128."""
        transcript = self._simulator.transcript_for(response.index) if response.item_id is not None else ""
        out_audio = round(response.audio_ms / 50)
        out_text = -(-len(transcript) // 4)
        in_audio = round(self.input_audio_ms / 100) + self._answered_audio_tokens
        in_text = -(-len(str(self.config.get("instructions") or "")) // 4) + self._answered_text_tokens
        cached = self._last_input_tokens // 128 * 128 if self._last_input_tokens >= 1024 else 0
        cached = min(cached, in_audio + in_text)
        cached_text = min(cached, in_text)
        self._last_input_tokens = in_audio + in_text
        self._answered_audio_tokens += out_audio
        self._answered_text_tokens += out_text
        return {
            "total_tokens": in_audio + in_text + out_audio + out_text,
            "input_tokens": in_audio + in_text, "output_tokens": out_audio + out_text,
            "input_token_details": {
                "text_tokens": in_text, "audio_tokens": in_audio, "cached_tokens": cached,
                "cached_tokens_details": {"text_tokens": cached_text, "audio_tokens": cached - cached_text},
            },
            "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio},
        }

    def _callable(self, overrides: dict[str, Any]) -> set[str]:
        """The functions the model may call in a response: those declared, unless ``tool_choice`` rules them out."""
        choice = overrides.get("tool_choice", self.config["tool_choice"])
        if choice == "none":
            return set()
        if isinstance(choice, dict):
            return {choice["name"]} if choice["type"] == "function" else set()
        return function_names(overrides.get("tools", self.config["tools"]))

    async def _start_response(self, trigger: Literal["server_vad", "response.create"],
                              overrides: dict[str, Any] | None = None) -> None:
        """Open a response; what falls at its very start (calls ``before_audio``, the audio item) goes out at once."""
        index = len(self.responses)
        answer = self._simulator.scripted_for(index)
        has_audio = answer.pcm is not None
        response = SimulatedResponse(self._next_id("resp"), self._next_id("item") if has_audio else None, trigger,
                                     self._loop.time(), index=index)
        self._active = response
        self.responses.append(response)
        await self._send("response.created", response=self._response_object(response, []))
        allowed = self._callable(overrides or {})
        calls = [call for call in answer.calls if call.name in allowed]
        response.withheld_calls = [call.name for call in answer.calls if call.name not in allowed]
        first = [call for call in calls if call.before_audio or not has_audio]
        later = [call for call in calls if not (call.before_audio or not has_audio)]
        for call in first:
            await self._call(response, call)
        if response.item_id is not None:
            response.audio_index = len(response.outputs)
            item = self._assistant_item(response, response.item_id, "in_progress")
            response.outputs[response.item_id] = item
            await self._send("response.output_item.added", response_id=response.id,
                             output_index=response.audio_index, item=copy.deepcopy(item))
            await self._add_item(item, self._last_item_id())
            self.item_audio_ms[response.item_id] = 0.0
            await self._send("response.content_part.added", response_id=response.id,
                             item_id=response.item_id, output_index=response.audio_index, content_index=0,
                             part={"type": "audio", "transcript": ""})
        response._task = asyncio.create_task(self._stream(response, later))

    async def _call(self, response: SimulatedResponse, call: ScriptedCall) -> None:
        """Stream one function call as an output item, from ``output_item.added`` to its ``.done``."""
        call_id, item_id = self._next_id("call"), self._next_id("item")
        output_index = len(response.outputs)
        item = {"id": item_id, "object": "realtime.item", "type": "function_call", "status": "in_progress",
                "name": call.name, "call_id": call_id, "arguments": ""}
        response.outputs[item_id] = item
        self.function_calls[call_id] = item
        await self._send("response.output_item.added", response_id=response.id, output_index=output_index,
                         item=copy.deepcopy(item))
        await self._add_item(item, self._last_item_id())
        ids = {"response_id": response.id, "item_id": item_id, "output_index": output_index, "call_id": call_id}
        arguments = call.arguments_json
        for start in range(0, max(len(arguments), 1), _ARGUMENT_DELTA_CHARS):
            await self._send("response.function_call_arguments.delta", **ids,
                             delta=arguments[start:start + _ARGUMENT_DELTA_CHARS])
        await self._send("response.function_call_arguments.done", **ids, name=call.name, arguments=arguments)
        done = {**item, "status": "completed", "arguments": arguments}
        response.outputs[item_id] = done
        self.function_calls[call_id] = done
        if item_id in self.items:
            self.items[item_id] = done
        await self._send("response.output_item.done", response_id=response.id, output_index=output_index,
                         item=copy.deepcopy(done))
        if self.dialect == "ga":
            await self._send("conversation.item.done", item=copy.deepcopy(done))

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

    async def _paced(self, response: SimulatedResponse, started: float, audio_ms: float) -> bool:
        """Wait until ``audio_ms`` into the response at ``speed`` times real time; False if it was stopped."""
        speed = self._simulator.speed
        delay = started + audio_ms / 1000 / speed - self._loop.time() if speed > 0 else 0
        if delay > 0:
            try:
                async with asyncio.timeout(delay):
                    await response._stop.wait()
            except TimeoutError:
                pass
        return not response._stop.is_set()

    async def _stream(self, response: SimulatedResponse, later: list[ScriptedCall]) -> None:
        """Send the answer's deltas, paced at ``speed`` times real time, then the calls that follow, then finish it."""
        if response.item_id is not None:
            codec = self._output_codec
            audio = self._simulator.answer_for(codec, response.index)
            sizes = self._delta_sizes(len(audio))
            words = self._simulator.transcript_for(response.index).split()
            ids = {"response_id": response.id, "item_id": response.item_id, "output_index": response.audio_index,
                   "content_index": 0}
            started = self._loop.time()
            offset = 0
            for index, size in enumerate(sizes):
                if not await self._paced(response, started, offset / codec.bytes_per_ms):
                    return
                chunk = audio[offset:offset + size]
                offset += size
                response.deltas += 1
                response.audio_ms += size / codec.bytes_per_ms
                self.item_audio_ms[response.item_id] = response.audio_ms
                await self._send(self._names.audio_delta, **ids, delta=base64.b64encode(chunk).decode("ascii"))
                first, last = index * len(words) // len(sizes), (index + 1) * len(words) // len(sizes)
                if last > first:
                    text = " ".join(words[first:last])
                    await self._send(self._names.transcript_delta, **ids, delta=text if first == 0 else " " + text)
            if later and not response._stop.is_set():
                # The audio item closes before the next opens; the model generates a call once it has said
                # what comes before it.
                await self._close_audio(response, "completed")
                if not await self._paced(response, started, len(audio) / codec.bytes_per_ms):
                    return
        for call in later:
            if response._stop.is_set():
                return
            await self._call(response, call)
        if response._stop.is_set():
            return
        await self._finish(response, "completed")

    async def _close_audio(self, response: SimulatedResponse, status: str) -> None:
        """End the audio item: whole (with its audio and transcript ``done`` events) or cut short, ``incomplete``."""
        assert response.item_id is not None
        ids = {"response_id": response.id, "item_id": response.item_id, "output_index": response.audio_index,
               "content_index": 0}
        item = self._assistant_item(response, response.item_id, status)
        self.items[response.item_id] = item
        response.outputs[response.item_id] = item
        if status == "completed":
            transcript = self._simulator.transcript_for(response.index)
            await self._send(self._names.audio_done, **ids)
            await self._send(self._names.transcript_done, **ids, transcript=transcript)
            await self._send("response.content_part.done", **ids, part={"type": "audio", "transcript": transcript})
        await self._send("response.output_item.done", response_id=response.id, output_index=response.audio_index,
                         item=copy.deepcopy(item))
        if self.dialect == "ga":
            await self._send("conversation.item.done", item=copy.deepcopy(item))

    async def _finish(self, response: SimulatedResponse, status: str,
                      reason: str | None = None) -> None:
        """End a response; ``response.done`` lists every output item it sent, calls included.

        A call whose ``arguments.done`` went out stays ``completed`` in a cancelled response's output:
        the service already reported the item done and does not revise it (only the audio message cut
        short is ``incomplete``), so the response's own ``cancelled`` status is what tells a client not
        to run it. Calls are sent whole, so none is ever cut halfway.
        """
        response.status = status
        response.reason = reason
        response.done_at = self._loop.time()
        self._active = None
        if response.item_id is not None and response.outputs[response.item_id]["status"] == "in_progress":
            await self._close_audio(response, "completed" if status == "completed" else "incomplete")
        output = [copy.deepcopy(item) for item in response.outputs.values()]
        await self._send("response.done", response=self._response_object(response, output))

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
