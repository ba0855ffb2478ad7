"""Behaviour of the 8 kHz mu-law <-> 24 kHz PCM16 converters, one property per test."""

import audioop
import wave
from importlib import resources
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from telephony_bridge.audio import (
    DELAY_MS,
    Pcm24kToUlaw8k,
    Ulaw8kToPcm24k,
    _lowpass,
    pcm24k_to_ulaw8k,
    ulaw8k_to_pcm24k,
)

FRAME_MS = 20
HELD_BACK_8K = round(DELAY_MS * 8)  # 8 kHz samples of look-ahead held back
HELD_BACK_24K = round(DELAY_MS * 24)


def noise_pcm(seed: int, samples: int) -> bytes:
    """Full-scale white noise: every frequency, and overshoot past int16 for the filter to clip."""
    return np.random.default_rng(seed).integers(-32768, 32768, samples, dtype=np.int16).astype("<i2").tobytes()


def noise_ulaw(seed: int, samples: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, samples, dtype=np.uint8).tobytes()


def tone_pcm(freq: float, rate: int, seconds: float, level: float) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(level * np.cos(2 * np.pi * freq * t)).astype("<i2").tobytes()


def as_int(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, "<i2").astype(np.int64)


def ulaw_steps(ulaw: bytes) -> np.ndarray:
    """Mu-law codes as signed step numbers, so adjacent levels differ by one."""
    inverted = ~np.frombuffer(ulaw, np.uint8)
    magnitude = (inverted & 0x7F).astype(np.int64)
    return np.where(inverted & 0x80, -magnitude, magnitude)


def amplitude(signal: np.ndarray, freq: float, rate: int) -> float:
    """Amplitude of ``freq`` over the middle 0.5 s of ``signal`` (tones use whole cycles in it)."""
    n = rate // 2
    start = (len(signal) - n) // 2
    segment = signal[start : start + n].astype(np.float64)
    return float(2 * abs(np.dot(segment, np.exp(-2j * np.pi * freq * np.arange(n) / rate))) / n)


def split(data: bytes, cuts: list[int], unit: int) -> list[bytes]:
    """``data`` cut at the given positions, counted in units of ``unit`` bytes."""
    points = [0, *sorted(unit * min(cut, len(data) // unit) for cut in cuts), len(data)]
    return [data[a:b] for a, b in pairwise(points)]


def run(converter: Ulaw8kToPcm24k | Pcm24kToUlaw8k, chunks: list[bytes]) -> bytes:
    return b"".join(converter.convert(chunk) for chunk in chunks) + converter.flush()


cuts = st.lists(st.integers(min_value=0, max_value=6000), max_size=12)


@settings(deadline=None)
@given(seed=st.integers(0, 2**32 - 1), samples=st.integers(0, 6000), cuts=cuts)
def test_pcm24k_to_ulaw8k_streaming_equals_one_shot_bit_for_bit(seed: int, samples: int, cuts: list[int]) -> None:
    pcm = noise_pcm(seed, samples)
    assert run(Pcm24kToUlaw8k(), split(pcm, cuts, 2)) == pcm24k_to_ulaw8k(pcm)


@settings(deadline=None)
@given(seed=st.integers(0, 2**32 - 1), samples=st.integers(0, 2000), cuts=cuts)
def test_ulaw8k_to_pcm24k_streaming_equals_one_shot_bit_for_bit(seed: int, samples: int, cuts: list[int]) -> None:
    ulaw = noise_ulaw(seed, samples)
    assert run(Ulaw8kToPcm24k(), split(ulaw, cuts, 1)) == ulaw8k_to_pcm24k(ulaw)


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(min_value=0, max_value=2500), max_size=20))
def test_pcm24k_to_ulaw8k_gives_one_byte_per_three_samples_over_a_stream(sizes: list[int]) -> None:
    converter = Pcm24kToUlaw8k()
    out = sum(len(converter.convert(noise_pcm(size, size))) for size in sizes) + len(converter.flush())
    assert out == sum(sizes) // 3


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(min_value=0, max_value=900), max_size=20))
def test_ulaw8k_to_pcm24k_gives_three_samples_per_byte_over_a_stream(sizes: list[int]) -> None:
    converter = Ulaw8kToPcm24k()
    out = sum(len(converter.convert(noise_ulaw(size, size))) for size in sizes) + len(converter.flush())
    assert out == 2 * 3 * sum(sizes)


