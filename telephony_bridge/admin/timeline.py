"""A recorded call's timeline: who spoke when, where the caller cut in, each tool call; and its picture as SVG.

It is read from the same two tracks as the call's WAV (`recording.stereo_pcm8k`: the caller, and what
the caller heard as Twilio played it), so second N of the picture is second N of the audio and a
player's position can follow it. Speech is where a 20 ms window is louder than `SPEECH_RMS`, with
gaps shorter than `JOIN_GAP_S` joined: the pauses between a sentence's words are not turns. A
redacted recording holds only silence; its caller row then comes from the service's VAD events.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

import numpy as np

from telephony_bridge.observe.recording import RecordedCall, stereo_pcm8k
from telephony_bridge.wire import ULAW_RATE_HZ

WINDOW = ULAW_RATE_HZ // 50
"""20 ms of 8 kHz samples."""
SPEECH_RMS = 200.0
"""About -44 dBFS: above line noise and comfort noise, below the quietest speech."""
JOIN_GAP_S = 0.3


@dataclass(frozen=True)
class Span:
    start_s: float
    seconds: float


@dataclass(frozen=True)
class BargeIn:
    at_s: float
    """When the bridge told Twilio to drop the model's queued audio."""
    truncate_ms: int | None
    """Where the model's answer was cut (`conversation.item.truncate`), if it was."""


@dataclass(frozen=True)
class ToolSpan:
    name: str
    start_s: float
    latency_ms: float
    outcome: str


@dataclass(frozen=True)
class CallTimeline:
    length_s: float
    caller: tuple[Span, ...]
    heard: tuple[Span, ...]
    barge_ins: tuple[BargeIn, ...]
    tools: tuple[ToolSpan, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "length_s": round(self.length_s, 3),
            "caller": [_span_json(span) for span in self.caller],
            "heard": [_span_json(span) for span in self.heard],
            "barge_ins": [{"at_s": round(b.at_s, 3), "truncate_ms": b.truncate_ms} for b in self.barge_ins],
            "tools": [{"name": t.name, "start_s": round(t.start_s, 3), "latency_ms": round(t.latency_ms, 1),
                       "outcome": t.outcome} for t in self.tools],
        }


def _span_json(span: Span) -> dict[str, float]:
    return {"start_s": round(span.start_s, 3), "seconds": round(span.seconds, 3)}


def speech_spans(track: np.ndarray) -> tuple[Span, ...]:
    """Where `track` (8 kHz PCM16) is loud enough to be speech, joined across short pauses."""
    windows = len(track) // WINDOW
    if windows == 0:
        return ()
    frames = track[: windows * WINDOW].astype(np.float64).reshape(windows, WINDOW)
    loud = np.sqrt((frames * frames).mean(axis=1)) > SPEECH_RMS
    spans: list[Span] = []
    window_s = WINDOW / ULAW_RATE_HZ
    for index in np.flatnonzero(loud):
        start = float(index) * window_s
        if spans and start - (spans[-1].start_s + spans[-1].seconds) < JOIN_GAP_S:
            spans[-1] = Span(spans[-1].start_s, start + window_s - spans[-1].start_s)
        else:
            spans.append(Span(start, window_s))
    return tuple(spans)


def _vad_spans(call: RecordedCall) -> tuple[Span, ...]:
    spans: list[Span] = []
    started: float | None = None
    for frame in call.frames:
        if frame.direction != "realtime>bridge":
            continue
        if frame.kind == "input_audio_buffer.speech_started":
            started = frame.t_ms / 1000
        elif frame.kind == "input_audio_buffer.speech_stopped" and started is not None:
            spans.append(Span(started, frame.t_ms / 1000 - started))
            started = None
    return tuple(spans)


