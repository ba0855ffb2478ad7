#!/usr/bin/env python3
"""The bridge's own CPU per call-second, without sockets: parse, controller, conversion and encoding.

One call is driven through the code a media frame and a model delta take between the sockets
(``parse_twilio_message``, ``RealtimeEventParser.read``, ``CallController.handle``,
``encode_for_twilio``, ``encode_for_realtime``) for ``--seconds`` of simulated time on a manual
clock: a caller frame every 20 ms, the model talking half the time in 2 s answers with deltas of
20 ms or 20-100 ms, and Twilio's echo of each mark once the audio before it has played (the
``TwilioPlayback`` model the load generator uses). Printed: the messages that crossed the two
sockets per call-second and the process CPU they took, the median of ``--repeats`` runs.

No sockets and no event loop, so the figure moves only with this code and holds up on a machine
other processes load, where ``scripts/bench_calls.py`` cannot; what it leaves out (websocket
framing, the ASGI layers, the loop's wake-ups) is that script's to measure. Compare trees by
running it twice, e.g. ``PYTHONPATH=/tmp/old .venv/bin/python scripts/bench_hot_path.py``.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import statistics
import time

from telephony_bridge.call.controller import CallController
from telephony_bridge.call.events import (
    RealtimeConnected,
    RealtimeMessage,
    SendTwilioMark,
    SendTwilioMedia,
    SessionConfigured,
    StreamStarted,
    TwilioMessage,
)
from telephony_bridge.config import CallProfile
from telephony_bridge.realtime.session import RealtimeEventParser, encode_for_realtime
from telephony_bridge.testing.twilio_playback import TwilioPlayback
from telephony_bridge.twilio.media_stream import encode_for_twilio, parse_twilio_message


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def caller_frame(n: int) -> str:
    payload = base64.b64encode(bytes(random.randrange(256) for _ in range(160))).decode()
    return json.dumps({"event": "media", "sequenceNumber": str(n + 2), "streamSid": "MZ1",
                       "media": {"track": "inbound", "chunk": str(n + 1), "timestamp": str(20 * n), "payload": payload}})


def model_delta(ms: int, item: str, response: str) -> str:
    pcm = bytes(random.randrange(256) for _ in range(48 * ms))
    return json.dumps({"type": "response.output_audio.delta", "event_id": "e", "response_id": response, "item_id": item,
                       "output_index": 0, "content_index": 0, "delta": base64.b64encode(pcm).decode()})


def run(seconds: float, deltas: str) -> tuple[float, dict[str, float]]:
    random.seed(1)
    clock = Clock()
    controller = CallController(CallProfile(), clock)
    controller.start()
    controller.handle(RealtimeConnected())
    controller.handle(SessionConfigured())
    controller.handle(StreamStarted(stream_sid="MZ1", call_sid="CA1"))
    parser = RealtimeEventParser("ga", "CA1")
    playback = TwilioPlayback()
    frames = [caller_frame(n) for n in range(50)]
    sizes = [20] if deltas == "20" else [20, 40, 60, 80, 100]
    deltas_by_ms = {ms: model_delta(ms, "item", "resp") for ms in sizes}
    counts = dict.fromkeys(("twilio in", "twilio out", "model in", "model out"), 0.0)
    steps = int(seconds * 50)
    events: list[tuple[float, int, str]] = [(20 * n / 1000.0, 0, "caller") for n in range(steps)]
    answer = 0
    while answer * 4.0 < seconds:  # an answer of 2 s every 4 s, deltas at real-time pace
        at_ms, item = 0.0, f"item{answer}"
        while at_ms < 2000:
            ms = random.choice(sizes)
            events.append((answer * 4.0 + at_ms / 1000.0, 1, f"{ms}:{item}"))
            at_ms += ms
        events.append((answer * 4.0 + at_ms / 1000.0, 2, item))
        answer += 1
    events.sort()

    def echo(name: str) -> None:
        counts["twilio in"] += 1
        perform(controller.handle(parse_twilio_message(
            json.dumps({"event": "mark", "streamSid": "MZ1", "mark": {"name": name}}))))

    def perform(actions: list) -> None:
        for action in actions:
            if isinstance(action, TwilioMessage):
                encode_for_twilio(action, "MZ1")
                counts["twilio out"] += 1
                echoes = []
                if isinstance(action, SendTwilioMedia):
                    echoes = playback.media(clock.now, action.ulaw)
                elif isinstance(action, SendTwilioMark):
                    echoes = playback.mark(clock.now, action.name)
                for played in echoes:
                    echo(played.name)
            elif isinstance(action, RealtimeMessage):
                encode_for_realtime(action, "ga")
                counts["model out"] += 1

    started = time.process_time()
    for at, kind, what in events:
        while (due := playback.next_mark_at()) is not None and due <= at:
            clock.now = due
            for played in playback.advance(due):
                echo(played.name)
        clock.now = at
        if kind == 0:
            counts["twilio in"] += 1
            perform(controller.handle(parse_twilio_message(frames[int(at * 50) % 50])))
        elif kind == 1:
            ms, item = what.split(":")
            counts["model in"] += 1
            frame = deltas_by_ms[int(ms)].replace('"item"', f'"{item}"')
            perform(controller.handle(parser.read(frame)))
        else:
            counts["model in"] += 1
            perform(controller.handle(parser.read(json.dumps(
                {"type": "response.output_audio.done", "response_id": "resp", "item_id": what}))))
    cpu = time.process_time() - started
    return cpu * 1000.0 / seconds, {name: count / seconds for name, count in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="simulated call time per run")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| deltas ms | CPU ms per call-s (median) | messages per call-s: Twilio in / out, model in / out |")
    print("|---|---:|---|")
    for deltas in ("mixed", "20"):
        runs = [run(args.seconds, deltas) for _ in range(args.repeats)]
        cpu = statistics.median(ms for ms, _ in runs)
        counts = runs[0][1]
        print(f"| {'20-100' if deltas == 'mixed' else '20'} | {cpu:.3f} | {counts['twilio in']:.1f} / "
              f"{counts['twilio out']:.1f}, {counts['model in']:.1f} / {counts['model out']:.1f} |")


if __name__ == "__main__":
    main()