def test_first_frame_holds_back_the_lookahead_and_flush_returns_it() -> None:
    down, up = Pcm24kToUlaw8k(), Ulaw8kToPcm24k()
    assert len(down.convert(noise_pcm(1, 24 * FRAME_MS))) == 8 * FRAME_MS - HELD_BACK_8K
    assert len(down.flush()) == HELD_BACK_8K
    assert len(up.convert(noise_ulaw(1, 8 * FRAME_MS))) == 2 * (24 * FRAME_MS - HELD_BACK_24K)
    assert len(up.flush()) == 2 * HELD_BACK_24K


@pytest.mark.parametrize(
    "make, data, unit", [(Pcm24kToUlaw8k, noise_pcm(2, 4801), 2), (Ulaw8kToPcm24k, noise_ulaw(2, 1601), 1)]
)
def test_flush_leaves_the_converter_ready_for_a_new_stream(make, data: bytes, unit: int) -> None:
    converter = make()
    first = run(converter, split(data, [480, 2000], unit))
    again = run(converter, split(data, [480, 2000], unit))
    assert again == first == run(make(), split(data, [480, 2000], unit))


def test_pcm24k_to_ulaw8k_reset_drops_held_audio() -> None:
    converter = Pcm24kToUlaw8k()
    converter.convert(noise_pcm(3, 1001))
    converter.reset()
    assert run(converter, [bytes(2 * 960)]) == b"\xff" * 320


def test_ulaw8k_to_pcm24k_reset_drops_held_audio() -> None:
    converter = Ulaw8kToPcm24k()
    converter.convert(noise_ulaw(3, 333))
    converter.reset()
    assert run(converter, [b"\xff" * 320]) == bytes(2 * 960)


@pytest.mark.parametrize("as_buffer", [bytearray, memoryview, lambda data: memoryview(b"x" + data)[1:]])
def test_converters_take_any_bytes_like_chunk(as_buffer) -> None:
    pcm, ulaw = noise_pcm(5, 1001 * 3), noise_ulaw(5, 1001)
    assert run(Pcm24kToUlaw8k(), [as_buffer(pcm)]) == pcm24k_to_ulaw8k(pcm)
    assert run(Ulaw8kToPcm24k(), [as_buffer(ulaw)]) == ulaw8k_to_pcm24k(ulaw)


def test_mulaw_silence_decodes_to_pcm_zeros() -> None:
    assert ulaw8k_to_pcm24k(b"\xff" * 160) == bytes(2 * 480)


def alias_of(freq: float) -> float:
    """Where a 24 kHz tone lands after decimation to 8 kHz."""
    return abs((freq + 4000) % 8000 - 4000)


def component(signal: np.ndarray, freq: float, rate: int) -> float:
    """Amplitude of ``freq`` as :func:`amplitude` reads it, with DC read as its mean, not twice it."""
    return amplitude(signal, freq, rate) / (2 if freq == 0 else 1)


def gain_db(level_out: float, level_in: float) -> float:
    return float(20 * np.log10(level_out / level_in))


@pytest.mark.parametrize("freq", [4050, 4200, 4400, 5000, 6000, 8000, 11000])
def test_a_full_scale_tone_beyond_4khz_folds_into_the_band_at_least_60db_down(freq: int) -> None:
    """Anything the model says above 4 kHz would fold back into the caller's band (4.05 kHz to 3.95 kHz)."""
    level = 32000
    ulaw = pcm24k_to_ulaw8k(tone_pcm(freq, 24000, 1.0, level))
    alias = component(as_int(audioop.ulaw2lin(ulaw, 2)), alias_of(freq), 8000)
    assert alias <= level * 10 ** (-60 / 20)


