"""Outbound calls over real sockets: the bridge places a call through the Twilio REST stand-in, which answers it with a
simulated person or machine, streams it to the bridge and posts the signed AMD and status callbacks."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from support import API_KEY, AUTH_TOKEN, PUBLIC_URL
from telephony_bridge.app import create_app
from telephony_bridge.config import parse_config, settings_from_env
from telephony_bridge.outbound.placing import OutboundCalls, OutboundOutcome, OutboundRefused, OutboundRequest, PlacedCall
from telephony_bridge.server import tcp_listener, uvicorn_config
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator, ScriptedAnswer, ScriptedCall, speech_like_pcm16
from telephony_bridge.testing.twilio_api import Answerer, TwilioApiSimulator
from telephony_bridge.testing.twilio_api import PlacedCall as TwilioPlacedCall

ADMIN_TOKEN = "admin-token-for-outbound-tests"
CLINIC = "+14155550100"
PATIENT = "+15557654321"

CONFIG = f"""
[defaults]
instructions = "You answer the phone."
[defaults.turn_detection]
silence_duration_ms = 300

[numbers."{CLINIC}"]
instructions = "You are the reminder line of Bright Smile Dental, calling {{name}}."
greeting = "Hello {{name}}, this is Bright Smile Dental about your appointment on {{appointment}}."
voicemail_message = "Hi {{name}}, Bright Smile Dental here: your appointment is on {{appointment}}. Goodbye."

