"""Telephone-grade sample-rate conversion between Twilio (8 kHz mu-law) and the Realtime API (24 kHz PCM16).

Every call converts its audio twice, 50 frames a second each way, so the converters must keep
aliases out of the telephone band, add almost no delay and cost almost no CPU.
``audioop.ratecv`` has no anti-alias filter (a 6 kHz tone reaches the caller at 2 kHz at full
level); ``soxr`` filters well but holds back 21-25 ms per direction.

One linear-phase low-pass FIR at 24 kHz serves both directions: 133 taps, a weighted least-squares
fit to 1 over 0-3.4 kHz and 0 from 4 kHz, designed below with numpy alone. The transition band
must end at 4 kHz: model audio above it folds into the caller's band (4.05 kHz lands at 3.95 kHz),
and a caller's 3.4-4 kHz leaves images at 4-4.6 kHz. Figures from ``scripts/bench_audio.py``
(20 ms frames, mu-law coding included):

* everything from 4 kHz at least 68 dB down in the design (tones at 4.05-4.6 kHz alias 70-72 dB
  down, a full-scale tone at 4.8-11 kHz comes out as exact mu-law silence; images of a caller's
  3-3.95 kHz are 72.6 dB below the tone at worst, of 300-3400 Hz 75.4 dB below, in PCM16);
* passband 300-3400 Hz flat within 0.08 dB both ways, mu-law included (the filter: 0.063 dB,
  -0.063 dB at 3.4 kHz); 3.6 kHz comes through at -3.8 dB;
* delay 66 samples at 24 kHz = 2.75 ms per direction, well inside one 20 ms frame;
* PESQ on the packaged utterances: 4.21 model->caller (mu-law alone: 4.22), 4.63 caller->model
  (soxr HQ: 4.62; the reference itself: 4.64).

The filter is designed here with numpy, once, and runs per frame in a small C extension
(``_polyphase.c``; no numpy call is left per frame). A frame is only 21k multiply-adds: the numpy
converters took 10.6 us caller->model and 10.1 us model->caller per 20 ms frame, mostly the
overhead of a dozen calls and a BLAS matmul; in C it is 2.2 and 2.5 us, the Python around the
call included (timeit of ``convert`` on 160 and 960 bytes, median of 60 runs of 2000 calls, both
versions in one run on a shared 2-core AMD EPYC at 2.4 GHz).

Output is time-aligned with input: the filter's look-ahead (2.75 ms) is held back, so the first
``convert`` returns that much less audio and ``flush`` returns exactly that tail, and a one-shot
conversion is zero-phase. Streaming in chunks of any size gives the same samples as one shot, bit
for bit both ways: the C sums every output's products in one order, whatever chunk it falls in.

Mu-law output is rounded to the nearest 14-bit value (G.711's input precision) before encoding,
not truncated as ``audioop.lin2ulaw`` does, so sub-LSB filter leakage stays silent instead of
toggling the -8 level.
"""

from __future__ import annotations

import audioop

import numpy as np

from telephony_bridge import _polyphase

_RATIO = 3  # 24 kHz / 8 kHz
# Taps either side of the centre at 24 kHz: 2.75 ms of look-ahead. A multiple of _RATIO, so the
# look-ahead is whole 8 kHz samples too and every 8 kHz sample sits on a 24 kHz one. 133 taps keep
# 300-3400 Hz within 0.063 dB and 4 kHz and up 68 dB down; 127 would leave 0.075 dB and 66 dB,
# too little margin for the 0.1 dB and 60 dB targets once mu-law adds its own error.
_HALF = 66
_PASS_EDGE_HZ = 3400.0
_STOP_EDGE_HZ = 4000.0
# Least-squares weights: the stopband's squared error counts 300 times the passband's (found by a
# sweep: less loses stopband, more loses flatness), and both count 11 times as much at the
# transition band, falling off over 50 Hz, where a plain least-squares fit leaves its largest error
# (without that boost: 62.1 dB and 0.12 dB).
_STOP_WEIGHT = 300.0
_EDGE_BOOST = 10.0
_EDGE_HZ = 50.0
_GRID_HZ = 5.0

