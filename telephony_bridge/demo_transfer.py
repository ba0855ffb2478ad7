"""The demo's second scenario (`telephony-bridge demo --transfer`): the caller asks for a person and is transferred.

The same real bridge as the first scenario, with Twilio's REST API played by `TwilioApiSimulator`
(`TWILIO_API_URL`), so it needs no account. The model (the Realtime simulator) says "let me connect
you" and calls `transfer_call`; once that has been heard (the mark echoes say so) the bridge asks
Twilio to `<Dial>` the front desk; the simulated person answers, hears the model's summary
whispered, and is joined to the caller. The simulators do not understand speech, so both sides'
audio is speech-like noise: the timeline says what each would be saying.
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from telephony_bridge.config import parse_config, settings_from_env
from telephony_bridge.demo import (
    DEMO_CONFIG,
    DEMO_KEY,
    DEMO_NUMBER,
    DEMO_TOKEN,
    PUBLIC_URL,
    Timeline,
    playing_spans,
    stereo_of_call,
)
from telephony_bridge.observe.recording import RecordedCall, read_recording, write_stereo_wav8k
from telephony_bridge.testing.bridge_server import serve_bridge
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator, ScriptedAnswer, ScriptedCall, speech_like_pcm16
from telephony_bridge.testing.twilio_api import TwilioApiSimulator
from telephony_bridge.testing.twilio_simulator import Callee, SimulatedCall, speech_like_ulaw

FRONT_DESK = "+14155550199"
SUMMARY = "Ada Lovelace wants to move her Tuesday cleaning to Friday."
HAND_OVER = ScriptedAnswer(
    speech_like_pcm16(1800, f0=190.0), "Of course, let me connect you to the front desk.",
    calls=(ScriptedCall("transfer_call", {"target": "front_desk", "summary": SUMMARY}),),
)
RING_S = 1.5
TALK_S = 2.0
"""The person at the front desk answers after this many seconds of ringing, and talks this long."""

UNUSED_TOOL_URL = "http://127.0.0.1:9/book"
"""The appointment call's tool is configured for this number too; this call never calls it."""

TRANSFER_CONFIG = DEMO_CONFIG + f"""
[numbers."{DEMO_NUMBER}".transfer]
front_desk = "{FRONT_DESK}"
"""

_STEPS = {
    "redirected": ("twilio", "runs the new TwiML: the media stream ends"),
    "dialling": ("twilio", "dials the front desk ({detail})"),
    "whisper": ("desk", "answers and hears, alone: \"{detail}\""),
    "bridged": ("twilio", "caller and front desk joined"),
    "dial-ended": ("twilio", "the front desk hung up (DialCallStatus={detail})"),
    "hung-up": ("twilio", "call over"),
}


@dataclass
class TransferSummary:
    call_s: float
    heard_to_rest_ms: float | None
    """From the hand-over's last mark echo (the caller has heard it all) to the REST request."""
    whispered: str | None
    bridged_to: str | None

    def lines(self) -> list[str]:
        delay = f"{self.heard_to_rest_ms:.0f} ms" if self.heard_to_rest_ms is not None else "n/a"
        return [
            f"call length                 {self.call_s:.1f} s",
            f"hand-over heard -> <Dial>   {delay} (last mark echo -> REST request)",
            f"whispered to the desk       {self.whispered or '-'}",
            f"bridged to                  {self.bridged_to or '-'}",
        ]


def heard_to_rest_ms(recording: RecordedCall) -> float | None:
    """From the recording: the last mark echo before the call's first REST request, to that request."""
    request = next((f for f in recording.frames if f.direction == "twilio-rest" and f.kind == "request"), None)
    if request is None:
        return None
    echoes = [f.t_ms for f in recording.frames if f.direction == "twilio>bridge" and f.kind == "mark" and f.t_ms <= request.t_ms]
    return request.t_ms - echoes[-1] if echoes else None


async def _follow(call: SimulatedCall, api: TwilioApiSimulator, timeline: Timeline, stop: asyncio.Event) -> None:
    """Print the REST request and each thing Twilio does, as it happens, at the time it happened."""
    requests_seen = steps_seen = 0
    while not stop.is_set():
        for request in api.requests[requests_seen:]:
            what = "<Dial> front desk" if "<Dial" in request.params.get("Twiml", "") else ", ".join(request.params)
            timeline.mark("bridge", f"REST {request.method} Calls/{{CallSid}}.json: {what} (HTTP {request.status})",
                          request.at - timeline.start)
        requests_seen = len(api.requests)
        for step in call.timeline[steps_seen:]:
            if step.event in _STEPS:
                who, what = _STEPS[step.event]
                timeline.mark(who, what.format(detail=step.detail), step.at - timeline.start)
        steps_seen = len(call.timeline)
        await asyncio.sleep(0.02)


