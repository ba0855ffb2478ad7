"""The admin API over a real bridge on loopback: every route with no token, a wrong one and the right one."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from support import API_KEY, AUTH_TOKEN, CLINIC, PUBLIC_URL, SHOP, TEST_CONFIG, new_call
from telephony_bridge.admin.ranges import ByteRange, Unsatisfiable, byte_range
from telephony_bridge.call_log import CallLog, CallRecord, TranscriptLine
from telephony_bridge.config import load_config, settings_from_env
from telephony_bridge.testing.bridge_server import serve_bridge
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator

ADMIN_TOKEN = "admin-token-for-tests"
RECORDING = Path(__file__).parent / "recordings" / "conversation.jsonl"
ROUTES = [("GET", "/admin/calls/live"), ("GET", "/admin/calls"), ("GET", "/admin/calls/CA0"), ("POST", "/admin/calls/CA0/end"),
          ("GET", "/admin/calls/CA0/recording.wav"), ("GET", "/admin/numbers"), ("POST", "/admin/reload")]
T0 = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)


def a_record(index: int, to: str, outcome: str, said: str) -> CallRecord:
    started = T0 + timedelta(days=index)
    transcript = (TranscriptLine("caller", said, 1.5), TranscriptLine("model", "Sure.", 3.25))
    return CallRecord(f"CA{index}", "+15005550006", to, started, started + timedelta(seconds=30), 30.0, outcome, "",
                      index % 3, 0, "gpt-realtime", "ga", transcript)


async def bridge_with(tmp_path: Path, realtime: RealtimeSimulator, admin_token: str | None) -> AsyncIterator[str]:
    config = tmp_path / "bridge.toml"
    config.write_text(TEST_CONFIG.replace('path = ""', f"path = '{tmp_path / 'calls.sqlite3'}'")
                      + f"\n[recording]\nfolder = '{tmp_path / 'recordings'}'\n")
    call_log = CallLog(tmp_path / "calls.sqlite3")
    call_log.start()
    for index in range(5):
        call_log.add(a_record(index, CLINIC if index % 2 == 0 else SHOP, "caller_hung_up" if index != 3 else "media_timeout",
                              "I need a cleaning appointment" if index == 2 else "Hello"))
    call_log.close()
    (tmp_path / "recordings").mkdir()
    shutil.copy(RECORDING, tmp_path / "recordings" / "20260112T090000-CA2.jsonl")
    env = {"PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "OPENAI_API_KEY": API_KEY,
           "REALTIME_URL": realtime.url, "BRIDGE_CONFIG": str(config)}
    settings = settings_from_env({**env, **({"BRIDGE_ADMIN_TOKEN": admin_token} if admin_token else {})})
    async with serve_bridge(settings, load_config(config)) as bridge:
        yield bridge


@pytest.fixture
async def bridge(tmp_path: Path, realtime: RealtimeSimulator) -> AsyncIterator[str]:
    async for url in bridge_with(tmp_path, realtime, ADMIN_TOKEN):
        yield url


@pytest.fixture
async def admin(bridge: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=bridge, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        yield client


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_wants_the_token_and_refuses_a_wrong_one(bridge: str, method: str, path: str) -> None:
    async with httpx.AsyncClient(base_url=bridge) as client:
        missing = await client.request(method, path)
        wrong = await client.request(method, path, headers={"Authorization": "Bearer admin-token-for-testz"})
        basic = await client.request(method, path, headers={"Authorization": f"Basic {ADMIN_TOKEN}"})
        right = await client.request(method, path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert (missing.status_code, wrong.status_code, basic.status_code) == (401, 401, 401)
    assert missing.headers["www-authenticate"] == "Bearer" and ADMIN_TOKEN not in wrong.text
    assert right.status_code in (200, 404) and right.status_code != 401


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_with_no_admin_token_configured_every_route_is_404(
    tmp_path: Path, realtime: RealtimeSimulator, method: str, path: str
) -> None:
    async for bridge in bridge_with(tmp_path, realtime, None):
        async with httpx.AsyncClient(base_url=bridge) as client:
            response = await client.request(method, path, headers={"Authorization": "Bearer anything"})
        assert response.status_code == 404


async def test_live_calls_show_the_number_a_masked_caller_duration_and_state(
    bridge: str, admin: httpx.AsyncClient, realtime: RealtimeSimulator
) -> None:
    assert (await admin.get("/admin/calls/live")).json() == {"calls": [], "draining": False}
    call = new_call(bridge)
    await call.dial()
    await call.connect()
    await realtime.wait_for_session(0)
    [live] = (await admin.get("/admin/calls/live")).json()["calls"]
    assert (live["call_sid"], live["number"], live["caller"]) == (call.call_sid, CLINIC, "+1500555****")
    assert live["state"] in ("connecting", "in_progress") and live["duration_s"] >= 0 and live["transcript"] == []
    await call.hang_up()


async def test_calls_live_command_prints_the_live_calls(bridge: str, realtime: RealtimeSimulator, tmp_path: Path) -> None:
    call = new_call(bridge)
    await call.dial()
    await call.connect()
    await realtime.wait_for_session(0)
    # The bridge runs on this event loop: the command must run beside it, not block it.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "telephony_bridge", "calls", "--live", "--url", bridge,
        env={**os.environ, "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN}, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err
    assert out.decode().splitlines()[0].split() == ["CALL", "SID", "TO", "FROM", "DURATION", "STATE", "LAST", "SAID"]
    assert call.call_sid in out.decode() and "+1500555****" in out.decode()
    await call.hang_up()


async def test_history_filters_by_number_dates_outcome_direction_and_transcript_and_pages(admin: httpx.AsyncClient) -> None:
    everything = (await admin.get("/admin/calls")).json()
    assert [call["call_sid"] for call in everything["calls"]] == ["CA4", "CA3", "CA2", "CA1", "CA0"]
    assert everything["next_cursor"] is None and everything["calls"][0]["direction"] == "inbound"

    async def sids(**params: str) -> list[str]:
        response = await admin.get("/admin/calls", params=params)
        assert response.status_code == 200, response.text
        return [call["call_sid"] for call in response.json()["calls"]]

    assert await sids(number=CLINIC) == ["CA4", "CA2", "CA0"]
    assert await sids(outcome="media_timeout") == ["CA3"]
    assert await sids(**{"from": "2026-01-11", "to": "2026-01-12"}) == ["CA2", "CA1"]
    assert await sids(q="cleaning") == ["CA2"]
    assert await sids(q="%") == []
    assert await sids(direction="outbound") == []
    first = (await admin.get("/admin/calls", params={"limit": "2"})).json()
    second = (await admin.get("/admin/calls", params={"limit": "2", "cursor": first["next_cursor"]})).json()
    third = (await admin.get("/admin/calls", params={"limit": "2", "cursor": second["next_cursor"]})).json()
    pages = [[c["call_sid"] for c in page["calls"]] for page in (first, second, third)]
    assert pages == [["CA4", "CA3"], ["CA2", "CA1"], ["CA0"]]
    assert third["next_cursor"] is None
    assert (await admin.get("/admin/calls", params={"cursor": "garbage"})).status_code == 422
    assert (await admin.get("/admin/calls", params={"from": "last tuesday"})).status_code == 422


async def test_a_calls_detail_has_its_transcript_barge_ins_and_recording(admin: httpx.AsyncClient) -> None:
    detail = (await admin.get("/admin/calls/CA2")).json()
    assert detail["transcript"] == [{"speaker": "caller", "text": "I need a cleaning appointment", "at_s": 1.5},
                                    {"speaker": "model", "text": "Sure.", "at_s": 3.25}]
    assert (detail["barge_ins"], detail["outcome"], detail["to"]) == (2, "caller_hung_up", CLINIC)
    assert detail["recording"] == "/admin/calls/CA2/recording.wav"
    assert (await admin.get("/admin/calls/CA1")).json()["recording"] is None
    assert (await admin.get("/admin/calls/CA404")).status_code == 404


async def test_a_recording_is_served_as_wav_whole_or_by_range(admin: httpx.AsyncClient) -> None:
    whole = await admin.get("/admin/calls/CA2/recording.wav")
    assert whole.status_code == 200 and whole.headers["content-type"] == "audio/wav"
    assert whole.content[:4] == b"RIFF" and whole.content[8:12] == b"WAVE" and whole.headers["accept-ranges"] == "bytes"
    size = len(whole.content)
    part = await admin.get("/admin/calls/CA2/recording.wav", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == whole.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{size}"
    tail = await admin.get("/admin/calls/CA2/recording.wav", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == whole.content[-10:]
    past = await admin.get("/admin/calls/CA2/recording.wav", headers={"Range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
    assert (await admin.get("/admin/calls/CA1/recording.wav")).status_code == 404
    assert (await admin.get("/admin/calls/..%2Fcalls/recording.wav")).status_code == 404


async def test_numbers_show_each_numbers_effective_profile_and_the_config_hash(admin: httpx.AsyncClient, tmp_path: Path) -> None:
    body = (await admin.get("/admin/numbers")).json()
    assert body["config_hash"] == load_config(tmp_path / "bridge.toml").digest
    assert body["numbers"][SHOP]["greeting"] == "Corner Hardware, how can I help?"
    assert body["numbers"][CLINIC]["turn_detection"]["silence_duration_ms"] == 300
    assert body["defaults"]["instructions"] == "You answer the phone."


@pytest.mark.parametrize(
    ("header", "length", "expected"),
    [(None, 10, None), ("bytes=0-4", 10, ByteRange(0, 4)), ("bytes=5-", 10, ByteRange(5, 9)),
     ("bytes=-3", 10, ByteRange(7, 9)), ("bytes=8-100", 10, ByteRange(8, 9)), ("bytes=0-1,4-5", 10, None),
     ("items=0-1", 10, None), ("bytes=٣-4", 10, None), ("bytes=5-2", 10, None)],
)
def test_a_range_header_is_read_as_one_inclusive_range_or_the_whole_body(
    header: str | None, length: int, expected: ByteRange | None
) -> None:
    assert byte_range(header, length) == expected


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=-0", "bytes=99-100"])
def test_a_range_past_the_end_is_unsatisfiable(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        byte_range(header, 10)
