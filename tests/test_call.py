"""Whole calls through the real bridge on loopback: the Twilio simulator dials, the Realtime simulator answers."""

from __future__ import annotations

import asyncio

import pytest
import websockets
from openai.types.realtime import RealtimeClientEvent
from pydantic import TypeAdapter

from support import API_KEY, CLINIC, SHOP, bridge_for, new_call, place_call
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator
from telephony_bridge.testing.twilio_simulator import speech_like_ulaw

GA_CLIENT_EVENT = TypeAdapter(RealtimeClientEvent)


async def speak_and_wait_for_answer(call, session, speech_ms: int = 600) -> None:
    call.say(speech_like_ulaw(speech_ms))
    await session.wait_for(lambda e: e.get("type") == "response.done", timeout=10, sent=True)


async def test_a_signed_webhook_is_answered_with_a_stream_that_asks_what_follows_it(bridge: str) -> None:
    call = new_call(bridge)
    response = await call.dial()
    assert response.status_code == 200
    assert call.verbs == ["Connect"]
    assert call.stream_url == "wss://bridge.example.com/twilio/media"
    assert call.parameters["to"] == CLINIC and call.parameters["token"]
    assert '<Connect action="https://bridge.example.com/twilio/stream-ended">' in response.text


async def test_a_forged_or_unsigned_webhook_is_refused(bridge: str, realtime: RealtimeSimulator) -> None:
    assert (await new_call(bridge, auth_token="not-the-token").dial()).status_code == 403
    assert (await new_call(bridge, auth_token=None).dial()).status_code == 403
    await asyncio.sleep(0.1)
    assert realtime.sessions == []


async def test_the_realtime_session_opens_when_the_webhook_answers(bridge: str, realtime: RealtimeSimulator) -> None:
    await new_call(bridge).dial()
    session = await realtime.wait_for_session(0, timeout=2)
    assert session.headers["Authorization"] == f"Bearer {API_KEY}"


async def test_each_number_gets_its_own_instructions_and_voice(bridge: str, realtime: RealtimeSimulator) -> None:
    await new_call(bridge, CLINIC).dial()
    await new_call(bridge, "+15005550009").dial()
    clinic = await realtime.wait_for_session(0)
    unlisted = await realtime.wait_for_session(1)
    await clinic.wait_for("session.update")
    await unlisted.wait_for("session.update")
    assert (clinic.instructions, clinic.voice) == ("You are the receptionist of Bright Smile Dental.", "sage")
    assert (unlisted.instructions, unlisted.voice) == ("You answer the phone.", "marin")


async def test_a_media_socket_without_twilios_signature_is_refused_before_any_session(
    bridge: str, realtime: RealtimeSimulator
) -> None:
    call = new_call(bridge)
    with pytest.raises(websockets.InvalidStatus):
        await call.connect(sign=False, stream_url="wss://bridge.example.com/twilio/media")
    assert realtime.sessions == []


@pytest.mark.parametrize("token", [None, "forged"])
async def test_a_media_socket_with_no_or_a_forged_token_is_closed_without_a_session(
    bridge: str, realtime: RealtimeSimulator, token: str | None
) -> None:
    call = new_call(bridge)
    parameters = {"to": CLINIC} if token is None else {"to": CLINIC, "token": "1999999999.forged"}
    await call.connect(parameters=parameters, stream_url="wss://bridge.example.com/twilio/media")
    assert await call.wait_closed_by_bridge(timeout=2) is not None
    assert call.close_code == 1008
    assert realtime.sessions == []


async def test_another_calls_token_does_not_open_a_stream(bridge: str, realtime: RealtimeSimulator) -> None:
    victim = new_call(bridge)
    await victim.dial()
    intruder = new_call(bridge)
    await intruder.connect(parameters=victim.parameters, stream_url=victim.stream_url)
    assert await intruder.wait_closed_by_bridge(timeout=2) is not None
    await asyncio.sleep(0.1)
    assert len(realtime.sessions) == 1


async def test_a_token_opens_one_stream_only(bridge: str, realtime: RealtimeSimulator) -> None:
    call = new_call(bridge)
    await call.dial()
    await call.connect()
    replay = new_call(bridge)
    replay.call_sid = call.call_sid
    await replay.connect(parameters=call.parameters, stream_url=call.stream_url)
    assert await replay.wait_closed_by_bridge(timeout=2) is not None
    assert call.closed_at is None and len(realtime.sessions) == 1
    await call.hang_up()


async def test_audio_length_is_preserved_both_ways(bridge: str, realtime: RealtimeSimulator) -> None:
    call, session = await place_call(bridge, realtime)
    await speak_and_wait_for_answer(call, session)
    await call.wait_heard(realtime.answer_ms, timeout=10)
    await asyncio.sleep(0.1)
    assert abs(call.heard_ms() - realtime.answer_ms) <= 1
    frames_sent_ms = call.media_sent * 20
    assert frames_sent_ms - 60 <= session.input_audio_ms <= frames_sent_ms
    await call.hang_up()


