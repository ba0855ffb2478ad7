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
    """Settings for the media hot path: small websocket frames only, no compression (Twilio uses none)."""
    return uvicorn.Config(
        app,
        log_level=log_level,
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
    asyncio.run(server.serve(sockets=[listener]))
