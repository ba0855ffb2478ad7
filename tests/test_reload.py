"""Reload without dropping calls (SIGHUP, POST /admin/reload), /readyz through start and drain, and the 403 log line."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from support import API_KEY, AUTH_TOKEN, CLINIC, PUBLIC_URL, TEST_CONFIG, new_call
from telephony_bridge.app import create_app
from telephony_bridge.config import load_config, parse_config, settings_from_env
from telephony_bridge.testing.bridge_server import serve_bridge
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator
from telephony_bridge.testing.twilio_simulator import SimulatedCall

ADMIN_TOKEN = "admin-token-for-tests"
OLD = "You are the receptionist of Bright Smile Dental."
NEW = "You are the night receptionist of Bright Smile Dental."


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@asynccontextmanager
async def serve_process(config: Path, realtime: RealtimeSimulator) -> AsyncIterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """`telephony-bridge serve` in its own process, ready: its URL, the process, and the file its stdout goes to."""
    port = free_port()
    env = {**os.environ, "PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "OPENAI_API_KEY": API_KEY,
           "REALTIME_URL": realtime.url, "BRIDGE_CONFIG": str(config), "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN}
    out = config.parent / "stdout.txt"
    with out.open("wb") as stdout:
        process = subprocess.Popen(
            [sys.executable, "-m", "telephony_bridge", "serve", "--port", str(port), "--log-level", "warning"],
            env=env, stdout=stdout, cwd=config.parent,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(200):
                try:
                    if (await client.get(base + "/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("telephony-bridge serve did not become ready")
        yield base, process, out
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def write(path: Path, instructions: str) -> None:
    path.write_text(TEST_CONFIG.replace(OLD, instructions) + "\n[limits]\ndrain_seconds = 20\n")


async def instructions_of(realtime: RealtimeSimulator, index: int) -> str:
    session = await realtime.wait_for_session(index)
    await session.wait_for("session.update")
    return session.instructions


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(url)


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


async def test_sighup_gives_new_calls_the_new_file_while_a_live_call_keeps_its_profile(
    tmp_path: Path, realtime: RealtimeSimulator
) -> None:
    config = tmp_path / "bridge.toml"
    write(config, OLD)
    async with serve_process(config, realtime) as (bridge, process, stdout):
        summary = stdout.read_text()
        assert summary.startswith(f"telephony-bridge: listening on 127.0.0.1:{bridge.rsplit(':', 1)[1]}; public URL {PUBLIC_URL}")
        assert f"numbers: {CLINIC}, +442071838750; recording off" in summary and API_KEY not in summary
        live = new_call(bridge)
        await live.dial()
        await live.connect()
        assert await instructions_of(realtime, 0) == OLD
        old_hash = (await get(bridge + "/readyz")).json()["config_hash"]

        write(config, NEW)
        process.send_signal(signal.SIGHUP)

        async def reloaded() -> bool:
            return (await get(bridge + "/readyz")).json()["config_hash"] != old_hash

        await wait_until(reloaded)
        later = new_call(bridge)
        await later.dial()
        await later.connect()
        assert await instructions_of(realtime, 1) == NEW
        assert realtime.sessions[0].instructions == OLD and live.closed_at is None and process.poll() is None
        await live.hang_up()
        await later.hang_up()


async def test_sighup_with_a_bad_file_keeps_the_old_configuration_and_the_server_ready(
    tmp_path: Path, realtime: RealtimeSimulator
) -> None:
    config = tmp_path / "bridge.toml"
    write(config, OLD)
    async with serve_process(config, realtime) as (bridge, process, _):
        old_hash = (await get(bridge + "/readyz")).json()["config_hash"]
        config.write_text('[defaults]\nvoise = "marin"\n')
        process.send_signal(signal.SIGHUP)

        async def refused() -> bool:
            return 'telephony_bridge_config_reloads_total{outcome="refused"} 1.0' in (await get(bridge + "/metrics")).text

        await wait_until(refused)
        ready = await get(bridge + "/readyz")
        assert ready.status_code == 200 and ready.json()["config_hash"] == old_hash
        assert f'telephony_bridge_config_info{{hash="{old_hash}"}} 1.0' in (await get(bridge + "/metrics")).text
        call = new_call(bridge)
        await call.dial()
        await call.connect()
        assert await instructions_of(realtime, 0) == OLD
        await call.hang_up()


async def test_telephony_bridge_reload_posts_to_the_admin_api_and_prints_a_bad_files_lines(
    tmp_path: Path, realtime: RealtimeSimulator
) -> None:
    config = tmp_path / "bridge.toml"
    write(config, OLD)
    async with serve_process(config, realtime) as (bridge, _, _):
        env = {**os.environ, "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN}
        config.write_text('[defaults]\nvoise = "marin"\n[limits]\nmax_calls = 0\n')
        bad = subprocess.run([sys.executable, "-m", "telephony_bridge", "reload", "--url", bridge], env=env,
                             capture_output=True, text=True, timeout=30, cwd=tmp_path)
        assert bad.returncode == 2
        assert f"{config}: defaults.voise: unknown key" in bad.stderr and f"{config}: limits.max_calls:" in bad.stderr
        write(config, NEW)
        good = subprocess.run([sys.executable, "-m", "telephony_bridge", "reload", "--url", bridge], env=env,
                              capture_output=True, text=True, timeout=30, cwd=tmp_path)
        assert good.returncode == 0 and good.stdout.startswith("reloaded: configuration "), good.stderr
        metrics = (await get(bridge + "/metrics")).text
        assert 'telephony_bridge_config_reloads_total{outcome="ok"} 1.0' in metrics
        assert 'telephony_bridge_config_reloads_total{outcome="refused"} 1.0' in metrics
        assert ADMIN_TOKEN not in good.stdout + good.stderr + bad.stdout + bad.stderr


async def test_post_admin_reload_swaps_the_profile_for_new_calls_only(tmp_path: Path, realtime: RealtimeSimulator) -> None:
    config = tmp_path / "bridge.toml"
    write(config, OLD)
    settings = settings_from_env({"PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "OPENAI_API_KEY": API_KEY,
                                  "REALTIME_URL": realtime.url, "BRIDGE_CONFIG": str(config),
                                  "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN})
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with serve_bridge(settings, load_config(config)) as bridge, httpx.AsyncClient(headers=auth) as admin:
        live = new_call(bridge)
        await live.dial()
        await live.connect()
        assert await instructions_of(realtime, 0) == OLD
        config.write_text("[defaults]\ninstructions = 5\n")
        refused = await admin.post(bridge + "/admin/reload")
        assert refused.status_code == 422
        assert refused.json()["errors"] == [f"{config}: defaults.instructions: Input should be a valid string"]
        write(config, NEW)
        accepted = await admin.post(bridge + "/admin/reload")
        assert accepted.status_code == 200 and accepted.json()["config_hash"] == load_config(config).digest
        later = new_call(bridge)
        await later.dial()
        await later.connect()
        assert await instructions_of(realtime, 1) == NEW
        numbers = (await admin.get(bridge + "/admin/numbers")).json()
        assert numbers["numbers"][CLINIC]["instructions"] == NEW and realtime.sessions[0].instructions == OLD
        await live.hang_up()
        await later.hang_up()


async def test_readyz_is_503_until_the_lifespan_has_started_the_bridge(realtime: RealtimeSimulator) -> None:
    settings = settings_from_env({"PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "REALTIME_URL": realtime.url})
    app = create_app(settings, parse_config(TEST_CONFIG, "test.toml"))
    # httpx's ASGI transport runs no lifespan: the app as it is before start-up has completed.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as client:
        starting = await client.get("/readyz")
    assert (starting.status_code, starting.json()) == (503, {"status": "starting"})


async def test_readyz_turns_503_while_draining_after_sigterm_while_healthz_stays_200(
    tmp_path: Path, realtime: RealtimeSimulator
) -> None:
    config = tmp_path / "bridge.toml"
    write(config, OLD)
    async with serve_process(config, realtime) as (bridge, process, _):
        live = new_call(bridge)
        await live.dial()
        await live.connect()
        await realtime.wait_for_session(0)
        process.send_signal(signal.SIGTERM)

        async def draining() -> bool:
            return (await get(bridge + "/readyz")).status_code == 503

        await wait_until(draining)
        assert (await get(bridge + "/readyz")).json() == {"status": "draining"}
        assert (await get(bridge + "/healthz")).status_code == 200
        await live.hang_up()
        for _ in range(100):
            if process.poll() is not None:
                break
            await asyncio.sleep(0.05)
        assert process.returncode == 0


async def test_a_refused_signature_logs_the_url_it_was_checked_against_and_the_hint_but_no_secret(
    realtime: RealtimeSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_from_env({"PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "OPENAI_API_KEY": API_KEY,
                                  "REALTIME_URL": realtime.url})
    caplog.set_level(logging.WARNING, logger="telephony_bridge.twilio.signed_requests")
    async with serve_bridge(settings, parse_config(TEST_CONFIG, "test.toml")) as bridge:
        forged = SimulatedCall(bridge_url=bridge, public_url=PUBLIC_URL, auth_token="not-the-token", to_number=CLINIC)
        response = await forged.dial()
    assert response.status_code == 403
    [line] = [record.getMessage() for record in caplog.records if "signature" in record.getMessage()]
    assert f"checked against {PUBLIC_URL}/twilio/voice" in line
    assert "PUBLIC_URL" in line and "TRUST_FORWARDED_HEADERS" in line
    assert AUTH_TOKEN not in line and forged.from_number not in line
