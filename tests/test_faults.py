"""Faults injected over real sockets, and what the caller experiences."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from support import API_KEY, AUTH_TOKEN, CLINIC, PUBLIC_URL, TEST_CONFIG, bridge_for, new_call, place_call
from telephony_bridge.config import DEFAULT_SHUTDOWN
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator
from telephony_bridge.testing.twilio_simulator import speech_like_ulaw

FALLBACK_BUDGET_S = 3.0
RECONNECT_BUDGET_S = 2.0


async def fallback_time(bridge: str) -> float:
    """Place a call and return how long after dialling the bridge let Twilio move on to the fallback."""
    call = new_call(bridge)
    dialled_at = asyncio.get_running_loop().time()
    response = await call.run()
    assert response.status_code == 200
    closed_at = await call.wait_closed_by_bridge(timeout=FALLBACK_BUDGET_S + 2)
    assert closed_at is not None, "the caller was left in silence"
    await call.wait_over()
    assert call.spoken == ["Sorry, please call back later."], "after the stream, the caller hears the fallback message"
    return closed_at - dialled_at


@pytest.fixture
async def http_refusal() -> AsyncIterator[dict[int, str]]:
    """Realtime endpoints that answer the handshake with an HTTP error status."""
    servers = {}
    urls = {}
    for status in (401, 429, 503):
        server = await serve(
            lambda ws: ws.close(), "127.0.0.1", 0, process_request=lambda conn, req, s=status: conn.respond(s, "no\n")
        )
        servers[status] = server
        urls[status] = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/realtime"
    yield urls
    for server in servers.values():
        server.close()
        await server.wait_closed()


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """A TCP server that accepts and never answers the websocket handshake."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/realtime"
    for writer in held:
        writer.close()
    server.close()


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"ws://127.0.0.1:{probe.getsockname()[1]}/v1/realtime"


async def test_a_refused_connection_sends_the_caller_to_the_fallback_within_3_s() -> None:
    async with bridge_for(None, url=closed_port_url()) as bridge:
        assert await fallback_time(bridge) < FALLBACK_BUDGET_S


async def test_an_unresolvable_host_sends_the_caller_to_the_fallback_within_3_s() -> None:
    async with bridge_for(None, url="ws://realtime.invalid/v1/realtime") as bridge:
        assert await fallback_time(bridge) < FALLBACK_BUDGET_S


async def test_a_handshake_that_never_answers_sends_the_caller_to_the_fallback_within_3_s(silent_server: str) -> None:
    async with bridge_for(None, url=silent_server) as bridge:
        assert await fallback_time(bridge) < FALLBACK_BUDGET_S