@pytest.mark.parametrize("freq", [3400, 3600, 3800, 3900])
def test_images_of_a_caller_tone_land_beyond_4khz_at_least_60db_below_it(freq: int) -> None:
    """Upsampling leaves copies of 8 kHz audio at 8k-f and 8k+f (3.9 kHz at 4.1 kHz): 60 dB below the caller's tone.

    Read at 16 bits, in the PCM16 output, where mu-law cannot hide the filter's leak.
    """
    ulaw = audioop.lin2ulaw(tone_pcm(freq, 8000, 1.0, 32000), 2)
    level = amplitude(as_int(audioop.ulaw2lin(ulaw, 2)), freq, 8000)
    pcm = as_int(ulaw8k_to_pcm24k(ulaw))
    assert max(amplitude(pcm, image, 24000) for image in (8000 - freq, 8000 + freq)) <= level * 10 ** (-60 / 20)


def test_a_full_scale_6khz_tone_is_80db_down_at_its_2khz_alias() -> None:
    level = 32000
    ulaw = pcm24k_to_ulaw8k(tone_pcm(6000, 24000, 1.0, level))
    alias = amplitude(as_int(audioop.ulaw2lin(ulaw, 2)), 2000, 8000)
    assert alias <= level * 10 ** (-80 / 20)


def test_images_of_a_2khz_tone_are_80db_down() -> None:
    ulaw = audioop.lin2ulaw(tone_pcm(2000, 8000, 1.0, 32000), 2)
    pcm = as_int(ulaw8k_to_pcm24k(ulaw))
    level = amplitude(pcm, 2000, 24000)
    assert max(amplitude(pcm, image, 24000) for image in (6000, 10000)) <= level * 10 ** (-80 / 20)


TELEPHONE_BAND_HZ = range(300, 3401, 50)


def test_pcm24k_to_ulaw8k_is_flat_within_0_1db_over_the_telephone_band() -> None:
    level = 8000
    gains = []
    for freq in TELEPHONE_BAND_HZ:
        ulaw = pcm24k_to_ulaw8k(tone_pcm(freq, 24000, 1.0, level))
        gains.append(gain_db(amplitude(as_int(audioop.ulaw2lin(ulaw, 2)), freq, 8000), level))
    assert max(map(abs, gains)) <= 0.1


def test_ulaw8k_to_pcm24k_is_flat_within_0_1db_over_the_telephone_band() -> None:
    gains = []
    for freq in TELEPHONE_BAND_HZ:
        ulaw = audioop.lin2ulaw(tone_pcm(freq, 8000, 1.0, 8000), 2)
        level = amplitude(as_int(audioop.ulaw2lin(ulaw, 2)), freq, 8000)
        gains.append(gain_db(amplitude(as_int(ulaw8k_to_pcm24k(ulaw)), freq, 24000), level))
    assert max(map(abs, gains)) <= 0.1


def test_lookahead_held_back_is_at_most_6ms() -> None:
    converter = Pcm24kToUlaw8k()
    held_back = 8 * FRAME_MS - len(converter.convert(noise_pcm(4, 24 * FRAME_MS)))
    assert held_back == HELD_BACK_8K <= 6 * 8


def test_pcm24k_to_ulaw8k_keeps_a_click_at_its_time() -> None:
    pcm = np.zeros(4800, "<i2")
    pcm[1200] = 30000
    out = ulaw_steps(pcm24k_to_ulaw8k(pcm.tobytes()))
    assert int(np.argmax(out)) == 400


def test_ulaw8k_to_pcm24k_keeps_a_click_at_its_time() -> None:
    pcm = np.zeros(1600, "<i2")
    pcm[400] = 30000
    out = as_int(ulaw8k_to_pcm24k(audioop.lin2ulaw(pcm.tobytes(), 2)))
    assert int(np.argmax(out)) == 1200


def test_pcm24k_to_ulaw8k_passes_1khz_at_its_level() -> None:
    level = 8000
    ulaw = pcm24k_to_ulaw8k(tone_pcm(1000, 24000, 1.0, level))
    out = amplitude(as_int(audioop.ulaw2lin(ulaw, 2)), 1000, 8000)
    assert abs(20 * np.log10(out / level)) <= 0.5


def test_ulaw8k_to_pcm24k_passes_1khz_at_its_level() -> None:
    ulaw = audioop.lin2ulaw(tone_pcm(1000, 8000, 1.0, 8000), 2)
    level = amplitude(as_int(audioop.ulaw2lin(ulaw, 2)), 1000, 8000)
    out = amplitude(as_int(ulaw8k_to_pcm24k(ulaw)), 1000, 24000)
    assert abs(20 * np.log10(out / level)) <= 0.5


