"""Retention: transcripts and recordings deleted by age (by the server on its schedule, and by `purge`), and one call
erased on request (`purge --call SID`), with log lines that say what went and never what it held."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from support import TEST_CONFIG, bridge_for
from telephony_bridge.call_log import CallLog, CallRecord, TranscriptLine, call_details, find_call
from telephony_bridge.config import parse_config
from telephony_bridge.policy.purge import erase, purge_expired
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator

KEPT_LINE = "+15550001234"
"""A number that keeps recordings 7 days and transcripts 30."""
OTHER = "+15550005678"
"""A number that sets no retention: everything is kept."""
NOW = datetime.now(UTC)
SECRET_WORDS = "my card number is 4111 1111 1111 1111"
CALLER = "+15559871234"


def config_text(tmp_path: Path) -> str:
    return (TEST_CONFIG.replace('path = ""', f'path = "{tmp_path / "calls.sqlite3"}"')
            + f'\n[recording]\nfolder = "{tmp_path / "recordings"}"\n'
            + f'\n[numbers."{KEPT_LINE}"]\nretention_days = {{ recordings = 7, transcripts = 30 }}\n'
            + f'\n[numbers."{OTHER}"]\ninstructions = "Keep everything."\n')


def log_call(path: Path, call_sid: str, number: str, ended_days_ago: float) -> None:
    ended = NOW - timedelta(days=ended_days_ago)
    call_log = CallLog(path)
    call_log.start()
    call_log.add(CallRecord(
        call_sid=call_sid, from_number=CALLER, to_number=number, started_at=ended - timedelta(minutes=2), ended_at=ended,
        duration_s=120.0, outcome="caller_hung_up", end_reason="caller hung up", barge_ins=0, reconnects=0,
        model="gpt-realtime", dialect="ga",
        transcript=(TranscriptLine("caller", SECRET_WORDS, 1.0), TranscriptLine("model", "Thank you.", 2.0)),
    ))
    call_log.close()


def record_call(folder: Path, call_sid: str, number: str, ended_days_ago: float) -> Path:
    """A recording file as the bridge names it, its header naming the number, last written `ended_days_ago`."""
    folder.mkdir(parents=True, exist_ok=True)
    ended = NOW - timedelta(days=ended_days_ago)
    path = folder / f"{ended:%Y%m%dT%H%M%S}-{call_sid}.jsonl"
    header = {"format": "telephony-bridge-recording", "call_sid": call_sid, "called_number": number}
    path.write_text(json.dumps(header) + "\n" + json.dumps({"t": 0, "said": SECRET_WORDS}) + "\n")
    os.utime(path, (ended.timestamp(), ended.timestamp()))
    return path


@pytest.fixture
def kept(tmp_path: Path) -> dict[str, Path]:
    """Four calls: to KEPT_LINE 40, 10 and 1 day(s) ago, and to OTHER 400 days ago, each logged and recorded."""
    calls = {"CAold": (KEPT_LINE, 40), "CAmid": (KEPT_LINE, 10), "CAnew": (KEPT_LINE, 1), "CAother": (OTHER, 400)}
    recordings = {}
    for sid, (number, days) in calls.items():
        log_call(tmp_path / "calls.sqlite3", sid, number, days)
        recordings[sid] = record_call(tmp_path / "recordings", sid, number, days)
    return recordings


def test_purge_deletes_transcripts_and_recordings_past_their_numbers_retention(
    tmp_path: Path, kept: dict[str, Path], caplog: pytest.LogCaptureFixture,
) -> None:
    config = parse_config(config_text(tmp_path), "bridge.toml", env={})
    call_log = tmp_path / "calls.sqlite3"
    with caplog.at_level(logging.INFO, logger="telephony_bridge.policy.purge"):
        purged = purge_expired(config, call_log, tmp_path / "recordings", NOW)
    assert (purged.transcripts, purged.transcript_lines, purged.recordings) == (1, 2, 2)
    old, mid, new, other = (find_call(call_log, sid) for sid in ("CAold", "CAmid", "CAnew", "CAother"))
    assert old is not None and old.transcript == () and old.transcript_purged
    assert old.outcome == "caller_hung_up", "the call's row stays: only its transcript went"
    assert mid is not None and len(mid.transcript) == 2, "10 days is within 30 days' transcripts"
    assert new is not None and len(new.transcript) == 2 and other is not None and len(other.transcript) == 2
    assert not kept["CAold"].exists() and not kept["CAmid"].exists(), "past 7 days' recordings"
    assert kept["CAnew"].exists() and kept["CAother"].exists()
    assert "deleted: the number's retention_days.transcripts ran out" in call_details(old)
    lines = [record.getMessage() for record in caplog.records]
    assert any("CAold" in line and "transcript (2 lines)" in line for line in lines)
    assert not any(SECRET_WORDS in line or CALLER in line for line in lines), "what was deleted, never what it held"
    again = purge_expired(config, call_log, tmp_path / "recordings", NOW)
    assert (again.transcripts, again.recordings) == (0, 0), "nothing is deleted twice"


def test_erasing_one_call_deletes_its_row_transcript_and_recordings(tmp_path: Path, kept: dict[str, Path]) -> None:
    second = kept["CAnew"].with_name(kept["CAnew"].stem + "-2.jsonl")
    second.write_text(kept["CAnew"].read_text())
    purged = erase("CAnew", tmp_path / "calls.sqlite3", tmp_path / "recordings")
    assert (purged.calls_erased, purged.transcript_lines, purged.recordings) == (1, 2, 2)
    assert find_call(tmp_path / "calls.sqlite3", "CAnew") is None
    assert not kept["CAnew"].exists() and not second.exists()
    assert find_call(tmp_path / "calls.sqlite3", "CAold") is not None and kept["CAold"].exists(), "other calls stay"


def test_purge_call_on_the_command_line_erases_one_call_and_logs_what_went(tmp_path: Path, kept: dict[str, Path]) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(config_text(tmp_path))
    env = {key: value for key, value in os.environ.items() if key != "BRIDGE_CONFIG"}
    result = subprocess.run(
        [sys.executable, "-m", "telephony_bridge", "purge", "--call", "CAold", "--config", str(config), "--log-format", "text"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "call CAold: deleted call log row, transcript (2 lines), stream errors (0)" in result.stdout
    assert "erasure: deleted" in result.stderr and "CAold" in result.stderr
    assert SECRET_WORDS not in result.stdout + result.stderr and CALLER not in result.stdout + result.stderr
    assert find_call(tmp_path / "calls.sqlite3", "CAold") is None and not kept["CAold"].exists()


def test_purge_on_the_command_line_deletes_by_age(tmp_path: Path, kept: dict[str, Path]) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(config_text(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "telephony_bridge", "purge", "--config", str(config)],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "deleted 1 transcripts (2 lines) and 2 recordings" in result.stdout


async def test_the_server_purges_on_its_schedule(tmp_path: Path, kept: dict[str, Path]) -> None:
    config = parse_config(config_text(tmp_path), "bridge.toml", env={})
    realtime = RealtimeSimulator()
    await realtime.start()
    try:
        async with bridge_for(realtime, config=config):
            for _ in range(100):
                if not kept["CAold"].exists():
                    break
                await asyncio.sleep(0.05)
            assert not kept["CAold"].exists() and kept["CAnew"].exists()
            record = find_call(tmp_path / "calls.sqlite3", "CAold")
            assert record is not None and record.transcript_purged
    finally:
        await realtime.stop()
