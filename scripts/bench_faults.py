#!/usr/bin/env python3
"""How long callers wait when the model fails: measured over real loopback sockets.

For each way the Realtime service can be unreachable when a call comes in, prints the time from
the webhook to the bridge closing the media stream (when Twilio starts the fallback <Say>); for a
session lost mid-call, the time until the replacement session is open and configured.
Run: .venv/bin/python scripts/bench_faults.py
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from websockets.asyncio.server import serve

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


async def main() -> None:
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
    print("| fault | time (ms) |\n|---|---:|")
    for name, measure in cases:
        print(f"| {name} | {await measure() * 1000:.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