@pytest.mark.parametrize("status", [401, 429, 503])
async def test_an_http_refusal_sends_the_caller_to_the_fallback_within_3_s(
    http_refusal: dict[int, str], status: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with bridge_for(None, url=http_refusal[status]) as bridge:
        assert await fallback_time(bridge) < FALLBACK_BUDGET_S
    assert f"HTTP {status}" in caplog.text


async def test_a_wrong_key_is_not_retried(realtime: RealtimeSimulator) -> None:
    async with bridge_for(realtime, env={"OPENAI_API_KEY": "sk-wrong"}) as bridge:
        await fallback_time(bridge)
    assert len(realtime.rejected) == 1


async def test_a_dropped_session_is_replaced_within_2_s_with_the_same_configuration_and_the_conversation(
    realtime: RealtimeSimulator,
) -> None:
    async with bridge_for(realtime) as bridge:
        call = new_call(bridge)
        await call.dial()
        await call.connect()
        first = await realtime.wait_for_session(0)
        call.say(speech_like_ulaw(600))
        await first.wait_for("response.done", sent=True, timeout=10)
        loop = asyncio.get_running_loop()
        dropped_at = loop.time()
        await first.drop(1011)
        second = await realtime.wait_for_session(1, timeout=RECONNECT_BUDGET_S)
        assert second.opened_at - dropped_at < RECONNECT_BUDGET_S
        update = await second.wait_for("session.update")
        assert update["session"]["instructions"] == "You are the receptionist of Bright Smile Dental."
        history = await second.wait_for("conversation.item.create")
        assert history["item"]["role"] == "assistant"
        assert history["item"]["content"][0]["text"] == realtime.transcript
        heard_before = call.heard_ms()
        call.say(speech_like_ulaw(600))
        await call.wait_heard(heard_before + 500, timeout=10)
        assert call.closed_at is None
        await call.hang_up()


async def test_when_the_service_stays_down_the_caller_gets_the_fallback(realtime: RealtimeSimulator) -> None:
    async with bridge_for(realtime) as bridge:
        call, session = await place_call(bridge, realtime)
        await session.wait_for("session.update")
        await realtime.stop()
        lost_at = asyncio.get_running_loop().time()
        closed_at = await call.wait_closed_by_bridge(timeout=FALLBACK_BUDGET_S + 2)
        assert closed_at is not None and closed_at - lost_at < FALLBACK_BUDGET_S


async def test_an_old_session_is_renewed_without_dropping_the_caller(realtime: RealtimeSimulator) -> None:
    async with bridge_for(realtime, extra_config="[limits]\nsession_renew_minutes = 0.02\n") as bridge:
        call = new_call(bridge)
        await call.dial()
        await call.connect()
        first = await realtime.wait_for_session(0)
        second = await realtime.wait_for_session(1, timeout=4)
        await second.wait_for("session.update")
        await first.wait_closed(timeout=2)
        assert first.closed_at >= second.opened_at
        call.say(speech_like_ulaw(600))
        await call.wait_heard(300, timeout=10)
        assert call.closed_at is None
        await call.hang_up()


async def test_a_media_stream_that_goes_quiet_ends_the_session(realtime: RealtimeSimulator) -> None:
    async with bridge_for(realtime, extra_config="[limits]\nmedia_timeout_seconds = 1\n") as bridge:
        call = new_call(bridge)
        await call.dial()
        signature = RequestValidator(AUTH_TOKEN).compute_signature(call.stream_url, {})
        media_url = bridge.replace("http", "ws") + "/twilio/media"
        async with connect(media_url, additional_headers={"X-Twilio-Signature": signature}) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(json.dumps({"event": "start", "streamSid": "MZ1", "start": {
                "callSid": call.call_sid, "streamSid": "MZ1", "customParameters": call.parameters}}))
            session = await realtime.wait_for_session(0)
            closed_at = await session.wait_closed(timeout=3)
            assert closed_at - session.opened_at < 2.5
            await asyncio.wait_for(ws.wait_closed(), timeout=2)


async def test_a_call_over_max_calls_hears_the_busy_message_and_is_never_streamed(realtime: RealtimeSimulator) -> None:
    async with bridge_for(realtime, extra_config='[limits]\nmax_calls = 1\nbusy_message = "All lines are busy."\n') as bridge:
        first = new_call(bridge)
        await first.dial()
        second = new_call(bridge)
        await second.dial()
        assert second.verbs == ["Say", "Hangup"] and second.say_texts == ["All lines are busy."]
        await asyncio.sleep(0.1)
        assert len(realtime.sessions) == 1


async def test_many_junk_messages_in_a_burst_do_not_end_the_call_nor_flood_the_log(
    bridge: str, realtime: RealtimeSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    call, session = await place_call(bridge, realtime)
    for _ in range(1500):
        await call.send_raw('{"event":"junk"}')
    before = session.input_audio_ms
    await asyncio.sleep(1.2)
    assert session.input_audio_ms > before and call.closed_at is None
    assert 10 <= caplog.text.count("malformed Twilio message") <= 25
    await call.hang_up()


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        (b"CallSid=CA1&To=%2B1&" + b"x" * 20_000, {"Content-Type": "application/x-www-form-urlencoded"}, 413),
        (b'{"CallSid": "CA1"}', {"Content-Type": "application/json"}, 403),
        (b"\xff\xfe\x00garbage", {"Content-Type": "application/octet-stream"}, 403),
    ],
)
async def test_bad_webhook_requests_get_4xx_never_500(bridge: str, body: bytes, headers: dict, expected: int) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(bridge + "/twilio/voice", content=body, headers={**headers, "X-Twilio-Signature": "x"})
    assert response.status_code == expected


