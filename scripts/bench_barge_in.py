#!/usr/bin/env python3
"""Barge-in accuracy and hang-up delay, measured over real loopback sockets.

For each interruption point the Twilio simulator dials the real bridge, the caller speaks, the
Realtime simulator answers, and the caller cuts in once it has heard that much of the answer.
Printed per call: the truncate point the bridge sent, what the simulated caller had actually
heard when the `clear` arrived (from its real-time playback log), the difference, how long after
the caller started speaking the model's audio stopped (mostly the simulated service's voice
activity detection) and how long after the caller's `stop` the Realtime session was closed.

Run: .venv/bin/python scripts/bench_barge_in.py [--delta-ms 20 --speed 1]
(the model's deltas are 100 ms sent 4 times faster than real time unless told otherwise; 20 ms at
real-time pace is where the bridge's marks are sparsest against the deltas, one per 100 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

from telephony_bridge.config import parse_config, settings_from_env
from telephony_bridge.testing.bridge_server import serve_bridge
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator, speech_like_pcm16
from telephony_bridge.testing.twilio_simulator import SimulatedCall, speech_like_ulaw

TOKEN = "bench-token"
PUBLIC_URL = "https://bridge.bench.invalid"
INTERRUPT_AT_MS = [300, 450, 700, 1100, 1530, 1990, 2470, 3010, 3690]


async def main(delta_ms: int, speed: float) -> None:
    simulator = RealtimeSimulator(answer_audio=speech_like_pcm16(4000), delta_ms=delta_ms, speed=speed)
    await simulator.start()
    settings = settings_from_env(
        {"PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": TOKEN, "OPENAI_API_KEY": "k", "REALTIME_URL": simulator.url}
    )
    config = parse_config("[defaults.turn_detection]\nsilence_duration_ms = 300\n[call_log]\npath = \"\"\n", "bench")
    loop = asyncio.get_running_loop()
    errors, hangups = [], []
    print(
        "| interrupt at (ms) | truncate (ms) | heard (ms) | error (ms) "
        "| caller speaks -> audio stops (ms) | stop -> session closed (ms) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    async with serve_bridge(settings, config) as bridge:
        for index, interrupt_at in enumerate(INTERRUPT_AT_MS):
            call = SimulatedCall(bridge_url=bridge, public_url=PUBLIC_URL, auth_token=TOKEN)
            await call.dial()
            await call.connect()
            session = await simulator.wait_for_session(index)
            call.say(speech_like_ulaw(600))
            await call.wait_heard(interrupt_at, timeout=15)
            spoke_at = loop.time()
            call.say(speech_like_ulaw(800))
            truncate = await session.wait_for("conversation.item.truncate", timeout=5)
            await call.wait_for_message("clear", timeout=2)
            cleared_at = call.clears[0][0]
            heard = call.played_ms_at(cleared_at)
            error = truncate["audio_end_ms"] - heard
            stop_at = loop.time()
            await call.hang_up()
            closed_at = await session.wait_closed(timeout=2)
            hangup_ms = (closed_at - stop_at) * 1000
            errors.append(error)
            hangups.append(hangup_ms)
            print(
                f"| {interrupt_at} | {truncate['audio_end_ms']} | {heard:.1f} | {error:+.1f} "
                f"| {(cleared_at - spoke_at) * 1000:.0f} | {hangup_ms:.1f} |"
            )
    await simulator.stop()
    print(
        f"\ntruncate error: median {statistics.median(errors):+.1f} ms, worst {max(errors, key=abs):+.1f} ms; "
        f"stop -> session closed: median {statistics.median(hangups):.1f} ms, worst {max(hangups):.1f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delta-ms", type=int, default=100, help="size of the model's audio deltas")
    parser.add_argument("--speed", type=float, default=4.0, help="how much faster than real time the model streams")
    args = parser.parse_args()
    asyncio.run(main(args.delta_ms, args.speed))
