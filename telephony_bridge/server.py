"""Running the bridge under uvicorn, with a shutdown that lets live calls finish.

On SIGTERM uvicorn stops listening and closes every open websocket at once (code 1012): in a
phone bridge that cuts every caller off mid-sentence at each rolling restart. Here the first
SIGTERM (or SIGINT) only starts a drain: the webhook refuses new calls with the fallback message
while live calls run on for up to `[limits] drain_seconds`; then the rest are ended cleanly and
uvicorn shuts down. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI

from .media_stream import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_seconds: float) -> None:
        super().__init__(config)
        self._app = app
        self._drain_seconds = drain_seconds
        self._drain: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain is not None or self._loop is None or not self.started:
            super().handle_exit(sig, frame)
            return
        log.info("signal %d: refusing new calls and draining live ones for up to %g s", sig, self._drain_seconds)
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain = asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        await self._app.state.switchboard.drain(self._drain_seconds)
        self.should_exit = True


def uvicorn_config(app: FastAPI, *, log_level: str = "info") -> uvicorn.Config:
    """Settings for the media hot path: small websocket frames only, no compression (Twilio uses none).

    uvicorn's own log handlers are left out, so its lines go through the bridge's (logs.py) like the rest.
    """
    return uvicorn.Config(
        app,
        log_level=log_level,
        log_config=None,
        # uvicorn's sans-I/O websockets protocol: the cheapest per message of its three (measured
        # with scripts/bench_calls.py at 200 calls on uvloop: 3.3-3.7 ms CPU per call-second, against
        # 4.1-4.2 for the legacy `websockets` one and for `wsproto`).
        ws="websockets-sansio",
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


def run(app: FastAPI, host: str, port: int, drain_seconds: float, log_level: str) -> None:
    """Serve until a signal, then drain (see the module docstring)."""
    listener = tcp_listener(host, port)
    server = DrainingServer(uvicorn_config(app, log_level=log_level), app, drain_seconds)
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
