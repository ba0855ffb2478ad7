"""The telephony-bridge command as an operator meets it: start-up refusals, the configuration file, and the simulator."""

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
from telephony_bridge import __version__
from telephony_bridge.config import example_config, load_config


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


def test_version_prints_the_package_version() -> None:
    result = run_cli("--version", env={})
    assert (result.returncode, result.stdout.strip()) == (0, f"telephony-bridge {__version__}")


def test_init_config_writes_the_commented_example_which_loads(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "bridge.toml"
    result = run_cli("init-config", str(path), env={})
    assert result.returncode == 0, result.stderr
    assert path.read_text(encoding="utf-8") == example_config()
    assert "# [defaults] applies to every call" in path.read_text(encoding="utf-8")
    assert len(load_config(path).numbers) == 2


def test_init_config_keeps_an_existing_file_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text("# mine\n")
    refused = run_cli("init-config", str(path), env={})
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert path.read_text() == "# mine\n"
    forced = run_cli("init-config", "--force", str(path), env={})
    assert forced.returncode == 0, forced.stderr
    assert path.read_text(encoding="utf-8") == example_config()


def test_the_config_flag_wins_over_bridge_config(tmp_path: Path) -> None:
    from_env = tmp_path / "env.toml"
    from_env.write_text(TEST_CONFIG)
    from_flag = tmp_path / "flag.toml"
    from_flag.write_text('[call_log]\npath = ""\n')
    result = run_cli("calls", "--config", str(from_flag), env={"BRIDGE_CONFIG": str(from_env)})
    assert result.returncode == 2
    assert f"the call log is off ([call_log] path is empty in {from_flag})" in result.stderr


def test_a_missing_config_file_says_how_to_write_one(tmp_path: Path) -> None:
    missing = tmp_path / "bridge.toml"
    result = run_cli("serve", "--port", "0", "--config", str(missing), env={"TWILIO_AUTH_TOKEN": "t"})
    assert result.returncode == 2
    assert f"{missing}: <file>: cannot be read" in result.stderr
    assert f"telephony-bridge init-config {missing}" in result.stderr
