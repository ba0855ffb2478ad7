"""One phone call's I/O: the Realtime socket, the Media Stream socket, and the controller between them.

Everything here only moves messages: frames are parsed at the edge, handed to the controller,
and the actions it returns are queued to one writer per socket, so each socket sees actions in
exactly the order the controller decided them (a `clear` can never overtake audio sent before it).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Literal

from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from .config import CallProfile, RealtimeEndpoint
from .controller import CallController
from .errors import RealtimeConnectError
from .events import (
    Action,
    ClearTwilio,
    CloseRealtime,
    CloseTwilio,
    EndCall,
    RealtimeConnected,
    RealtimeDisconnected,
    SendTwilioMark,
    SendTwilioMedia,
    StreamStarted,
    TwilioDisconnected,
    TwilioMessageRejected,
)
from .media_stream import encode_for_twilio, parse_twilio_message
from .realtime import RealtimeEventParser, encode_for_realtime, open_realtime

log = logging.getLogger(__name__)

Direction = Literal["twilio>bridge", "bridge>twilio", "realtime>bridge", "bridge>realtime"]
FrameTap = Callable[[Direction, "str | bytes"], None]
"""Sees every websocket message of a call as it crosses the bridge (the call recorder is one)."""

REALTIME_CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 1.0


class Call:
    """A call the webhook accepted: its Realtime session opens at once, its media socket attaches later."""

    def __init__(
        self,
        call_sid: str,
        called_number: str,
        profile: CallProfile,
        endpoint: RealtimeEndpoint,
        clock: Callable[[], float],
        on_end: Callable[["Call"], None] = lambda call: None,
        tap: FrameTap | None = None,
    ) -> None:
        self.call_sid = call_sid
        self.called_number = called_number
        self.controller = CallController(profile, clock)
        self.ended = asyncio.Event()
        self._endpoint = endpoint
        self._parser = RealtimeEventParser(endpoint.dialect)
        self._realtime: ClientConnection | None = None
        self._twilio: WebSocket | None = None
        self._to_realtime: asyncio.Queue[str] = asyncio.Queue()
        self._to_twilio: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._on_end = on_end
        self._tap = tap

    def begin(self) -> None:
        """Start opening the Realtime session now, while Twilio is still reading the webhook's answer."""
        self._spawn(self._run_realtime())
        self._perform(self.controller.start())

    async def run_media(self, websocket: WebSocket, started: StreamStarted, started_frame: str) -> None:
        """Serve the call's Media Stream until it ends; returns when the call is over."""
        self._twilio = websocket
        self._spawn(self._write_twilio(websocket))
        log.info("call %s: media stream %s started", self.call_sid, started.stream_sid)
        if self._tap is not None:
            self._tap("twilio>bridge", started_frame)
        self._feed(started)
        try:
            while not self.ended.is_set():
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                frame = text if text is not None else message.get("bytes") or b""
                if self._tap is not None:
                    self._tap("twilio>bridge", frame)
                event = parse_twilio_message(frame)
                if event is not None:
                    self._feed(event)
        except WebSocketDisconnect:
            pass
        finally:
            self._feed(TwilioDisconnected())
            await self.ended.wait()
            await _close_quietly(websocket)

    def end(self, reason: str) -> None:
        """End the call from outside (shutdown, an unclaimed session): both sockets close."""
        self._feed(EndCall(reason))

    def _feed(self, event: object) -> None:
        if isinstance(event, TwilioMessageRejected):
            log.warning("call %s: malformed Twilio message: %s", self.call_sid, event.reason)
        self._perform(self.controller.handle(event))  # type: ignore[arg-type]

    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, (SendTwilioMedia, SendTwilioMark, ClearTwilio)):
                self._to_twilio.put_nowait(encode_for_twilio(action, self.controller.stream_sid or ""))
            elif isinstance(action, (CloseRealtime, CloseTwilio)):
                if not self._closing:
                    self._closing = True
                    self._spawn(self._close(action))
            else:
                self._to_realtime.put_nowait(encode_for_realtime(action, self._endpoint.dialect))

    def _spawn(self, coroutine: object) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_realtime(self) -> None:
        try:
            self._realtime = await open_realtime(self._endpoint, REALTIME_CONNECT_TIMEOUT_S)
        except RealtimeConnectError as error:
            log.error("call %s: %s", self.call_sid, error)
            self._feed(RealtimeDisconnected(str(error)))
            return
        log.info("call %s: realtime session open (%s dialect)", self.call_sid, self._endpoint.dialect)
        self._spawn(self._write_realtime(self._realtime))
        self._feed(RealtimeConnected())
        reason = "closed by the service"
        try:
            async for frame in self._realtime:
                if self._tap is not None:
                    self._tap("realtime>bridge", frame)
                event = self._parser.parse(frame)
                if event is not None:
                    self._feed(event)
        except ConnectionClosed as closed:
            reason = f"connection lost ({closed.rcvd.code if closed.rcvd else 'no close frame'})"
        self._feed(RealtimeDisconnected(reason))

    async def _write_realtime(self, connection: ClientConnection) -> None:
        try:
            while True:
                frame = await self._to_realtime.get()
                if self._tap is not None:
                    self._tap("bridge>realtime", frame)
                await connection.send(frame)
        except ConnectionClosed:
            pass

    async def _write_twilio(self, websocket: WebSocket) -> None:
        try:
            while True:
                frame = await self._to_twilio.get()
                if self._tap is not None:
                    self._tap("bridge>twilio", frame)
                await websocket.send_text(frame)
        except (WebSocketDisconnect, RuntimeError):
            pass

    async def _close(self, first: CloseRealtime | CloseTwilio) -> None:
        """End the call: both sockets close, the Realtime one at once (it bills by the minute)."""
        log.info("call %s: ending: %s", self.call_sid, first.reason)
        if self._realtime is not None:
            await self._realtime.close(code=1000, reason="call ended")
        if self._twilio is not None:
            await _drain(self._to_twilio)
            await _close_quietly(self._twilio)
        self.ended.set()
        stats = self.controller.stats
        log.info(
            "call %s ended: %s; frames in %d out %d, barge-ins %d, malformed %d",
            self.call_sid, stats.end_reason, stats.frames_in, stats.frames_out, stats.barge_ins, stats.malformed_twilio,
        )
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        self._on_end(self)


async def _drain(queue: asyncio.Queue[str], timeout_s: float = 0.2) -> None:
    """Give a writer a moment to send what is queued before its socket closes."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not queue.empty() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.005)


async def _close_quietly(websocket: WebSocket) -> None:
    """Close a media socket that may already be closed by either side."""
    try:
        await websocket.close(code=1000)
    except (RuntimeError, WebSocketDisconnect):
        pass
