"""The telephony-bridge command as an operator meets it: start-up refusals and the simulator."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from websockets.sync.client import connect

from support import TEST_CONFIG


def run_cli(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("TWILIO_AUTH_TOKEN", "OPENAI_API_KEY", "BRIDGE_CONFIG")}
    return subprocess.run([sys.executable, "-m", "telephony_bridge", *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=timeout)


def test_serve_refuses_to_start_without_the_twilio_auth_token(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(TEST_CONFIG)
    result = run_cli("serve", "--port", "0", env={"BRIDGE_CONFIG": str(config)})
    assert result.returncode == 2
    assert "TWILIO_AUTH_TOKEN is not set" in result.stderr and "--insecure" in result.stderr


def test_a_bad_config_file_stops_start_up_naming_the_file_the_key_and_the_reason(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[defaults]\nvoise = "marin"\n')
    result = run_cli("serve", "--port", "0", env={"BRIDGE_CONFIG": str(config), "TWILIO_AUTH_TOKEN": "t"})
    assert result.returncode == 2
    assert f"{config}: defaults.voise: unknown key" in result.stderr


def test_simulate_realtime_serves_the_simulator_on_the_given_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "telephony_bridge", "simulate-realtime", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with connect(f"ws://127.0.0.1:{port}/v1/realtime", open_timeout=2) as ws:
                    assert json.loads(ws.recv(timeout=2))["type"] == "session.created"
                    break
            except OSError:
                assert time.monotonic() < deadline, "the simulator did not start"
                time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=5)
