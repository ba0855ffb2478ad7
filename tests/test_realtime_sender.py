"""The Realtime leg's send function: whole text messages, in order, and a closed connection still raises."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from telephony_bridge.realtime.session import sender


async def test_messages_arrive_whole_and_in_order() -> None:
    received: list[str | bytes] = []
    done = asyncio.Event()

    async def handler(websocket: ServerConnection) -> None:
        async for message in websocket:
            received.append(message)
            if len(received) == 200:
                done.set()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as connection:
            send = sender(connection)
            for n in range(200):
                await send(f'{{"n":{n},"audio":"{"A" * (n * 37)}"}}')
            await asyncio.wait_for(done.wait(), 5)
    assert received == [f'{{"n":{n},"audio":"{"A" * (n * 37)}"}}' for n in range(200)]


async def test_sending_on_a_closed_connection_raises_connection_closed() -> None:
    async def handler(websocket: ServerConnection) -> None:
        await websocket.close()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as connection:
            await connection.wait_closed()
            with pytest.raises(ConnectionClosed):
                await sender(connection)("{}")
