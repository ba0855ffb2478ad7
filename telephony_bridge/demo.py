"""A whole phone call on one machine: the real bridge between a simulated phone and a model.

The bridge runs as it does in production (uvicorn on loopback, signatures checked); a Twilio
simulator dials it, speaks a recorded caller and plays what comes back in real time; the model
is the Realtime simulator (or, with `--live`, the real OpenAI or Azure service). The caller
interrupts the first answer mid-sentence, so the demo shows barge-in end to end. Everything the
summary reports is measured from what crossed the sockets (the call recording) and from what
the simulated phone actually played.
"""

from __future__ import annotations

import asyncio
import audioop
import dataclasses
import statistics
import wave
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from telephony_bridge.admin.timeline import CallTimeline, timeline_of, timeline_svg
from telephony_bridge.config import parse_config, settings_from_env
from telephony_bridge.observe.recording import RecordedCall, read_recording, write_stereo_wav8k
from telephony_bridge.testing.bridge_server import serve_bridge
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator, ScriptedAnswer, ScriptedCall
from telephony_bridge.testing.tool_server import ToolReply, ToolServer
from telephony_bridge.testing.twilio_simulator import SimulatedCall, load_wav_ulaw
from telephony_bridge.wire import MODEL_AUDIO_DELTAS, PCM24K_RATE_HZ, ULAW_RATE_HZ, ulaw_ms

DEMO_NUMBER = "+14155550100"
DEMO_TOKEN = "demo-twilio-auth-token"
DEMO_KEY = "sk-demo-simulated-model"
PUBLIC_URL = "https://bridge.demo.invalid"
INTERRUPT_AFTER_MS = 2200
"""The caller cuts in this far into the first answer: mid-sentence for the shipped answer (5.5 s)."""

ANSWERS = [
    ("model_answer_1.wav", "Of course. On Tuesday we have openings at nine, at half past ten, and at two in the afternoon."),
    ("model_answer_2.wav", "Great, you are booked for half past ten. Goodbye!"),
]
CALLER_TURNS = ["caller_turn_1.wav", "caller_turn_2.wav"]
BOOKING = {"day": "Tuesday", "time": "10:30"}
"""What the simulated model books, through the clinic's `book_appointment` tool, before it confirms."""

DEMO_CONFIG = """
[defaults]
instructions = "You are the receptionist of Bright Smile Dental. Offer appointment times and book one. Be brief."
voice = "marin"
record = true

[defaults.turn_detection]
silence_duration_ms = 500

[[defaults.tools]]
name = "book_appointment"
description = "Book an appointment; answers whether it is booked."
url = "{tool_url}"
[defaults.tools.parameters]
type = "object"
properties = {{ day = {{ type = "string" }}, time = {{ type = "string" }} }}
required = ["day", "time"]

[recording]
folder = "{folder}"

[call_log]
path = ""
"""


@dataclass
class Moment:
    at_s: float
    who: str
    what: str


@dataclass
class DemoSummary:
    call_s: float
    caller_to_model_ms: list[float]
    model_to_caller_ms: list[float]
    barge_in_reaction_ms: float | None
    truncate_ms: int | None
    heard_ms: float | None
    tool_calls: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    """(tool, ms from its request to its answer), from the recording."""

    def lines(self) -> list[str]:
        def median(values: list[float]) -> str:
            if not values:
                return "n/a"
            return f"median {statistics.median(values):.2f} ms, max {max(values):.2f} ms ({len(values)} frames)"

        lines = [
            f"call length                 {self.call_s:.1f} s",
            f"bridge latency caller>model {median(self.caller_to_model_ms)}",
            f"bridge latency model>caller {median(self.model_to_caller_ms)}",
        ]
        if self.barge_in_reaction_ms is not None:
            lines.append(
                f"barge-in reaction           {self.barge_in_reaction_ms:.1f} ms "
                "(model heard the caller -> Twilio told to clear)"
            )
        if self.truncate_ms is not None and self.heard_ms is not None:
            lines.append(
                f"truncate point              {self.truncate_ms} ms; the caller heard {self.heard_ms:.0f} ms "
                f"(off by {self.truncate_ms - self.heard_ms:+.0f} ms)"
            )
        for name, ms in self.tool_calls:
            lines.append(f"tool call {name:<17} {ms:.1f} ms (request to answer, a local stub)")
        return lines


