"""The load benchmark's audio accounting: when a frame's audio is due on the far side of the bridge.

The benchmark (``scripts/bench_calls.py``) matches each caller frame and each model delta to the
message that carries its audio out of the bridge by running totals, so its arithmetic must match
the converters' to the sample: both hold back ``DELAY_MS`` of look-ahead (22 samples at 8 kHz,
66 at 24 kHz). Off by one frame, every latency it reports would be off by 20 ms. A passthrough
relay (mu-law 8 kHz both ways) holds nothing back: its audio is due byte for byte.
"""

from __future__ import annotations

import numpy as np

from telephony_bridge.audio import DELAY_MS
from telephony_bridge.wire import PCM24K_BYTES_PER_MS, PCM24K_RATE_HZ, ULAW_BYTES_PER_MS, ULAW_FRAME_BYTES, ULAW_RATE_HZ

__all__ = [
    "PCM_LOOKAHEAD",
    "ULAW_LOOKAHEAD",
    "b64_length",
    "match_latencies",
    "pcm_bytes_due",
    "pcm_bytes_due_array",
    "ulaw_bytes_due_array",
    "ulaw_bytes_due",
]

ULAW_LOOKAHEAD = round(DELAY_MS * ULAW_RATE_HZ / 1000)
"""8 kHz samples the caller -> model converter holds back."""
PCM_LOOKAHEAD = round(DELAY_MS * PCM24K_RATE_HZ / 1000)
"""24 kHz samples the model -> caller converter holds back."""
_PCM_BYTES_PER_ULAW_BYTE = PCM24K_BYTES_PER_MS // ULAW_BYTES_PER_MS
_SAMPLES_24K_PER_8K = PCM24K_RATE_HZ // ULAW_RATE_HZ


def pcm_bytes_due(ulaw_bytes_sent: int) -> int:
    """PCM16 bytes at 24 kHz the caller -> model converter has emitted once `ulaw_bytes_sent` are in."""
    return max(0, _PCM_BYTES_PER_ULAW_BYTE * (ulaw_bytes_sent - ULAW_LOOKAHEAD))


def pcm_bytes_due_array(frames: int) -> np.ndarray:
    """`pcm_bytes_due` after each of `frames` 20 ms caller frames."""
    sent = ULAW_FRAME_BYTES * np.arange(1, frames + 1, dtype=np.int64)
    return np.maximum(0, _PCM_BYTES_PER_ULAW_BYTE * (sent - ULAW_LOOKAHEAD))


def ulaw_bytes_due_array(frames: int) -> np.ndarray:
    """Mu-law bytes a passthrough relay has forwarded after each of `frames` 20 ms caller frames: all of them."""
    return ULAW_FRAME_BYTES * np.arange(1, frames + 1, dtype=np.int64)


def ulaw_bytes_due(samples_sent: int) -> int:
    """Mu-law bytes the model -> caller converter has surely emitted once `samples_sent` 24 kHz samples are in.

    The converter emits ceil((S - 51) / 3); the floor is used so that no rounding can move a
    match onto the frame before.
    """
    return max(0, (samples_sent - PCM_LOOKAHEAD) // _SAMPLES_24K_PER_8K)


def b64_length(encoded: int, tail: bytes) -> int:
    """Decoded length of `encoded` base64 characters ending in `tail` (for the padding)."""
    return encoded * 3 // 4 - tail[-2:].count(b"=")


def match_latencies(
    sent_at: np.ndarray, due: np.ndarray, received_at: np.ndarray, received_total: np.ndarray
) -> np.ndarray:
    """For each send, the time until the receiving side's running total first reached its `due` mark.

    `due` and `received_total` are running totals (non-decreasing). Sends never matched (lost,
    or still in flight) are left out; audio loss is counted separately.
    """
    index = np.searchsorted(received_total, due, side="left")
    found = index < len(received_total)
    return received_at[index[found]] - sent_at[found]
