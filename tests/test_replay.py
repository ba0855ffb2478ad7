"""Every recording in tests/recordings/ replays through the current bridge as it was recorded.

Dropping a recording into that folder adds a test. When the bridge's behaviour changes on purpose,
re-record them with `scripts/record_fixtures` (see docs/recording-format.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from telephony_bridge import controller
from telephony_bridge.cli import main
from telephony_bridge.events import AddHistoryItem, RealtimeConnected
from telephony_bridge.recording import read_recording
from telephony_bridge.replay import replay
from telephony_bridge.testing.recorded_calls import SCENARIOS

RECORDINGS = Path(__file__).parent / "recordings"
BARGE_IN = RECORDINGS / "barge-in-mid-answer.jsonl"
DROPPED = RECORDINGS / "realtime-drop-mid-call.jsonl"
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
