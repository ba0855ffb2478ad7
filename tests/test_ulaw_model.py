"""`audio_format = "pcmu"`: the model hears and speaks the caller's mu-law, over real sockets, with exact marks and truncation."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import pytest

from support import bridge_for, place_call
from telephony_bridge.call.controller import CallController
from telephony_bridge.call.events import (
    AppendAudio,
    CallerAudio,
    ModelAudio,
    RealtimeConnected,
    RealtimeMessageRejected,
    SessionConfigured,
    StreamStarted,
)
from telephony_bridge.config import CallProfile, ConfigError, ConfigErrors, parse_config
from telephony_bridge.realtime.session import RealtimeEventParser, session_update
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator
from telephony_bridge.testing.session_config import ULAW
from telephony_bridge.testing.twilio_simulator import speech_like_ulaw

PCMU_LINE = "+14155550177"
PCMU_CONFIG = f"""
[numbers."{PCMU_LINE}"]
instructions = "You answer the mu-law line."
audio_format = "pcmu"
"""


@pytest.fixture
async def pcmu_bridge(realtime: RealtimeSimulator) -> AsyncIterator[str]:
    async with bridge_for(realtime, extra_config=PCMU_CONFIG) as base_url:
        yield base_url


async def test_a_pcmu_number_asks_the_model_for_mulaw_both_ways_and_the_service_accepts_it(
    pcmu_bridge: str, realtime: RealtimeSimulator
) -> None:
    call, session = await place_call(pcmu_bridge, realtime, PCMU_LINE)
    update = await session.wait_for("session.update")
    await session.wait_for("session.updated", sent=True)
    audio = update["session"]["audio"]
    assert audio["input"]["format"] == {"type": "audio/pcmu"}
    assert audio["output"]["format"] == {"type": "audio/pcmu"}
    assert not session.events("error", sent=True)
    await call.hang_up()


async def test_the_callers_mulaw_reaches_the_model_byte_for_byte(pcmu_bridge: str, realtime: RealtimeSimulator) -> None:
    call, session = await place_call(pcmu_bridge, realtime, PCMU_LINE)
    said = speech_like_ulaw(400)
    call.say(said)
    await call.wait_said()
    await asyncio.sleep(0.1)
    appended = b"".join(base64.b64decode(e["audio"]) for e in session.events("input_audio_buffer.append"))
    assert said in appended
    assert all(len(base64.b64decode(e["audio"])) == 160 for e in session.events("input_audio_buffer.append"))
    await call.hang_up()


async def test_the_models_mulaw_reaches_the_caller_byte_for_byte(pcmu_bridge: str, realtime: RealtimeSimulator) -> None:
    call, session = await place_call(pcmu_bridge, realtime, PCMU_LINE)
    call.say(speech_like_ulaw(600))
    await session.wait_for("response.done", sent=True, timeout=10)
    await call.wait_heard(realtime.answer_ms, timeout=10)
    assert call.heard == realtime.answer_for(ULAW, 0)
    await call.hang_up()


async def test_barge_in_on_a_pcmu_line_truncates_within_20_ms_of_what_the_caller_heard(
    pcmu_bridge: str, realtime: RealtimeSimulator
) -> None:
    call, session = await place_call(pcmu_bridge, realtime, PCMU_LINE)
    call.say(speech_like_ulaw(600))
    await call.wait_heard(1200, timeout=10)
    call.say(speech_like_ulaw(800))
    truncate = await session.wait_for("conversation.item.truncate", timeout=5)
    await call.wait_for_message("clear", timeout=2)
    heard = call.played_ms_at(call.clears[0][0])
    assert 1200 <= heard < realtime.answer_ms
    assert abs(truncate["audio_end_ms"] - heard) <= 20, (truncate, heard)
    assert session.truncates and not session.events("error", sent=True)
    await call.hang_up()


def test_pcmu_on_the_preview_dialect_is_a_configuration_error_naming_the_key() -> None:
    with pytest.raises((ConfigError, ConfigErrors)) as raised:
        parse_config(PCMU_CONFIG, "bridge.toml", dialect="preview")
    assert f'numbers."{PCMU_LINE}".audio_format' in str(raised.value)
    assert parse_config(PCMU_CONFIG, "bridge.toml", dialect="ga").numbers[PCMU_LINE].audio_format == "pcmu"


def test_pcm16_stays_the_default_and_asks_for_24_khz_pcm() -> None:
    session = session_update(CallProfile(), "ga")["session"]
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}


def test_caller_audio_held_before_the_session_opens_is_bounded_in_mulaw_milliseconds() -> None:
    controller = CallController(CallProfile(audio_format="pcmu"), clock=lambda: 0.0)
    controller.handle(StreamStarted(stream_sid="MZ1", call_sid="CA1"))
    for _ in range(400):  # 8 s of caller audio before the session opens
        assert controller.handle(CallerAudio(b"\xff" * 160)) == []
    controller.handle(RealtimeConnected())
    released = controller.handle(SessionConfigured())
    held = [a.pcm for a in released if isinstance(a, AppendAudio)]
    assert held == [b"\xff" * 160] * 250  # 5 s, counted at mu-law's 8 bytes per ms, passed through untouched


def test_a_mulaw_delta_of_any_length_is_whole_samples_where_pcm16_needs_an_even_count() -> None:
    delta = json.dumps({"type": "response.output_audio.delta", "response_id": "resp_1", "item_id": "item_1",
                        "output_index": 0, "content_index": 0, "delta": base64.b64encode(b"\x01\x02\x03").decode()})
    assert RealtimeEventParser("ga", audio_format="pcmu").parse(delta) == ModelAudio("resp_1", "item_1", b"\x01\x02\x03")
    assert isinstance(RealtimeEventParser("ga").parse(delta), RealtimeMessageRejected)
