"""The bridge against the real services' behaviour, over real sockets: what a line with real delays does."""

from __future__ import annotations

import asyncio
import json

import pytest

from support import AUTH_TOKEN, CLINIC, PUBLIC_URL, SHOP, bridge_for
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator, speech_like_pcm16
from telephony_bridge.testing.twilio_simulator import SimulatedCall, speech_like_ulaw

ECHO_DELAY_MS = 40


@pytest.mark.parametrize(("speaks_after_end_ms", "truncated"), [(30, False), (-300, True)])
async def test_a_truncate_is_sent_only_when_the_caller_cut_the_answer_on_a_line_with_a_40_ms_echo_delay(
    speaks_after_end_ms: int, truncated: bool
) -> None:
    async with RealtimeSimulator(answer_audio=speech_like_pcm16(600), speed=float("inf")) as realtime, bridge_for(
        realtime
    ) as bridge:
        call = SimulatedCall(bridge_url=bridge, public_url=PUBLIC_URL, auth_token=AUTH_TOKEN, to_number=CLINIC,
                             echo_delay_ms=ECHO_DELAY_MS)
        await call.dial()
        await call.connect()
        session = await realtime.wait_for_session(0)
        await session.wait_for("session.update")
        call.say(speech_like_ulaw(600))
        done = await session.wait_for("response.done", sent=True, timeout=10)
        item_id = done["response"]["output"][0]["id"]
        await call.wait_heard(100)
        loop = asyncio.get_running_loop()
        speaks_at = call.audio_ends_at + speaks_after_end_ms / 1000
        await asyncio.sleep(speaks_at - loop.time())
        await session.send_raw(json.dumps({
            "type": "input_audio_buffer.speech_started", "event_id": "event_caller",
            "audio_start_ms": 0, "item_id": "item_caller",
        }))
        await call.wait_for_message("clear", timeout=5)
        await asyncio.sleep(0.2)
        truncates = session.events("conversation.item.truncate")
        await call.hang_up()
    assert not session.events("error", sent=True)
    if not truncated:
        assert truncates == []
        return
    assert [event["item_id"] for event in truncates] == [item_id]
    assert abs(truncates[0]["audio_end_ms"] - 300) <= 60


async def test_a_key_pressed_between_speech_stopped_and_response_created_waits_for_that_response() -> None:
    async with RealtimeSimulator(vad_response_delay_ms=400) as realtime, bridge_for(realtime) as bridge:
        call = SimulatedCall(bridge_url=bridge, public_url=PUBLIC_URL, auth_token=AUTH_TOKEN, to_number=CLINIC)
        await call.dial()
        await call.connect()
        session = await realtime.wait_for_session(0)
        await session.wait_for("session.update")
        call.say(speech_like_ulaw(600))
        stopped = await session.wait_for("input_audio_buffer.speech_stopped", sent=True, timeout=10)
        await call.send_dtmf("5")
        await session.wait_for("response.create", timeout=10)
        await session.wait_for(lambda e: e["type"] == "response.done" and len(session.responses) == 2, sent=True, timeout=15)
        await call.hang_up()
    assert not session.events("error", sent=True)
    order = [event["type"] for event in session.sent[session.sent.index(stopped):]]
    assert order.index("response.created") < order.index("response.done")
    pressed = [e for e in session.events("conversation.item.create") if "pressed 5" in json.dumps(e)]
    assert len(pressed) == 1 and len(session.events("response.create")) == 1
    assert [response.trigger for response in session.responses] == ["server_vad", "response.create"]


async def test_the_greeting_is_said_in_the_numbers_persona() -> None:
    async with RealtimeSimulator() as realtime, bridge_for(realtime) as bridge:
        call = SimulatedCall(bridge_url=bridge, public_url=PUBLIC_URL, auth_token=AUTH_TOKEN, to_number=SHOP)
        await call.dial()
        await call.connect()
        session = await realtime.wait_for_session(0)
        create = await session.wait_for("response.create")
        await session.wait_for("response.done", sent=True, timeout=10)
        await call.hang_up()
    instructions = create["response"]["instructions"]
    assert instructions.startswith("You are the support line of Corner Hardware.")
    assert instructions.endswith("by saying exactly this: Corner Hardware, how can I help?")
    assert session.instructions == "You are the support line of Corner Hardware."
    assert not session.events("error", sent=True)
