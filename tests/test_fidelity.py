"""The bridge against the real services' behaviour, over real sockets: what a line with real delays does."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from twilio.request_validator import RequestValidator

from support import API_KEY, AUTH_TOKEN, CLINIC, PUBLIC_URL, SHOP, TEST_CONFIG, bridge_for, place_call
from telephony_bridge.call_log import call_details, find_call
from telephony_bridge.config import CallProfile, TurnDetection, parse_config
from telephony_bridge.realtime.session import session_update
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator, speech_like_pcm16
from telephony_bridge.testing.twilio_simulator import SimulatedCall, speech_like_ulaw
from telephony_bridge.twilio.webhook import STREAM_STATUS_PATH

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


def signed_post_args(path: str, params: dict[str, str]) -> dict[str, object]:
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + path, params)
    return {"data": params, "headers": {"X-Twilio-Signature": signature}}


async def test_a_stream_error_twilio_reports_is_counted_by_code_and_kept_in_the_call_log(tmp_path: Path) -> None:
    log_path = tmp_path / "calls.sqlite3"
    config = parse_config(TEST_CONFIG.replace('path = ""', f'path = "{log_path.as_posix()}"'), "test.toml")
    async with RealtimeSimulator(require_key=API_KEY) as realtime, bridge_for(realtime, config=config) as bridge:
        call, _ = await place_call(bridge, realtime)
        assert call.stream_attributes["statusCallback"] == f"{PUBLIC_URL}{STREAM_STATUS_PATH}"
        assert call.stream_attributes["statusCallbackMethod"] == "POST"
        base = {"AccountSid": call.account_sid, "CallSid": call.call_sid, "StreamSid": call.stream_sid}
        async with httpx.AsyncClient(base_url=bridge) as http:
            started = await http.post(STREAM_STATUS_PATH, **signed_post_args(STREAM_STATUS_PATH, {
                **base, "StreamEvent": "stream-started"}))
            failed = await http.post(STREAM_STATUS_PATH, **signed_post_args(STREAM_STATUS_PATH, {
                **base, "StreamEvent": "stream-error", "StreamError": "31921 Stream - WebSocket - Close Error"}))
            odd = await http.post(STREAM_STATUS_PATH, **signed_post_args(STREAM_STATUS_PATH, {
                **base, "StreamEvent": "stream-error", "StreamError": "code 39999 never seen"}))
            forged = await http.post(STREAM_STATUS_PATH, data={**base, "StreamEvent": "stream-error", "StreamError": "31920"})
            metrics = (await http.get("/metrics")).text
        await call.hang_up()
    assert [started.status_code, failed.status_code, odd.status_code, forged.status_code] == [204, 204, 204, 403]
    assert 'telephony_bridge_stream_errors_total{code="31921"} 1.0' in metrics
    assert 'telephony_bridge_stream_errors_total{code="other"} 1.0' in metrics
    assert "39999" not in metrics and "31920" not in metrics
    record = find_call(log_path, call.call_sid)
    assert record is not None
    assert [(error.code, error.detail) for error in record.stream_errors] == [
        ("31921", "31921 Stream - WebSocket - Close Error"), ("other", "code 39999 never seen"),
    ]
    assert "31921: 31921 Stream - WebSocket - Close Error" in call_details(record)


def test_noise_reduction_and_the_idle_timeout_go_into_the_ga_session_update() -> None:
    profile = CallProfile(noise_reduction="far_field", turn_detection=TurnDetection(idle_timeout_ms=8000))
    audio_input = session_update(profile, "ga")["session"]["audio"]["input"]
    assert audio_input["noise_reduction"] == {"type": "far_field"}
    assert audio_input["turn_detection"]["idle_timeout_ms"] == 8000
    assert "noise_reduction" not in session_update(CallProfile(), "ga")["session"]["audio"]["input"]
