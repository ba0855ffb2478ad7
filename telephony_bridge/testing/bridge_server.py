"""Run the real bridge app under uvicorn on a free loopback port, for tests and the demo."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from telephony_bridge.app import create_app
from telephony_bridge.config import BridgeConfig, Settings
from telephony_bridge.server import tcp_listener, uvicorn_config


@asynccontextmanager
async def serve_bridge(settings: Settings, config: BridgeConfig, *, insecure: bool = False) -> AsyncIterator[str]:
    """Serve the bridge on 127.0.0.1 at a free port; yields its base URL (http://127.0.0.1:PORT)."""
    async with serve_app(settings, config, insecure=insecure) as (url, _):
        yield url


@asynccontextmanager
async def serve_app(
    settings: Settings, config: BridgeConfig, *, insecure: bool = False
) -> AsyncIterator[tuple[str, FastAPI]]:
    """`serve_bridge`, also yielding the app: its `state` holds the server's parts (the outbound calls, the switchboard)."""
    listener = tcp_listener("127.0.0.1", 0)
    port = listener.getsockname()[1]
    app = create_app(settings, config, insecure=insecure)
    server = uvicorn.Server(uvicorn_config(app, log_level="warning", http=config.http))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[listener]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        await task
        listener.close()
