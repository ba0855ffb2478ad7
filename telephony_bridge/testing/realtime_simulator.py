"""A stand-in for the OpenAI / Azure OpenAI Realtime API, spoken over a real websocket.

Any path is accepted. A session speaks the GA dialect unless its
path carries an ``api-version`` containing ``preview`` (Azure's
``/openai/realtime?api-version=2024-10-01-preview&deployment=...``) or the simulator was made
with ``dialect="preview"``; then it speaks the preview dialect. Every session
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

* Function calling: ``answers`` may hold ``ScriptedAnswer``s whose ``ScriptedCall``s the model
  makes (after the audio, or before it), as the real service streams them; ``tools`` and
  ``tool_choice`` are validated per dialect (``mcp`` tools on GA only), and each session records
  the ``function_call_output``s its client sent.

Not simulated: text-only output, MCP calls (an ``mcp`` tool is accepted, never called),
``idle_timeout_ms``, rate limits, session expiry.

The parts live in their own modules: ``vad`` (speech-like audio and the server VAD),
``session_config`` (what ``session.update`` accepts in each dialect), ``realtime_session`` (one
session's state and record); this module is the server, and re-exports their public names.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from telephony_bridge.config import Dialect
from telephony_bridge.testing.changes import Changes
from telephony_bridge.testing.realtime_session import ScriptedAnswer, ScriptedCall, SimulatedResponse, SimulatedSession
from telephony_bridge.testing.session_config import PCM16, Codec
from telephony_bridge.testing.vad import ServerVad, VadEvent, speech_like_pcm16, vad_level_dbfs

__all__ = [
    "DEFAULT_TRANSCRIPT",
    "RealtimeSimulator",
    "ScriptedAnswer",
    "ScriptedCall",
    "ServerVad",
    "SimulatedResponse",
    "SimulatedSession",
    "VadEvent",
    "serve_forever",
    "speech_like_pcm16",
    "vad_level_dbfs",
]

log = logging.getLogger(__name__)

DEFAULT_TRANSCRIPT = "Hello! This is the simulated assistant. How can I help you today?"

# Azure accepts appends up to 15 MiB; the websockets default of 1 MiB would be stricter.
_MAX_MESSAGE_BYTES = 16 * 2**20


class RealtimeSimulator:
    """A websocket server standing in for OpenAI / Azure OpenAI Realtime.

    ``answer_audio`` is PCM16 LE 24 kHz mono that the model "says" in every response (default:
    ``speech_like_pcm16(3000)``); it is sent in deltas of about ``delta_ms`` (varying in size
    unless ``vary_deltas=False``), ``speed`` times faster than real time (``float("inf")`` for
    no pacing). With ``require_key``, handshakes without ``Authorization: Bearer <key>`` or
    ``api-key: <key>`` are refused with HTTP 401 and recorded in ``rejected``. ``dialect``
    forces a dialect for every session; by default it follows each session's path. ``answers``
    scripts a conversation instead: a session's n-th response does the n-th answer, a
    ``(pcm, transcript)`` or a ``ScriptedAnswer`` that may also call functions (the last one again
    when they run out). A response the client asks for after answering a call does the next one.
    ``vad_response_delay_ms`` puts a gap between ``speech_stopped`` and the response server VAD
    starts, as on the real service; client events sent in the gap are read after it.

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
        answers: Sequence[tuple[bytes, str] | ScriptedAnswer] = (),
        vad_response_delay_ms: float = 0.0,
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
        self.answers = [a if isinstance(a, ScriptedAnswer) else ScriptedAnswer(*a) for a in answers]
        self.vary_deltas = vary_deltas
        self.vad_response_delay_ms = vad_response_delay_ms
        self.sessions: list[SimulatedSession] = []
        self.rejected: list[dict[str, Any]] = []
        self.host = "127.0.0.1"
        self.port = 0
        self._server: Server | None = None
        self._encoded: dict[tuple[str, int], bytes] = {}
        self._changes: Changes | None = None

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
        return len(self.answer_audio) / PCM16.bytes_per_ms

    def scripted_for(self, response_index: int) -> ScriptedAnswer:
        """What the model does in a session's `response_index`-th response (counted from 0)."""
        if self.answers:
            return self.answers[min(response_index, len(self.answers) - 1)]
        return ScriptedAnswer(self.answer_audio, self.transcript)

    def transcript_for(self, response_index: int) -> str:
        """What the model says in a session's `response_index`-th response (counted from 0)."""
        return self.scripted_for(response_index).transcript

    def answer_for(self, codec: Codec, response_index: int) -> bytes:
        """The audio of that response in ``codec``: empty for an answer that only calls functions."""
        index = min(response_index, len(self.answers) - 1) if self.answers else 0
        if (codec.name, index) not in self._encoded:
            self._encoded[codec.name, index] = codec.from_pcm16_24k(self.scripted_for(index).pcm or b"")
        return self._encoded[codec.name, index]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._changes = Changes()
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
