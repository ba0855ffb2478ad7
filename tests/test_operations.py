"""What operators see of calls placed through the real bridge: /metrics, the log lines, the call log and `calls`."""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import logging
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import CLINIC, bridge_for, new_call, place_call
from telephony_bridge.call_log import MIGRATIONS, CallLog, CallRecord, find_call, open_for_writing
from telephony_bridge.config import load_config
from telephony_bridge.errors import CallLogError
from telephony_bridge.logs import log_handler, mask_number
from telephony_bridge.observe.metrics import Buckets
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator
from telephony_bridge.testing.twilio_simulator import SimulatedCall, speech_like_ulaw

CALLER = "+15005550006"
"""The simulated caller's number (`SimulatedCall.from_number`)."""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def write_config(tmp_path: Path, call_log_path: Path, extra: str = "") -> Path:
    """A configuration file both the bridge and the `calls` command read, as in production."""
    config = tmp_path / "bridge.toml"
    config.write_text(
        f"""
[defaults]
instructions = "You answer the phone."
transcription = "gpt-4o-mini-transcribe"

[defaults.turn_detection]
silence_duration_ms = 300

[call_log]
path = '{call_log_path}'
{extra}
"""
    )
    return config


@asynccontextmanager
async def operated_bridge(realtime: RealtimeSimulator, config_file: Path) -> AsyncIterator[str]:
    async with bridge_for(realtime, url=realtime.url + "?model=gpt-realtime", config=load_config(config_file)) as bridge:
        yield bridge