async def test_barge_in_clears_twilio_and_truncates_at_what_the_caller_heard(bridge: str, realtime: RealtimeSimulator) -> None:
    call, session = await place_call(bridge, realtime)
    call.say(speech_like_ulaw(600))
    await call.wait_heard(1200, timeout=10)
    call.say(speech_like_ulaw(800))
    truncate = await session.wait_for("conversation.item.truncate", timeout=5)
    await call.wait_for_message("clear", timeout=2)
    cleared_at = call.clears[0][0]
    heard = call.played_ms_at(cleared_at)
    assert heard < realtime.answer_ms
    assert abs(truncate["audio_end_ms"] - heard) <= 20, (truncate, heard)
    assert session.truncates and not session.events("error", sent=True)
    heard_at_clear = call.heard_ms()
    await asyncio.sleep(0.3)
    assert call.heard_ms() == heard_at_clear, "audio of the cut answer reached the caller after the clear"
    await call.hang_up()


async def test_no_truncate_when_the_caller_speaks_after_the_answer_finished(bridge: str, realtime: RealtimeSimulator) -> None:
    call, session = await place_call(bridge, realtime)
    await speak_and_wait_for_answer(call, session)
    await call.wait_heard(realtime.answer_ms, timeout=10)
    await asyncio.sleep(0.1)
    call.say(speech_like_ulaw(600))
    await session.wait_for(lambda e: e.get("type") == "input_audio_buffer.speech_started", sent=True, since=0, timeout=5)
    await asyncio.sleep(0.2)
    assert session.events("conversation.item.truncate") == []
    assert call.messages("clear") == []
    await call.hang_up()


async def test_a_stop_closes_the_realtime_session_within_100_ms(bridge: str, realtime: RealtimeSimulator) -> None:
    call, session = await place_call(bridge, realtime)
    await session.wait_for("session.update")
    loop = asyncio.get_running_loop()
    hung_up_at = loop.time()
    await call.hang_up()
    closed_at = await session.wait_closed(timeout=2)
    assert closed_at - hung_up_at < 0.1


async def test_a_dropped_media_socket_closes_the_realtime_session_within_100_ms(bridge: str, realtime: RealtimeSimulator) -> None:
    call, session = await place_call(bridge, realtime)
    await session.wait_for("session.update")
    dropped_at = asyncio.get_running_loop().time()
    await call.drop(abrupt=True)
    closed_at = await session.wait_closed(timeout=2)
    assert closed_at - dropped_at < 0.1


async def test_junk_frames_are_survived_and_the_call_goes_on(bridge: str, realtime: RealtimeSimulator) -> None:
    call, session = await place_call(bridge, realtime)
    for junk in ["not json", b"\x00\x01binary", '{"event":"media","media":{"payload":"@@@"}}', '{"event":"nope"}', "[]"]:
        await call.send_raw(junk)
    received_before = session.input_audio_ms
    await asyncio.sleep(0.3)
    assert session.input_audio_ms > received_before
    assert call.closed_at is None
    await speak_and_wait_for_answer(call, session)
    await call.hang_up()


async def test_a_realtime_error_event_does_not_end_the_call(bridge: str, realtime: RealtimeSimulator) -> None:
    call, session = await place_call(bridge, realtime)
    await session.wait_for("session.update")
    await session.send_error("server_error", "The server had an error while processing your request.")
    await speak_and_wait_for_answer(call, session)
    await call.wait_heard(200, timeout=5)
    assert call.closed_at is None
    await call.hang_up()


async def test_a_key_press_reaches_the_model_as_a_caller_message(bridge: str, realtime: RealtimeSimulator) -> None:
    call, session = await place_call(bridge, realtime)
    await call.send_dtmf("5")
    item = await session.wait_for("conversation.item.create", timeout=2)
    assert "pressed 5" in item["item"]["content"][0]["text"]
    await session.wait_for("response.create", timeout=2)
    await call.hang_up()


async def test_a_greeting_makes_the_model_speak_first(bridge: str, realtime: RealtimeSimulator) -> None:
    call, session = await place_call(bridge, realtime, SHOP)
    create = await session.wait_for("response.create", timeout=2)
    assert "Corner Hardware, how can I help?" in create["response"]["instructions"]
    await call.wait_heard(500, timeout=5)
    await call.hang_up()


async def test_the_preview_dialect_carries_a_whole_call(realtime: RealtimeSimulator) -> None:
    async with bridge_for(realtime, url=realtime.preview_url, dialect="preview") as bridge:
        call, session = await place_call(bridge, realtime)
        assert session.dialect == "preview"
        update = await session.wait_for("session.update")
        assert update["session"]["voice"] == "sage"
        call.say(speech_like_ulaw(600))
        await call.wait_heard(1200, timeout=10)
        call.say(speech_like_ulaw(800))
        truncate = await session.wait_for("conversation.item.truncate", timeout=5)
        assert truncate["audio_end_ms"] > 1000
        assert not session.events("error", sent=True)
        await call.hang_up()


async def test_every_client_event_the_bridge_sends_is_valid_ga(bridge: str, realtime: RealtimeSimulator) -> None:
    call, session = await place_call(bridge, realtime, SHOP)
    call.say(speech_like_ulaw(600))
    await call.wait_heard(1200, timeout=10)
    call.say(speech_like_ulaw(600))
    await session.wait_for("conversation.item.truncate", timeout=5)
    await call.send_dtmf("#")
    await session.wait_for("conversation.item.create", timeout=2)
    await call.hang_up()
    types = {event["type"] for event in session.received}
    sent_by_the_bridge = {
        "session.update", "input_audio_buffer.append", "conversation.item.truncate", "conversation.item.create", "response.create"
    }
    assert sent_by_the_bridge <= types
    for event in session.received:
        GA_CLIENT_EVENT.validate_python(event)
