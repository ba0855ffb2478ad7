"""Run the real bridge app under uvicorn on a free loopback port, for tests and the demo."""

from __future__ import annotations

import asyncio
import socket
from contextlib import asynccontextmanager
from typing import AsyncIterator

import uvicorn

from ..app import create_app
from ..config import BridgeConfig, Settings
from ..media_stream import MAX_MESSAGE_BYTES


@asynccontextmanager
async def serve_bridge(settings: Settings, config: BridgeConfig, *, insecure: bool = False) -> AsyncIterator[str]:
    """Serve the bridge on 127.0.0.1 at a free port; yields its base URL (http://127.0.0.1:PORT).

    The listening socket is made with an explicit IPPROTO_TCP: asyncio only sets TCP_NODELAY on
    accepted sockets whose protocol says TCP, and without it Nagle's algorithm holds a mark or a
    `clear` written right after a media frame for up to 40 ms (measured: up to 19 ms on loopback).
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, config, insecure=insecure),
            log_level="warning",
            ws_max_size=MAX_MESSAGE_BYTES,
            ws_per_message_deflate=False,
            lifespan="on",
        )
    )
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[listener]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        listener.close()