DELAY_MS = _HALF / 24.0
"""Algorithmic delay of each direction in milliseconds (the held-back look-ahead)."""

# 8 kHz history each 24 kHz output phase sees: 22 samples either side, 45 taps per phase.
_UP_HALF = _HALF // _RATIO


def _lowpass() -> np.ndarray:
    """The shared 24 kHz low-pass, unity gain at DC, in float64: a weighted least-squares fit.

    A linear-phase filter's response is a cosine series in its half taps, so the fit to 1 over
    0-3.4 kHz and 0 over 4-12 kHz on a 5 Hz grid is one small linear solve (a few ms at import).
    """
    f_pass = np.arange(0.0, _PASS_EDGE_HZ + _GRID_HZ / 2, _GRID_HZ)
    f_stop = np.arange(_STOP_EDGE_HZ, 12000.0 + _GRID_HZ / 2, _GRID_HZ)
    freqs = np.concatenate([f_pass, f_stop])
    want = np.concatenate([np.ones_like(f_pass), np.zeros_like(f_stop)])
    to_edge = np.concatenate([_PASS_EDGE_HZ - f_pass, f_stop - _STOP_EDGE_HZ])
    weight = (1.0 + _EDGE_BOOST * np.exp(-to_edge / _EDGE_HZ)) * np.where(want > 0, 1.0, _STOP_WEIGHT)
    basis = np.cos(2 * np.pi / 24000.0 * np.outer(freqs, np.arange(_HALF + 1)))
    cosines = np.linalg.solve(basis.T @ (weight[:, None] * basis), basis.T @ (weight * want))
    taps = np.concatenate([cosines[:0:-1] / 2, cosines[:1], cosines[1:] / 2])
    return taps / taps.sum()


def _ulaw_codes() -> bytes:
    """The mu-law code of every 14-bit linear value, indexed by value + 8192.

    G.711 mu-law encodes 14-bit samples. ``audioop.lin2ulaw`` truncates 16 bits to 14, so -1 LSB of
    filter leakage becomes -8; rounding to the nearest 14-bit value first keeps -2..+1 LSB at zero.
    One table lookup also saturates, and is cheaper than clipping and then ``lin2ulaw``.
    """
    return audioop.lin2ulaw((np.arange(-8192, 8192, dtype=np.int16) * 4).tobytes(), 2)


def _ulaw_decodings() -> bytes:
    """The linear value of every mu-law code as float32, indexed by code: ``audioop.ulaw2lin`` as a table."""
    return np.frombuffer(audioop.ulaw2lin(bytes(range(256)), 2), np.int16).astype(np.float32).tobytes()


_LOWPASS = _lowpass()  # designed once: the solve is most of this module's import time
# The taps as float32 for C: scaled by 1/4 so decimated outputs come out in 14-bit G.711 units, and by
# 3 for interpolation to make up for the two zeros stuffed between 8 kHz samples.
_DOWN_LOWPASS = (_LOWPASS / 4.0).astype(np.float32).tobytes()
_UP_LOWPASS = (_RATIO * _LOWPASS).astype(np.float32).tobytes()
_ULAW_OF_14BIT = _ulaw_codes()
_PCM_OF_ULAW = _ulaw_decodings()
# What the filter sees before a stream starts and after it ends: its half-window of silence.
_PCM_SILENCE = bytes(2 * _HALF)
_ULAW_SILENCE = b"\xff" * _UP_HALF