[call_log]
path = "LOG"
"""
CONTEXT = {"name": "Ada", "appointment": "Tue 10:00"}


@dataclass
class Line:
    bridge: str
    api: TwilioApiSimulator
    outbound: OutboundCalls
    outcomes: list[OutboundOutcome]
    admin: httpx.AsyncClient
    log: Path

    async def outcome(self, timeout: float = 10.0) -> OutboundOutcome:
        async with asyncio.timeout(timeout):
            while not self.outcomes:
                await asyncio.sleep(0.02)
        return self.outcomes[0]


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    listener = tcp_listener("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn_config(app, log_level="warning"))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[listener]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        listener.close()


@asynccontextmanager
async def line(realtime: RealtimeSimulator, tmp_path: Path, extra_config: str = "") -> AsyncIterator[Line]:
    log = tmp_path / "calls.db"
    config = parse_config(CONFIG.replace("LOG", str(log)) + extra_config, "outbound.toml")
    async with TwilioApiSimulator(auth_token=AUTH_TOKEN) as api:
        settings = settings_from_env({
            "PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "OPENAI_API_KEY": API_KEY, "REALTIME_URL": realtime.url,
            "TWILIO_API_URL": api.url, "TWILIO_ACCOUNT_SID": api.account_sid, "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN,
        })
        app = create_app(settings, config)
        async with serve(app) as bridge:
            api.place_calls_on(bridge, PUBLIC_URL)
            outcomes: list[OutboundOutcome] = []
            app.state.outbound.add_outcome_listener(outcomes.append)
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with httpx.AsyncClient(base_url=bridge, headers=headers, timeout=30) as admin:
                yield Line(bridge, api, app.state.outbound, outcomes, admin, log)


def response_creates(realtime: RealtimeSimulator) -> list[dict[str, object]]:
    return realtime.sessions[0].events("response.create") if realtime.sessions else []


async def test_a_person_hears_silence_until_amd_says_human_then_the_greeting(realtime: RealtimeSimulator, tmp_path: Path) -> None:
    async with line(realtime, tmp_path) as ln:
        placed = await ln.outbound.place(OutboundRequest(CLINIC, PATIENT, CONTEXT, campaign_row="row-7"))
        session = await realtime.wait_for_session(0)
        first_update = await session.wait_for("session.update")
        assert first_update["session"]["audio"]["input"]["turn_detection"]["create_response"] is False
        (callee,) = await ln.api.wait_placed(1)
        await session.wait_for("input_audio_buffer.speech_stopped", sent=True, timeout=10)
        assert response_creates(realtime) == []  # the "hello?" was heard, and not answered on the service's own account
        assert callee.call is not None and callee.call.heard_ms() == 0
        await session.wait_for("response.create", timeout=10)
        greeting = response_creates(realtime)[0]["response"]["instructions"]
        assert "Hello Ada, this is Bright Smile Dental about your appointment on Tue 10:00." in greeting
        assert "calling Ada." in greeting
        await callee.call.wait_heard(200, timeout=10)
        assert callee.amd_sent_at is not None and callee.call.playback[0][0] > callee.amd_sent_at
        updates = session.events("session.update")
        assert updates[-1]["session"]["audio"]["input"]["turn_detection"]["create_response"] is True
        await callee.call.hang_up()
        outcome = await ln.outcome()
    assert (outcome.outbound_id, outcome.call_sid, outcome.campaign_row) == (placed.outbound_id, placed.call_sid, "row-7")
    assert (outcome.outcome, outcome.amd_result) == ("human", "human")
    created = ln.api.created[0]
    assert (created["MachineDetection"], created["AsyncAmd"]) == ("DetectMessageEnd", "true")
    assert created["AsyncAmdStatusCallback"].startswith(PUBLIC_URL + "/twilio/outbound-amd?outbound=")
    with sqlite3.connect(ln.log) as db:
        row = db.execute("SELECT direction, from_number, to_number, amd_result FROM calls").fetchone()
        kept = db.execute("SELECT outcome, amd_result, campaign_row FROM outbound_calls").fetchone()
    assert row == ("outbound", CLINIC, PATIENT, "human")
    assert kept == ("human", "human", "row-7")


async def test_unknown_is_treated_as_a_person(realtime: RealtimeSimulator, tmp_path: Path) -> None:
    async with line(realtime, tmp_path) as ln:
        ln.api.answerers[PATIENT] = Answerer("person", amd_result="unknown")
        await ln.outbound.place(OutboundRequest(CLINIC, PATIENT, CONTEXT))
        session = await realtime.wait_for_session(0)
        create = await session.wait_for("response.create", timeout=10)
        assert "Hello Ada" in create["response"]["instructions"]
        (callee,) = await ln.api.wait_placed(1)
        assert callee.call is not None
        await callee.call.hang_up()
        outcome = await ln.outcome()
    assert (outcome.outcome, outcome.amd_result) == ("human", "unknown")


async def test_a_fax_is_hung_up_on_without_a_word(realtime: RealtimeSimulator, tmp_path: Path) -> None:
    async with line(realtime, tmp_path) as ln:
        ln.api.answerers[PATIENT] = Answerer("fax")
        await ln.outbound.place(OutboundRequest(CLINIC, PATIENT, CONTEXT))
        outcome = await ln.outcome()
        hang_ups = [r for r in ln.api.requests if r.method == "POST" and r.params.get("Status") == "completed"]
    assert (outcome.outcome, outcome.amd_result) == ("fax", "fax")
    assert len(hang_ups) == 1
    assert response_creates(realtime) == []


async def test_a_voicemail_gets_the_message_after_the_beep_then_the_rest_hang_up(
    realtime: RealtimeSimulator, tmp_path: Path
) -> None:
    async with line(realtime, tmp_path) as ln:
        ln.api.answerers[PATIENT] = Answerer("voicemail", greeting_ms=1500)
        await ln.outbound.place(OutboundRequest(CLINIC, PATIENT, CONTEXT))
        session = await realtime.wait_for_session(0)
        create = await session.wait_for("response.create", timeout=15)
        (callee,) = await ln.api.wait_placed(1)
        outcome = await ln.outcome(timeout=20)
    message = create["response"]["instructions"]
    assert "Leave exactly this message" in message and "your appointment is on Tue 10:00" in message
    assert callee.call is not None and callee.amd_sent_at is not None
    assert callee.call.playback and callee.call.playback[0][0] > callee.amd_sent_at  # the message came after the beep
    hang_up = next(r for r in ln.api.requests if r.params.get("Status") == "completed")
    assert callee.call.heard_ms() >= 2900  # the simulator's 3 s answer played in full before the hang-up
    assert hang_up.at >= callee.call.playback[0][0] + 2.9
    assert (outcome.outcome, outcome.amd_result) == ("voicemail", "machine_end_beep")


@pytest.mark.parametrize("kind", ["busy", "no-answer", "failed"])
async def test_a_callee_who_never_answers_gets_its_outcome_and_no_stream(
    realtime: RealtimeSimulator, tmp_path: Path, kind: str
) -> None:
    async with line(realtime, tmp_path) as ln:
        ln.api.answerers[PATIENT] = Answerer(kind)  # type: ignore[arg-type]
        placed = await ln.outbound.place(OutboundRequest(CLINIC, PATIENT, CONTEXT))
        outcome = await ln.outcome()
        record = await ln.outbound.find_call(placed.call_sid)
        unknown = await ln.outbound.find_call("CA" + "0" * 32)
    assert unknown is None
    assert (outcome.outcome, outcome.amd_result, outcome.call_sid) == (kind, None, placed.call_sid)
    assert realtime.sessions == []
    assert record is not None and record["status"] == kind


async def test_a_number_on_the_do_not_call_list_is_never_dialled(realtime: RealtimeSimulator, tmp_path: Path) -> None:
    async with line(realtime, tmp_path) as ln:
        added = await ln.admin.post("/admin/dnc", json={"number": PATIENT})
        with pytest.raises(OutboundRefused) as refused:
            await ln.outbound.place(OutboundRequest(CLINIC, PATIENT, CONTEXT, campaign_row="r1"))
        by_api = await ln.admin.post("/admin/calls", json={"from": CLINIC, "to": PATIENT, "context": CONTEXT})
        listed = (await ln.admin.get("/admin/dnc")).json()["numbers"]
        removed = await ln.admin.request("DELETE", "/admin/dnc", json={"number": PATIENT})
    assert added.status_code == 201 and removed.status_code == 200
    assert refused.value.reason == "do-not-call"
    assert by_api.status_code == 409 and by_api.json() == {"refused": "do-not-call"}
    assert [entry["number"] for entry in listed] == [PATIENT]
    assert ln.api.created == []
    assert [(o.outcome, o.call_sid, o.campaign_row) for o in ln.outcomes] == [
        ("do-not-call", None, "r1"), ("do-not-call", None, None),
    ]


async def test_a_callee_who_opts_out_is_added_to_the_list_and_the_call_ends(tmp_path: Path) -> None:
    answers = [ScriptedAnswer(speech_like_pcm16(400), "Sorry to bother you, goodbye.", calls=(ScriptedCall("opt_out", {}),))]
    async with RealtimeSimulator(answers=answers, speed=8.0) as realtime, line(realtime, tmp_path) as ln:
        await ln.outbound.place(OutboundRequest(CLINIC, PATIENT, CONTEXT))
        session = await realtime.wait_for_session(0)
        tools = (await session.wait_for("session.update"))["session"]["tools"]
        outcome = await ln.outcome(timeout=15)
        listed = (await ln.admin.get("/admin/dnc")).json()["numbers"]
    assert "opt_out" in [tool["name"] for tool in tools]
    assert outcome.outcome == "opted-out"
    assert [entry["number"] for entry in listed] == [PATIENT]
    assert listed[0]["source"].startswith("opted out on call CA")


async def test_placeholders_are_filled_and_a_missing_one_is_refused_before_dialling(
    realtime: RealtimeSimulator, tmp_path: Path
) -> None:
    async with line(realtime, tmp_path) as ln:
        with pytest.raises(OutboundRefused) as refused:
            await ln.outbound.place(OutboundRequest(CLINIC, PATIENT, {"name": "Ada"}))
        with pytest.raises(OutboundRefused) as unknown:
            await ln.outbound.place(OutboundRequest("+15550009999", PATIENT, CONTEXT))
        profile, dialled = ln.outbound.prepare(OutboundRequest(CLINIC, PATIENT, CONTEXT))
    assert refused.value.reason == "missing-placeholder: appointment"
    assert unknown.value.reason == "unknown-number"
    assert ln.api.created == []
    assert profile.instructions == "You are the reminder line of Bright Smile Dental, calling Ada."
    assert "{" not in (profile.greeting or "") and "Tue 10:00" in dialled.voicemail_instructions


async def test_the_admin_api_places_a_call_with_the_token_and_refuses_without_it(
    realtime: RealtimeSimulator, tmp_path: Path
) -> None:
    async with line(realtime, tmp_path) as ln:
        body = {"from": CLINIC, "to": PATIENT, "context": CONTEXT}
        async with httpx.AsyncClient(base_url=ln.bridge) as anonymous:
            without = await anonymous.post("/admin/calls", json=body)
            wrong = await anonymous.post("/admin/calls", json=body, headers={"Authorization": "Bearer nope"})
            dnc_without = await anonymous.get("/admin/dnc")
        placed = await ln.admin.post("/admin/calls", json=body)
        missing = await ln.admin.post("/admin/calls", json={"from": CLINIC, "to": PATIENT})
        (callee,) = await ln.api.wait_placed(1)
        await realtime.wait_for_session(0)
        assert callee.call is not None
        await callee.call.wait_for_step("stream-opened")
        await callee.call.hang_up()
        await ln.outcome()
    assert (without.status_code, wrong.status_code, dnc_without.status_code) == (401, 401, 401)
    assert placed.status_code == 201 and placed.json()["call_sid"] == callee.call_sid
    assert missing.status_code == 409 and missing.json() == {"refused": "missing-placeholder: name"}
    assert len(ln.api.created) == 1


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("TWILIO_AUTH_TOKEN", "OPENAI_API_KEY", "BRIDGE_CONFIG")}
    return subprocess.run([sys.executable, "-m", "telephony_bridge", *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=30)


def test_the_dnc_command_adds_lists_and_removes_numbers_in_the_call_log(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(CONFIG.replace("LOG", str(tmp_path / "calls.db")))
    env = {"BRIDGE_CONFIG": str(config)}
    added = run_cli("dnc", "add", PATIENT, env=env)
    again = run_cli("dnc", "add", PATIENT, env=env)
    listed = run_cli("dnc", "list", env=env)
    removed = run_cli("dnc", "remove", PATIENT, env=env)
    gone = run_cli("dnc", "remove", PATIENT, env=env)
    assert (added.returncode, again.returncode, listed.returncode, removed.returncode) == (0, 0, 0, 0)
    assert "is already on" in again.stdout
    assert listed.stdout.startswith(PATIENT) and "command line" in listed.stdout
    assert gone.returncode == 1 and "not on the do-not-call list" in gone.stderr


async def test_the_call_command_places_a_call_through_the_admin_api(realtime: RealtimeSimulator, tmp_path: Path) -> None:
    async with line(realtime, tmp_path) as ln:
        env = {"BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN}
        args = ("call", "--from", CLINIC, "--to", PATIENT, "--context", "name=Ada", "--context", "appointment=Tue 10:00",
                "--url", ln.bridge)
        result = await asyncio.to_thread(run_cli, *args, env=env)
        refused = await asyncio.to_thread(run_cli, "call", "--from", CLINIC, "--to", PATIENT, "--url", ln.bridge, env=env)
        (callee,) = await ln.api.wait_placed(1)
        assert callee.call is not None
        await callee.call.wait_for_step("stream-opened")
        await callee.call.hang_up()
        await ln.outcome()
    assert result.returncode == 0, result.stderr
    assert f"placed call {callee.call_sid}" in result.stdout
    assert refused.returncode == 1 and "missing-placeholder: name" in refused.stderr


async def test_the_outbound_demo_reminds_a_person_and_a_voicemail() -> None:
    from telephony_bridge.demo_outbound import run_outbound_demo

    lines: list[str] = []
    figures = await run_outbound_demo(echo=lines.append)
    assert [outcome for _, outcome, _ in figures.outcomes] == ["human", "voicemail"]
    assert figures.amd_to_audio_ms is not None and figures.hello_to_audio_ms is not None
    assert figures.hello_to_audio_ms > figures.amd_to_audio_ms
    assert any("AnsweredBy=machine_end_beep" in line for line in lines)


async def test_unsigned_amd_and_status_callbacks_are_refused(realtime: RealtimeSimulator, tmp_path: Path) -> None:
    async with line(realtime, tmp_path) as ln:
        placed = await ln.outbound.place(OutboundRequest(CLINIC, PATIENT, CONTEXT))
        query = f"?outbound={placed.outbound_id}"
        async with httpx.AsyncClient(base_url=ln.bridge) as forger:
            amd = await forger.post("/twilio/outbound-amd" + query, data={"CallSid": placed.call_sid, "AnsweredBy": "fax"},
                                    headers={"X-Twilio-Signature": "forged"})
            status = await forger.post("/twilio/outbound-status" + query, data={"CallSid": placed.call_sid, "CallStatus": "busy"})
        (callee,) = await ln.api.wait_placed(1)
        session = await realtime.wait_for_session(0)
        create = await session.wait_for("response.create", timeout=10)
        assert callee.call is not None
        await callee.call.hang_up()
        outcome = await ln.outcome()
    assert (amd.status_code, status.status_code) == (403, 403)
    assert "Hello Ada" in create["response"]["instructions"], "the forged fax result changed nothing"
    assert (outcome.outcome, outcome.amd_result) == ("human", "human")


RECORDED_CLINIC = "+14155550111"


async def answered(ln: Line, timeout: float = 10.0) -> TwilioPlacedCall:
    """The one placed call, once its callee has picked up (the stand-in made its side of the call)."""
    (callee,) = await ln.api.wait_placed(1)
    async with asyncio.timeout(timeout):
        while callee.call is None:
            await asyncio.sleep(0.01)
    return callee


async def test_a_recorded_number_says_its_notice_to_the_callee_before_the_models_first_word(
    realtime: RealtimeSimulator, tmp_path: Path
) -> None:
    extra = f"""
