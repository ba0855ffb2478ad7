"""Call policy over real sockets: the bridge on loopback, the Twilio call and REST simulators, the Realtime simulator.

Limits are set short (fractions of a minute, a second of silence) so calls end in seconds; the simulators run
as fast as the audio allows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from support import API_KEY, AUTH_TOKEN, TEST_CONFIG, bridge_for, new_call
from telephony_bridge.call.events import TokenUsage
from telephony_bridge.call_log import CallRecord, call_details, find_call
from telephony_bridge.config import ModelPrices, parse_config
from telephony_bridge.policy import GOODBYES, PRESENCE_CHECK, WRAP_UP_NOTE, cost_of
from telephony_bridge.realtime.session import token_usage
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator, ScriptedAnswer, SimulatedSession, speech_like_pcm16
from telephony_bridge.testing.twilio_api import TwilioApiSimulator
from telephony_bridge.testing.twilio_simulator import SimulatedCall, speech_like_ulaw

LINE = "+15550001234"
MODEL = "gpt-realtime"
PRICES = f'[prices."{MODEL}"]\naudio_in = 32.0\naudio_out = 64.0\ntext_in = 4.0\ntext_out = 16.0\ncached_in = 0.4\n'
ADMIN_TOKEN = "admin-token-for-policy-tests"
GOODBYE = speech_like_pcm16(1200)
QUESTION = speech_like_pcm16(500)


@dataclass
class Line:
    realtime: RealtimeSimulator
    api: TwilioApiSimulator
    call: SimulatedCall
    call_log: Path
    bridge: str


@asynccontextmanager
async def line(tmp_path: Path, number_table: str, *answers: ScriptedAnswer, extra: str = "") -> AsyncIterator[Line]:
    """A bridge whose number LINE has `number_table`, logging to a call log in `tmp_path`; a call to it, not yet placed."""
    realtime = RealtimeSimulator(require_key=API_KEY, answers=answers, speed=8.0)
    await realtime.start()
    call_log = tmp_path / "calls.sqlite3"
    text = (TEST_CONFIG.replace('path = ""', f'path = "{call_log}"')
            + f'\n[recording]\nfolder = "{tmp_path / "recordings"}"\n' + extra
            + f'\n[numbers."{LINE}"]\n' + number_table)
    config = parse_config(text, "test.toml", env={})
    async with TwilioApiSimulator(auth_token=AUTH_TOKEN) as api:
        env = {"TWILIO_API_URL": api.url, "TWILIO_ACCOUNT_SID": api.account_sid, "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN}
        async with bridge_for(realtime, url=f"{realtime.url}?model={MODEL}", env=env, config=config) as bridge:
            call = new_call(bridge, LINE)
            api.register(call)
            yield Line(realtime, api, call, call_log, bridge)
            if not call.over:
                await call.close()
    await realtime.stop()


async def logged(ln: Line) -> CallRecord:
    """The call's row in the call log, once the writer thread has stored it."""
    for _ in range(100):
        if ln.call_log.exists() and (record := find_call(ln.call_log, ln.call.call_sid)) is not None:
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"call {ln.call.call_sid} never reached the call log")


async def connected(ln: Line) -> SimulatedSession:
    await ln.call.run()
    session = await ln.realtime.wait_for_session(0)
    await session.wait_for("session.updated", sent=True)
    await ln.call.wait_for_step("stream-opened")  # the session can be ready before the media socket is
    return session


def last_echo_of_audio(call: SimulatedCall) -> float:
    return max(at for at, _, played in call.marks_echoed if played)


def response_instructions(session: SimulatedSession) -> list[str]:
    return [str(event.get("response", {}).get("instructions", "")) for event in session.events("response.create")]


def usage_sent(session: SimulatedSession) -> TokenUsage:
    total = TokenUsage()
    for event in session.events("response.done", sent=True):
        usage = token_usage(event["response"]["usage"])
        assert usage is not None
        total += usage
    return total


HOURS_TABLE = 'instructions = "We are open: book appointments."\n'
AFTER_HOURS = f'[numbers."{LINE}".after_hours]\ninstructions = "We are closed: take a message."\n'