class Ulaw8kToPcm24k:
    """Caller -> model: 8 kHz mu-law to 24 kHz PCM16 (little-endian mono); one object per call.

    Every input byte yields exactly three output samples over a stream: ``convert`` holds back the
    last 22 inputs (the filter's look-ahead) and ``flush`` returns their 66 samples. The held
    inputs stay mu-law bytes: the filter decodes its window as it reads it.
    """

    _held: bytes  # the last 44 mu-law inputs: history and look-ahead of the next outputs

    def __init__(self) -> None:
        self.reset()

    def convert(self, ulaw: bytes) -> bytes:
        """Decode and upsample one chunk of any length; returns 3 samples per input once primed."""
        window = self._held + ulaw
        # Each input's outputs need the 22 inputs after it: the last 44 are the next window's history.
        self._held = window[-2 * _UP_HALF :]
        return _polyphase.interpolate_from_ulaw(window, _UP_LOWPASS, _PCM_OF_ULAW)

    def flush(self) -> bytes:
        """Return the held-back tail (silence assumed after it) and start a new stream."""
        tail = self.convert(_ULAW_SILENCE)
        self.reset()
        return tail

    def reset(self) -> None:
        """Drop all held audio without output, e.g. on barge-in."""
        self._held = _ULAW_SILENCE


class Pcm24kToUlaw8k:
    """Model -> caller: 24 kHz PCM16 (little-endian mono) to 8 kHz mu-law; one object per call.

    Output sample q is the filter centred on input sample 3q. A stream of T input samples, in
    chunks of any size, yields exactly T // 3 output bytes over all ``convert`` calls and ``flush``;
    leftover inputs are carried to the next chunk, and the last T % 3 of the stream (under 0.125 ms)
    shape the final outputs without starting one of their own.
    """

    _held: bytes  # PCM16 inputs whose outputs are not out yet, and the history they need

    def __init__(self) -> None:
        self.reset()

    def convert(self, pcm: bytes) -> bytes:
        """Filter, decimate and encode one chunk of whole samples; returns one byte per 3 inputs once primed."""
        if len(pcm) % 2:
            raise ValueError(
                f"PCM16 chunk of {len(pcm)} bytes ends in half a sample; chunks must hold whole 2-byte samples"
            )
        window = self._held + pcm
        # Output q needs inputs up to 3q + 132 of the window: emit every output whose inputs are in.
        count = max(0, (len(window) // 2 - 2 * _HALF + _RATIO - 1) // _RATIO)
        self._held = window[2 * _RATIO * count :]
        return _polyphase.decimate_to_ulaw(window, count, _DOWN_LOWPASS, _ULAW_OF_14BIT)

    def flush(self) -> bytes:
        """Return the held-back tail (silence assumed after it) and start a new stream."""
        # Outputs centred on the stream's own samples, not on the silence appended after it.
        count = (len(self._held) // 2 - _HALF) // _RATIO
        tail = _polyphase.decimate_to_ulaw(self._held + _PCM_SILENCE, count, _DOWN_LOWPASS, _ULAW_OF_14BIT)
        self.reset()
        return tail

    def reset(self) -> None:
        """Drop all held audio without output, e.g. on barge-in."""
        self._held = _PCM_SILENCE


def ulaw8k_to_pcm24k(ulaw: bytes) -> bytes:
    """Convert a whole 8 kHz mu-law recording to 24 kHz PCM16, three samples per byte."""
    converter = Ulaw8kToPcm24k()
    return converter.convert(ulaw) + converter.flush()


def pcm24k_to_ulaw8k(pcm: bytes) -> bytes:
    """Convert a whole 24 kHz PCM16 recording to 8 kHz mu-law, one byte per three samples."""
    converter = Pcm24kToUlaw8k()
    return converter.convert(pcm) + converter.flush()


class UlawPassthrough:
    """Either direction with `audio_format = "pcmu"`: the model hears and speaks 8 kHz mu-law, so nothing is converted.

    It has the converters' interface so the controller's path is one; it holds nothing back, so
    `flush` has nothing to return and `reset` nothing to drop.
    """

    def convert(self, ulaw: bytes) -> bytes:
        return ulaw

    def flush(self) -> bytes:
        return b""

    def reset(self) -> None:
        return None
