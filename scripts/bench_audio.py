#!/usr/bin/env python3
"""Compare telephony_bridge.audio with audioop.ratecv and soxr on what a phone call needs.

Every converter is driven the way the bridge drives it: 20 ms frames, mu-law coding included.
Tones are coherent with the analysis window (whole cycles in 0.5 s), so a single DFT bin reads
each component with no leakage. Prints Markdown tables (the summary, tone sweeps across the band
edge from 3 to 5 kHz, and PESQ both ways on the packaged espeak-ng utterances), then whether this
codec meets its targets. Runs in under a minute: ``.venv/bin/python scripts/bench_audio.py``.
PESQ (ITU-T P.862) needs the ``pesq`` package from the dev extra; without it that table is skipped.
"""

from __future__ import annotations

import gc
import statistics
import time
import warnings
import wave
from collections.abc import Callable
from importlib import resources
from typing import Protocol

import numpy as np
import soxr

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # audioop: stdlib until 3.13, audioop-lts after
    import audioop

from telephony_bridge import audio

FRAME_MS = 20
TONE_LEVEL = 32000.0  # stopband tones near full scale: the hardest case for aliases
PASS_LEVEL = 8000.0  # passband tones at -12 dBFS, where mu-law's own error on the gain is small
ALIAS_TONES_HZ = (5000, 6000, 8000, 11000)
PASSBAND_HZ = tuple(range(300, 3401, 100))
IMAGE_TONES_HZ = tuple(range(300, 3401, 20))  # fine steps: images sweep the filter's stopband sidelobes
# The band edge: a model's tones from 3 to 5 kHz (above 4 kHz they fold to 8k-f), a caller's from
# 3 kHz to just under 4 kHz (their images land at 8k-f, from 4.05 to 5 kHz).
DOWN_EDGE_HZ = (3000, 3200, 3400, 3600, 3800, 3900, 3950, 4050, 4100, 4200, 4400, 4600, 4800, 5000)
UP_EDGE_HZ = (3000, 3200, 3400, 3600, 3800, 3900, 3950)
UTTERANCES = ("caller_turn_1.wav", "caller_turn_2.wav", "model_answer_1.wav", "model_answer_2.wav")
TIMED_FRAMES = 2000
TIMING_REPEATS = 7

# Everything that lands beyond the 4 kHz band edge, near it or far: at least 60 dB down.
TARGET_REJECTION_DB = 60.0
TARGET_RIPPLE_DB = 0.1
TARGET_DELAY_MS = 6.0
TARGET_CPU_US = 10.0