def test_odd_length_pcm_raises_value_error() -> None:
    with pytest.raises(ValueError, match="half a sample"):
        Pcm24kToUlaw8k().convert(b"\x00" * 961)


# The design in numpy, summed in float64 from the same float32 taps: what the converters must give
# to within float32 rounding. They sum in float32, as the numpy converters did, and land under
# 0.004 LSB from the float64 sum on these inputs: an output further than FLOAT_SLACK from a
# rounding boundary must come out identical.
FLOAT_SLACK = 0.02
DESIGN_HALF = 66


def design_pcm24k_to_14bit(pcm: bytes) -> np.ndarray:
    """Each 8 kHz output in 14-bit G.711 units before rounding: the filter centred on every third input."""
    taps = (_lowpass() / 4).astype(np.float32).astype(np.float64)
    x = np.concatenate([np.zeros(DESIGN_HALF), as_int(pcm), np.zeros(DESIGN_HALF)])
    return sliding_window_view(x, len(taps))[::3][: len(pcm) // 6] @ taps


def design_ulaw8k_to_pcm24k(ulaw: bytes) -> np.ndarray:
    """Each 24 kHz output before rounding: the 8 kHz input, zero-stuffed, through the filter with gain 3."""
    taps = (3 * _lowpass()).astype(np.float32).astype(np.float64)
    stuffed = np.zeros(3 * len(ulaw))
    stuffed[::3] = as_int(audioop.ulaw2lin(ulaw, 2))
    return np.convolve(stuffed, taps)[DESIGN_HALF : DESIGN_HALF + len(stuffed)]


def near_a_half(values: np.ndarray) -> np.ndarray:
    return np.abs(values - np.floor(values) - 0.5) < FLOAT_SLACK


def fixture_pcm(name: str) -> bytes:
    with wave.open(str(resources.files("telephony_bridge") / "fixtures" / name)) as wav:
        return wav.readframes(wav.getnframes())


ULAW_OF_14BIT = np.frombuffer(audioop.lin2ulaw((np.arange(-8192, 8192, dtype=np.int16) * 4).tobytes(), 2), np.uint8)


@pytest.mark.parametrize(
    "pcm",
    [
        fixture_pcm("model_answer_1.wav"),
        tone_pcm(1000, 24000, 1.0, 8000),
        tone_pcm(3900, 24000, 1.0, 32000),
        noise_pcm(6, 24000),
    ],
    ids=["speech", "1khz", "3.9khz-full-scale", "noise-saturating"],
)
def test_pcm24k_to_ulaw8k_gives_the_numpy_designs_codes(pcm: bytes) -> None:
    """Rounded to the nearest 14-bit value, saturated, encoded: identical codes but at float ties."""
    exact = design_pcm24k_to_14bit(pcm)
    want = ULAW_OF_14BIT[np.clip(np.floor(exact + 8192.5), 0, 16383).astype(np.intp)]
    got = np.frombuffer(pcm24k_to_ulaw8k(pcm), np.uint8)
    assert len(got) == len(want)
    differs = got != want
    assert near_a_half(exact[differs]).all()
    assert np.abs(ulaw_steps(got.tobytes()) - ulaw_steps(want.tobytes())).max() <= 1


@pytest.mark.parametrize(
    "ulaw",
    [
        audioop.lin2ulaw(fixture_pcm("caller_turn_1.wav"), 2),
        audioop.lin2ulaw(tone_pcm(1000, 8000, 1.0, 8000), 2),
        audioop.lin2ulaw(tone_pcm(3900, 8000, 1.0, 32000), 2),
        noise_ulaw(6, 8000),
    ],
    ids=["speech", "1khz", "3.9khz-full-scale", "noise-saturating"],
)
def test_ulaw8k_to_pcm24k_gives_the_numpy_designs_samples(ulaw: bytes) -> None:
    """Rounded to nearest and saturated: identical samples but at float ties, and never 1 LSB further."""
    exact = design_ulaw8k_to_pcm24k(ulaw)
    want = np.clip(np.rint(exact), -32768, 32767)
    got = as_int(ulaw8k_to_pcm24k(ulaw))
    assert len(got) == len(want)
    differs = got != want
    assert near_a_half(exact[differs]).all()
    assert np.abs(got - want).max() <= 1
