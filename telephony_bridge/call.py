"""One phone call's I/O: the Realtime socket, the Media Stream socket, and the controller between them.

Everything here only moves messages: frames are parsed at the edge, handed to the controller,
and the actions it returns are queued to one writer per socket, so each socket sees actions in
exactly the order the controller decided them (a `clear` can never overtake audio sent before it).
The controller decides when to open, replace or close the Realtime session; this module does it.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from typing import Callable, Literal, Protocol

from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from .config import CallProfile, RealtimeEndpoint
from .controller import CallController, CallTimings
from .errors import RealtimeConnectError
from .events import (
    Action,
    AppendAudio,
    ClearTwilio,
    CloseRealtime,
    CloseTwilio,
    EndCall,
    Event,
    OpenRealtime,
    Outcome,
    RealtimeConnected,
    RealtimeDisconnected,
    RealtimeErrorReported,
    SendTwilioMark,
    SendTwilioMedia,
    StreamStarted,
    Tick,
    TwilioDisconnected,
    TwilioMessageRejected,
)
from .logs import CallIds, bind_call, mask_number
from .media_stream import encode_for_twilio, parse_twilio_message
from .realtime import RealtimeEventParser, encode_for_realtime, open_realtime

log = logging.getLogger(__name__)

Direction = Literal["twilio>bridge", "bridge>twilio", "realtime>bridge", "bridge>realtime"]


class CallTap(Protocol):
    """Sees a call's websocket traffic as it crosses the bridge (the call recorder is one).

    Besides every message, it is told when a Realtime session opens and when the service closes or
    drops the session in use: the two socket events the controller reacts to. Closes the bridge
    makes itself (a replaced session, the end of the call) are its own doing and are not reported.
    """

    def __call__(self, direction: Direction, frame: str | bytes) -> None:
        """A message, in either direction on either socket, as it was read or just before it is written."""

    def realtime_opened(self) -> None:
        """A Realtime session opened and is now the call's session."""

    def realtime_lost(self, code: int | None) -> None:
        """The service closed or dropped the call's session; `code` is the close code it sent, None if no close frame came."""


LatencyObserver = Callable[[Literal["caller>model", "model>caller"], float], None]
"""Told, for each frame of audio, the seconds from its arrival at the bridge to its audio leaving."""

TICK_S = 0.5
LOGGED_MALFORMED_MESSAGES = 10
"""Each call logs its first malformed messages, then every hundredth: a flood must not fill the disk."""
MAX_TWILIO_MESSAGES_PER_S = 400
"""Twilio sends 50 media frames a second plus a mark echo for each chunk we send; 400 is far above that."""


