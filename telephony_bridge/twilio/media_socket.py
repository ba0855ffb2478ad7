"""The media stream's websocket, served by uvicorn's websocket protocol without the ASGI layers.

Why it exists: a call's Twilio socket carries about 80 small messages a second, and through ASGI
each one crossed uvicorn's queue, its pause and resume of reading, the ASGI message dicts, the
middleware stack's wrappers and Starlette's `WebSocket` state checks: 17 % of py-spy's samples of
the bridge at 100 calls went to receiving and sending on this socket (docs/cpu.md). Here uvicorn's
sans-I/O websockets protocol still parses the upgrade, answers pings, enforces `ws_max_size`
(1009), counts the connection for `limit_concurrency` and closes on shutdown; only an upgrade to
`MEDIA_PATH` skips the ASGI app: until the stream has started its frames go to a deque the
handler `receive`s them from; then each goes from `data_received` straight to the call
(`listen`), with no task woken per message; and the call hands what one event produced to the
transport in one write.

The handshake's answers (accept, or a close before it: a 403) still go through uvicorn's own
`send`, so its access log line and rejection stay as they were. Any other websocket path is served
by uvicorn as before. `AsgiMediaSocket` serves the same handler from the FastAPI route, for an
ASGI server other than uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Protocol

from starlette.websockets import WebSocket, WebSocketDisconnect
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State

from telephony_bridge.websocket_frames import OVERSIZED, fragmenting, next_frame, server_text_frame

log = logging.getLogger(__name__)

MEDIA_PATH = "/twilio/media"
PAUSE_READING_AT = 64
"""Frames read but not yet taken by the call before the socket stops reading: 1.3 s of Twilio's media,
so a call that keeps up never pauses (uvicorn paused and resumed around every message), and a flood
waits in the kernel rather than in our memory."""


class MediaSocket(Protocol):
    """What serving a media stream needs of its websocket, whichever server carries it."""

    @property
    def headers(self) -> Mapping[str, str]:
        """The upgrade request's headers (case-insensitive)."""

    @property
    def client(self) -> Any:
        """The peer's address, for log lines."""

    @property
    def close_code(self) -> int | None:
        """Why the socket closed, once `receive` returned None."""

    async def accept(self) -> None: ...

    async def receive(self) -> str | bytes | None:
        """The next whole message; None once the socket is closed."""

    async def listen(self, on_message: Callable[[str | bytes], None]) -> None:
        """Hand every message to `on_message` as it arrives, those already read first, until the socket closes."""

    async def send_text(self, text: str) -> None:
        """Send one text message, waiting while the transport's buffer is full; closed sockets drop it."""

    def ready(self) -> bool:
        """True when `write` may send now: the socket open and nothing waiting in its buffer."""

    def write(self, frames: list[str]) -> None:
        """Send text messages at once, in one write to the transport."""

    async def close(self, code: int) -> None:
        """Close (before `accept`: refuse the upgrade); a closed socket stays closed."""