class Timeline:
    """Prints the call as it happens and keeps it for the picture."""

    def __init__(self, clock: Callable[[], float], echo: Callable[[str], None]) -> None:
        self.moments: list[Moment] = []
        self._clock = clock
        self.start = clock()
        self._echo = echo

    def now_s(self) -> float:
        return self._clock() - self.start

    def mark(self, who: str, what: str, at_s: float | None = None) -> None:
        moment = Moment(self.now_s() if at_s is None else at_s, who, what)
        self.moments.append(moment)
        self._echo(f"  {moment.at_s:6.2f} s  {who:<7} {what}")


def _fixture(name: str) -> Path:
    return Path(str(resources.files("telephony_bridge") / "fixtures" / name))


def _read_pcm24k(path: Path) -> bytes:
    with wave.open(str(path), "rb") as wav:
        if (wav.getframerate(), wav.getsampwidth(), wav.getnchannels()) != (PCM24K_RATE_HZ, 2, 1):
            raise ValueError(f"{path}: expected 24 kHz 16-bit mono")
        return wav.readframes(wav.getnframes())


async def _watch(call: SimulatedCall, timeline: Timeline, stop: asyncio.Event) -> None:
    """Report, as they happen, when the caller starts hearing the model and when the bridge clears it."""
    playing, clears_seen = False, 0
    last_heard = 0.0
    while not stop.is_set():
        heard = call.heard_ms()
        if heard > last_heard and not playing:
            playing = True
            timeline.mark("model", "speaking (the caller hears it)")
        elif playing and heard == last_heard and timeline.now_s() - (_played_until(call) - timeline.start) > 0.1:
            playing = False
            timeline.mark("model", f"silent (heard {heard / 1000:.1f} s so far)")
        last_heard = heard
        if len(call.clears) > clears_seen:
            clears_seen = len(call.clears)
            timeline.mark("bridge", f"clear: Twilio drops {ulaw_ms(call.clears[-1][1]):.0f} ms of queued model audio")
            playing = False
        await asyncio.sleep(0.02)


def _played_until(call: SimulatedCall) -> float:
    """When the audio the caller heard last ended (on the loop's clock)."""
    playback = call.playback
    return playback[-1][0] + playback[-1][1] / ULAW_RATE_HZ if playback else float("-inf")


async def _listen(call: SimulatedCall, up_to_ms: float, timeout_s: float = 30.0) -> None:
    """Until the caller has heard `up_to_ms` more of the model, or its answer ended sooner.

    A real model's answers vary in length: an answer that stops short of the interruption point
    (0.8 s without new audio) ends the wait too.
    """
    loop = asyncio.get_running_loop()
    start_ms, deadline = call.heard_ms(), loop.time() + timeout_s
    last_ms, last_change = start_ms, loop.time()
    while call.heard_ms() - start_ms < up_to_ms:
        if loop.time() > deadline:
            raise TimeoutError(f"the model said nothing for {timeout_s:g} s")
        await asyncio.sleep(0.05)
        if call.heard_ms() != last_ms:
            last_ms, last_change = call.heard_ms(), loop.time()
        elif last_ms > start_ms and loop.time() - last_change > 0.8:
            return


async def _converse(call: SimulatedCall, timeline: Timeline) -> None:
    """The caller's side of the script: ask, interrupt the answer, listen to the reply, hang up."""
    first, second = (load_wav_ulaw(_fixture(name)) for name in CALLER_TURNS)
    await asyncio.sleep(0.4)
    timeline.mark("caller", "speaking: \"Hi, I would like to book a cleaning for next Tuesday.\"")
    call.say(first)
    await call.wait_said(timeout=10)
    timeline.mark("caller", "stops speaking")
    await _listen(call, INTERRUPT_AFTER_MS)
    timeline.mark("caller", "interrupts: \"Half past ten, please.\"")
    call.say(second)
    await call.wait_said(timeout=10)
    timeline.mark("caller", "stops speaking")
    await _listen(call, float("inf"))
    timeline.mark("caller", "hangs up")
    await call.hang_up()


