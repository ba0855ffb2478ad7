"""The media socket below ASGI: uvicorn with the bridge's server settings, a handler, real websocket clients on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import uvicorn
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from support import API_KEY, AUTH_TOKEN, PUBLIC_URL, TEST_CONFIG, place_call
from telephony_bridge.app import create_app
from telephony_bridge.config import parse_config, settings_from_env
from telephony_bridge.server import tcp_listener, uvicorn_config
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator
from telephony_bridge.twilio.media_socket import MEDIA_PATH, PAUSE_READING_AT, MediaSocket

Handler = Callable[[MediaSocket], Awaitable[None]]


@asynccontextmanager
async def served(handler: Handler) -> AsyncIterator[tuple[str, list[str]]]:
    """A FastAPI app serving `handler` the way the bridge does; yields its ws:// base and the paths its ASGI routes saw."""
    app = FastAPI()
    routed: list[str] = []

    @app.websocket(MEDIA_PATH)
    async def media(websocket: WebSocket) -> None:
        routed.append(MEDIA_PATH)
        await websocket.close()

    @app.websocket("/other")
    async def other(websocket: WebSocket) -> None:
        routed.append("/other")
        await websocket.accept()
        await websocket.send_text("through ASGI")
        await websocket.close()

    app.state.serve_media = handler
    listener = tcp_listener("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn_config(app, log_level="warning"))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[listener]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"ws://127.0.0.1:{listener.getsockname()[1]}", routed
    finally:
        server.should_exit = True
        await task
        listener.close()


async def echo_each(socket: MediaSocket) -> None:
    await socket.accept()
    while (frame := await socket.receive()) is not None:
        socket.write([f"got {frame!s}"])


async def test_the_media_path_skips_the_asgi_app_and_other_paths_reach_it() -> None:
    async with served(echo_each) as (base, routed):
        async with connect(base + MEDIA_PATH + "?x=1") as client:
            await client.send("hello")
            assert await asyncio.wait_for(client.recv(), 5) == "got hello"
        async with connect(base + "/other") as client:
            assert await asyncio.wait_for(client.recv(), 5) == "through ASGI"
    assert routed == ["/other"]


async def test_frames_written_together_arrive_whole_and_in_order() -> None:
    async def three_at_once(socket: MediaSocket) -> None:
        await socket.accept()
        socket.write(["one", "two", "three"])
        await socket.receive()

    async with served(three_at_once) as (base, _):
        async with connect(base + MEDIA_PATH) as client:
            assert [await asyncio.wait_for(client.recv(), 5) for _ in range(3)] == ["one", "two", "three"]


async def test_a_close_before_accept_refuses_the_upgrade() -> None:
    async def refuse(socket: MediaSocket) -> None:
        assert socket.headers.get("X-Twilio-Signature") == "forged"
        await socket.close(1008)

    async with served(refuse) as (base, _):
        with pytest.raises(InvalidStatus) as refused:
            await connect(base + MEDIA_PATH, additional_headers={"X-Twilio-Signature": "forged"})
    assert refused.value.response.status_code == 403


async def test_a_handler_that_falls_behind_loses_no_frame_and_reading_resumes() -> None:
    count = 4 * PAUSE_READING_AT
    taken: list[str | bytes] = []

    async def slow(socket: MediaSocket) -> None:
        await socket.accept()
        await asyncio.sleep(0.5)  # the peer sends everything meanwhile: reading pauses at PAUSE_READING_AT
        while len(taken) < count and (frame := await socket.receive()) is not None:
            taken.append(frame)
        socket.write(["all read"])
        await socket.receive()

    async with served(slow) as (base, _):
        async with connect(base + MEDIA_PATH) as client:
            for number in range(count):
                await client.send(f"frame {number}")
            assert await asyncio.wait_for(client.recv(), 5) == "all read"
    assert taken == [f"frame {number}" for number in range(count)]


async def test_the_peers_close_code_ends_receiving_after_what_it_sent_before() -> None:
    seen: list[object] = []

    async def record(socket: MediaSocket) -> None:
        await socket.accept()
        while (frame := await socket.receive()) is not None:
            seen.append(frame)
        seen.append(socket.close_code)

    async with served(record) as (base, _):
        async with connect(base + MEDIA_PATH) as client:
            await client.send("last words")
            await client.close(code=4000)
        for _ in range(100):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.02)
    assert seen == ["last words", 4000]


async def test_under_a_stock_asgi_websocket_the_route_serves_the_same_call(realtime: RealtimeSimulator) -> None:
    settings = settings_from_env({"PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "OPENAI_API_KEY": API_KEY,
                                  "REALTIME_URL": realtime.url, "REALTIME_API": "ga"})
    app = create_app(settings, parse_config(TEST_CONFIG, "test.toml"))
    listener = tcp_listener("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", log_config=None, ws="websockets-sansio", lifespan="on"))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[listener]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        call, session = await place_call(f"http://127.0.0.1:{listener.getsockname()[1]}", realtime)
        await session.wait_for("session.updated", sent=True)
        call.say(b"\xff" * 1600)
        for _ in range(100):
            if session.input_audio_ms >= 200:
                break
            await asyncio.sleep(0.02)
        assert session.input_audio_ms >= 200, "the caller's audio did not reach the model through the ASGI route"
        await call.hang_up()
    finally:
        server.should_exit = True
        await task
        listener.close()
