"""How each call ended, as the call log, the metrics and the admin API keep it: hang-ups, goodbyes and transfers."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx
from test_operations import run_cli, value, wait_for_call_end, wait_for_row, write_config

from support import AUTH_TOKEN, CLINIC, bridge_for, new_call
from telephony_bridge.call.controller import CallController
from telephony_bridge.call.events import (
    FunctionCallRequested,
    MarkEchoed,
    ModelAudio,
    ModelAudioDone,
    RealtimeConnected,
    ResponseDone,
    ResponseStarted,
    SendTwilioMark,
    SessionConfigured,
    StreamStarted,
    StreamStopped,
    TransferEnded,
    TransferFailed,
)
from telephony_bridge.call.summary import CallSummary, TransferAttempt
from telephony_bridge.call_log import MIGRATIONS, find_call, open_for_writing
from telephony_bridge.config import CallProfile, load_config
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator, ScriptedAnswer, ScriptedCall, speech_like_pcm16
from telephony_bridge.testing.twilio_api import TwilioApiSimulator
from telephony_bridge.testing.twilio_simulator import Callee, speech_like_ulaw

DESK = "+15550009999"
PROFILE = CallProfile(transfer={"front_desk": DESK})
ADMIN_TOKEN = "admin-token-for-outcome-tests"
HAND_OVER = ScriptedAnswer(
    speech_like_pcm16(600), "Let me connect you to the front desk.",
    calls=(ScriptedCall("transfer_call", {"target": "front_desk", "summary": "Ada wants to move her appointment."}),),
)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def transferring() -> tuple[CallController, list[str]]:
    """A live call whose model has said "let me connect you" and asked for the front desk; returns the marks sent."""
    controller = CallController(PROFILE, Clock())
    controller.start()
    for event in (RealtimeConnected(), SessionConfigured(), StreamStarted(stream_sid="MZ1", call_sid="CA1")):
        controller.handle(event)
    controller.handle(ResponseStarted("r1"))
    marks = [a.name for a in controller.handle(ModelAudio("r1", "i1", b"\x10\x00" * 2400)) if isinstance(a, SendTwilioMark)]
    marks += [a.name for a in controller.handle(ModelAudioDone("i1")) if isinstance(a, SendTwilioMark)]
    controller.handle(FunctionCallRequested("r1", "c1", "transfer_call", '{"target": "front_desk", "summary": "Ada."}'))
    controller.handle(ResponseDone("r1", "completed"))
    return controller, marks


def summary_of(controller: CallController) -> CallSummary:
    return controller.summarise(call_sid="CA1", called_number=CLINIC, caller_number="", model="m", dialect="ga", duration_s=1.0)


def test_a_transfer_twilio_refused_is_kept_as_not_started_and_a_call_without_one_has_none() -> None:
    controller, _ = transferring()
    controller.handle(TransferFailed("HTTP 500 from Twilio"))
    controller.handle(StreamStopped())
    summary = summary_of(controller)
    assert summary.outcome == "caller_hung_up"
    assert summary.transfers == (TransferAttempt("front_desk", False, "not started: HTTP 500 from Twilio"),)

    untouched = CallController(PROFILE, Clock())
    assert (summary_of(untouched).transfer_target, summary_of(untouched).transfer_connected) == (None, None)


def test_a_busy_transfer_then_a_hang_up_keeps_the_attempt_that_did_not_connect() -> None:
    controller, marks = transferring()
    controller.handle(MarkEchoed(marks[-1]))
    controller.handle(StreamStopped())
    controller.handle(TransferEnded("busy"))
    controller.handle(StreamStarted(stream_sid="MZ2", call_sid="CA1"))
    controller.handle(StreamStopped())
    summary = summary_of(controller)
    assert summary.outcome == "caller_hung_up"
    assert (summary.transfer_target, summary.transfer_connected) == ("front_desk", False)
    assert summary.transfers[0].status == "busy"


def test_a_connected_transfer_is_the_outcome_with_its_target() -> None:
    controller, marks = transferring()
    controller.handle(MarkEchoed(marks[-1]))
    controller.handle(StreamStopped())
    controller.handle(TransferEnded("completed"))
    summary = summary_of(controller)
    assert (summary.outcome, summary.transfer_target, summary.transfer_connected) == ("transferred", "front_desk", True)


def test_a_call_log_of_the_previous_schema_gains_the_transfer_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    database = tmp_path / "calls.sqlite3"
    old = sqlite3.connect(database)
    for number, script in enumerate(MIGRATIONS[:3], start=1):
        old.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    old.execute(
        "INSERT INTO calls VALUES ('CA-old', '', ?, '2025-01-01T00:00:00+00:00', '2025-01-01T00:01:00+00:00', 60, "
        "'caller_hung_up', 'caller hung up', 0, 0, 'gpt-realtime', 'ga', 'inbound')", (CLINIC,),
    )
    old.commit()
    old.close()
    open_for_writing(database).close()
    record = find_call(database, "CA-old")
    assert record is not None and (record.outcome, record.transfer_target, record.transfer_connected) == (
        "caller_hung_up", None, None
    )


async def test_a_connected_transfer_is_in_the_call_log_the_metrics_and_the_admin_api(tmp_path: Path) -> None:
    database = tmp_path / "calls.sqlite3"
    config_file = write_config(tmp_path, database, f'\n[numbers."{CLINIC}".transfer]\nfront_desk = "{DESK}"\n')
    async with (
        RealtimeSimulator(answers=[HAND_OVER]) as realtime,
        TwilioApiSimulator(auth_token=AUTH_TOKEN) as api,
        bridge_for(realtime, config=load_config(config_file),
                   env={"TWILIO_API_URL": api.url, "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN}) as bridge,
    ):
        call = new_call(bridge)
        api.register(call)
        await call.run()
        session = await realtime.wait_for_session(0)
        await session.wait_for("session.update")
        call.say(speech_like_ulaw(500))
        await call.wait_for_step("bridged", timeout=10)
        call.callee_hangs_up()
        await call.wait_over()
        samples = await wait_for_call_end(bridge, "transferred")
        record = await wait_for_row(database, call.call_sid)
        async with httpx.AsyncClient(base_url=bridge, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
            detail = (await admin.get(f"/admin/calls/{call.call_sid}")).json()

    assert value(samples, "telephony_bridge_transfers_total", target="front_desk", connected="true") == 1
    assert value(samples, "telephony_bridge_transfers_total", target="front_desk", connected="false") == 0
    assert (record.outcome, record.transfer_target, record.transfer_connected) == ("transferred", "front_desk", True)
    assert detail["outcome"] == "transferred" and detail["transfer"] == {"target": "front_desk", "connected": True}
    shown = await run_cli(config_file, "calls", "show", call.call_sid)
    assert "transfer   front_desk (connected)" in shown


async def test_a_busy_transfer_counts_as_not_connected_and_the_call_ends_as_the_caller_ends_it(tmp_path: Path) -> None:
    database = tmp_path / "calls.sqlite3"
    config_file = write_config(tmp_path, database, f'\n[numbers."{CLINIC}".transfer]\nfront_desk = "{DESK}"\n')
    answers = [HAND_OVER, ScriptedAnswer(speech_like_pcm16(400), "Sorry, the line is busy.")]
    async with (
        RealtimeSimulator(answers=answers) as realtime,
        TwilioApiSimulator(auth_token=AUTH_TOKEN) as api,
        bridge_for(realtime, config=load_config(config_file), env={"TWILIO_API_URL": api.url}) as bridge,
    ):
        api.callees[DESK] = Callee("busy", ring_s=0.1)
        call = new_call(bridge)
        api.register(call)
        await call.run()
        session = await realtime.wait_for_session(0)
        await session.wait_for("session.update")
        call.say(speech_like_ulaw(500))
        await call.wait_for_step("dial-ended", "busy", timeout=10)
        await realtime.wait_for_session(1, timeout=5)
        await asyncio.sleep(0.2)
        await call.hang_up()
        samples = await wait_for_call_end(bridge, "caller_hung_up")
        record = await wait_for_row(database, call.call_sid)

    assert value(samples, "telephony_bridge_transfers_total", target="front_desk", connected="false") == 1
    assert (record.transfer_target, record.transfer_connected) == ("front_desk", False)
