"""The wire's vocabulary: JSON decoding, audio units and the Realtime dialects' event names, defined once.

Every call decodes about 60 frames a second (50 caller media frames, the model's events), so the
decoder is on the hot path: orjson takes 0.5 us for a 300-byte media frame where ``json.loads``
takes 1.7 us. orjson is strict RFC 8259; the few inputs it refuses that ``json`` accepts (NaN,
Infinity, lone surrogates) go through ``json`` so that what the bridge accepts does not change.
One difference remains and no peer sends it: an integer wider than 64 bits decodes as a float.

Twilio carries G.711 mu-law at 8 kHz (1 byte a sample); the bridge speaks PCM16 at 24 kHz
(2 bytes a sample) to the Realtime service. Twilio sends caller audio in 20 ms frames.

The Realtime API's GA and preview dialects name a few server events differently; everything else
the bridge, its tools and its test doubles use is spelled the same in both.

orjson refuses nesting deeper than 1024; ``json`` recurses until Python's recursion limit and
raises ``RecursionError`` (``"[" * 5000`` does it), which is turned into ``ValueError`` here so
that every caller's one ``except ValueError`` covers it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson

from telephony_bridge.config import Dialect

ULAW_RATE_HZ = 8000
PCM24K_RATE_HZ = 24000
ULAW_BYTES_PER_MS = 8
PCM24K_BYTES_PER_MS = 48
FRAME_MS = 20
"""Twilio's media frame, in both directions of the bridge's own framing."""
ULAW_FRAME_BYTES = ULAW_BYTES_PER_MS * FRAME_MS
PCM24K_FRAME_BYTES = PCM24K_BYTES_PER_MS * FRAME_MS
ULAW_SILENCE = 0xFF
"""The mu-law code for a zero sample (0x00 is full scale negative)."""


def ulaw_ms(n_bytes: int) -> float:
    """Milliseconds of 8 kHz mu-law audio in `n_bytes`."""
    return n_bytes / ULAW_BYTES_PER_MS


def pcm24k_ms(n_bytes: int) -> float:
    """Milliseconds of 24 kHz PCM16 audio in `n_bytes`."""
    return n_bytes / PCM24K_BYTES_PER_MS


@dataclass(frozen=True)
class ServerEventNames:
    """The server events whose names differ between the dialects."""

    audio_delta: str
    audio_done: str
    transcript_delta: str
    transcript_done: str
    item_added: str


SERVER_EVENTS: Mapping[Dialect, ServerEventNames] = MappingProxyType({
    "ga": ServerEventNames(
        audio_delta="response.output_audio.delta",
        audio_done="response.output_audio.done",
        transcript_delta="response.output_audio_transcript.delta",
        transcript_done="response.output_audio_transcript.done",
        item_added="conversation.item.added",
    ),
    "preview": ServerEventNames(
        audio_delta="response.audio.delta",
        audio_done="response.audio.done",
        transcript_delta="response.audio_transcript.delta",
        transcript_done="response.audio_transcript.done",
        item_added="conversation.item.created",
    ),
})
MODEL_AUDIO_DELTAS = frozenset(names.audio_delta for names in SERVER_EVENTS.values())
"""The model's audio deltas in either dialect: what a recording or a tool looks for without knowing the dialect."""


def loads(text: str | bytes) -> Any:
    """Decode one JSON document; raises ``ValueError`` (``json.JSONDecodeError``) as ``json.loads`` does."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            return json.loads(text)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None

