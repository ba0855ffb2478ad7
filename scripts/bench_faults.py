#!/usr/bin/env python3
"""How long callers wait when the model fails: measured over real loopback sockets.

For each way the Realtime service can be unreachable, flap or refuse the session's configuration
when a call comes in, prints the time from the webhook to the bridge closing the media stream (when
Twilio starts the fallback <Say>) and how many sessions the call opened; for a session lost
mid-call, the time until the replacement session is open and configured; for a voice the service
refuses, the time until the session is configured without it.
Run: .venv/bin/python scripts/bench_faults.py
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from websockets.asyncio.server import ServerConnection, serve

from telephony_bridge.config import parse_config, settings_from_env
from telephony_bridge.testing.bridge_server import serve_bridge
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator
from telephony_bridge.testing.twilio_simulator import SimulatedCall, speech_like_ulaw

TOKEN = "bench-token"
KEY = "sk-bench"
PUBLIC_URL = "https://bridge.bench.invalid"
CONFIG = parse_config('[defaults]\nfallback_message = "Sorry."\n[call_log]\npath = ""\n', "bench")


@asynccontextmanager
async def bridge(realtime_url: str) -> AsyncIterator[str]:
    settings = settings_from_env(
        {"PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": TOKEN, "OPENAI_API_KEY": KEY, "REALTIME_URL": realtime_url}
    )
    async with serve_bridge(settings, CONFIG) as url:
        yield url


class Flapping:
    """Accepts every handshake, then fails as `behaviour` says; counts the sessions it was asked for."""

    def __init__(self, behaviour: Callable[[ServerConnection], Awaitable[None]]) -> None:
        self.behaviour = behaviour
        self.opened = 0

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        async def handle(ws: ServerConnection) -> None:
            self.opened += 1
            await self.behaviour(ws)

        server = await serve(handle, "127.0.0.1", 0)
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/realtime"
        server.close()


async def close_1011(ws: ServerConnection) -> None:
    await ws.close(1011, "internal error")


async def quota_then_close(ws: ServerConnection) -> None:
    error = {"type": "insufficient_quota", "code": "insufficient_quota", "message": "You exceeded your current quota."}
    await ws.send(json.dumps({"type": "error", "error": error}))
    await ws.close(1000)


async def refuse_every_update(ws: ServerConnection) -> None:
    async for message in ws:
        event = json.loads(message)
        if event.get("type") == "session.update":
            error = {"type": "invalid_request_error", "code": "invalid_value", "param": "session.instructions",
                     "message": "Invalid value.", "event_id": event.get("event_id")}
            await ws.send(json.dumps({"type": "error", "error": error}))


async def seconds_to_fallback(realtime_url: str) -> float:
    async with bridge(realtime_url) as url:
        call = SimulatedCall(bridge_url=url, public_url=PUBLIC_URL, auth_token=TOKEN)
        dialled_at = asyncio.get_running_loop().time()
        await call.dial()
        await call.connect()
        closed_at = await call.wait_closed_by_bridge(timeout=10)
        assert closed_at is not None
        return closed_at - dialled_at


@asynccontextmanager
async def refusing(status: int) -> AsyncIterator[str]:
    server = await serve(lambda ws: ws.close(), "127.0.0.1", 0, process_request=lambda conn, req: conn.respond(status, "no\n"))
    yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/realtime"
    server.close()


@asynccontextmanager
async def silent() -> AsyncIterator[str]:
    server = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/realtime"
    server.close()


@asynccontextmanager
async def closed_port() -> AsyncIterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    yield f"ws://127.0.0.1:{port}/v1/realtime"


@asynccontextmanager
async def unresolvable() -> AsyncIterator[str]:
    yield "ws://realtime.invalid/v1/realtime"


async def seconds_to_new_session() -> float:
    simulator = RealtimeSimulator(require_key=KEY)
    await simulator.start()
    async with bridge(simulator.url) as url:
        call = SimulatedCall(bridge_url=url, public_url=PUBLIC_URL, auth_token=TOKEN)
        await call.dial()
        await call.connect()
        first = await simulator.wait_for_session(0)
        call.say(speech_like_ulaw(600))
        await first.wait_for("response.done", sent=True, timeout=10)
        dropped_at = asyncio.get_running_loop().time()
        await first.drop(1011)
        second = await simulator.wait_for_session(1, timeout=5)
        await second.wait_for("conversation.item.create", timeout=5)
        configured_at = asyncio.get_running_loop().time()
        await call.hang_up()
    await simulator.stop()
    return configured_at - dropped_at


async def seconds_to_configured_without_voice() -> float:
    """The 2024-10-01 preview knows no `marin`: the update is refused and sent again without the voice."""
    simulator = RealtimeSimulator(require_key=KEY)
    await simulator.start()
    config = parse_config('[defaults]\nvoice = "marin"\n[call_log]\npath = ""\n', "bench")
    settings = settings_from_env({"PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": TOKEN, "OPENAI_API_KEY": KEY,
                                  "REALTIME_URL": simulator.preview_url, "REALTIME_API": "preview"})
    async with serve_bridge(settings, config) as url:
        call = SimulatedCall(bridge_url=url, public_url=PUBLIC_URL, auth_token=TOKEN)
        dialled_at = asyncio.get_running_loop().time()
        await call.dial()
        session = await simulator.wait_for_session(0)
        await session.wait_for("session.updated", sent=True, timeout=5)
        configured_at = asyncio.get_running_loop().time()
        await call.connect()
        await call.hang_up()
    await simulator.stop()
    return configured_at - dialled_at


async def main() -> None:
    print("| fault | time (ms) | sessions opened |\n|---|---:|---:|")
    for name, behaviour in [
        ("service accepts, then closes 1011 at once", close_1011),
        ("service sends insufficient_quota, then closes 1000", quota_then_close),
        ("service refuses every session.update (instructions)", refuse_every_update),
    ]:
        flapping = Flapping(behaviour)
        async with flapping.serve() as realtime_url:
            seconds = await seconds_to_fallback(realtime_url)
            await asyncio.sleep(1.0)
        print(f"| {name} -> fallback | {seconds * 1000:.0f} | {flapping.opened} |")
    print(f"| voice refused (preview, marin) -> configured without it | "
          f"{await seconds_to_configured_without_voice() * 1000:.0f} | 1 |")
    cases: list[tuple[str, Callable[[], Awaitable[float]]]] = []
    for name, endpoint in [
        ("connection refused", closed_port),
        ("DNS failure", unresolvable),
        ("HTTP 401", lambda: refusing(401)),
        ("HTTP 429", lambda: refusing(429)),
        ("HTTP 503", lambda: refusing(503)),
        ("handshake never answered", silent),
    ]:
        async def measure(endpoint: Callable[[], object] = endpoint) -> float:
            async with endpoint() as realtime_url:  # type: ignore[attr-defined]
                return await seconds_to_fallback(realtime_url)

        cases.append((f"unreachable at call time: {name} -> fallback", measure))
    cases.append(("session lost mid-call (1011) -> new session configured, history added", seconds_to_new_session))
    for name, measure in cases:
        print(f"| {name} | {await measure() * 1000:.0f} | |")


if __name__ == "__main__":
    asyncio.run(main())
