"""The model ends and transfers calls, over real sockets: the bridge, a Realtime simulator scripted to call
functions, Twilio's REST stand-in, and a simulated call that follows the TwiML it is given."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
from twilio.request_validator import RequestValidator

from support import API_KEY, AUTH_TOKEN, CLINIC, PUBLIC_URL, bridge_for, new_call
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator, ScriptedAnswer, ScriptedCall, speech_like_pcm16
from telephony_bridge.testing.twilio_api import TwilioApiSimulator
from telephony_bridge.testing.twilio_simulator import Callee, SimulatedCall, speech_like_ulaw
from telephony_bridge.twilio.webhook import STREAM_STATUS_PATH

DESK = "+15550009999"
TRANSFERS = f'\n[numbers."{CLINIC}".transfer]\nfront_desk = "{DESK}"\nbilling = "sip:billing@pbx.example.com"\n'
GOODBYE = speech_like_pcm16(1200)
HAND_OVER = speech_like_pcm16(900)
SUMMARY = "Ada Lovelace wants to move her Tuesday appointment."


@dataclass
class World:
    bridge: str
    realtime: RealtimeSimulator
    api: TwilioApiSimulator
    call: SimulatedCall


@asynccontextmanager
async def world(*answers: ScriptedAnswer, dialect: str = "ga", extra_config: str = TRANSFERS,
                realtime_url: str | None = None, to_number: str = CLINIC) -> AsyncIterator[World]:
    realtime = RealtimeSimulator(require_key=API_KEY, answers=answers, dialect=None)
    await realtime.start()
    async with TwilioApiSimulator(auth_token=AUTH_TOKEN) as api:
        env = {"TWILIO_API_URL": api.url, "TWILIO_ACCOUNT_SID": api.account_sid}
        url = realtime_url or (realtime.preview_url if dialect == "preview" else realtime.url)
        async with bridge_for(realtime, url=url, dialect=dialect, env=env, extra_config=extra_config) as bridge:
            call = new_call(bridge, to_number)
            api.register(call)
            yield World(bridge, realtime, api, call)
            if not call.over:
                await call.close()
    await realtime.stop()


async def answered(w: World) -> None:
    await w.call.run()
    session = await w.realtime.wait_for_session(0)
    await session.wait_for("session.updated", sent=True)
    w.call.say(speech_like_ulaw(600))


def last_echo_of_audio(call: SimulatedCall) -> float:
    return max(at for at, _, played in call.marks_echoed if played)


@pytest.mark.parametrize("dialect", ["ga", "preview"])
async def test_a_goodbye_said_with_end_call_is_heard_in_full_then_the_line_drops(dialect: str) -> None:
    async with world(ScriptedAnswer(GOODBYE, "Goodbye!", calls=(ScriptedCall("end_call"),)), dialect=dialect) as w:
        await answered(w)
        await w.call.wait_over(timeout=15)
        (hang_up,) = w.api.requests
        assert hang_up.params == {"Status": "completed"}
        heard_until = last_echo_of_audio(w.call)
        assert w.call.heard_ms() >= len(GOODBYE) / 48 - 20, "the goodbye was cut short"
        assert 0 <= hang_up.at - heard_until <= 0.5
        session = w.realtime.sessions[0]
        assert "goodbye" in await session.wait_for_function_output("end_call")
        assert not any(e["type"] == "response.create" for e in session.received), "no answer is asked after the goodbye"


async def test_end_call_alone_gets_a_goodbye_in_the_next_response_then_the_hang_up() -> None:
    async with world(
        ScriptedAnswer(None, calls=(ScriptedCall("end_call"),)), ScriptedAnswer(GOODBYE, "Goodbye, Ada."),
    ) as w:
        await answered(w)
        await w.call.wait_over(timeout=15)
        (hang_up,) = w.api.requests
        assert hang_up.params == {"Status": "completed"}
        assert 0 <= hang_up.at - last_echo_of_audio(w.call) <= 0.5
        assert w.call.heard_ms() >= len(GOODBYE) / 48 - 20


async def test_a_caller_who_speaks_over_the_goodbye_keeps_the_line_and_the_model_is_told() -> None:
    async with world(
        ScriptedAnswer(speech_like_pcm16(4000), "Goodbye then, have a good day.", calls=(ScriptedCall("end_call"),)),
        ScriptedAnswer(speech_like_pcm16(600), "Of course, what else?"),
    ) as w:
        await answered(w)
        session = w.realtime.sessions[0]
        await session.wait_for("response.done", sent=True, timeout=10)
        await asyncio.sleep(0.3)
        w.call.say(speech_like_ulaw(600))
        note = await session.wait_for(
            lambda e: e.get("type") == "conversation.item.create" and e["item"].get("role") == "system", timeout=5
        )
        assert "not ended" in note["item"]["content"][0]["text"]
        await asyncio.sleep(4.5)
        assert w.api.requests == [] and not w.call.over


async def test_a_transfer_whispers_the_summary_to_the_person_and_joins_them() -> None:
    answer = ScriptedAnswer(HAND_OVER, "Let me connect you to the front desk.",
                            calls=(ScriptedCall("transfer_call", {"target": "front_desk", "summary": SUMMARY}),))
    async with world(answer) as w:
        await answered(w)
        await w.call.wait_for_step("bridged", timeout=15)
        (dial,) = w.api.requests
        assert f"<Number url=\"{PUBLIC_URL}/twilio/whisper?transfer=" in dial.params["Twiml"] and DESK in dial.params["Twiml"]
        assert dial.at >= last_echo_of_audio(w.call), "Twilio dialled before the hand-over was heard"
        assert w.call.whispers == [(DESK, SUMMARY)]
        assert w.call.bridged_to == DESK
        session = w.realtime.sessions[0]
        await session.wait_closed()
        w.call.callee_hangs_up()
        await w.call.wait_over(timeout=5)
        assert FALLBACK_SAID not in w.call.spoken


FALLBACK_SAID = "Sorry, please call back later."


@pytest.mark.parametrize("behaviour", ["busy", "no-answer"])
async def test_a_transfer_nobody_takes_brings_the_caller_back_and_the_model_hears_why(behaviour: str) -> None:
    answer = ScriptedAnswer(HAND_OVER, "Connecting you now.",
                            calls=(ScriptedCall("transfer_call", {"target": "front_desk", "summary": SUMMARY}),))
    async with world(answer, ScriptedAnswer(speech_like_pcm16(600), "Sorry, nobody is free.")) as w:
        w.api.callees[DESK] = Callee(behaviour, ring_s=0.3)
        await answered(w)
        back = await w.realtime.wait_for_session(1, timeout=15)
        note = await back.wait_for(
            lambda e: e.get("type") == "conversation.item.create" and e["item"].get("role") == "system", timeout=5
        )
        reason = {"busy": "busy", "no-answer": "nobody answered"}[behaviour]
        assert reason in note["item"]["content"][0]["text"]
        history = [e for e in back.received if e.get("type") == "conversation.item.create" and e["item"]["role"] == "assistant"]
        assert history, "the new session has the conversation so far"
        await back.wait_for("response.done", sent=True, timeout=10)
        assert len(w.call.steps("stream-opened")) == 2 and not w.call.over
        assert w.call.stream_attributes["statusCallback"].endswith(STREAM_STATUS_PATH), "a returned stream reports errors"
        await w.call.hang_up()


async def test_an_unknown_target_is_refused_and_the_model_is_told_the_targets() -> None:
    answer = ScriptedAnswer(None, calls=(ScriptedCall("transfer_call", {"target": "the_boss", "summary": "x"}),))
    async with world(answer, ScriptedAnswer(speech_like_pcm16(500), "I can put you through to the front desk.")) as w:
        await answered(w)
        session = w.realtime.sessions[0]
        output = await session.wait_for_function_output("transfer_call", timeout=10)
        assert "unknown target 'the_boss'" in output and "front_desk" in output
        await session.wait_for(lambda e: e.get("type") == "response.create", timeout=5)
        assert w.api.requests == []


async def test_without_a_model_the_caller_is_transferred_to_the_fallback_target() -> None:
    night_line = "+15005550111"
    extra = (f'\n[numbers."{night_line}"]\nfallback_transfer = "front_desk"\n'
             f'[numbers."{night_line}".transfer]\nfront_desk = "{DESK}"\n')
    async with world(extra_config=extra, realtime_url="ws://127.0.0.1:9/v1/realtime", to_number=night_line) as w:
        await w.call.run()
        await w.call.wait_for_step("bridged", timeout=10)
        assert w.call.bridged_to == DESK
        assert w.call.spoken == []
        w.call.callee_hangs_up()
        await w.call.wait_over()


async def test_key_0_asks_the_model_for_a_person() -> None:
    async with world(ScriptedAnswer(speech_like_pcm16(400), "Let me find someone.")) as w:
        await w.call.run()
        session = await w.realtime.wait_for_session(0)
        await session.wait_for("session.updated", sent=True)
        await w.call.wait_for_step("stream-opened")  # the session can be ready before the media socket is
        await w.call.send_dtmf("0")
        pressed = await session.wait_for(lambda e: e.get("type") == "conversation.item.create", timeout=5)
        assert "transfer_call" in pressed["item"]["content"][0]["text"]


async def test_a_hang_up_twilio_refuses_still_ends_the_call_and_never_plays_the_fallback() -> None:
    async with world(ScriptedAnswer(GOODBYE, "Goodbye!", calls=(ScriptedCall("end_call"),))) as w:
        w.api.fail_next(400, 21220)
        await answered(w)
        await w.call.wait_over(timeout=15)
        assert [r.status for r in w.api.requests] == [400]
        assert FALLBACK_SAID not in w.call.spoken


async def test_a_transfer_twilio_refuses_leaves_the_caller_with_the_model_who_is_told() -> None:
    answer = ScriptedAnswer(HAND_OVER, "Connecting you.",
                            calls=(ScriptedCall("transfer_call", {"target": "billing", "summary": SUMMARY}),))
    async with world(answer, ScriptedAnswer(speech_like_pcm16(500), "Sorry, that did not work.")) as w:
        w.api.fail_next(500)
        await answered(w)
        session = w.realtime.sessions[0]
        note = await session.wait_for(
            lambda e: e.get("type") == "conversation.item.create" and e["item"].get("role") == "system", timeout=15
        )
        assert "could not be started" in note["item"]["content"][0]["text"]
        assert [r.status for r in w.api.requests] == [500], "a <Dial> that may have gone through is never sent twice"
        assert not w.call.over


async def test_a_replayed_dial_callback_gets_nothing() -> None:
    answer = ScriptedAnswer(HAND_OVER, "Connecting you.",
                            calls=(ScriptedCall("transfer_call", {"target": "front_desk", "summary": SUMMARY}),))
    async with world(answer) as w:
        await answered(w)
        await w.call.wait_for_step("bridged", timeout=15)
        w.call.callee_hangs_up()
        await w.call.wait_over(timeout=5)
        (callback,) = [c for c in w.call.callbacks if "/twilio/dial-ended" in c.url]
        signature = RequestValidator(AUTH_TOKEN).compute_signature(callback.url, callback.params)
        path = callback.url.removeprefix(PUBLIC_URL)
        async with httpx.AsyncClient() as client:
            replayed = await client.post(w.bridge + path, data=callback.params, headers={"X-Twilio-Signature": signature})
        assert replayed.status_code == 200 and "<Hangup" in replayed.text and "<Stream" not in replayed.text
