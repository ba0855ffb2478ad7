"""The servers the fleet tests run on loopback: a PostgreSQL of its own, HAProxy, bridge instances, the Realtime simulator.

Each is a real process started here and stopped at the end of the session. A missing binary skips the tests
that need it, with the reason, except under `CI=true`, where it fails them: CI installs what they need.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
DB_PASSWORD = "pg-secret-for-fleet-tests"
"""The superuser's password: tests check it never appears in a log line."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def missing(what: str) -> None:
    """Skip (or, under CI, fail) a test whose server cannot be started here."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required under CI=true")
    pytest.skip(f"{what} is not installed")


def wait_for_port(port: int, timeout_s: float = 15.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process on port {port} exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s} s")


class PostgresServer:
    """A throwaway cluster in a temporary folder owned by `postgres` (initdb refuses to run as root)."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            missing("PostgreSQL (postgresql-15)")
        self.folder = Path(tempfile.mkdtemp(prefix="bridge-pg-"))
        self.port = free_port()
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        password_file = self.folder / "password"
        password_file.write_text(DB_PASSWORD)
        if self._as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
            shutil.chown(password_file, "postgres", "postgres")
        self.data = self.folder / "data"
        subprocess.run(
            [*self._as_postgres, str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "scram-sha-256",
             f"--pwfile={password_file}", "--no-sync"],
            check=True, capture_output=True,
        )
        self.url = f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1:{self.port}/postgres"
        self.start()

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.folder} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        subprocess.run(
            [*self._as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"),
             "-o", options, "-w", "start"],
            check=True, capture_output=True,
        )

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            [*self._as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"],
            check=False, capture_output=True,
        )

    def database(self, name: str) -> str:
        """A new, empty database of this server: its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


FLEET_CONFIG = """
[defaults]
instructions = "You answer the phone."
fallback_message = "Sorry, please call back later."

[limits]
drain_seconds = {drain}

[numbers."+14155550199"]
instructions = "You are the reminder line of Bright Smile Dental, calling {{name}}."
greeting = "Hello {{name}}, this is Bright Smile Dental."
"""
OUTBOUND_LINE = "+14155550199"
"""The fleet's number that places calls (its instructions take the `name` placeholder)."""


class Instance:
    """One `telephony-bridge serve` process of the fleet."""

    def __init__(self, name: str, folder: Path, env: dict[str, str], drain_s: float = 20.0, extra_config: str = "") -> None:
        self.name = name
        self.port = free_port()
        self.log_path = folder / f"{name}.log"
        config = folder / f"{name}.toml"
        config.write_text(FLEET_CONFIG.format(drain=drain_s) + extra_config)
        self._command = [sys.executable, "-m", "telephony_bridge", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                         "--config", str(config)]
        self._env = {**os.environ, **env, "BRIDGE_INSTANCE_ID": name, "PYTHONPATH": str(Path(__file__).parent.parent)}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(self._command, env=self._env, stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(self.port, process=self.process)
        deadline = time.monotonic() + 15
        while httpx.get(f"http://127.0.0.1:{self.port}/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} is not ready")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout_s: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout_s)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.running():
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


HAPROXY_CONFIG = """
global
    maxconn 2000
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    option http-server-close
frontend bridge
    bind 127.0.0.1:{port}
    default_backend instances
backend instances
    balance roundrobin
    option httpchk GET /readyz
    default-server inter 300ms fall 1 rise 1
{servers}
"""


class Balancer:
    """HAProxy, round-robin over the instances, websockets upgraded through (`timeout tunnel`)."""

    def __init__(self, folder: Path, instances: list[Instance]) -> None:
        if not Path(HAPROXY).exists():
            missing("HAProxy")
        self.port = free_port()
        servers = "\n".join(f"    server {i.name} 127.0.0.1:{i.port} check" for i in instances)
        config = folder / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(port=self.port, servers=servers))
        self.process = subprocess.Popen([HAPROXY, "-f", str(config), "-db"], stdout=subprocess.DEVNULL,
                                        stderr=(folder / "haproxy.log").open("wb"))
        wait_for_port(self.port, process=self.process)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class RealtimeProcess:
    """The Realtime simulator as its own process (`telephony-bridge simulate-realtime`), shared by the fleet."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "telephony_bridge", "simulate-realtime", "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=(folder / "realtime.log").open("wb"), stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )
        wait_for_port(self.port, process=self.process)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)