async def scrape(bridge: str) -> Samples:
    async with httpx.AsyncClient() as client:
        response = await client.get(bridge + "/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def wait_for(check: Callable[[], Awaitable[bool] | bool], timeout: float = 3.0) -> None:
    """Poll `check` (a predicate, or a coroutine function) until it holds."""
    async with asyncio.timeout(timeout):
        while True:
            done = check()
            if inspect.isawaitable(done):
                done = await done
            if done:
                return
            await asyncio.sleep(0.02)


async def wait_for_call_end(bridge: str, outcome: str = "caller_hung_up") -> Samples:
    """The bridge's metrics once the call to CLINIC has ended with `outcome`."""
    samples: Samples = {}

    async def ended() -> bool:
        nonlocal samples
        samples = await scrape(bridge)
        return value(samples, "telephony_bridge_calls_total", number=CLINIC, outcome=outcome) == 1

    await wait_for(ended)
    return samples


async def wait_for_row(path: Path, call_sid: str) -> CallRecord:
    record: CallRecord | None = None

    async def written() -> bool:
        nonlocal record
        try:
            record = find_call(path, call_sid)
        except CallLogError:
            return False
        return record is not None

    await wait_for(written)
    assert record is not None
    return record


async def talk_once(call: SimulatedCall, realtime: RealtimeSimulator) -> None:
    """Dial, say a sentence, wait until the model has answered it, hang up."""
    await call.dial()
    await call.connect()
    session = await realtime.wait_for_session(0)
    call.say(speech_like_ulaw(600))
    await session.wait_for(lambda e: e.get("type") == "response.done", timeout=10, sent=True)
    await call.hang_up()


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The JSON log lines written while the test runs: the bridge's own from DEBUG, everyone's from INFO."""
    stream = io.StringIO()
    handler = log_handler(stream, "json")
    root, bridge_logger = logging.getLogger(), logging.getLogger("telephony_bridge")
    levels = root.level, bridge_logger.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    bridge_logger.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(levels[0])
    bridge_logger.setLevel(levels[1])


async def test_metrics_count_the_live_call_then_how_it_ended_its_frames_barge_in_and_truncate(
    tmp_path: Path, realtime: RealtimeSimulator
) -> None:
    async with operated_bridge(realtime, write_config(tmp_path, tmp_path / "calls.sqlite3")) as bridge:
        call, session = await place_call(bridge, realtime)
        call.say(speech_like_ulaw(600))
        await call.wait_heard(1200, timeout=10)
        during = await scrape(bridge)
        call.say(speech_like_ulaw(800))
        truncate = await session.wait_for("conversation.item.truncate", timeout=5)
        await call.hang_up()
        after = await wait_for_call_end(bridge)

    assert value(during, "telephony_bridge_calls_live") == 1 and value(after, "telephony_bridge_calls_live") == 0
    assert value(during, "telephony_bridge_media_frames_total", direction="in") > 50
    assert value(after, "telephony_bridge_media_frames_total", direction="in") >= value(
        during, "telephony_bridge_media_frames_total", direction="in"
    )
    assert value(after, "telephony_bridge_media_frames_total", direction="out") > 0
    assert value(after, "telephony_bridge_barge_ins_total") == 1
    assert value(after, "telephony_bridge_truncate_point_seconds_count") == 1
    assert value(after, "telephony_bridge_truncate_point_seconds_sum") == pytest.approx(truncate["audio_end_ms"] / 1000)
    assert value(after, "telephony_bridge_response_latency_seconds_count") >= 1
    for direction in ("caller>model", "model>caller"):
        assert value(after, "telephony_bridge_added_latency_seconds_count", direction=direction) > 0
    assert value(after, "telephony_bridge_malformed_messages_total", source="twilio") == 0
    assert value(after, "telephony_bridge_realtime_reconnects_total") == 0


async def test_a_call_over_max_calls_is_counted_as_busy(tmp_path: Path, realtime: RealtimeSimulator) -> None:
    config = write_config(tmp_path, tmp_path / "calls.sqlite3", "[limits]\nmax_calls = 1\n")
    async with operated_bridge(realtime, config) as bridge:
        await new_call(bridge).dial()
        refused = new_call(bridge)
        await refused.dial()
        samples = await scrape(bridge)
    assert refused.verbs == ["Say", "Hangup"]
    assert value(samples, "telephony_bridge_calls_total", number=CLINIC, outcome="busy") == 1
    assert value(samples, "telephony_bridge_calls_live") == 1


async def test_a_call_logs_one_start_and_one_end_line_tagged_with_its_ids_and_a_masked_caller(
    tmp_path: Path, realtime: RealtimeSimulator, json_lines: io.StringIO
) -> None:
    async with operated_bridge(realtime, write_config(tmp_path, tmp_path / "calls.sqlite3")) as bridge:
        call = new_call(bridge)
        await talk_once(call, realtime)
        await wait_for_call_end(bridge)

    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    assert all({"ts", "level", "logger", "message"} <= line.keys() for line in lines)
    of_call = [line for line in lines if line.get("call_sid") == call.call_sid]
    assert [line for line in lines if line["logger"] == "telephony_bridge.call.pump"] == [
        line for line in of_call if line["logger"] == "telephony_bridge.call.pump"
    ], "a line logged for the call lacks its call_sid"
    starts = [line for line in of_call if line.get("event") == "call_started"]
    ends = [line for line in of_call if line.get("event") == "call_ended"]
    assert len(starts) == 1 and len(ends) == 1
    assert starts[0]["level"] == ends[0]["level"] == "INFO"
    assert starts[0]["from"] == "+1500555****" and starts[0]["to"] == CLINIC
    stream_started = next(i for i, line in enumerate(of_call) if "media stream" in line["message"])
    assert {line["stream_sid"] for line in of_call[stream_started:]} == {call.stream_sid}
    end = ends[0]
    assert end["outcome"] == "caller_hung_up" and end["duration_s"] > 0.5
    assert end["frames_in"] > 0 and end["barge_ins"] == 0 and end["reconnects"] == 0
    assert end["response_latency_p50_ms"] is not None
    assert sum(line["level"] == "INFO" for line in of_call) == 2, "per-call INFO lines beyond the start and the end"
    assert CALLER not in json_lines.getvalue()


async def test_the_call_log_keeps_the_call_and_both_sides_of_its_transcript_for_the_calls_command(
    tmp_path: Path, realtime: RealtimeSimulator
) -> None:
    database = tmp_path / "calls.sqlite3"
    config = write_config(tmp_path, database)
    async with operated_bridge(realtime, config) as bridge:
        call = new_call(bridge)
        await talk_once(call, realtime)
        record = await wait_for_row(database, call.call_sid)

    assert (record.from_number, record.to_number, record.outcome) == (CALLER, CLINIC, "caller_hung_up")
    assert (record.model, record.dialect, record.barge_ins, record.reconnects) == ("gpt-realtime", "ga", 0, 0)
    assert record.duration_s == pytest.approx((record.ended_at - record.started_at).total_seconds())
    assert [(line.speaker, line.text) for line in record.transcript] == [
        ("caller", "(simulated caller speech)"), ("model", realtime.transcript)
    ]
    said_at = [line.at_s for line in record.transcript]
    assert all(at is not None for at in said_at) and 0 < said_at[0] <= said_at[1] <= record.duration_s, said_at
    listing = await run_cli(config, "calls")
    assert listing.splitlines()[0].split()[:4] == ["STARTED", "(UTC)", "CALL", "SID"]
    assert call.call_sid in listing and "caller_hung_up" in listing
    shown = await run_cli(config, "calls", "show", call.call_sid)
    assert f"Call {call.call_sid}" in shown and "gpt-realtime (ga dialect)" in shown
    assert "caller: (simulated caller speech)" in shown and f"model:  {realtime.transcript}" in shown


async def run_cli(config: Path, *argv: str) -> str:
    """`telephony-bridge ARGV` in its own process, reading the configuration from BRIDGE_CONFIG."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "telephony_bridge", *argv,
        env={**os.environ, "BRIDGE_CONFIG": str(config)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


async def test_an_unwritable_call_log_never_drops_the_call(
    tmp_path: Path, realtime: RealtimeSimulator, json_lines: io.StringIO
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    async with operated_bridge(realtime, write_config(tmp_path, tmp_path / "a-file" / "calls.sqlite3")) as bridge:
        call, session = await place_call(bridge, realtime)
        call.say(speech_like_ulaw(600))
        await session.wait_for(lambda e: e.get("type") == "response.done", timeout=10, sent=True)
        await call.wait_heard(500, timeout=5)
        await call.hang_up()
        await wait_for_call_end(bridge)

        async def counted() -> bool:
            return value(await scrape(bridge), "telephony_bridge_call_log_failures_total", reason="database") == 1

        await wait_for(counted)
    assert call.closed_by_bridge is False
    warnings = [json.loads(line) for line in json_lines.getvalue().splitlines() if "not written to the call log" in line]
    assert len(warnings) == 1 and warnings[0]["level"] == "WARNING" and warnings[0]["call_sid"] == call.call_sid


def a_record(call_sid: str) -> CallRecord:
    now = datetime.now(UTC)
    return CallRecord(call_sid, CALLER, CLINIC, now, now, 0.0, "caller_hung_up", "caller hung up", 0, 0, "gpt-realtime", "ga")


async def test_a_locked_call_log_loses_that_call_with_a_warning_and_writes_the_next(tmp_path: Path) -> None:
    database = tmp_path / "calls.sqlite3"
    failures: list[str] = []
    call_log = CallLog(database, on_failure=failures.append, busy_timeout_s=0.05)
    call_log.start()
    locker = sqlite3.connect(database, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    call_log.add(a_record("CA-locked-out"))
    await wait_for(lambda: failures == ["database"])
    locker.execute("COMMIT")
    locker.close()
    call_log.add(a_record("CA-after"))
    await asyncio.to_thread(call_log.close)
    assert find_call(database, "CA-locked-out") is None
    assert find_call(database, "CA-after") is not None


def test_the_schema_is_created_once_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    database = tmp_path / "calls.sqlite3"
    open_for_writing(database).close()
    connection = open_for_writing(database)
    assert connection.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    connection.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    connection.close()
    with pytest.raises(CallLogError, match="newer than this bridge"):
        open_for_writing(database)
    with pytest.raises(CallLogError, match="newer than this bridge"):
        find_call(database, "CA1")


def test_caller_numbers_are_masked_but_for_the_last_four_digits() -> None:
    assert mask_number("+14155550123") == "+1415555****"
    assert (mask_number(""), mask_number("123")) == ("", "***")


def test_histogram_buckets_count_a_value_equal_to_a_bound_in_that_bucket() -> None:
    buckets = Buckets((0.1, 1.0))
    for seconds in (0.1, 0.5, 2.0):
        buckets.observe(seconds)
    assert buckets.cumulative() == [("0.1", 1), ("1.0", 2), ("+Inf", 3)]
    assert buckets.total == pytest.approx(2.6)
