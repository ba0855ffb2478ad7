#!/usr/bin/env python3
"""The bridge's added latency on a tool call, measured over real loopback sockets.

For each call the Twilio simulator dials the real bridge, the Realtime simulator's model calls
`check_availability` in its greeting, and a tool server on loopback answers at once. Measured on the
simulator's own loop: from the moment it sends the `response.done` that completes the function call
(the earliest the bridge may act on it) to the moment the `function_call_output` arrives. That is the
bridge's parsing, the signed POST, the tool server's round trip on loopback and the output's encoding.

Run: .venv/bin/python scripts/bench_tools.py [calls]
"""

from __future__ import annotations

import asyncio
import statistics
import sys

from telephony_bridge.config import parse_config, settings_from_env
from telephony_bridge.testing.bridge_server import serve_bridge
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator, ScriptedAnswer, ScriptedCall, speech_like_pcm16
from telephony_bridge.testing.tool_server import ToolReply, ToolServer
from telephony_bridge.testing.twilio_simulator import SimulatedCall

TOKEN = "bench-token"
PUBLIC_URL = "https://bridge.bench.invalid"
LINE = "+15550001111"
CONFIG = """
[call_log]
path = ""
[numbers."{line}"]
greeting = "Bright Smile Dental."
[[numbers."{line}".tools]]
name = "check_availability"
description = "Free appointment slots on a given day."
url = "{url}"
parameters = {{ type = "object", properties = {{ day = {{ type = "string" }} }}, required = ["day"] }}
secret_env = "BENCH_TOOL_SECRET"
"""


async def one_call(bridge: str, simulator: RealtimeSimulator, index: int) -> float:
    call = SimulatedCall(bridge_url=bridge, public_url=PUBLIC_URL, auth_token=TOKEN, to_number=LINE)
    await call.dial()
    await call.connect()
    session = await simulator.wait_for_session(index)
    loop = asyncio.get_running_loop()

    def completes_the_call(event: dict) -> bool:
        output = event.get("response", {}).get("output", [])
        return event["type"] == "response.done" and any(item.get("type") == "function_call" for item in output)

    await session.wait_for(completes_the_call, sent=True, timeout=10)
    called_at = loop.time()
    await session.wait_for(lambda e: e.get("item", {}).get("type") == "function_call_output", timeout=10)
    answered_at = loop.time()
    await call.hang_up()
    return (answered_at - called_at) * 1000.0


async def main(calls: int) -> None:
    pcm = speech_like_pcm16(200)
    simulator = RealtimeSimulator(speed=float("inf"), answers=(
        ScriptedAnswer(pcm, "Let me check.", calls=(ScriptedCall("check_availability", {"day": "2026-12-01"}),)),
        ScriptedAnswer(pcm, "We have 9:30."),
    ))
    await simulator.start()
    async with ToolServer(lambda path, body: ToolReply(body={"slots": ["09:30"]})) as tools:
        settings = settings_from_env(
            {"PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": TOKEN, "OPENAI_API_KEY": "k", "REALTIME_URL": simulator.url}
        )
        config = parse_config(CONFIG.format(line=LINE, url=tools.url("/availability")), "bench",
                              {"BENCH_TOOL_SECRET": "bench-secret"})
        async with serve_bridge(settings, config) as bridge:
            added = [await one_call(bridge, simulator, index) for index in range(calls)]
    await simulator.stop()
    added.sort()
    p99 = added[min(len(added) - 1, round(0.99 * (len(added) - 1)))]
    print(f"tool call -> function_call_output over {calls} calls (tool server answers at once, loopback): "
          f"median {statistics.median(added):.1f} ms, p99 {p99:.1f} ms, max {added[-1]:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200))