def _latencies(recording: RecordedCall) -> tuple[list[float], list[float]]:
    """Per frame, from its arrival at the bridge to its audio leaving the other side (from the recording).

    Each 20 ms caller frame becomes one append; each model delta that is played becomes one
    media message; deltas of an answer cut by barge-in are dropped and not counted.
    """
    arrivals = [f.t_ms for f in recording.frames if f.direction == "twilio>bridge" and f.kind == "media"]
    appends = [f.t_ms for f in recording.frames if f.direction == "bridge>realtime" and f.kind == "input_audio_buffer.append"]
    # Not strict: caller audio held too long for a session, or arriving after it closed, is never appended.
    caller_to_model = [sent - arrived for arrived, sent in zip(arrivals, appends, strict=False)]
    model_to_caller = []
    pending_delta: float | None = None
    for frame in recording.frames:
        if frame.direction == "realtime>bridge" and frame.kind in MODEL_AUDIO_DELTAS:
            pending_delta = frame.t_ms
        elif frame.direction == "bridge>twilio" and frame.kind == "media" and pending_delta is not None:
            model_to_caller.append(frame.t_ms - pending_delta)
            pending_delta = None
        elif frame.direction == "bridge>twilio" and frame.kind == "clear":
            pending_delta = None
    return caller_to_model, model_to_caller


def _barge_in_reaction(recording: RecordedCall, picture: CallTimeline) -> float | None:
    """From the service hearing the caller (`speech_started`) to the bridge telling Twilio to clear, from the recording."""
    if not picture.barge_ins:
        return None
    clear_ms = picture.barge_ins[0].at_s * 1000
    started = [f.t_ms for f in recording.frames
               if f.direction == "realtime>bridge" and f.kind == "input_audio_buffer.speech_started" and f.t_ms <= clear_ms]
    return clear_ms - started[-1] if started else None


def stereo_of_call(call: SimulatedCall, t0: float, length_s: float) -> np.ndarray:
    """Left: what the caller said; right: what the caller heard, each placed at the time it happened."""
    samples = int((length_s + 1) * ULAW_RATE_HZ)
    stereo = np.zeros((samples, 2), dtype=np.int16)
    for at, ulaw in call.said:
        start = max(0, int((at - t0) * ULAW_RATE_HZ))
        pcm = np.frombuffer(audioop.ulaw2lin(ulaw, 2), dtype=np.int16)[: samples - start]
        stereo[start : start + len(pcm), 0] = pcm
    heard = np.frombuffer(audioop.ulaw2lin(bytes(call.heard), 2), dtype=np.int16)
    offset = 0
    for at, n_bytes in call.playback:
        start = int((at - t0) * ULAW_RATE_HZ)
        piece = heard[offset : offset + n_bytes][: max(0, samples - start)]
        stereo[start : start + len(piece), 1] = piece
        offset += n_bytes
    return stereo


def playing_spans(playback: list[tuple[float, int]]) -> list[tuple[float, float]]:
    """Runs of playback less than 25 ms apart joined into (start, seconds) spans."""
    spans: list[tuple[float, float]] = []
    for at, n_bytes in playback:
        if spans and at - (spans[-1][0] + spans[-1][1]) < 0.025:
            spans[-1] = (spans[-1][0], at + n_bytes / ULAW_RATE_HZ - spans[-1][0])
        else:
            spans.append((at, n_bytes / ULAW_RATE_HZ))
    return spans


