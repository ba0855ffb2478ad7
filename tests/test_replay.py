"""Every recording in tests/recordings/ replays through the current bridge as it was recorded.

Dropping a recording into that folder adds a test. When the bridge's behaviour changes on purpose,
re-record them with `scripts/record_fixtures` (see docs/recording-format.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from telephony_bridge.call import controller
from telephony_bridge.call.events import AddHistoryItem, RealtimeConnected
from telephony_bridge.cli import main
from telephony_bridge.observe.recording import read_recording
from telephony_bridge.observe.replay import replay
from telephony_bridge.testing.recorded_calls import SCENARIOS

RECORDINGS = Path(__file__).parent / "recordings"
BARGE_IN = RECORDINGS / "barge-in-mid-answer.jsonl"
DROPPED = RECORDINGS / "realtime-drop-mid-call.jsonl"
GOODBYE = RECORDINGS / "goodbye-end-call.jsonl"
HISTORY_ITEM = '{"item":{"content":[{"text":"Hello! This is the simulated assistant.'


def altered(source: Path, target: Path, change) -> Path:
    """A copy of a recording with each frame line passed through `change` (which returns None to drop it)."""
    head, *frames = source.read_text(encoding="utf-8").splitlines()
    kept = [json.dumps(entry) for entry in (change(json.loads(line)) for line in frames) if entry is not None]
    target.write_text("\n".join([head, *kept]) + "\n", encoding="utf-8")
    return target


def is_truncate(entry: dict) -> bool:
    return entry.get("dir") == "bridge>realtime" and entry["msg"].get("type") == "conversation.item.truncate"


def is_history_item(entry: dict) -> bool:
    return entry.get("dir") == "bridge>realtime" and entry["msg"].get("type") == "conversation.item.create"


def test_every_scenario_has_its_recording() -> None:
    assert {scenario.name for scenario in SCENARIOS} <= {path.stem for path in RECORDINGS.glob("*.jsonl")}


@pytest.mark.parametrize("path", sorted(RECORDINGS.glob("*.jsonl")), ids=lambda path: path.stem)
async def test_the_recorded_call_replays_as_recorded(path: Path) -> None:
    result = await replay(read_recording(path))
    assert result.same, result.report()


async def test_a_truncate_point_200_ms_off_the_recording_is_a_difference(tmp_path: Path) -> None:
    def later_truncate(entry: dict) -> dict:
        if is_truncate(entry):
            entry["msg"]["audio_end_ms"] += 200
        return entry

    result = await replay(read_recording(altered(BARGE_IN, tmp_path / "later.jsonl", later_truncate)))
    assert not result.same
    assert any("audio_end_ms" in difference for difference in result.differences), result.report()


def test_a_clear_missing_from_the_recording_makes_the_replay_command_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_clear(entry: dict) -> dict | None:
        return None if entry["dir"] == "bridge>twilio" and entry["msg"]["event"] == "clear" else entry

    recording = altered(BARGE_IN, tmp_path / "no-clear.jsonl", no_clear)
    with pytest.raises(SystemExit) as exited:
        main(["replay", str(recording)])
    assert exited.value.code == 1
    report = capsys.readouterr().out
    assert '+ t=' in report and '"event":"clear"' in report, report


def test_a_recording_holds_when_the_service_dropped_the_session_and_when_the_next_one_opened() -> None:
    recording = read_recording(DROPPED)
    changes = [(change.state, change.code) for change in recording.socket_changes]
    assert changes == [("open", None), ("closed", 1011), ("open", None)]
    lost, reopened = recording.socket_changes[1:]
    after = [frame.kind for frame in recording.frames[reopened.position :] if frame.direction == "bridge>realtime"][:2]
    assert lost.t_ms <= reopened.t_ms and after == ["session.update", "conversation.item.create"]


async def test_history_the_recording_does_not_show_after_a_reconnect_is_a_difference(tmp_path: Path) -> None:
    recording = altered(DROPPED, tmp_path / "no-history.jsonl", lambda entry: None if is_history_item(entry) else entry)
    result = await replay(read_recording(recording))
    assert not result.same
    assert any("+ t=" in difference and HISTORY_ITEM in difference for difference in result.differences), result.report()


async def test_a_bridge_that_forgets_the_conversation_on_a_new_session_is_a_difference(monkeypatch: pytest.MonkeyPatch) -> None:
    connected = controller.CallController._on_realtime_connected

    def without_history(call: controller.CallController, event: RealtimeConnected) -> list:
        return [action for action in connected(call, event) if not isinstance(action, AddHistoryItem)]

    monkeypatch.setitem(controller._HANDLERS, RealtimeConnected, without_history)
    result = await replay(read_recording(DROPPED))
    assert not result.same
    assert any("- t=" in difference and HISTORY_ITEM in difference for difference in result.differences), result.report()


def is_rest_request(entry: dict) -> bool:
    return entry.get("dir") == "twilio-rest" and entry["msg"].get("kind") == "request"


def test_a_call_the_model_ended_records_its_rest_hang_up_and_twilios_answer_after_the_goodbye_played() -> None:
    recording = read_recording(GOODBYE)
    rest = [frame for frame in recording.frames if frame.direction == "twilio-rest"]
    assert [frame.kind for frame in rest] == ["request", "response"]
    request, answer = (frame.message for frame in rest)
    assert (request["method"], request["params"]) == ("POST", {"Status": "completed"})
    assert request["path"].endswith(f"/Calls/{recording.call_sid}.json") and answer["status"] == 200
    last_echo = max(f.t_ms for f in recording.frames if f.direction == "twilio>bridge" and f.kind == "mark")
    assert 0 <= rest[0].t_ms - last_echo < 500, "the hang-up follows the goodbye's last mark echo within 500 ms"
    sent = [frame for frame in recording.frames if frame.direction == "bridge>realtime"]
    created = [frame.message["item"] for frame in sent if frame.kind == "conversation.item.create"]
    assert [item["type"] for item in created] == ["function_call_output"]


async def test_a_bridge_that_no_longer_hangs_up_after_the_goodbye_is_a_difference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller, "END_CALL", "no_such_function")
    result = await replay(read_recording(GOODBYE))
    assert not result.same
    rest = [d for d in result.differences if d.startswith("twilio-rest:")]
    assert rest and '- t=' in rest[0] and '"Status":"completed"' in rest[0], result.report()
    assert any("the line drops once your goodbye has played" in d and "no function" in d for d in result.differences), (
        result.report()
    )


async def test_a_rest_request_the_recording_does_not_hold_is_a_difference(tmp_path: Path) -> None:
    recording = altered(GOODBYE, tmp_path / "no-hang-up.jsonl", lambda entry: None if is_rest_request(entry) else entry)
    result = await replay(read_recording(recording))
    assert not result.same
    assert any(d.startswith("twilio-rest:") and "+ t=" in d and "/Calls/<call>.json" in d for d in result.differences), (
        result.report()
    )


PERSON = RECORDINGS / "outbound-person.jsonl"
VOICEMAIL = RECORDINGS / "outbound-voicemail.jsonl"


def test_an_outbound_recording_holds_whom_it_dialled_and_when_amd_said_who_answered() -> None:
    recording = read_recording(PERSON)
    assert recording.outbound is not None
    assert recording.outbound.callee == "+15005550199"
    assert recording.outbound.context == {"name": "Ada", "appointment": "Tue 10:00"}
    (amd,) = [frame for frame in recording.frames if frame.direction == "twilio-callback"]
    assert amd.message == {"kind": "amd", "params": {"AnsweredBy": "human"}}
    first_audio = min(f.t_ms for f in recording.frames if f.direction == "bridge>twilio" and f.kind == "media")
    first_create = min(f.t_ms for f in recording.frames if f.direction == "bridge>realtime" and f.kind == "response.create")
    assert amd.t_ms < first_create < first_audio, "silent until AMD, then the greeting"


def test_an_inbound_recording_says_it_was_not_placed() -> None:
    assert read_recording(GOODBYE).outbound is None


async def test_a_replayed_voicemail_gets_its_message_after_amd_then_the_hang_up() -> None:
    result = await replay(read_recording(VOICEMAIL))
    assert result.same, result.report()
    assert "outbound call" in result.report()
    creates = [f.message for f in result.replayed if f.direction == "bridge>realtime" and f.kind == "response.create"]
    assert len(creates) == 1 and "Leave exactly this message" in creates[0]["response"]["instructions"]
    hang_ups = [f for f in result.replayed if f.direction == "twilio-rest"]
    assert len(hang_ups) == 1 and hang_ups[0].message["params"] == {"Status": "completed"}


async def test_a_bridge_that_greets_a_voicemail_as_a_person_is_a_difference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller, "answered_by", lambda result: "person")
    result = await replay(read_recording(VOICEMAIL))
    assert not result.same
    assert any("Leave exactly this message" in d and "- t=" in d for d in result.differences), result.report()
    assert any(d.startswith("twilio-rest:") for d in result.differences), result.report()


async def test_an_amd_result_that_never_reaches_the_call_is_a_difference(tmp_path: Path) -> None:
    recording = altered(PERSON, tmp_path / "no-amd.jsonl", lambda entry: None if entry["dir"] == "twilio-callback" else entry)
    result = await replay(read_recording(recording), gate_timeout_s=0.3)
    assert not result.same
    assert any("- t=" in d and "Now greet the caller" in d for d in result.differences), result.report()