class Call:
    """A call the webhook accepted: its Realtime session opens at once, its media socket attaches later."""

    def __init__(
        self,
        call_sid: str,
        called_number: str,
        profile: CallProfile,
        endpoint: RealtimeEndpoint,
        clock: Callable[[], float],
        *,
        caller_number: str = "",
        timings: CallTimings = CallTimings(),
        on_end: Callable[["Call"], None] = lambda call: None,
        tap: CallTap | None = None,
        on_latency: LatencyObserver | None = None,
        mask_caller_number: bool = True,
    ) -> None:
        self.call_sid = call_sid
        self.called_number = called_number
        self.caller_number = caller_number
        self.dialect = endpoint.dialect
        self.model = endpoint.model
        self.answered_at = clock()
        self.duration_s: float | None = None
        """Seconds from the answer to the end, on the call's clock; set when the call has ended."""
        self.controller = CallController(profile, clock, timings)
        self.ended = asyncio.Event()
        self._clock = clock
        self._endpoint = endpoint
        self._parser = RealtimeEventParser(endpoint.dialect)
        self._realtime: ClientConnection | None = None
        self._twilio: WebSocket | None = None
        self._to_realtime: asyncio.Queue[tuple[str, float | None]] = asyncio.Queue()
        self._to_twilio: asyncio.Queue[tuple[str, float | None]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._on_end = on_end
        self._tap = tap
        self._on_latency = on_latency
        self._mask_caller_number = mask_caller_number
        self._log_ids = CallIds(call_sid)

    def begin(self) -> None:
        """Start opening the Realtime session now, while Twilio is still reading the webhook's answer."""
        bind_call(self._log_ids)
        caller = mask_number(self.caller_number) if self._mask_caller_number else self.caller_number
        log.info(
            "call started: %s calling %s",
            caller or "an unknown caller",
            self.called_number,
            extra={"event": "call_started", "from": caller, "to": self.called_number, "dialect": self.dialect},
        )
        self._spawn(self._write_realtime())
        self._spawn(self._tick())
        self._perform(self.controller.start(), None)

    async def run_media(self, websocket: WebSocket, started: StreamStarted, started_frame: str | bytes) -> None:
        """Serve the call's Media Stream until it ends; returns when the call is over."""
        self._log_ids.stream_sid = started.stream_sid
        bind_call(self._log_ids)
        self._twilio = websocket
        self._spawn(self._write_twilio(websocket))
        log.debug("call %s: media stream %s started", self.call_sid, started.stream_sid)
        if self._tap is not None:
            self._tap("twilio>bridge", started_frame)
        self._feed(started, None)
        window_start, messages_in_window = self._clock(), 0
        try:
            while not self.ended.is_set():
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                arrived_at = self._clock()
                if arrived_at - window_start >= 1.0:
                    window_start, messages_in_window = arrived_at, 0
                messages_in_window += 1
                if messages_in_window > MAX_TWILIO_MESSAGES_PER_S:
                    self._feed(TwilioMessageRejected("over the message rate cap"), None)
                    continue
                text = message.get("text")
                frame = text if text is not None else message.get("bytes") or b""
                if self._tap is not None:
                    self._tap("twilio>bridge", frame)
                event = parse_twilio_message(frame)
                if event is not None:
                    self._feed(event, arrived_at)
        except WebSocketDisconnect:
            pass
        finally:
            self._feed(TwilioDisconnected(), None)
            await self.ended.wait()
            await _close_quietly(websocket)

    def end(self, reason: str, outcome: Outcome) -> None:
        """End the call from outside (shutdown, an unclaimed session): both sockets close."""
        self._feed(EndCall(reason, outcome), None)

    def _feed(self, event: Event, arrived_at: float | None) -> None:
        if isinstance(event, TwilioMessageRejected):
            seen = self.controller.stats.malformed_twilio + 1
            if seen <= LOGGED_MALFORMED_MESSAGES or seen % 100 == 0:
                log.warning("call %s: malformed Twilio message (%d so far): %s", self.call_sid, seen, event.reason)
        elif isinstance(event, RealtimeErrorReported):
            log.warning("call %s: the Realtime service reported an error: %s: %s", self.call_sid, event.code, event.message)
        self._perform(self.controller.handle(event), arrived_at)

    def _perform(self, actions: list[Action], arrived_at: float | None) -> None:
        """Queue each action to its socket's writer; `arrived_at` stamps audio for the latency observer."""
        for action in actions:
            if isinstance(action, SendTwilioMedia):
                self._to_twilio.put_nowait((encode_for_twilio(action, self.controller.stream_sid or ""), arrived_at))
            elif isinstance(action, (SendTwilioMark, ClearTwilio)):
                self._to_twilio.put_nowait((encode_for_twilio(action, self.controller.stream_sid or ""), None))
            elif isinstance(action, AppendAudio):
                self._to_realtime.put_nowait((encode_for_realtime(action, self.dialect), arrived_at))
            elif isinstance(action, OpenRealtime):
                self._spawn(self._open_realtime(action))
            elif isinstance(action, (CloseRealtime, CloseTwilio)):
                if not self._closing:
                    self._closing = True
                    self._spawn(self._close(action))
            else:
                self._to_realtime.put_nowait((encode_for_realtime(action, self.dialect), None))

    def _spawn(self, coroutine: object) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self._feed(Tick(), None)

    async def _open_realtime(self, action: OpenRealtime) -> None:
        """Open a session; a session it replaces is closed only once the new one is open."""
        if action.delay_s:
            await asyncio.sleep(action.delay_s)
        try:
            connection = await open_realtime(self._endpoint, action.timeout_s)
        except RealtimeConnectError as error:
            log.error("call %s: %s (%s)", self.call_sid, error, action.reason)
            self._feed(RealtimeDisconnected(str(error), retryable=error.retryable), None)
            return
        replaced, self._realtime = self._realtime, connection
        _drop_queued(self._to_realtime)
        log.debug("call %s: realtime session open (%s dialect; %s)", self.call_sid, self.dialect, action.reason)
        if self._tap is not None:
            self._tap.realtime_opened()
        self._spawn(self._read_realtime(connection))
        if replaced is not None:
            self._spawn(replaced.close(code=1000, reason="session replaced"))
        self._feed(RealtimeConnected(), None)

    async def _read_realtime(self, connection: ClientConnection) -> None:
        reason = "closed by the service"
        try:
            async for frame in connection:
                if self._tap is not None:
                    self._tap("realtime>bridge", frame)
                event = self._parser.parse(frame)
                if event is not None:
                    self._feed(event, self._clock())
        except ConnectionClosed as closed:
            reason = f"connection lost ({closed.rcvd.code if closed.rcvd else 'no close frame'})"
        if connection is self._realtime and not self._closing:
            self._realtime = None
            _drop_queued(self._to_realtime)
            if self._tap is not None:
                received = connection.protocol.close_rcvd
                self._tap.realtime_lost(received.code if received is not None else None)
            log.warning("call %s: realtime session %s", self.call_sid, reason)
            self._feed(RealtimeDisconnected(reason), None)

    async def _write_realtime(self) -> None:
        while True:
            frame, arrived_at = await self._to_realtime.get()
            connection = self._realtime
            if connection is None:
                continue
            if self._tap is not None:
                self._tap("bridge>realtime", frame)
            try:
                await connection.send(frame)
            except ConnectionClosed:
                continue
            if arrived_at is not None and self._on_latency is not None:
                self._on_latency("caller>model", self._clock() - arrived_at)

    async def _write_twilio(self, websocket: WebSocket) -> None:
        try:
            while True:
                frame, arrived_at = await self._to_twilio.get()
                if self._tap is not None:
                    self._tap("bridge>twilio", frame)
                await websocket.send_text(frame)
                if arrived_at is not None and self._on_latency is not None:
                    self._on_latency("model>caller", self._clock() - arrived_at)
        except (WebSocketDisconnect, RuntimeError):
            pass

    async def _close(self, first: CloseRealtime | CloseTwilio) -> None:
        """End the call: both sockets close, the Realtime one at once (it bills by the minute)."""
        log.debug("call %s: ending: %s", self.call_sid, first.reason)
        if self._realtime is not None:
            await self._realtime.close(code=1000, reason="call ended")
        if self._twilio is not None:
            await _drain(self._to_twilio)
            await _close_quietly(self._twilio)
        self.duration_s = self._clock() - self.answered_at
        self.ended.set()
        self._log_summary()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        self._on_end(self)

    def _log_summary(self) -> None:
        """The call's one end line: how it ended and what an operator checks first."""
        stats = self.controller.stats
        latencies = stats.response_latencies_ms
        p50 = round(statistics.median(latencies)) if latencies else None
        log.info(
            "call ended (%s: %s) after %.1f s; frames in %d out %d, barge-ins %d, reconnects %d, response p50 %s ms",
            stats.outcome, stats.end_reason, self.duration_s, stats.frames_in, stats.frames_out,
            stats.barge_ins, stats.reconnects, p50 if p50 is not None else "-",
            extra={
                "event": "call_ended",
                "outcome": stats.outcome,
                "end_reason": stats.end_reason,
                "duration_s": round(self.duration_s or 0.0, 3),
                "frames_in": stats.frames_in,
                "frames_out": stats.frames_out,
                "barge_ins": stats.barge_ins,
                "reconnects": stats.reconnects,
                "malformed_twilio": stats.malformed_twilio,
                "malformed_realtime": stats.malformed_realtime,
                "realtime_errors": dict(stats.realtime_errors),
                "response_latency_p50_ms": p50,
            },
        )


def _drop_queued(queue: asyncio.Queue[tuple[str, float | None]]) -> None:
    """Forget frames meant for a session that is gone: a new session starts from its own configuration."""
    while not queue.empty():
        queue.get_nowait()


async def _drain(queue: asyncio.Queue[tuple[str, float | None]], timeout_s: float = 0.2) -> None:
    """Give a writer a moment to send what is queued before its socket closes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not queue.empty() and loop.time() < deadline:
        await asyncio.sleep(0.005)


async def _close_quietly(websocket: WebSocket) -> None:
    """Close a media socket that may already be closed by either side."""
    try:
        await websocket.close(code=1000)
    except (RuntimeError, WebSocketDisconnect):
        pass
