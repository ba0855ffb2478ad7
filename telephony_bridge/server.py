"""Running the bridge under uvicorn, with a shutdown that lets live calls finish.

SIGHUP re-reads the configuration file for new calls; live calls keep theirs (reload.py).

On SIGTERM uvicorn stops listening and closes every open websocket at once (code 1012): in a
phone bridge that cuts every caller off mid-sentence at each rolling restart. Here the first
SIGTERM (or SIGINT) only starts a drain: the webhook refuses new calls with the fallback message
while live calls run on for up to `[limits] drain_seconds`; then the rest are ended cleanly and
uvicorn shuts down. A second signal exits at once.

uvicorn waits forever for a request that never completes, and a connection that never sends one
is never timed out: 300 idle, slow-header or slow-body connections were held for 40 s and more, until
the process ran out of descriptors and a real webhook failed. `DeadlineH11Protocol` bounds the
headers and the body (`[http]`); uvicorn's own keep-alive timeout bounds the wait between requests,
and its concurrency limit answers 503 once `[http] max_connections` are open (idle ones and media
sockets count too).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from collections.abc import Callable
from enum import Enum
from types import FrameType
from typing import Any, ClassVar

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from telephony_bridge.config import BridgeConfig, HttpLimits
from telephony_bridge.twilio.media_socket import media_stream_protocol
from telephony_bridge.twilio.media_stream import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

CALLBACK_GRACE_S = 2.0
"""How long the server keeps answering after the drain ended calls: Twilio requests their `<Connect action>`
within moments, and a caller whose conversation was cut short hears `shutdown_message`, not an application error."""


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_seconds: float) -> None:
        super().__init__(config)
        self._app = app
        self._drain_seconds = drain_seconds
        self._drain: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reloads: set[asyncio.Task[object]] = set()

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        if hasattr(signal, "SIGHUP"):
            self._loop.add_signal_handler(signal.SIGHUP, self._reload)
        await super().serve(sockets)

    def _reload(self) -> None:
        """SIGHUP: re-read the configuration for new calls (reload.py); by default the signal would end every call."""
        reloader = getattr(self._app.state, "reloader", None)
        if reloader is None:
            log.warning("SIGHUP before the bridge finished starting: nothing reloaded")
            return
        task = asyncio.get_running_loop().create_task(reloader.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain is not None or self._loop is None or not self.started:
            super().handle_exit(sig, frame)
            return
        log.info("signal %d: refusing new calls and draining live ones for up to %g s", sig, self._drain_seconds)
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain = asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        if await self._app.state.switchboard.drain(self._drain_seconds):
            # The calls just ended ask their <Connect action> what comes next: answer them, then stop listening.
            await asyncio.sleep(CALLBACK_GRACE_S)
        self.should_exit = True


class _Wait(Enum):
    """What a connection's deadline is running for."""

    HEADERS = "headers"
    BODY = "body"


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on a request's headers and one on its body.

    A connection that sends half a header and stops never reaches the ASGI app, so the deadlines live
    here: the headers' from the connection's start (or, on a kept-alive connection, from the next
    request's first byte), the body's from the end of the headers. When one passes, the connection is
    closed; an app reading the body sees the client gone. A websocket upgrade hands the connection to
    the websocket protocol, and the deadlines with it end.
    """

    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting_for: _Wait | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._upgraded = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._wait_for(_Wait.HEADERS)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._upgraded:
            return
        state = self.conn.their_state
        self._wait_for(_Wait.HEADERS if state is h11.IDLE else _Wait.BODY if state is h11.SEND_BODY else None)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # An idle kept-alive connection is uvicorn's keep-alive timer's to close; a body still coming is ours.
        self._wait_for(_Wait.BODY if self.conn.their_state is h11.SEND_BODY else None)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._upgraded = True
        self._wait_for(None)
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._wait_for(None)
        super().connection_lost(exc)

    def _wait_for(self, waiting_for: _Wait | None) -> None:
        if waiting_for is self._waiting_for:
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._waiting_for = waiting_for
        if waiting_for is not None:
            timeout_s = self.header_timeout_s if waiting_for is _Wait.HEADERS else self.body_timeout_s
            self._deadline = self.loop.call_later(timeout_s, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            # Debug only: a flood of slow clients must not become a flood of log lines.
            log.debug("closing a connection from %s: its request %s did not arrive within the deadline",
                      self.client, self._waiting_for.value if self._waiting_for else "")
            self.transport.close()


def deadline_protocol(http: HttpLimits) -> type[DeadlineH11Protocol]:
    """`DeadlineH11Protocol` with `http`'s deadlines (uvicorn makes the protocol from a class, one per connection)."""
    return type(
        "DeadlineH11Protocol", (DeadlineH11Protocol,),
        {"header_timeout_s": http.header_timeout_seconds, "body_timeout_s": http.body_timeout_seconds},
    )


def uvicorn_config(app: FastAPI, *, log_level: str = "info", http: HttpLimits | None = None) -> uvicorn.Config:
    """Settings for the media hot path: small websocket frames only, no compression (Twilio uses none).

    uvicorn's own log handlers are left out, so its lines go through the bridge's (logs.py) like the rest.
    `http` bounds how long and how many clients are waited for (`[http]`; by default, its defaults).
    """
    http = http or BridgeConfig().http
    serve_media = getattr(app.state, "serve_media", None)
    return uvicorn.Config(
        app,
        log_level=log_level,
        log_config=None,
        http=deadline_protocol(http),
        timeout_keep_alive=http.keep_alive_seconds,  # type: ignore[arg-type]
        limit_concurrency=http.max_connections,
        # uvicorn's sans-I/O websockets protocol: the cheapest per message of its three (measured
        # with scripts/bench_calls.py at 200 calls on uvloop: 3.3-3.7 ms CPU per call-second, against
        # 4.1-4.2 for the legacy `websockets` one and for `wsproto`); the media stream's upgrades it
        # serves below ASGI (twilio/media_socket.py).
        ws=media_stream_protocol(serve_media) if serve_media is not None else "websockets-sansio",
        ws_max_size=MAX_MESSAGE_BYTES,
        ws_per_message_deflate=False,
        proxy_headers=False,
        lifespan="on",
    )


def tcp_listener(host: str, port: int) -> socket.socket:
    """A listening socket made with an explicit IPPROTO_TCP.

    asyncio sets TCP_NODELAY only on accepted sockets whose protocol says TCP; on a socket made
    with protocol 0, Nagle's algorithm holds a mark or a `clear` written right after a media frame
    until the previous segment is acknowledged (measured: up to 19 ms on loopback, 40 ms and more
    on real links), which delays barge-in and skews the truncate point.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(2048)
    return listener


def run(app: FastAPI, host: str, port: int, drain_seconds: float, log_level: str, http: HttpLimits | None = None) -> None:
    """Serve until a signal, then drain (see the module docstring)."""
    listener = tcp_listener(host, port)
    server = DrainingServer(uvicorn_config(app, log_level=log_level, http=http), app, drain_seconds)
    # What start-up built (about 95 000 objects: the libraries, the app, the configuration) lives as
    # long as the process: out of the collector's sight, a full collection no longer walks it. One
    # had stopped every call for 40-75 ms at 100 calls; 20-30 ms after (docs/cpu.md).
    gc.freeze()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(server.serve(sockets=[listener]))


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (it is a dependency except on Windows); else asyncio's own loop.

    Every call moves about 120 small websocket messages a second. On uvloop the bridge spends 15-25 %
    less CPU per call than on asyncio's selector loop (scripts/bench_calls.py, 200 calls on one
    core: 3.3-3.7 against 4.3-4.4 ms per call-second), and its p99 latency drops with it. uvicorn
    pauses and resumes reading around every websocket message it hands to the app; the selector
    loop turns each into two epoll_ctl calls (113 a second per call under strace), libuv into none,
    as the two cancel out before its next poll. Its dispatch of callbacks is in C too. Like
    asyncio with our IPPROTO_TCP listener, it sets TCP_NODELAY on every TCP connection.
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
