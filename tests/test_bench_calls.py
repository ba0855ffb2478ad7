"""The load benchmark's audio accounting matches what the converters really emit (scripts/bench_calls.py).

The benchmark matches each caller frame and each model delta to the message that carries its
audio out of the bridge by running totals; if its arithmetic drifted from the converters', every
latency it reports would be off by a frame.
"""

from __future__ import annotations

import base64
import importlib.util
import random
import sys
from pathlib import Path

import numpy as np

from telephony_bridge.audio import Pcm24kToUlaw8k, Ulaw8kToPcm24k

_spec = importlib.util.spec_from_file_location("bench_calls", Path(__file__).parent.parent / "scripts" / "bench_calls.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_calls"] = bench
_spec.loader.exec_module(bench)


def test_caller_audio_is_due_exactly_when_the_converter_emits_it() -> None:
    converter, noise = Ulaw8kToPcm24k(), random.Random(7)
    emitted = 0
    for frame in range(1, 60):
        emitted += len(converter.convert(noise.randbytes(160)))
        assert emitted == bench.pcm_bytes_due(160 * frame)
    assert list(bench.pcm_bytes_due_array(59)) == [bench.pcm_bytes_due(160 * i) for i in range(1, 60)]


def test_model_audio_is_due_in_the_message_that_carries_it_never_the_one_before() -> None:
    converter = Pcm24kToUlaw8k()
    sent = emitted = 0
    for ms in [40, 20, 60, 100, 80] * 6:
        before = emitted
        sent += 24 * ms
        emitted += len(converter.convert(bytes(48 * ms)))
        assert before < bench.ulaw_bytes_due(sent) <= emitted
    emitted += len(converter.flush())
    assert emitted == sent // 3


def test_base64_lengths_are_read_without_decoding() -> None:
    for size in range(12):
        encoded = base64.b64encode(bytes(size))
        assert bench.b64_length(len(encoded), encoded[-2:]) == size


def test_latency_is_the_time_until_the_running_total_reaches_what_was_due() -> None:
    latencies = bench.match_latencies(
        sent_at=np.array([0.0, 1.0, 2.0]),
        due=np.array([10, 20, 40]),
        received_at=np.array([0.5, 1.25, 1.5]),
        received_total=np.array([10, 15, 25]),
    )
    assert list(latencies) == [0.5, 0.5]  # the third was never received: lost, not late
