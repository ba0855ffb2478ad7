"""Speech-like test audio and the energy VAD the Realtime simulator detects it with, both in audio time.

The real service's server VAD finds a turn on the audio's own timeline, so a client that sends
faster or slower than real time sees the same ``audio_start_ms``/``audio_end_ms``; this one does too.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from telephony_bridge.wire import PCM24K_RATE_HZ

__all__ = ["ServerVad", "VadEvent", "speech_like_pcm16", "vad_level_dbfs"]


@functools.lru_cache(maxsize=16)
def speech_like_pcm16(
    duration_ms: int = 3000, *, rate: int = PCM24K_RATE_HZ, level_dbfs: float = -20.0, f0: float = 140.0
) -> bytes:
    """A deterministic speech-like signal: PCM16 LE mono at ``rate``.

    A voiced sound (harmonics of a gliding ``f0`` shaped by three formant-like bumps, nothing
    above 3.8 kHz) modulated at a syllable rate of 4 Hz, with a 150 ms pause every 0.8 s (well
    under the 500 ms a VAD needs to end a turn). ``level_dbfs`` is the RMS of the whole signal
    relative to a full-scale square wave. It starts and ends at zero, without clicks.
    """
    n = rate * duration_ms // 1000
    if n == 0:
        return b""
    t = np.arange(n) / rate
    pitch = f0 * (1.0 + 0.1 * np.sin(2 * np.pi * 0.8 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = np.zeros(n)
    for k in range(1, int(min(3800.0, 0.45 * rate) / f0) + 1):
        fk = k * f0
        weight = (
            np.exp(-(((fk - 600) / 250) ** 2))
            + 0.6 * np.exp(-(((fk - 1300) / 350) ** 2))
            + 0.3 * np.exp(-(((fk - 2500) / 500) ** 2))
            + 0.05
        ) / math.sqrt(k)
        voiced += weight * np.sin(k * phase)
    syllables = 0.55 - 0.45 * np.cos(2 * np.pi * 4.0 * t)
    in_word = t % 0.8
    words = np.clip((0.65 - in_word) / 0.02, 0, 1) * np.clip(in_word / 0.02, 0, 1)
    edges = np.clip(np.minimum(t, t[-1] - t) / 0.01, 0, 1)
    signal = voiced * syllables * words * edges
    rms = math.sqrt(float(np.mean(signal**2))) or 1.0
    signal *= 32768 * 10 ** (level_dbfs / 20) / rms
    return np.clip(np.round(signal), -32768, 32767).astype("<i2").tobytes()


def vad_level_dbfs(threshold: float) -> float:
    """The RMS level (dBFS) a 20 ms window must reach to count as speech.

    A linear map of the API's 0..1 ``threshold`` onto -70..-10 dBFS: the default 0.5 is
    -40 dBFS, well under speech at a normal telephone level (about -20 dBFS) and well over
    line noise (below -60 dBFS); 0.9 asks for -16 dBFS, i.e. a caller close to the microphone.
    """
    return -70.0 + 60.0 * threshold


@dataclass(frozen=True)
class VadEvent:
    """Speech started or stopped, at a position on the session's audio timeline (ms)."""

    kind: Literal["speech_started", "speech_stopped"]
    audio_ms: int


class ServerVad:
    """An energy VAD over PCM16 that counts time in audio, never in wall-clock time.

    The audio is cut into 20 ms windows. The first window at or above
    ``vad_level_dbfs(threshold)`` starts speech; ``audio_start_ms`` is that window's start minus
    ``prefix_padding_ms`` (the real service counts the padding it keeps as part of the turn).
    ``silence_duration_ms`` of windows below the level stop it; ``audio_end_ms`` is where that
    silence ends (again as the real service reports it, silence included).
    """

    WINDOW_MS = 20

    def __init__(
        self,
        *,
        rate: int = PCM24K_RATE_HZ,
        threshold: float = 0.5,
        silence_duration_ms: int = 500,
        prefix_padding_ms: int = 300,
        start_ms: float = 0.0,
    ) -> None:
        self.rate = rate
        self.threshold = threshold
        self.silence_duration_ms = silence_duration_ms
        self.prefix_padding_ms = prefix_padding_ms
        self.speaking = False
        self._position_ms = start_ms
        self._silence_ms = 0
        self._pending = bytearray()
        self._window_bytes = rate * self.WINDOW_MS // 1000 * 2

    @property
    def position_ms(self) -> float:
        """Audio analysed so far, in ms since the session started (whole windows only)."""
        return self._position_ms

    def reset(self) -> None:
        """Forget any speech in progress (the input buffer was cleared or committed by hand)."""
        self.speaking = False
        self._silence_ms = 0

    def feed(self, pcm: bytes) -> list[VadEvent]:
        self._pending += pcm
        events: list[VadEvent] = []
        level = vad_level_dbfs(self.threshold)
        while len(self._pending) >= self._window_bytes:
            window = np.frombuffer(self._pending[: self._window_bytes], dtype="<i2")
            del self._pending[: self._window_bytes]
            start = self._position_ms
            self._position_ms += self.WINDOW_MS
            rms = math.sqrt(float(np.mean(window.astype(np.float64) ** 2)))
            loud = 20 * math.log10(max(rms, 1e-9) / 32768) >= level
            if not self.speaking:
                if loud:
                    self.speaking = True
                    self._silence_ms = 0
                    at = max(0, round(start - self.prefix_padding_ms))
                    events.append(VadEvent("speech_started", at))
            elif loud:
                self._silence_ms = 0
            else:
                self._silence_ms += self.WINDOW_MS
                if self._silence_ms >= self.silence_duration_ms:
                    self.speaking = False
                    events.append(VadEvent("speech_stopped", round(self._position_ms)))
        return events

