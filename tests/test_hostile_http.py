"""A hostile client on the HTTP edge, over real sockets: slow, idle, oversized or crafted, it is cut off
cleanly and within its deadline, while real webhooks and calls go on."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from support import (
    API_KEY,
    AUTH_TOKEN,
    CLINIC,
    PUBLIC_URL,
    TEST_CONFIG,
    bridge_for,
    new_call,
)
from telephony_bridge.call_log import open_for_writing
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator

DEADLINE_S = 1.0
SHORT_DEADLINES = f"""
[http]
header_timeout_seconds = {DEADLINE_S}
body_timeout_seconds = {DEADLINE_S}
keep_alive_seconds = {DEADLINE_S}
"""
SLACK_S = 1.5
"""How late past its deadline a connection may be closed on a loaded 2-core test machine."""

WEBHOOK_HEAD = (
    b"POST /twilio/voice HTTP/1.1\r\nHost: bridge.example.com\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
)


@pytest.fixture
async def bridge(realtime: RealtimeSimulator) -> AsyncIterator[str]:
    async with bridge_for(realtime, extra_config=SHORT_DEADLINES) as base_url:
        yield base_url


def port_of(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])


async def seconds_until_closed(reader: asyncio.StreamReader, limit_s: float = 10.0) -> float:
    """How long until the bridge closes the connection (reading and dropping whatever it sends)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(limit_s):
        try:
            while await reader.read(4096):
                pass
        except ConnectionError:
            pass
    return loop.time() - started


async def trickle(writer: asyncio.StreamWriter, first: bytes, byte: bytes) -> None:
    """Send `first`, then one `byte` every 0.2 s: a slowloris that is never quite silent."""
    writer.write(first)
    try:
        while True:
            await asyncio.sleep(0.2)
            writer.write(byte)
            await writer.drain()
    except ConnectionError:
        pass


async def held_connection(port: int, kind: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Task[None] | None]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    task = None
    if kind == "header":
        task = asyncio.create_task(trickle(writer, b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"a"))
    elif kind == "body":
        task = asyncio.create_task(trickle(writer, WEBHOOK_HEAD, b"a"))
    return reader, writer, task


def errors_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{record.name}: {record.getMessage()}" for record in caplog.records if record.levelno >= logging.ERROR]


@pytest.mark.parametrize("kind", ["idle", "header", "body"])
async def test_a_connection_that_does_not_finish_its_request_is_closed_at_its_deadline(
    bridge: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer, task = await held_connection(port_of(bridge), kind)
    held_s = await seconds_until_closed(reader)
    if task is not None:
        task.cancel()
    writer.close()
    assert DEADLINE_S - 0.1 <= held_s <= DEADLINE_S + SLACK_S
    await asyncio.sleep(0.2)
    assert errors_in(caplog) == []


async def test_a_kept_alive_connection_is_closed_when_it_sits_idle(bridge: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(bridge))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert await seconds_until_closed(reader) <= DEADLINE_S + SLACK_S
    writer.close()


async def test_a_kept_alive_connection_that_starts_a_second_request_and_stalls_is_closed(bridge: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(bridge))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    task = asyncio.create_task(trickle(writer, b"GET /healthz HTTP/1.1\r\nX-Slow: ", b"a"))
    assert await seconds_until_closed(reader) <= DEADLINE_S + SLACK_S
    task.cancel()
    writer.close()


async def test_a_real_webhook_and_call_get_through_while_150_slow_connections_are_held(
    bridge: str, realtime: RealtimeSimulator
) -> None:
    port = port_of(bridge)
    held = [await held_connection(port, kind) for kind in ("idle", "header", "body") for _ in range(50)]
    call = new_call(bridge)
    response = await call.dial()
    assert response.status_code == 200 and call.stream_url is not None
    await call.connect()
    await realtime.wait_for_session(0)
    await asyncio.sleep(DEADLINE_S + 0.5)
    assert call.closed_at is None, "the live call was cut off with the slow connections"
    await call.hang_up()
    for _, writer, task in held:
        if task is not None:
            task.cancel()
        writer.close()


async def test_over_max_connections_a_request_is_answered_503_until_the_held_ones_expire(
    realtime: RealtimeSimulator,
) -> None:
    async with bridge_for(realtime, extra_config=SHORT_DEADLINES + "max_connections = 5\n") as bridge:
        held = [await held_connection(port_of(bridge), "idle") for _ in range(5)]
        async with httpx.AsyncClient() as client:
            assert (await client.get(bridge + "/healthz")).status_code == 503
            await asyncio.sleep(DEADLINE_S + SLACK_S)
            assert (await client.get(bridge + "/healthz")).status_code == 200
        for _, writer, _ in held:
            writer.close()


async def test_a_client_that_disconnects_mid_body_leaves_no_traceback(bridge: str, caplog: pytest.LogCaptureFixture) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port_of(bridge))
    writer.write(WEBHOOK_HEAD + b"CallSid=CA1&To=")
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await asyncio.sleep(0.5)
    assert errors_in(caplog) == []
    async with httpx.AsyncClient() as client:
        assert (await client.get(bridge + "/healthz")).status_code == 200