class RawMediaSocket:
    """A media socket straight on uvicorn's sans-I/O websocket protocol (see the module docstring)."""

    def __init__(self, protocol: MediaStreamProtocol, request: Request) -> None:
        self._protocol = protocol
        self.headers: Mapping[str, str] = request.headers
        self.client = protocol.client
        self.close_code: int | None = None
        self._frames: deque[str | bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._on_message: Callable[[str | bytes], None] | None = None

    def received(self, frame: str | bytes) -> None:
        """A whole message from the peer (called by the protocol)."""
        on_message = self._on_message
        if on_message is not None:
            on_message(frame)
            return
        self._frames.append(frame)
        if len(self._frames) >= PAUSE_READING_AT and not self._protocol.read_paused:
            self._protocol.read_paused = True
            self._protocol.transport.pause_reading()
        self._wake()

    def closed(self, code: int) -> None:
        """The socket closed (called by the protocol); messages already read are still taken first."""
        if self.close_code is None:
            self.close_code = code
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def accept(self) -> None:
        await self._protocol.send({"type": "websocket.accept"})

    async def receive(self) -> str | bytes | None:
        frames = self._frames
        while not frames:
            if self.close_code is not None:
                return None
            self._waiter = self._protocol.loop.create_future()
            await self._waiter
        protocol = self._protocol
        if protocol.read_paused and len(frames) <= PAUSE_READING_AT // 2 and not protocol.close_sent:
            protocol.read_paused = False
            protocol.transport.resume_reading()
        return frames.popleft()

    async def listen(self, on_message: Callable[[str | bytes], None]) -> None:
        frames = self._frames
        while frames:
            on_message(frames.popleft())
        protocol = self._protocol
        if protocol.read_paused and not protocol.close_sent:
            protocol.read_paused = False
            protocol.transport.resume_reading()
        self._on_message = on_message
        try:
            while self.close_code is None:
                self._waiter = protocol.loop.create_future()
                await self._waiter
        finally:
            self._on_message = None

    def ready(self) -> bool:
        protocol = self._protocol
        return protocol.writable.is_set() and not protocol.transport.get_write_buffer_size()

    def write(self, frames: list[str]) -> None:
        protocol = self._protocol
        # Once the peer's close arrived (the state is no longer open), what it no longer reads is dropped.
        if protocol.close_sent or protocol.disconnected or protocol.conn.state is not State.OPEN:
            return
        protocol.transport.write(b"".join([server_text_frame(frame) for frame in frames]))

    async def send_text(self, text: str) -> None:
        await self._protocol.writable.wait()
        self.write([text])

    async def close(self, code: int) -> None:
        protocol = self._protocol
        if protocol.close_sent or protocol.disconnected or protocol.transport.is_closing():
            return
        try:
            await protocol.send({"type": "websocket.close", "code": code})
        except ClientDisconnected:
            pass


MediaHandler = Callable[[MediaSocket], Awaitable[None]]


class MediaStreamProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, with upgrades to `MEDIA_PATH` handed to `handler` as a `RawMediaSocket`."""

    handler: ClassVar[MediaHandler]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._media: RawMediaSocket | None = None
        self._unread = b""
        self._fragmented = False
        self._protocol_reads = False

    def data_received(self, data: bytes) -> None:
        """Once a media socket is open, whole text frames are read here and every other frame goes to the protocol whole.

        See `websocket_frames`: websockets' parser took 4.8 us a media frame. The protocol still
        sees every control frame, fragment and malformed frame, at a frame boundary, and keeps the
        state machine; after a frame over the size limit it reads everything itself.
        """
        media = self._media
        if media is None or not self.handshake_complete or self._protocol_reads or self.close_sent:
            super().data_received(data)
            return
        buffer = self._unread + data if self._unread else data
        start = 0
        while (frame := next_frame(buffer, start, self.config.ws_max_size, True)) is not None:
            if frame is OVERSIZED:
                self._protocol_reads = True
                self._unread = b""
                super().data_received(buffer[start:])
                return
            end, payload = frame
            assert end is not None
            if payload is None or self._fragmented:
                self._to_protocol(buffer[start:end])
            else:
                try:
                    text = str(payload, "utf-8")
                except UnicodeDecodeError:
                    self._invalid_utf8(media)
                else:
                    media.received(text)
            start = end
            if self.close_sent:
                self._unread = b""
                return
        self._unread = buffer[start:]

    def _to_protocol(self, frame: bytes) -> None:
        self._fragmented = fragmenting(frame, self._fragmented)
        super().data_received(frame)

    def _invalid_utf8(self, media: RawMediaSocket) -> None:
        self.conn.send_close(1007)
        self.handle_parser_exception()
        media.closed(1007)

    def handle_connect(self, event: Request) -> None:
        if event.path.partition("?")[0] == MEDIA_PATH:
            self._media = RawMediaSocket(self, event)
        super().handle_connect(event)

    async def run_asgi(self) -> None:
        media = self._media
        if media is None:
            await super().run_asgi()
            return
        try:
            await type(self).handler(media)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in the media stream handler\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                self.send_500_response()
        if self.close_timer is None:
            self.transport.close()

    def send_receive_event_to_app(self) -> None:
        media = self._media
        if media is None:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return
        if self.curr_msg_data_type == "bytes":
            media.received(bytes(data))
            return
        try:
            media.received(data.decode())
        except UnicodeDecodeError:
            self._invalid_utf8(media)

    def handle_close(self, event: Any) -> None:
        super().handle_close(event)
        if self._media is not None and self.conn.close_rcvd is not None:
            self._media.closed(self.conn.close_rcvd.code)

    def handle_parser_exception(self) -> None:
        super().handle_parser_exception()
        if self._media is not None and self.conn.close_sent is not None:
            self._media.closed(self.conn.close_sent.code)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._media is not None:
            self._media.closed(1006)


def media_stream_protocol(handler: MediaHandler) -> type[MediaStreamProtocol]:
    """The protocol class for uvicorn's `ws` setting, serving `MEDIA_PATH` with `handler` (one instance per connection)."""
    return type("MediaStreamProtocol", (MediaStreamProtocol,), {"handler": staticmethod(handler)})


class AsgiMediaSocket:
    """The same socket over Starlette's ASGI `WebSocket`: the route's path when the server is not uvicorn."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        self.headers: Mapping[str, str] = websocket.headers
        self.client = websocket.client
        self.close_code: int | None = None

    async def accept(self) -> None:
        await self._websocket.accept()

    async def receive(self) -> str | bytes | None:
        try:
            message = await self._websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            self.close_code = self.close_code or 1006
            return None
        if message["type"] == "websocket.disconnect":
            self.close_code = message.get("code", 1005)
            return None
        text = message.get("text")
        return text if text is not None else message.get("bytes") or b""

    async def listen(self, on_message: Callable[[str | bytes], None]) -> None:
        while (message := await self.receive()) is not None:
            on_message(message)

    async def send_text(self, text: str) -> None:
        await self._websocket.send_text(text)

    def ready(self) -> bool:
        return False

    def write(self, frames: list[str]) -> None:
        raise NotImplementedError("an ASGI socket only sends through send_text")

    async def close(self, code: int) -> None:
        try:
            await self._websocket.close(code=code)
        except (RuntimeError, WebSocketDisconnect):
            pass