class Stream(Protocol):
    def convert(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class RatecvDown:
    """audioop.ratecv 24k->8k, then lin2ulaw: no anti-alias filter."""

    def __init__(self) -> None:
        self._state = None

    def convert(self, data: bytes) -> bytes:
        pcm, self._state = audioop.ratecv(data, 2, 1, 24000, 8000, self._state)
        return audioop.lin2ulaw(pcm, 2)

    def flush(self) -> bytes:
        return b""


class RatecvUp:
    """ulaw2lin, then audioop.ratecv 8k->24k: linear interpolation."""

    def __init__(self) -> None:
        self._state = None

    def convert(self, data: bytes) -> bytes:
        pcm, self._state = audioop.ratecv(audioop.ulaw2lin(data, 2), 2, 1, 8000, 24000, self._state)
        return pcm

    def flush(self) -> bytes:
        return b""


class SoxrDown:
    def __init__(self, quality: str) -> None:
        self._stream = soxr.ResampleStream(24000, 8000, 1, dtype="int16", quality=quality)

    def convert(self, data: bytes) -> bytes:
        return audioop.lin2ulaw(self._stream.resample_chunk(np.frombuffer(data, "<i2")).tobytes(), 2)

    def flush(self) -> bytes:
        return audioop.lin2ulaw(self._stream.resample_chunk(np.zeros(0, np.int16), last=True).tobytes(), 2)


class SoxrUp:
    def __init__(self, quality: str) -> None:
        self._stream = soxr.ResampleStream(8000, 24000, 1, dtype="int16", quality=quality)

    def convert(self, data: bytes) -> bytes:
        return self._stream.resample_chunk(np.frombuffer(audioop.ulaw2lin(data, 2), "<i2")).tobytes()

    def flush(self) -> bytes:
        return self._stream.resample_chunk(np.zeros(0, np.int16), last=True).tobytes()


CONVERTERS: dict[str, tuple[Callable[[], Stream], Callable[[], Stream]]] = {
    "telephony_bridge.audio": (audio.Pcm24kToUlaw8k, audio.Ulaw8kToPcm24k),
    "audioop.ratecv": (RatecvDown, RatecvUp),
    "soxr HQ": (lambda: SoxrDown("HQ"), lambda: SoxrUp("HQ")),
    "soxr LQ": (lambda: SoxrDown("LQ"), lambda: SoxrUp("LQ")),
}


def pcm(samples: np.ndarray) -> bytes:
    return np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes()


def linear(data: bytes, is_ulaw: bool) -> np.ndarray:
    return np.frombuffer(audioop.ulaw2lin(data, 2) if is_ulaw else data, "<i2").astype(np.float64)


def tone(freq: float, rate: int, seconds: float, level: float) -> np.ndarray:
    return level * np.cos(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)


def stream(make: Callable[[], Stream], data: bytes, frame_bytes: int) -> tuple[bytes, bytes]:
    """Feed ``data`` in frames; return what came out of ``convert`` and what ``flush`` added."""
    converter = make()
    out = b"".join(converter.convert(data[i : i + frame_bytes]) for i in range(0, len(data), frame_bytes))
    return out, converter.flush()


def amplitude(signal: np.ndarray, freq: float, rate: int) -> float:
    """Amplitude of the ``freq`` component over the middle 0.5 s (whole cycles of every tone used)."""
    n = rate // 2
    start = (len(signal) - n) // 2
    segment = signal[start : start + n]
    bin_value = np.dot(segment, np.exp(-2j * np.pi * freq * np.arange(n) / rate)) / n
    return float(abs(bin_value) * (1 if freq == 0 else 2))


def db(level: float, reference: float) -> float:
    """``level`` relative to ``reference`` in dB; infinite when the reference is exactly zero."""
    return float("inf") if reference == 0 else float(20 * np.log10(level / reference))


def alias_rejection(down: Callable[[], Stream]) -> float:
    """Worst rejection, in dB, of full-scale 5/6/8/11 kHz tones at their 8 kHz alias frequencies."""
    worst = float("inf")
    for freq in ALIAS_TONES_HZ:
        out, tail = stream(down, pcm(tone(freq, 24000, 1.0, TONE_LEVEL)), 2 * 24 * FRAME_MS)
        alias = abs((freq + 4000) % 8000 - 4000)
        worst = min(worst, db(TONE_LEVEL, amplitude(linear(out + tail, True), alias, 8000)))
    return worst


def image_rejection(up: Callable[[], Stream]) -> float:
    """Worst level, in dB below each 300-3400 Hz tone (20 Hz steps), of its images at 8k-f and 8k+f.

    At 24 kHz the images at 16k-f and 16k+f fall on the same bins (mirrored about 12 kHz).
    """
    worst = float("inf")
    for freq in IMAGE_TONES_HZ:
        ulaw = audioop.lin2ulaw(pcm(tone(freq, 8000, 1.0, TONE_LEVEL)), 2)
        out, tail = stream(up, ulaw, 8 * FRAME_MS)
        signal = linear(out + tail, False)
        level = amplitude(signal, freq, 24000)
        for image in (8000 - freq, 8000 + freq):
            worst = min(worst, db(level, amplitude(signal, image, 24000)))
    return worst


def ripple(make: Callable[[], Stream], up: bool) -> float:
    """Largest gain deviation, in dB, over tones from 300 to 3400 Hz in 100 Hz steps."""
    worst = 0.0
    for freq in PASSBAND_HZ:
        if up:
            data = audioop.lin2ulaw(pcm(tone(freq, 8000, 1.0, PASS_LEVEL)), 2)
            level_in = amplitude(linear(data, True), freq, 8000)
            out, tail = stream(make, data, 8 * FRAME_MS)
            level_out = amplitude(linear(out + tail, False), freq, 24000)
        else:
            data = pcm(tone(freq, 24000, 1.0, PASS_LEVEL))
            level_in = amplitude(linear(data, False), freq, 24000)
            out, tail = stream(make, data, 2 * 24 * FRAME_MS)
            level_out = amplitude(linear(out + tail, True), freq, 8000)
        worst = max(worst, abs(db(level_out, level_in)))
    return worst


def click(rate: int, at: float) -> np.ndarray:
    """A telephone-band click: equal cosines from 300 to 3400 Hz peaking together at ``at`` seconds."""
    t = np.arange(rate) / rate - at
    window = np.where(np.abs(t) < 0.02, 0.5 + 0.5 * np.cos(np.pi * t / 0.02), 0.0)
    return sum(np.cos(2 * np.pi * f * t) for f in range(300, 3401, 50)) * window


def delay_ms(make: Callable[[], Stream], up: bool) -> float:
    """Latency of a click through 20 ms frames: audio held back at the end plus the click's shift.

    Held back is input fed minus output returned by ``convert`` (no flush); the shift is where
    the click lands in that output relative to where it was in the input (cross-correlation,
    refined to a fraction of a sample). A time-aligned filter holding back its look-ahead and a
    filter that emits everything but late both show their true latency.
    """
    rate_in, rate_out = (8000, 24000) if up else (24000, 8000)
    at = 0.5
    samples = click(rate_in, at)
    samples *= 0.5 * TONE_LEVEL / np.abs(samples).max()
    data = audioop.lin2ulaw(pcm(samples), 2) if up else pcm(samples)
    out, _ = stream(make, data, (8 if up else 2 * 24) * FRAME_MS)
    signal = linear(out, not up)
    reference = click(rate_out, at)
    correlation = np.correlate(np.pad(signal, (0, max(0, len(reference) - len(signal)))), reference, "full")
    peak = int(np.argmax(correlation))
    left, centre, right = correlation[peak - 1 : peak + 2]
    lag = peak - (len(reference) - 1) + 0.5 * (left - right) / (left - 2 * centre + right)
    held_back = 1.0 - len(signal) / rate_out
    return 1000 * (held_back + lag / rate_out)


def cpu_us(make: Callable[[], Stream], up: bool) -> float:
    """Median CPU time of one 20 ms frame over several runs of TIMED_FRAMES frames of low-passed noise."""
    rng = np.random.default_rng(7)
    rate = 8000 if up else 24000
    noise = np.convolve(rng.standard_normal(rate * FRAME_MS * TIMED_FRAMES // 1000), np.hanning(7), "same")
    data = pcm(3000 * noise)
    if up:
        data = audioop.lin2ulaw(data, 2)
    size = len(data) // TIMED_FRAMES
    frames = [data[i : i + size] for i in range(0, len(data), size)]
    runs = []
    gc.disable()
    try:
        for _ in range(TIMING_REPEATS):
            converter = make()
            started = time.perf_counter()
            for frame in frames:
                converter.convert(frame)
            runs.append((time.perf_counter() - started) / len(frames) * 1e6)
    finally:
        gc.enable()
    return statistics.median(runs)


def down_edge(down: Callable[[], Stream]) -> dict[int, float]:
    """Level, in dB against a full-scale tone in, of what reaches the caller's band from each DOWN_EDGE_HZ tone.

    Below 4 kHz that is the tone itself (the filter's gain); above, its alias at 8k-f, which
    should be far down. Minus infinity means exact mu-law silence.
    """
    levels = {}
    for freq in DOWN_EDGE_HZ:
        out, tail = stream(down, pcm(tone(freq, 24000, 1.0, TONE_LEVEL)), 2 * 24 * FRAME_MS)
        level = amplitude(linear(out + tail, True), abs((freq + 4000) % 8000 - 4000), 8000)
        levels[freq] = -float("inf") if level == 0 else -db(TONE_LEVEL, level)
    return levels


def up_edge(up: Callable[[], Stream]) -> dict[int, tuple[float, float]]:
    """Gain of each UP_EDGE_HZ caller tone, and the level of its image at 8k-f, both in dB against the tone in."""
    levels = {}
    for freq in UP_EDGE_HZ:
        ulaw = audioop.lin2ulaw(pcm(tone(freq, 8000, 1.0, TONE_LEVEL)), 2)
        level_in = amplitude(linear(ulaw, True), freq, 8000)
        out, tail = stream(up, ulaw, 8 * FRAME_MS)
        signal = linear(out + tail, False)
        levels[freq] = (
            -db(level_in, amplitude(signal, freq, 24000)),
            -db(level_in, amplitude(signal, 8000 - freq, 24000)),
        )
    return levels


def utterance(name: str, rate: int) -> np.ndarray:
    """A packaged espeak-ng utterance as float64 samples at ``rate`` (soxr VHQ where it must be resampled)."""
    with wave.open(str(resources.files("telephony_bridge") / "fixtures" / name)) as wav:
        source_rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float64)
    return samples if source_rate == rate else soxr.resample(samples, source_rate, rate, quality="VHQ")


def pesq_scores(down: Callable[[], Stream] | None, up: Callable[[], Stream] | None) -> tuple[float, float]:
    """Mean PESQ of the packaged utterances: model->caller narrow-band, caller->model wide-band.

    Model->caller: the reference is the utterance at 8 kHz (soxr VHQ), the degraded signal is the
    24 kHz utterance through ``down`` and mu-law. Caller->model: the reference is the caller's
    mu-law at 8 kHz, the degraded signal is that mu-law through ``up``; both are taken to 16 kHz
    by soxr VHQ, the rate of wide-band PESQ. ``None`` stands for mu-law alone with no resampling.
    """
    from pesq import pesq

    down_scores, up_scores = [], []
    for name in UTTERANCES:
        reference = utterance(name, 8000)
        if down is None:
            coded = linear(audioop.lin2ulaw(pcm(reference), 2), True)
        else:
            out, tail = stream(down, pcm(utterance(name, 24000)), 2 * 24 * FRAME_MS)
            coded = linear(out + tail, True)
        down_scores.append(pesq(8000, reference, coded[: len(reference)], "nb"))
        ulaw = audioop.lin2ulaw(pcm(reference), 2)
        wide_reference = soxr.resample(linear(ulaw, True), 8000, 16000, quality="VHQ")
        if up is None:
            wide = wide_reference
        else:
            out, tail = stream(up, ulaw, 8 * FRAME_MS)
            wide = soxr.resample(linear(out + tail, False), 24000, 16000, quality="VHQ")
        up_scores.append(pesq(16000, wide_reference, wide[: len(wide_reference)], "wb"))
    return statistics.mean(down_scores), statistics.mean(up_scores)


def rejection_cell(value: float) -> str:
    return "silent" if value == float("inf") else f"{value:.1f}"


def level_cell(value: float) -> str:
    return "silent" if value == -float("inf") else f"{value:.1f}"


def print_edge_tables(results: dict[str, dict]) -> None:
    names = list(results)
    header = "| tone (Hz) | " + " | ".join(names) + " |"
    rule = "|---:|" + "---:|" * len(names)
    print("Band edge, 24k→8k: level reaching the caller's band (the tone below 4 kHz, its alias at 8k−f above), dB")
    print("against the full-scale tone in:")
    print()
    print(header)
    print(rule)
    for freq in DOWN_EDGE_HZ:
        print(f"| {freq} | " + " | ".join(level_cell(results[n]["down_edge"][freq]) for n in names) + " |")
    print()
    print("Band edge, 8k→24k: gain of the caller's tone / level of its image at 8k−f, dB against the tone in:")
    print()
    print(header)
    print(rule)
    for freq in UP_EDGE_HZ:
        cells = (f"{results[n]['up_edge'][freq][0]:.1f} / {level_cell(results[n]['up_edge'][freq][1])}" for n in names)
        print(f"| {freq} | " + " | ".join(cells) + " |")
    print()


def print_pesq_table() -> None:
    try:
        import pesq  # noqa: F401
    except ImportError:
        print("PESQ skipped: the `pesq` package is not installed (it is in the dev extra).")
        print()
        return
    rows: dict[str, tuple[Callable[[], Stream] | None, Callable[[], Stream] | None]] = dict(CONVERTERS)
    rows["mu-law alone (no resampling)"] = (None, None)
    print("PESQ (ITU-T P.862, mean of the 4 packaged espeak-ng utterances): model→caller narrow-band at 8 kHz,")
    print("caller→model wide-band at 16 kHz:")
    print()
    print("| converter | model→caller (P.862 NB MOS-LQO) | caller→model (P.862.2 WB MOS-LQO) |")
    print("|---|---:|---:|")
    for name, (down, up) in rows.items():
        down_score, up_score = pesq_scores(down, up)
        print(f"| {name} | {down_score:.2f} | {up_score:.2f} |")
    print()


def main() -> None:
    results = {}
    for name, (down, up) in CONVERTERS.items():
        results[name] = {
            "alias": alias_rejection(down),
            "image": image_rejection(up),
            "ripple_down": ripple(down, up=False),
            "ripple_up": ripple(up, up=True),
            "delay_down": delay_ms(down, up=False),
            "delay_up": delay_ms(up, up=True),
            "cpu_down": cpu_us(down, up=False),
            "cpu_up": cpu_us(up, up=True),
            "down_edge": down_edge(down),
            "up_edge": up_edge(up),
        }
    print(
        "| converter | alias rejection 24k→8k (dB) | image rejection 8k→24k (dB) "
        "| ripple 300–3400 Hz 24k→8k / 8k→24k (dB) | delay 24k→8k / 8k→24k (ms) "
        "| CPU per 20 ms frame 24k→8k / 8k→24k (µs) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {rejection_cell(r['alias'])} | {rejection_cell(r['image'])} "
            f"| {r['ripple_down']:.2f} / {r['ripple_up']:.2f} "
            f"| {r['delay_down']:.2f} / {r['delay_up']:.2f} "
            f"| {r['cpu_down']:.1f} / {r['cpu_up']:.1f} |"
        )
    print()
    print(
        "Alias rejection: worst of full-scale tones at 5, 6, 8 and 11 kHz, read at their alias in the "
        "decoded mu-law output; *silent* means exact mu-law silence came out (telephony_bridge.audio "
        "rounds to 14 bits before encoding, so the leak stayed within ±2 LSB of the 32000 tone: more "
        "than 84 dB down). Image rejection: worst of 300-3400 Hz tones in 20 Hz steps, "
        "images at 8k±f and 16k±f against the tone in the 24 kHz PCM16 output."
    )
    print()
    print_edge_tables(results)
    print_pesq_table()
    ours = results["telephony_bridge.audio"]
    edge_down = max(level for freq, level in ours["down_edge"].items() if freq > 4000)
    edge_up = max(image for _, image in ours["up_edge"].values())
    checks = [
        (
            f"band edge: aliases of 4.05-5 kHz and images of 3-3.95 kHz >= {TARGET_REJECTION_DB:.0f} dB down",
            max(edge_down, edge_up) <= -TARGET_REJECTION_DB,
        ),
        (f"alias rejection of 5-11 kHz >= {TARGET_REJECTION_DB:.0f} dB", ours["alias"] >= TARGET_REJECTION_DB),
        (f"image rejection of 300-3400 Hz >= {TARGET_REJECTION_DB:.0f} dB", ours["image"] >= TARGET_REJECTION_DB),
        (
            f"passband ripple <= {TARGET_RIPPLE_DB} dB both ways",
            max(ours["ripple_down"], ours["ripple_up"]) <= TARGET_RIPPLE_DB,
        ),
        (
            f"delay <= {TARGET_DELAY_MS:.0f} ms both ways",
            max(ours["delay_down"], ours["delay_up"]) <= TARGET_DELAY_MS,
        ),
        (f"CPU <= {TARGET_CPU_US:.0f} µs per frame both ways", max(ours["cpu_down"], ours["cpu_up"]) <= TARGET_CPU_US),
    ]
    print("Targets for telephony_bridge.audio:")
    for label, met in checks:
        print(f"- {label}: {'met' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()
