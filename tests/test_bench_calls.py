"""The load benchmark's audio accounting matches what the converters really emit.

The benchmark matches each caller frame and each model delta to the message that carries its
audio out of the bridge by running totals; if its arithmetic drifted from the converters', every
latency it reports would be off by a frame.
"""

from __future__ import annotations

import base64
import random

import numpy as np

from telephony_bridge.audio import Pcm24kToUlaw8k, Ulaw8kToPcm24k
from telephony_bridge.testing import bench_accounting as bench
from telephony_bridge.wire import PCM24K_BYTES_PER_MS, PCM24K_RATE_HZ, ULAW_FRAME_BYTES


def test_caller_audio_is_due_exactly_when_the_converter_emits_it() -> None:
    converter, noise = Ulaw8kToPcm24k(), random.Random(7)
    emitted = 0
    for frame in range(1, 60):
        emitted += len(converter.convert(noise.randbytes(ULAW_FRAME_BYTES)))
        assert emitted == bench.pcm_bytes_due(ULAW_FRAME_BYTES * frame)
    assert list(bench.pcm_bytes_due_array(59)) == [bench.pcm_bytes_due(ULAW_FRAME_BYTES * i) for i in range(1, 60)]


def test_model_audio_is_due_in_the_message_that_carries_it_never_the_one_before() -> None:
    converter = Pcm24kToUlaw8k()
    sent = emitted = 0
    for ms in [40, 20, 60, 100, 80] * 6:
        before = emitted
        sent += PCM24K_RATE_HZ // 1000 * ms
        emitted += len(converter.convert(bytes(PCM24K_BYTES_PER_MS * ms)))
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


def test_a_passthrough_relay_owes_every_caller_byte_at_once() -> None:
    assert list(bench.ulaw_bytes_due_array(3)) == [ULAW_FRAME_BYTES, 2 * ULAW_FRAME_BYTES, 3 * ULAW_FRAME_BYTES]
    assert bench.ulaw_bytes_due_array(3)[-1] > bench.pcm_bytes_due_array(3)[-1] // 6  # no look-ahead held back