def timeline_of(call: RecordedCall) -> CallTimeline:
    caller_track, heard_track = stereo_pcm8k(call)
    caller = speech_spans(caller_track) or _vad_spans(call)
    heard = speech_spans(heard_track)
    barge_ins: list[BargeIn] = []
    asked: dict[str, tuple[str, float]] = {}
    tools: list[ToolSpan] = []
    for frame in call.frames:
        message = frame.message if isinstance(frame.message, dict) else {}
        if frame.direction == "bridge>twilio" and frame.kind == "clear":
            barge_ins.append(BargeIn(frame.t_ms / 1000, None))
        elif frame.direction == "bridge>realtime" and frame.kind == "conversation.item.truncate" and barge_ins:
            end_ms = message.get("audio_end_ms")
            barge_ins[-1] = BargeIn(barge_ins[-1].at_s, end_ms if isinstance(end_ms, int) else None)
        elif frame.direction == "tools" and message.get("kind") == "request":
            asked[str(message.get("call_id"))] = (str(message.get("tool")), frame.t_ms)
        elif frame.direction == "tools" and str(message.get("call_id")) in asked:
            name, started_ms = asked.pop(str(message.get("call_id")))
            tools.append(ToolSpan(name, started_ms / 1000, frame.t_ms - started_ms, str(message.get("outcome", ""))))
    return CallTimeline(len(caller_track) / ULAW_RATE_HZ, caller, heard, tuple(barge_ins), tuple(tools))


WIDTH = 960
LEFT = 90
"""Room for the rows' names, as in the demo's picture."""


def timeline_svg(timeline: CallTimeline) -> str:
    """The demo's picture of a call (caller above, the model as heard below, barge-ins in red), plus tool calls.

    The plotted area starts at x=`LEFT` and spans `data-seconds` seconds over `data-width` pixels, so a
    player can place its position on it. Colours keep 4.5:1 contrast against white.
    """
    scale = (WIDTH - LEFT - 20) / max(timeline.length_s, 1.0)

    def x(seconds: float) -> float:
        return LEFT + seconds * scale

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} 190" width="{WIDTH}" height="190" '
        f'font-family="sans-serif" role="img" data-left="{LEFT}" data-width="{WIDTH - LEFT - 20}" '
        f'data-seconds="{max(timeline.length_s, 1.0):.3f}">',
        "<title>Timeline of the call: when the caller spoke, when the model was heard, barge-ins and tool calls</title>",
        '<rect width="100%" height="100%" fill="white"/>',
        '<text x="8" y="48" font-size="13">caller</text><text x="8" y="98" font-size="13">model</text>',
        '<text x="8" y="112" font-size="10" fill="#595959">(as heard)</text>',
        '<text x="8" y="140" font-size="13">tools</text>',
    ]
    for span in timeline.caller:
        parts.append(f'<rect x="{x(span.start_s):.1f}" y="30" width="{max(span.seconds * scale, 1):.1f}" height="26" '
                     'fill="#1f6fa8"/>')
    for span in timeline.heard:
        parts.append(f'<rect x="{x(span.start_s):.1f}" y="80" width="{max(span.seconds * scale, 1):.1f}" height="26" '
                     'fill="#b35412"/>')
    for tool in timeline.tools:
        start, bar = x(tool.start_s), max(tool.latency_ms / 1000 * scale, 3)
        parts.append(f'<rect x="{start:.1f}" y="126" width="{bar:.1f}" height="18" fill="#4b7d2a"/>')
        parts.append(f'<text x="{start + bar + 4:.1f}" y="139" font-size="11" fill="#1d3b0f">'
                     f'{escape(tool.name)} {tool.latency_ms:.0f} ms</text>')
    for barge_in in timeline.barge_ins:
        at = x(barge_in.at_s)
        label = "barge-in: clear" + (f" + truncate at {barge_in.truncate_ms} ms" if barge_in.truncate_ms is not None else "")
        parts.append(f'<line x1="{at:.1f}" x2="{at:.1f}" y1="20" y2="150" stroke="#b02a1c" stroke-width="2"/>')
        parts.append(f'<text x="{at + 4:.1f}" y="20" font-size="12" fill="#b02a1c">{label}</text>')
    step = max(1, round(timeline.length_s / 20))
    for second in range(0, int(timeline.length_s) + 1, step):
        parts.append(f'<line x1="{x(second):.1f}" x2="{x(second):.1f}" y1="158" y2="162" stroke="#555"/>'
                     f'<text x="{x(second) - 4:.1f}" y="176" font-size="11" fill="#555">{second}s</text>')
    parts.append("</svg>\n")
    return "".join(parts)