def _svg(timeline: Timeline, call: SimulatedCall, t0: float, length_s: float) -> str:
    """The caller's and the model's speech, then the transfer's moments as labelled lines."""
    width, left, scale = 960, 90, (960 - 110) / max(length_s, 1.0)

    def x(seconds: float) -> float:
        return left + seconds * scale

    shapes = [f'<rect x="{x(at - t0):.1f}" y="30" width="{len(ulaw) / 8000 * scale:.1f}" height="26" fill="#2b7bb9"/>'
              for at, ulaw in call.said]
    shapes += [f'<rect x="{x(start - t0):.1f}" y="80" width="{seconds * scale:.1f}" height="26" fill="#e07b39"/>'
               for start, seconds in playing_spans(call.playback)]
    labelled = [m for m in timeline.moments if m.what.startswith("REST") or m.who == "desk" or "joined" in m.what]
    for row, moment in enumerate(labelled):
        at = x(moment.at_s)
        label = moment.what.split(":")[0] if moment.who != "desk" else "whisper to the front desk"
        shapes.append(f'<line x1="{at:.1f}" x2="{at:.1f}" y1="20" y2="{130 + 16 * row}" stroke="#6c3483" stroke-width="2"/>')
        shapes.append(f'<text x="{at + 4:.1f}" y="{130 + 16 * row}" font-size="12" fill="#6c3483">{html.escape(label)}</text>')
    joined = next((m.at_s for m in timeline.moments if "joined" in m.what), None)
    parted = next((m.at_s for m in timeline.moments if "hung up" in m.what), length_s)
    if joined is not None:
        shapes.append(f'<rect x="{x(joined):.1f}" y="60" width="{(parted - joined) * scale:.1f}" height="16" fill="#27ae60"/>')
        shapes.append(f'<text x="{x(joined) + 4:.1f}" y="72" font-size="11" fill="white">with the front desk</text>')
    height = 150 + 16 * len(labelled)
    ticks = "".join(f'<text x="{x(s) - 4:.1f}" y="{height - 6}" font-size="11" fill="#555">{s}s</text>'
                    for s in range(0, int(length_s) + 1))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">'
        '<rect width="100%" height="100%" fill="white"/>'
        '<text x="8" y="48" font-size="13">caller</text><text x="8" y="98" font-size="13">model</text>'
        '<text x="8" y="72" font-size="11" fill="#27ae60">transfer</text>'
        + "".join(shapes) + ticks + "</svg>\n"
    )


async def run_transfer_demo(out_dir: Path, *, echo: Callable[[str], None] = print) -> TransferSummary:
    """Place one simulated call that the model transfers; write call.wav, timeline.svg and the recording to `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    recordings = out_dir / "recording"
    config = parse_config(TRANSFER_CONFIG.format(folder=recordings.as_posix(), tool_url=UNUSED_TOOL_URL), "demo configuration")
    loop = asyncio.get_running_loop()
    async with (
        RealtimeSimulator(answers=[HAND_OVER], require_key=DEMO_KEY) as model,
        TwilioApiSimulator(auth_token=DEMO_TOKEN) as api,
    ):
        api.callees[FRONT_DESK] = Callee("answer", ring_s=RING_S, hang_up_after_s=TALK_S)
        settings = settings_from_env({"OPENAI_API_KEY": DEMO_KEY, "REALTIME_URL": model.url, "TWILIO_API_URL": api.url})
        settings = dataclasses.replace(settings, public_url=PUBLIC_URL, twilio_auth_token=DEMO_TOKEN)
        echo(f"model:  the local Realtime simulator at {model.url}, scripted to transfer the caller")
        echo(f"twilio: the REST API simulator at {api.url} (TWILIO_API_URL; no account needed)")
        async with serve_bridge(settings, config) as bridge_url:
            echo(f"bridge: {bridge_url}; the number's transfer targets: front_desk = {FRONT_DESK}\n")
            call = SimulatedCall(bridge_url=bridge_url, public_url=PUBLIC_URL, auth_token=DEMO_TOKEN, to_number=DEMO_NUMBER)
            api.register(call)
            timeline = Timeline(loop.time, echo)
            stop = asyncio.Event()
            follower = asyncio.create_task(_follow(call, api, timeline, stop))
            timeline.mark("phone", f"dials {DEMO_NUMBER}")
            await call.run()
            await call.wait_for_step("stream-opened", timeout=10)
            timeline.mark("phone", "media stream open")
            await model.wait_for_session(0)
            await asyncio.sleep(0.4)
            timeline.mark("caller", "speaking: \"Can I talk to someone at the front desk?\" (synthetic speech)")
            call.say(speech_like_ulaw(1400))
            await call.wait_said(timeout=10)
            timeline.mark("caller", "stops speaking")
            await call.wait_heard(100, timeout=10)
            timeline.mark("model", f"speaking: \"{HAND_OVER.transcript}\" and calls transfer_call(front_desk)")
            await call.wait_over(timeout=30)
            await asyncio.sleep(0.05)
            stop.set()
            await follower
            length_s = timeline.now_s()
    recording_path = next(recordings.glob(f"*{call.call_sid}.jsonl"))
    recording = read_recording(recording_path)
    whispered = call.whispers[0][1] if call.whispers else None
    bridged = next((detail for event, detail in call.steps("bridged")), None)
    summary = TransferSummary(length_s, heard_to_rest_ms(recording), whispered, bridged)
    both = stereo_of_call(call, timeline.start, length_s)
    write_stereo_wav8k(out_dir / "call.wav", both[:, 0], both[:, 1])
    (out_dir / "timeline.svg").write_text(_svg(timeline, call, timeline.start, length_s), encoding="utf-8")
    echo("\nsummary")
    for line in summary.lines():
        echo(f"  {line}")
    echo(f"\nwrote {out_dir / 'call.wav'} (left: the caller, right: what the caller heard from the model)")
    echo(f"      {out_dir / 'timeline.svg'}")
    echo(f"      {recording_path} (with the REST request and Twilio's answer: telephony-bridge replay takes it)")
    return summary