async def test_a_call_inside_hours_gets_the_numbers_profile_and_the_log_says_so(tmp_path: Path) -> None:
    every_day = ", ".join(f'{day} = "00:00-24:00"' for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"))
    table = HOURS_TABLE + f'hours = {{ time_zone = "UTC", open = {{ {every_day} }} }}\n' + AFTER_HOURS
    async with line(tmp_path, table) as ln:
        session = await connected(ln)
        assert session.instructions == "We are open: book appointments."
        await ln.call.hang_up()
        record = await logged(ln)
        assert record.profile_in_force == "business_hours"


async def test_a_call_outside_hours_keeps_the_after_hours_profile_and_the_log_says_so(tmp_path: Path) -> None:
    table = HOURS_TABLE + 'hours = { time_zone = "Europe/London", open = {} }\n' + AFTER_HOURS
    async with line(tmp_path, table) as ln:
        session = await connected(ln)
        assert session.instructions == "We are closed: take a message."
        await ln.call.hang_up()
        assert (await logged(ln)).profile_in_force == "after_hours"


async def test_a_holiday_gets_the_after_hours_profile_on_a_day_the_number_is_open(tmp_path: Path) -> None:
    today = datetime.now(UTC).date()
    days = ", ".join(f'"{today + timedelta(days=offset)}"' for offset in (-1, 0, 1))  # midnight may pass mid-test
    every_day = ", ".join(f'{day} = "00:00-24:00"' for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"))
    table = HOURS_TABLE + f'hours = {{ time_zone = "UTC", open = {{ {every_day} }}, holidays = [{days}] }}\n' + AFTER_HOURS
    async with line(tmp_path, table) as ln:
        session = await connected(ln)
        assert session.instructions == "We are closed: take a message."
        await ln.call.hang_up()
        assert (await logged(ln)).profile_in_force == "after_hours"


async def test_the_time_limit_asks_to_wrap_up_then_ends_after_a_goodbye_heard_in_full(tmp_path: Path) -> None:
    async with line(tmp_path, "max_call_minutes = 0.05\n", ScriptedAnswer(GOODBYE, "Our time is up. Goodbye!")) as ln:
        session = await connected(ln)
        await ln.call.wait_over(timeout=15)
        (hang_up,) = ln.api.requests
        assert hang_up.params == {"Status": "completed"}
        assert ln.call.heard_ms() >= len(GOODBYE) / 48 - 20, "the goodbye was cut short"
        assert 0 <= hang_up.at - last_echo_of_audio(ln.call) <= 0.5, "the line dropped once the goodbye had played"
        notes = [e["item"]["content"][0]["text"] for e in session.events("conversation.item.create")
                 if e["item"].get("role") == "system"]
        assert WRAP_UP_NOTE in notes
        [goodbye] = response_instructions(session)
        assert goodbye.endswith(GOODBYES["max_call_minutes"])
        record = await logged(ln)
        assert (record.outcome, record.end_reason) == ("policy_ended", "max_call_minutes reached")
        assert record.duration_s >= 3.0


async def test_silence_gets_one_presence_check_then_a_goodbye_heard_in_full(tmp_path: Path) -> None:
    answers = (ScriptedAnswer(QUESTION, "Are you still there?"), ScriptedAnswer(GOODBYE, "I'll hang up now. Goodbye!"))
    async with line(tmp_path, "silence_hangup_seconds = 1.0\n", *answers) as ln:
        session = await connected(ln)
        await ln.call.wait_over(timeout=15)
        check, goodbye = response_instructions(session)
        assert check.endswith(PRESENCE_CHECK) and goodbye.endswith(GOODBYES["silence_hangup_seconds"])
        (hang_up,) = ln.api.requests
        assert ln.call.heard_ms() >= (len(QUESTION) + len(GOODBYE)) / 48 - 40, "a goodbye was cut short"
        assert 0 <= hang_up.at - last_echo_of_audio(ln.call) <= 0.5
        record = await logged(ln)
        assert (record.outcome, record.end_reason) == ("policy_ended", "silence_hangup_seconds reached")


async def test_a_caller_who_answers_the_presence_check_keeps_the_line(tmp_path: Path) -> None:
    answers = (ScriptedAnswer(QUESTION, "Are you still there?"), ScriptedAnswer(QUESTION, "Go ahead."))
    async with line(tmp_path, "silence_hangup_seconds = 1.0\n", *answers) as ln:
        session = await connected(ln)
        await session.wait_for("response.done", sent=True, timeout=5)
        await ln.call.wait_heard(len(QUESTION) / 48 - 20)
        ln.call.say(speech_like_ulaw(600))
        await session.wait_for("input_audio_buffer.speech_stopped", sent=True, timeout=5)
        await asyncio.sleep(0.5)
        assert not ln.call.over and ln.api.requests == []
        await ln.call.hang_up()


async def test_usage_and_cost_are_logged_from_each_response_done(tmp_path: Path) -> None:
    answers = (ScriptedAnswer(speech_like_pcm16(800), "Hello, how can I help?"),
               ScriptedAnswer(speech_like_pcm16(600), "Tuesday at ten, then."))
    async with line(tmp_path, 'greeting = "Hello."\n', *answers, extra=PRICES) as ln:
        session = await connected(ln)
        first = await session.wait_for("response.done", sent=True, timeout=5)
        await ln.call.wait_heard(800 - 20)
        ln.call.say(speech_like_ulaw(800))
        await session.wait_for("response.done", sent=True, since=session.sent.index(first) + 1, timeout=10)
        await ln.call.hang_up()
        record = await logged(ln)
        sent = usage_sent(session)
        assert sent.audio_in > 0 and sent.audio_out > 0 and sent.text_in > 0 and sent.text_out > 0
        assert record.usage == sent
        prices = ModelPrices(audio_in=32.0, audio_out=64.0, text_in=4.0, text_out=16.0, cached_in=0.4)
        assert record.cost is not None and abs(record.cost - (cost_of(sent, prices) or 0)) < 1e-9
        assert record.model == MODEL
        shown = call_details(record)
        assert f"audio {sent.audio_in} in / {sent.audio_out} out" in shown and f"{record.cost:.4f} (estimated)" in shown
        async with httpx.AsyncClient(base_url=ln.bridge, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
            detail = (await admin.get(f"/admin/calls/{ln.call.call_sid}")).json()
            assert detail["usage"]["audio_out"] == sent.audio_out and detail["cost"] == record.cost
            assert detail["profile_in_force"] == "always"
            policy = (await admin.get("/admin/policy")).json()
            [usage] = policy["usage"]
            assert (usage["number"], usage["model"], usage["calls"]) == (LINE, MODEL, 1)
            assert usage["tokens"]["text_in"] == sent.text_in and usage["cost"] == record.cost
            assert policy["prices"][MODEL]["audio_out"] == 64.0
            metrics = (await admin.get("/metrics")).text
        labels = f'model="{MODEL}",number="{LINE}"'
        assert f'telephony_bridge_tokens_total{{kind="audio_out",{labels}}} {float(sent.audio_out)}' in metrics
        assert f"telephony_bridge_estimated_cost_total{{{labels}}} {record.cost}" in metrics
        assert f"telephony_bridge_line_seconds_total{{{labels}}}" in metrics


async def test_the_admin_api_shows_each_numbers_hours_and_limits(tmp_path: Path) -> None:
    table = (HOURS_TABLE + 'max_call_minutes = 10\nsilence_hangup_seconds = 20\nrecord = true\n'
             'retention_days = { recordings = 7 }\nhours = { time_zone = "Europe/London", open = {} }\n' + AFTER_HOURS)
    async with line(tmp_path, table) as ln:
        async with httpx.AsyncClient(base_url=ln.bridge, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
            policy = (await admin.get("/admin/policy")).json()
        number = policy["numbers"][LINE]
        assert number["hours"] == {"time_zone": "Europe/London", "open": {}, "holidays": [], "open_now": False}
        assert number["in_force_now"] == "after_hours"
        assert number["after_hours"]["instructions"] == "We are closed: take a message."
        assert number["limits"] == {"max_call_minutes": 10.0, "silence_hangup_seconds": 20.0, "max_cost_per_call": None}
        assert number["recording"] == {"record": True, "notice": "This call is recorded.", "notice_required": False}
        assert number["retention_days"] == {"recordings": 7.0, "transcripts": None}
        assert policy["defaults"]["hours"] is None and policy["defaults"]["in_force_now"] == "always"


async def test_the_cost_cap_ends_the_call_with_a_goodbye_heard_in_full(tmp_path: Path) -> None:
    answers = (ScriptedAnswer(speech_like_pcm16(800), "Hello, how can I help?"), ScriptedAnswer(GOODBYE, "Goodbye!"))
    table = 'greeting = "Hello."\nmax_cost_per_call = 0.000001\n'
    async with line(tmp_path, table, *answers, extra=PRICES) as ln:
        session = await connected(ln)
        await ln.call.wait_over(timeout=15)
        greeting, goodbye = response_instructions(session)
        assert goodbye.endswith(GOODBYES["max_cost_per_call"])
        (hang_up,) = ln.api.requests
        assert 0 <= hang_up.at - last_echo_of_audio(ln.call) <= 0.5
        record = await logged(ln)
        assert (record.outcome, record.end_reason) == ("policy_ended", "max_cost_per_call reached")
        assert record.cost is not None and record.cost >= 0.000001


async def test_the_recording_notice_is_heard_before_the_models_first_words(tmp_path: Path) -> None:
    notice = "This call is recorded so we can train our staff."
    table = f'record = true\nrecording_notice = "{notice}"\ngreeting = "Hello, Bright Smile Dental."\n'
    async with line(tmp_path, table, ScriptedAnswer(speech_like_pcm16(800), "Hello, Bright Smile Dental.")) as ln:
        await connected(ln)
        await ln.call.wait_heard(400)
        assert ln.call.spoken == [notice]
        said = await ln.call.wait_for_step("say", notice)
        stream = await ln.call.wait_for_step("stream-opened")
        first_audio = min(start for start, _ in ln.call.playback)
        assert said.at <= stream.at <= first_audio, "the notice is said before the stream, so before the model's words"
        await ln.call.hang_up()
        assert len(list((tmp_path / "recordings").glob("*.jsonl"))) == 1


async def test_a_number_that_does_not_record_says_no_notice(tmp_path: Path) -> None:
    async with line(tmp_path, 'greeting = "Hello."\n', ScriptedAnswer(speech_like_pcm16(400), "Hello.")) as ln:
        await connected(ln)
        await ln.call.wait_heard(200)
        assert ln.call.spoken == []
        await ln.call.hang_up()