async def test_a_signed_webhook_without_callsid_or_to_is_a_400(bridge: str) -> None:
    params = {"From": "+15005550006"}
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + "/twilio/voice", params)
    async with httpx.AsyncClient() as client:
        response = await client.post(bridge + "/twilio/voice", data=params, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 400


async def test_behind_a_trusted_proxy_the_forwarded_host_is_what_twilio_signed(realtime: RealtimeSimulator) -> None:
    params = {"CallSid": "CA" + "1" * 32, "To": CLINIC, "From": "+15005550006"}
    signature = RequestValidator(AUTH_TOKEN).compute_signature("https://edge.example.net/twilio/voice", params)
    headers = {"X-Twilio-Signature": signature, "X-Forwarded-Host": "edge.example.net", "X-Forwarded-Proto": "https"}
    async with bridge_for(realtime, env={"TRUST_FORWARDED_HEADERS": "1"}) as bridge, httpx.AsyncClient() as client:
        trusted = await client.post(bridge + "/twilio/voice", data=params, headers=headers)
    async with bridge_for(realtime) as bridge, httpx.AsyncClient() as client:
        untrusted = await client.post(bridge + "/twilio/voice", data=params, headers=headers)
    assert trusted.status_code == 200 and 'url="wss://edge.example.net/twilio/media"' in trusted.text
    assert untrusted.status_code == 403


async def test_secrets_never_reach_the_logs(realtime: RealtimeSimulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with bridge_for(realtime) as bridge:
        call, session = await place_call(bridge, realtime)
        await call.send_raw("junk")
        call.say(speech_like_ulaw(600))
        await session.wait_for("response.done", sent=True, timeout=10)
        await session.drop(1011)
        await realtime.wait_for_session(1)
        await call.hang_up()
    async with bridge_for(realtime, env={"OPENAI_API_KEY": "sk-wrong-secret"}) as bridge:
        await fallback_time(bridge)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name != "websockets.server")  # that one is the simulator
    for secret in (API_KEY, "sk-wrong-secret", AUTH_TOKEN, call.parameters["token"].split(".")[1]):
        assert secret not in logged


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def start_serve_process(tmp_path: Path, realtime: RealtimeSimulator, drain_seconds: float) -> tuple[subprocess.Popen, str]:
    config = tmp_path / "bridge.toml"
    config.write_text(TEST_CONFIG + f"\n[limits]\ndrain_seconds = {drain_seconds}\n")
    port = free_port()
    env = {**os.environ, "PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "OPENAI_API_KEY": API_KEY,
           "REALTIME_URL": realtime.url, "BRIDGE_CONFIG": str(config)}
    process = subprocess.Popen(
        [sys.executable, "-m", "telephony_bridge", "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as client:
        for _ in range(100):
            try:
                if (await client.get(base + "/healthz")).status_code == 200:
                    return process, base
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
    process.kill()
    raise RuntimeError("telephony-bridge serve did not start")


async def wait_exit(process: subprocess.Popen, timeout_s: float) -> int:
    for _ in range(int(timeout_s * 20)):
        if process.poll() is not None:
            return process.returncode
        await asyncio.sleep(0.05)
    process.kill()
    raise AssertionError("the bridge did not exit")


async def test_sigterm_refuses_new_calls_and_lets_live_ones_finish(tmp_path: Path, realtime: RealtimeSimulator) -> None:
    process, bridge = await start_serve_process(tmp_path, realtime, drain_seconds=20)
    live = new_call(bridge)
    await live.dial()
    await live.connect()
    await realtime.wait_for_session(0)
    process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    late = new_call(bridge)
    await late.dial()
    assert late.verbs == ["Say", "Hangup"] and late.say_texts == ["Sorry, please call back later."]
    live.say(speech_like_ulaw(600))
    await live.wait_heard(500, timeout=10)
    assert live.closed_at is None and process.poll() is None
    await live.hang_up()
    assert await wait_exit(process, timeout_s=5) == 0


async def test_after_the_drain_time_the_remaining_calls_are_ended_cleanly(tmp_path: Path, realtime: RealtimeSimulator) -> None:
    process, bridge = await start_serve_process(tmp_path, realtime, drain_seconds=1)
    live = new_call(bridge)
    await live.run()
    session = await realtime.wait_for_session(0)
    process.send_signal(signal.SIGTERM)
    assert await live.wait_closed_by_bridge(timeout=4) is not None
    await session.wait_closed(timeout=1)
    await live.wait_over(timeout=5)
    assert live.spoken == [DEFAULT_SHUTDOWN], "a caller cut off by the drain hears why, not the fallback or an error"
    assert await wait_exit(process, timeout_s=5) == 0