[numbers."{RECORDED_CLINIC}"]
instructions = "You are the reminder line, calling {{name}}."
greeting = "Hello {{name}}."
record = true
recording_notice = "This call is recorded for quality."

[recording]
folder = "{tmp_path / 'recordings'}"
"""
    async with line(realtime, tmp_path, extra) as ln:
        await ln.outbound.place(OutboundRequest(RECORDED_CLINIC, PATIENT, CONTEXT))
        callee = await answered(ln)
        assert callee.call is not None
        await callee.call.wait_heard(200, timeout=10)
        await callee.call.hang_up()
        await ln.outcome()
    twiml = ln.api.created[0]["Twiml"]
    assert twiml.index("<Say>This call is recorded for quality.</Say>") < twiml.index("<Connect")
    steps = callee.call.timeline
    said = next(step for step in steps if step.event == "say")
    opened = next(step for step in steps if step.event == "stream-opened")
    assert callee.call.spoken == ["This call is recorded for quality."]
    assert said.at <= opened.at < callee.call.playback[0][0], "the notice, then the stream, then the model's first word"
    assert len(list((tmp_path / "recordings").glob("*.jsonl"))) == 1


async def test_a_number_that_does_not_record_says_no_notice(realtime: RealtimeSimulator, tmp_path: Path) -> None:
    async with line(realtime, tmp_path) as ln:
        await ln.outbound.place(OutboundRequest(CLINIC, PATIENT, CONTEXT))
        callee = await answered(ln)
        assert callee.call is not None
        await callee.call.wait_for_step("stream-opened", timeout=10)
        await callee.call.hang_up()
        await ln.outcome()
    assert "<Say>" not in ln.api.created[0]["Twiml"] and callee.call.spoken == []


LOST = "http://127.0.0.1:9"
"""Where the stand-in posts callbacks once they are to be lost: nothing listens there (Twilio's 11200)."""


def overdue_soon(outbound: OutboundCalls) -> None:
    outbound.status_wait_s, outbound.sweep_interval_s = 0.3, 0.05


async def never_answered_and_status_lost(ln: Line, kind: str, row: str | None = None) -> PlacedCall:
    """Place a call to a callee who never answers (`kind`), whose final status callback will be lost."""
    overdue_soon(ln.outbound)
    ln.api.answerers[PATIENT] = Answerer(kind, ring_s=0.3)  # type: ignore[arg-type]
    placed = await ln.outbound.place(OutboundRequest(CLINIC, PATIENT, CONTEXT, campaign_row=row))
    ln.api.place_calls_on(LOST, PUBLIC_URL)
    return placed


async def test_a_call_whose_final_status_never_arrives_is_settled_from_twilios_record(
    realtime: RealtimeSimulator, tmp_path: Path
) -> None:
    async with line(realtime, tmp_path) as ln:
        placed = await never_answered_and_status_lost(ln, "busy", "row-2")
        assert ln.outbound.awaiting_status == 1
        outcome = await ln.outcome(timeout=5)
        (callee,) = ln.api.placed.values()
        lookups = ln.api.requests_to(f"/Calls/{placed.call_sid}.json")
    assert [status for _, _, status in callee.callbacks] == [0], "the status callback was lost"
    assert (outcome.outcome, outcome.call_sid, outcome.campaign_row) == ("busy", placed.call_sid, "row-2")
    assert [request.method for request in lookups] == ["GET"]
    assert ln.outbound.awaiting_status == 0


async def test_a_person_whose_final_status_is_lost_is_human_by_the_record_once_the_call_has_ended(
    realtime: RealtimeSimulator, tmp_path: Path
) -> None:
    async with line(realtime, tmp_path) as ln:
        overdue_soon(ln.outbound)
        await ln.outbound.place(OutboundRequest(CLINIC, PATIENT, CONTEXT))
        callee = await answered(ln)
        assert callee.call is not None
        await callee.call.wait_heard(500, timeout=10)
        assert ln.outcomes == [] and ln.outbound.awaiting_status == 1, "a live call is never expired"
        ln.api.place_calls_on(LOST, PUBLIC_URL)
        await callee.call.hang_up()
        outcome = await ln.outcome(timeout=5)
    assert (outcome.outcome, outcome.amd_result) == ("human", "human")
    assert callee.callbacks[-1][2] == 0 and ln.outbound.awaiting_status == 0


async def test_a_placed_call_twilio_has_no_record_of_fails_and_is_forgotten(realtime: RealtimeSimulator, tmp_path: Path) -> None:
    async with line(realtime, tmp_path) as ln:
        placed = await never_answered_and_status_lost(ln, "no-answer")
        del ln.api.placed[placed.call_sid]
        outcome = await ln.outcome(timeout=5)
    assert (outcome.outcome, outcome.call_sid) == ("failed", placed.call_sid)
    assert ln.outbound.awaiting_status == 0


async def test_a_placed_call_twilio_cannot_be_asked_about_is_kept_then_forgotten_after_the_bound(
    realtime: RealtimeSimulator, tmp_path: Path
) -> None:
    async with line(realtime, tmp_path) as ln:
        await never_answered_and_status_lost(ln, "busy")
        ln.outbound.max_keep_s = 1.5
        ln.api.fail_next(503, times=1000)
        await asyncio.sleep(0.8)
        kept = ln.outbound.awaiting_status
        async with asyncio.timeout(10):
            while ln.outbound.awaiting_status:
                await asyncio.sleep(0.05)
    assert kept == 1 and ln.outcomes == []