async def run_demo(out_dir: Path, *, live: bool = False, echo: Callable[[str], None] = print) -> DemoSummary:
    """Place one simulated call through the real bridge; write call.wav, timeline.svg and the recording to `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    recordings = out_dir / "recording"
    timeline: Timeline | None = None

    def book(path: str, body: object) -> ToolReply:
        if timeline is not None:
            timeline.mark("tool", f"book_appointment {body.get('arguments') if isinstance(body, dict) else body}")
        return ToolReply(body={"booked": True, **BOOKING})

    clinic = ToolServer(book)
    await clinic.__aenter__()
    config = parse_config(DEMO_CONFIG.format(folder=recordings.as_posix(), tool_url=clinic.url("/book")), "demo configuration")
    simulator = None
    if live:
        settings = settings_from_env()
        if not settings.realtime.headers:
            raise SystemExit("telephony-bridge demo --live: set OPENAI_API_KEY (or the AZURE_OPENAI_* variables) first")
        echo(f"model: the real Realtime API at {settings.realtime.url.split('?')[0]} ({settings.realtime.dialect} dialect)")
    else:
        (offer, offered), (confirm, confirmed) = ((_read_pcm24k(_fixture(name)), text) for name, text in ANSWERS)
        answers = [
            ScriptedAnswer(offer, offered),
            ScriptedAnswer(None, calls=(ScriptedCall("book_appointment", BOOKING),)),
            ScriptedAnswer(confirm, confirmed),
        ]
        simulator = RealtimeSimulator(answers=answers, require_key=DEMO_KEY)
        await simulator.start()
        settings = settings_from_env({"OPENAI_API_KEY": DEMO_KEY, "REALTIME_URL": simulator.url})
        echo(f"model: the local Realtime simulator at {simulator.url} (no account needed; --live uses a real model)")
    settings = dataclasses.replace(settings, public_url=PUBLIC_URL, twilio_auth_token=DEMO_TOKEN)
    loop = asyncio.get_running_loop()
    try:
        async with serve_bridge(settings, config) as bridge_url:
            echo(f"bridge: {bridge_url} (the real server; webhook and media socket signed as Twilio signs them)\n")
            call = SimulatedCall(bridge_url=bridge_url, public_url=PUBLIC_URL, auth_token=DEMO_TOKEN, to_number=DEMO_NUMBER)
            timeline = Timeline(loop.time, echo)
            timeline.mark("phone", f"dials {DEMO_NUMBER}")
            await call.dial()
            timeline.mark("bridge", "answers with TwiML <Connect action><Stream>: it says what follows the stream")
            await call.connect()
            timeline.mark("phone", "media stream open")
            stop_watching = asyncio.Event()
            watcher = asyncio.create_task(_watch(call, timeline, stop_watching))
            await _converse(call, timeline)
            stop_watching.set()
            await watcher
            length_s = timeline.now_s()
        t0 = timeline.start
    finally:
        if simulator is not None:
            await simulator.stop()
        await clinic.__aexit__(None, None, None)
    recording_path = next(recordings.glob(f"*{call.call_sid}.jsonl"))
    recording = read_recording(recording_path)
    caller_to_model, model_to_caller = _latencies(recording)
    picture = timeline_of(recording)
    truncate_ms = picture.barge_ins[0].truncate_ms if picture.barge_ins else None
    heard = call.played_ms_at(call.clears[0][0]) if call.clears else None
    tool_calls = [(tool.name, tool.latency_ms) for tool in picture.tools]
    summary = DemoSummary(
        length_s, caller_to_model, model_to_caller, _barge_in_reaction(recording, picture), truncate_ms, heard, tool_calls
    )
    both = stereo_of_call(call, t0, length_s)
    write_stereo_wav8k(out_dir / "call.wav", both[:, 0], both[:, 1])
    # The console's picture of a call (admin/timeline.py), drawn from the recording: the demo shows what an operator sees.
    (out_dir / "timeline.svg").write_text(timeline_svg(picture), encoding="utf-8")
    echo("\nsummary")
    for line in summary.lines():
        echo(f"  {line}")
    echo(f"\nwrote {out_dir / 'call.wav'} (left: the caller, right: what the caller heard)")
    echo(f"      {out_dir / 'timeline.svg'}")
    echo(f"      {recording_path} (the call recording: telephony-bridge replay / export-wav take it)")
    return summary


def main(out_dir: Path, live: bool, transfer: bool = False, outbound: bool = False) -> int:
    def echo(line: str) -> None:
        print(line, flush=True)

    try:
        if outbound:
            from telephony_bridge.demo_outbound import run_outbound_demo

            asyncio.run(run_outbound_demo(echo=echo))
        elif transfer:
            from telephony_bridge.demo_transfer import run_transfer_demo

            asyncio.run(run_transfer_demo(out_dir, echo=echo))
        else:
            asyncio.run(run_demo(out_dir, live=live, echo=echo))
    except KeyboardInterrupt:
        return 130
    return 0

