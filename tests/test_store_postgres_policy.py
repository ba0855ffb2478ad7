"""The policy and outbound tables on the fleet's PostgreSQL: tokens, cost and AMD written and read back, usage totals,
retention's purge and a caller's erasure, and one do-not-call list for every instance and the `dnc` command."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from fleet_servers import DB_PASSWORD, PostgresServer
from support import TEST_CONFIG
from telephony_bridge.call.events import TokenUsage
from telephony_bridge.call_log import CallRecord, TranscriptLine, call_details
from telephony_bridge.config import parse_config
from telephony_bridge.outbound.do_not_call import DoNotCall
from telephony_bridge.policy.purge import erase, purge_expired
from telephony_bridge.store import PostgresStore
from telephony_bridge.store.do_not_call import FleetDoNotCall
from telephony_bridge.store.postgres import _write_record, find_call, usage_totals

pytestmark = pytest.mark.xdist_group("fleet")

KEPT_LINE = "+15550001234"
"""Keeps transcripts 30 days."""
NOW = datetime.now(UTC)
USAGE = TokenUsage(audio_in=1200, text_in=300, cached_in=64, audio_out=2400, text_out=120, cached_audio_in=32)


@pytest.fixture
def database(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    return postgres.database(request.node.name.lower()[:60])


def record(call_sid: str, number: str, ended_days_ago: float, *, cost: float | None = 0.25) -> CallRecord:
    ended = NOW - timedelta(days=ended_days_ago)
    return CallRecord(
        call_sid=call_sid, from_number="+15559871234", to_number=number, started_at=ended - timedelta(minutes=2),
        ended_at=ended, duration_s=120.0, outcome="caller_hung_up", end_reason="caller hung up", barge_ins=1, reconnects=0,
        model="gpt-realtime", dialect="ga", direction="outbound",
        transcript=(TranscriptLine("caller", "my card number is 4111", 1.0), TranscriptLine("model", "Thank you.", 2.0)),
        profile_in_force="after_hours", usage=USAGE, cost=cost, amd_result="human",
    )


async def log_calls(database: str, *records: CallRecord) -> None:
    store = PostgresStore(database, "writer")
    await store.start()
    await store.close()
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as connection:
        for one in records:
            await _write_record(connection, one)


async def test_a_calls_tokens_cost_profile_and_answering_machine_result_are_read_back(database: str) -> None:
    await log_calls(database, record("CA1", KEPT_LINE, 0))
    found = find_call(database, "CA1")
    assert found is not None
    assert (found.usage, found.cost, found.profile_in_force, found.amd_result, found.transcript_purged) \
        == (USAGE, 0.25, "after_hours", "human", False)
    shown = call_details(found)
    assert "after_hours" in shown and "answered by: human" in shown and "0.2500 (estimated)" in shown


async def test_usage_totals_sum_each_numbers_calls_by_model(database: str) -> None:
    await log_calls(database, record("CA1", KEPT_LINE, 0), record("CA2", KEPT_LINE, 0, cost=None), record("CA3", "+1999", 0))
    totals = {total.number: total for total in usage_totals(database)}
    kept = totals[KEPT_LINE]
    assert (kept.model, kept.calls, kept.line_seconds, kept.cost) == ("gpt-realtime", 2, 240.0, 0.25)
    assert kept.usage.audio_out == 2 * USAGE.audio_out and kept.usage.cached_audio_in == 2 * USAGE.cached_audio_in
    assert totals["+1999"].calls == 1


async def test_purge_deletes_the_fleets_expired_transcripts_and_erasure_deletes_a_call(database: str, tmp_path: Path) -> None:
    await log_calls(database, record("CAold", KEPT_LINE, 40), record("CAnew", KEPT_LINE, 1))
    config = parse_config(TEST_CONFIG + f'\n[numbers."{KEPT_LINE}"]\nretention_days = {{ transcripts = 30 }}\n',
                          "bridge.toml", env={})
    purged = await asyncio.to_thread(purge_expired, config, None, tmp_path / "recordings", NOW, database_url=database)
    assert (purged.transcripts, purged.transcript_lines, list(purged.calls)) == (1, 2, ["CAold"])
    old, new = find_call(database, "CAold"), find_call(database, "CAnew")
    assert old is not None and old.transcript == () and old.transcript_purged
    assert new is not None and len(new.transcript) == 2
    again = await asyncio.to_thread(purge_expired, config, None, tmp_path / "recordings", NOW, database_url=database)
    assert again.transcripts == 0
    erased = await asyncio.to_thread(erase, "CAnew", None, tmp_path / "recordings", database_url=database)
    assert erased.calls_erased == 1 and erased.transcript_lines == 2
    assert find_call(database, "CAnew") is None


async def test_a_number_listed_on_one_instance_is_refused_by_another(database: str) -> None:
    one, two = PostgresStore(database, "one"), PostgresStore(database, "two")
    await one.start()
    await two.start()
    try:
        listed_on_one, seen_by_two = DoNotCall(None, FleetDoNotCall(one)), DoNotCall(None, FleetDoNotCall(two))
        assert await listed_on_one.add("+15550009999", "opted out on call CA1")
        assert not await listed_on_one.add("+15550009999", "again")
        assert await seen_by_two.contains("+15550009999")
        assert [entry["source"] for entry in await seen_by_two.numbers()] == ["opted out on call CA1"]
        await seen_by_two.record_outcome({"outbound_id": "OB1", "call_sid": "CA1", "from_number": KEPT_LINE,
                                          "to_number": "+15550009999", "campaign_row": None,
                                          "ended_at": NOW.isoformat(), "outcome": "opted-out", "amd_result": "human"})
        assert await seen_by_two.remove("+15550009999")
        assert not await listed_on_one.contains("+15550009999")
    finally:
        await one.close()
        await two.close()
    with psycopg.connect(database) as connection:
        assert connection.execute("SELECT outcome, amd_result FROM outbound_calls").fetchall() == [("opted-out", "human")]


def test_the_dnc_command_manages_the_fleets_list(database: str, tmp_path: Path) -> None:
    asyncio.run(log_calls(database))
    env = {**os.environ, "DATABASE_URL": database, "PYTHONPATH": str(Path(__file__).parent.parent)}

    def dnc(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "telephony_bridge", "dnc", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=30)

    assert "added to" in dnc("add", "+15550001111").stdout
    listed = dnc("list")
    assert "+15550001111" in listed.stdout and "command line" in listed.stdout
    assert dnc("remove", "+15550001111").returncode == 0
    assert dnc("remove", "+15550001111").returncode == 1
    assert not (tmp_path / "calls.sqlite3").exists()
    assert DB_PASSWORD not in listed.stdout + listed.stderr
