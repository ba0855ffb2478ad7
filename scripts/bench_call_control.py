#!/usr/bin/env python3
"""How soon the line drops after the model's goodbye has been heard, over real loopback sockets.

Each call: the caller speaks, the model (the Realtime simulator) answers with a 1.2 s goodbye and
calls `end_call` in the same response; the bridge hangs up through Twilio's REST API (the stand-in)
once the goodbye's last mark has been echoed. Prints, over the calls, the time from the echo of the
goodbye's last audio (the simulated Twilio played it) to the REST hang-up request arriving.
Run: .venv/bin/python scripts/bench_call_control.py [calls]
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys

from telephony_bridge.config import parse_config, settings_from_env
from telephony_bridge.testing.bridge_server import serve_bridge
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator, ScriptedAnswer, ScriptedCall, speech_like_pcm16
from telephony_bridge.testing.twilio_api import TwilioApiSimulator
from telephony_bridge.testing.twilio_simulator import SimulatedCall, speech_like_ulaw

TOKEN = "bench-token"
KEY = "sk-bench"
PUBLIC_URL = "https://bridge.bench.invalid"


async def one_goodbye(bridge: str, realtime: RealtimeSimulator, api: TwilioApiSimulator) -> float:
    call = SimulatedCall(bridge_url=bridge, public_url=PUBLIC_URL, auth_token=TOKEN)
    api.register(call)
    before, sessions = len(api.requests), len(realtime.sessions)
    await call.run()
    await realtime.wait_for_session(sessions)
    await asyncio.sleep(0.3)
    call.say(speech_like_ulaw(600))
    await call.wait_over(timeout=20)
    hang_up = api.requests[before]
    heard_until = max(at for at, _, played in call.marks_echoed if played)
    return hang_up.at - heard_until


async def main(calls: int) -> None:
    logging.disable(logging.WARNING)
    goodbye = ScriptedAnswer(speech_like_pcm16(1200), "Goodbye!", calls=(ScriptedCall("end_call"),))
    realtime = RealtimeSimulator(require_key=KEY, answers=[goodbye])
    await realtime.start()
    async with TwilioApiSimulator(auth_token=TOKEN) as api:
        settings = settings_from_env({
            "PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": TOKEN, "OPENAI_API_KEY": KEY, "REALTIME_URL": realtime.url,
            "TWILIO_API_URL": api.url, "TWILIO_ACCOUNT_SID": api.account_sid,
        })
        async with serve_bridge(settings, parse_config('[call_log]\npath = ""\n', "bench")) as bridge:
            delays = [await one_goodbye(bridge, realtime, api) for _ in range(calls)]
    await realtime.stop()
    ms = sorted(d * 1000 for d in delays)
    print(f"goodbye's last audio heard -> REST hang-up, {calls} calls: median {statistics.median(ms):.1f} ms, "
          f"min {ms[0]:.1f} ms, max {ms[-1]:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10))