def signed_media_headers() -> dict[str, str]:
    url = PUBLIC_URL.replace("https://", "wss://") + "/twilio/media"
    return {"X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(url, {})}


async def test_a_70_kb_frame_before_start_closes_the_socket_once_with_1009(
    bridge: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    media_url = bridge.replace("http", "ws") + "/twilio/media"
    websocket = await connect(media_url, additional_headers=signed_media_headers(), max_size=None)
    await websocket.send("x" * 70_000)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(websocket.recv(), 5)
    assert websocket.close_code == 1009
    await asyncio.sleep(0.3)
    assert errors_in(caplog) == []
    closes = [r for r in caplog.records if r.name.startswith("telephony_bridge") and "before its start" in r.getMessage()]
    assert len(closes) == 1


@pytest.mark.parametrize("token", ["².abc", "9" * 5000 + ".abc", "99999999999.é", "1².x"])
async def test_a_crafted_stream_token_closes_the_media_socket_with_1008_and_no_traceback(
    bridge: str, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    call = new_call(bridge)
    await call.dial()
    await call.connect(parameters={"to": CLINIC, "token": token})
    assert await call.wait_closed_by_bridge(timeout=5) is not None
    assert call.close_code == 1008
    await asyncio.sleep(0.2)
    assert errors_in(caplog) == []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_debug_logs_show_neither_signatures_nor_callers_numbers(tmp_path: Path, realtime: RealtimeSimulator) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(TEST_CONFIG + "\n[limits]\ndrain_seconds = 0\n")
    log_file = (tmp_path / "stderr.log").open("w+")
    port = free_port()
    env = {**os.environ, "PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "OPENAI_API_KEY": API_KEY,
           "REALTIME_URL": realtime.url, "BRIDGE_CONFIG": str(config)}
    process = subprocess.Popen(
        [sys.executable, "-m", "telephony_bridge", "serve", "--port", str(port), "--log-level", "debug", "--log-format", "json"],
        env=env, stderr=log_file,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(100):
                try:
                    await client.get(base + "/healthz")
                    break
                except httpx.HTTPError:
                    await asyncio.sleep(0.1)
            query = "From=%2B14155550123&Caller=%2B14155550123&To=%2B14155550100"
            params = {"CallSid": "CA" + "1" * 32, "To": CLINIC}
            signature = RequestValidator(AUTH_TOKEN).compute_signature(f"{PUBLIC_URL}/twilio/voice?{query}", params)
            response = await client.post(f"{base}/twilio/voice?{query}", data=params, headers={"X-Twilio-Signature": signature})
            assert response.status_code == 200
        call = new_call(base)
        await call.dial()
        await call.connect()
        await realtime.wait_for_session(0)
        media_signature = signed_media_headers()["X-Twilio-Signature"]
        await call.hang_up()
    finally:
        process.terminate()
        process.wait(timeout=10)
    log_file.seek(0)
    stderr = log_file.read()
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any(line["logger"] == "uvicorn.access" for line in lines), "the access log was not on"
    assert any("/twilio/media" in line["message"] for line in lines), "the upgrade was not logged at debug"
    assert signature not in stderr and media_signature not in stderr
    assert "4155550123" not in stderr and "14155550123" not in stderr
    assert API_KEY not in stderr
    assert "Traceback" not in stderr


# The call log holds callers' numbers and transcripts: only its owner may read it.


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_the_call_log_and_its_wal_and_shm_are_created_owner_only(tmp_path: Path, permissive_umask: None) -> None:
    path = tmp_path / "calls.sqlite3"
    connection = open_for_writing(path)  # the schema's creation has written through the WAL already
    files = ("calls.sqlite3", "calls.sqlite3-wal", "calls.sqlite3-shm")
    modes = {name: stat.S_IMODE(os.stat(tmp_path / name).st_mode) for name in files}
    connection.close()
    assert modes == {"calls.sqlite3": 0o600, "calls.sqlite3-wal": 0o600, "calls.sqlite3-shm": 0o600}


def test_folders_the_call_log_creates_are_owner_only_and_existing_ones_keep_their_mode(
    tmp_path: Path, permissive_umask: None
) -> None:
    tmp_path.chmod(0o755)
    open_for_writing(tmp_path / "var" / "calls" / "calls.sqlite3").close()
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "var").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "var" / "calls").st_mode) == 0o700
