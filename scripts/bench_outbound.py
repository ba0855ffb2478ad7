#!/usr/bin/env python3
"""How soon a person who answers an outbound call hears the agent, over real loopback sockets.

For each call the real bridge places a call through the Twilio REST stand-in; a simulated person
answers and says "hello?" (600 ms), Twilio's message-end detection posts `AnsweredBy=human` after
`--amd-delay` seconds of silence, and the Realtime simulator speaks the greeting. Printed: per call,
and as min / median / max, the time from AMD's "human" to the model's first audio at the callee (the
bridge's share: a session.update and a response.create, plus the simulated model's first delta) and
from the callee's first "hello" to that audio (what the person feels, AMD's wait included).

Run: .venv/bin/python scripts/bench_outbound.py [--calls 10] [--amd-delay 1.2]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics

from telephony_bridge.config import parse_config, settings_from_env
from telephony_bridge.demo import DEMO_KEY, DEMO_NUMBER, DEMO_TOKEN, PUBLIC_URL
from telephony_bridge.demo_outbound import CONTEXT, OUTBOUND_CONFIG
from telephony_bridge.outbound.placing import OutboundCalls, OutboundOutcome, OutboundRequest
from telephony_bridge.testing.bridge_server import serve_app
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator, ScriptedAnswer, speech_like_pcm16
from telephony_bridge.testing.twilio_api import Answerer, TwilioApiSimulator

PERSON = "+15557654321"


async def bench(calls: int, amd_delay_s: float) -> tuple[list[float], list[float]]:
    config = parse_config(OUTBOUND_CONFIG, "bench configuration")
    answer = ScriptedAnswer(speech_like_pcm16(600), "Hello Ada!")
    amd_to_audio: list[float] = []
    hello_to_audio: list[float] = []
    async with (
        RealtimeSimulator(answers=[answer], require_key=DEMO_KEY) as model,
        TwilioApiSimulator(auth_token=DEMO_TOKEN) as api,
    ):
        api.answerers[PERSON] = Answerer("person", ring_s=0.05, amd_delay_s=amd_delay_s)
        settings = settings_from_env({
            "OPENAI_API_KEY": DEMO_KEY, "REALTIME_URL": model.url, "TWILIO_API_URL": api.url,
            "TWILIO_ACCOUNT_SID": api.account_sid,
        })
        settings = dataclasses.replace(settings, public_url=PUBLIC_URL, twilio_auth_token=DEMO_TOKEN)
        async with serve_app(settings, config) as (bridge_url, app):
            api.place_calls_on(bridge_url, PUBLIC_URL)
            outbound: OutboundCalls = app.state.outbound
            outcomes: list[OutboundOutcome] = []
            outbound.add_outcome_listener(outcomes.append)
            for n in range(calls):
                placed = await outbound.place(OutboundRequest(DEMO_NUMBER, PERSON, CONTEXT))
                callee = api.placed[placed.call_sid]
                while callee.call is None:
                    await asyncio.sleep(0.01)
                await callee.call.wait_heard(100, timeout=15)
                assert callee.amd_sent_at is not None and callee.hello_at is not None
                first_audio = callee.call.playback[0][0]
                amd_to_audio.append((first_audio - callee.amd_sent_at) * 1000)
                hello_to_audio.append((first_audio - callee.hello_at) * 1000)
                print(f"call {n + 1:2d}: AMD human -> audio {amd_to_audio[-1]:6.0f} ms   "
                      f"hello -> audio {hello_to_audio[-1]:6.0f} ms")
                await callee.call.hang_up()
                while len(outcomes) <= n:
                    await asyncio.sleep(0.01)
    return amd_to_audio, hello_to_audio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--amd-delay", type=float, default=1.2, help="seconds AMD listens after the hello (Twilio: ~1-2 s)")
    args = parser.parse_args()
    amd_to_audio, hello_to_audio = asyncio.run(bench(args.calls, args.amd_delay))
    for name, values in (("AMD human -> first audio", amd_to_audio), ("first hello -> first audio", hello_to_audio)):
        print(f"{name:<28} min {min(values):6.0f}  median {statistics.median(values):6.0f}  max {max(values):6.0f} ms")


if __name__ == "__main__":
    main()
