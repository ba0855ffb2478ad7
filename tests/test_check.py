"""`telephony-bridge check`: every problem of the configuration and the environment at once, one line each."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from support import API_KEY, AUTH_TOKEN, PUBLIC_URL, TEST_CONFIG
from telephony_bridge.config import environment, parse_env_file
from telephony_bridge.errors import ConfigError
from telephony_bridge.realtime.entra import azure_identity_installed
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator
from telephony_bridge.testing.twilio_api import TwilioApiSimulator

GOOD_ENV = {"PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "OPENAI_API_KEY": API_KEY}
SETTINGS = ("PUBLIC_URL", "TWILIO_AUTH_TOKEN", "OPENAI_API_KEY", "BRIDGE_CONFIG", "REALTIME_URL", "REALTIME_API",
            "AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_DEPLOYMENT", "BRIDGE_ADMIN_TOKEN",
            "TWILIO_API_URL", "TWILIO_ACCOUNT_SID", "TWILIO_API_KEY", "TWILIO_API_SECRET")


async def run_cli(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """The real command in a subprocess, with only `env`'s bridge settings (none inherited from the test run)."""
    clean = {key: value for key, value in os.environ.items() if key not in SETTINGS}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "telephony_bridge", *args, env={**clean, **env}, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def config_file(tmp_path: Path, text: str = TEST_CONFIG) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return path


async def test_check_reports_every_problem_of_the_file_and_the_environment_at_once_and_exits_2(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = config_file(tmp_path, f"""
[defaults]
voise = "marin"
instructions = ""
record = true

[numbers."4155550100"]
voice = "sage"

[numbers."+14155550101".turn_detection]
type = "loud"

[limits]
max_calls = 0

[recording]
folder = '{blocker / "recordings"}'

[call_log]
path = '{blocker / "calls.sqlite3"}'
""")
    env = {"PUBLIC_URL": "http://bridge.example.com", "REALTIME_API": "beta", "BRIDGE_CONFIG": str(config)}
    code, out, _ = await run_cli("check", env=env, cwd=tmp_path)
    assert code == 2
    expected = [
        f"{config}: defaults.voise: unknown key",
        f"{config}: defaults.instructions: String should have at least 1 character",
        f'{config}: numbers."4155550100": not an E.164 number',
        f'{config}: numbers."+14155550101".turn_detection.type: Input should be',
        f"{config}: limits.max_calls: Input should be greater than or equal to 1",
        f"{config}: recording.folder: cannot be created: {blocker} is not a folder",
        f"{config}: call_log.path: cannot be created: {blocker} is not a folder",
        "environment: PUBLIC_URL: must be https",
        "environment: REALTIME_API: must be 'ga' or 'preview', not 'beta'",
        "environment: OPENAI_API_KEY: not set",
        "environment: TWILIO_AUTH_TOKEN: not set",
    ]
    lines = out.splitlines()
    for start in expected:
        assert sum(line.startswith(start) for line in lines) == 1, (start, out)
    assert len(lines) == len(expected), out


async def test_a_valid_file_in_a_valid_environment_checks_clean_with_exit_0(tmp_path: Path) -> None:
    config = config_file(tmp_path, TEST_CONFIG.replace('path = ""', f"path = '{tmp_path / 'logs' / 'calls.sqlite3'}'"))
    code, out, _ = await run_cli("check", "--config", str(config), env=GOOD_ENV, cwd=tmp_path)
    assert code == 0, out
    assert out.splitlines() == [f"{config}: ok (2 numbers, hash {out.split('hash ')[1][:12]})"]
    assert not (tmp_path / "logs").exists(), "check must not create what it checks"


async def test_an_http_public_url_on_loopback_is_only_a_warning(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    env = {**GOOD_ENV, "PUBLIC_URL": "http://127.0.0.1:8080", "BRIDGE_CONFIG": str(config)}
    code, out, _ = await run_cli("check", env=env, cwd=tmp_path)
    assert code == 0
    assert out.splitlines()[0].startswith("environment: PUBLIC_URL: warning: http on loopback")


@pytest.mark.skipif(azure_identity_installed(), reason="azure-identity is installed: Entra ID needs no key")
async def test_azure_without_a_key_or_the_azure_extra_names_the_extra_and_the_missing_deployment(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    env = {**GOOD_ENV, "AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com", "BRIDGE_CONFIG": str(config)}
    code, out, _ = await run_cli("check", env=env, cwd=tmp_path)
    assert code == 2
    assert out.splitlines() == [
        "environment: AZURE_OPENAI_API_KEY: not set, and Microsoft Entra ID needs azure-identity: "
        "pip install 'telephony-bridge[azure]'",
        "environment: AZURE_OPENAI_DEPLOYMENT: required with AZURE_OPENAI_ENDPOINT",
    ]


@pytest.mark.skipif(not azure_identity_installed(), reason="needs the azure extra")
async def test_azure_without_a_key_uses_entra_id_when_the_azure_extra_is_installed(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    env = {**GOOD_ENV, "AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com", "AZURE_OPENAI_DEPLOYMENT": "rt",
           "BRIDGE_CONFIG": str(config)}
    code, out, _ = await run_cli("check", env=env, cwd=tmp_path)
    assert code == 0, out
    assert "AZURE_OPENAI_API_KEY" not in out


async def test_a_voice_the_preview_dialect_does_not_know_stops_check_and_serve_with_one_line(tmp_path: Path) -> None:
    config = config_file(tmp_path, TEST_CONFIG.replace('voice = "sage"', 'voice = "sage"\nnoise_reduction = "far_field"'))
    env = {**GOOD_ENV, "REALTIME_API": "preview", "BRIDGE_CONFIG": str(config)}
    code, out, _ = await run_cli("check", env=env, cwd=tmp_path)
    assert code == 2
    assert out.splitlines() == [
        f"{config}: defaults.voice: 'marin' is not a voice of the 2024-10-01 preview: "
        "one of alloy, ash, ballad, coral, echo, sage, shimmer, verse",
        f'{config}: numbers."+14155550100".noise_reduction: GA only: the preview dialect has no noise reduction',
        f"{config}: numbers.\"+442071838750\".voice: 'cedar' is not a voice of the 2024-10-01 preview: "
        "one of alloy, ash, ballad, coral, echo, sage, shimmer, verse",
    ]
    code, _, err = await run_cli("serve", "--port", "0", env=env, cwd=tmp_path)
    assert code != 0
    assert "defaults.voice: 'marin' is not a voice of the 2024-10-01 preview" in err


async def test_check_reads_a_dot_env_file_in_the_working_directory_and_the_environment_wins(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    (tmp_path / ".env").write_text(
        f"# a trial\nexport PUBLIC_URL=https://from-dotenv.example.com\nTWILIO_AUTH_TOKEN='{AUTH_TOKEN}'\n"
        f'OPENAI_API_KEY="{API_KEY}"  # the key\nBRIDGE_CONFIG={config}\n'
    )
    code, out, _ = await run_cli("check", env={}, cwd=tmp_path)
    assert code == 0, out
    code, out, _ = await run_cli("check", env={"PUBLIC_URL": "http://bridge.example.com"}, cwd=tmp_path)
    assert code == 2 and out.startswith("environment: PUBLIC_URL: must be https"), out


async def test_a_named_env_file_that_is_missing_is_an_error(tmp_path: Path) -> None:
    code, _, err = await run_cli("check", "--env-file", str(tmp_path / "nope.env"), env=GOOD_ENV, cwd=tmp_path)
    assert code == 2
    assert f"{tmp_path / 'nope.env'}: <file>: cannot be read" in err


def test_the_env_parser_takes_quotes_comments_and_export_and_expands_nothing() -> None:
    parsed = parse_env_file(
        'A=1\n  # comment\nexport B = two words # note\nC="x\\ny $HOME"\nD=\'$literal # kept\'\nE=\n', ".env"
    )
    assert parsed == {"A": "1", "B": "two words", "C": "x\ny $HOME", "D": "$literal # kept", "E": ""}


@pytest.mark.parametrize(("text", "reason"), [("JUST_A_WORD\n", "not KEY=VALUE"), ('K="open\n', "never closed")])
def test_a_bad_env_line_is_named_never_skipped(text: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=f"^.env: line 1: .*{reason}"):
        parse_env_file(text, ".env")


def test_the_real_environment_wins_over_the_env_file(tmp_path: Path) -> None:
    (tmp_path / "trial.env").write_text("PUBLIC_URL=https://file.example.com\nOPENAI_API_KEY=from-file\n")
    env = environment(tmp_path / "trial.env", base={"PUBLIC_URL": "https://real.example.com"})
    assert (env["PUBLIC_URL"], env["OPENAI_API_KEY"]) == ("https://real.example.com", "from-file")


async def test_check_online_opens_one_realtime_session_and_closes_it(tmp_path: Path, realtime: RealtimeSimulator) -> None:
    config = config_file(tmp_path)
    env = {**GOOD_ENV, "REALTIME_URL": realtime.url + "?model=gpt-realtime", "BRIDGE_CONFIG": str(config)}
    code, out, _ = await run_cli("check", "--online", env=env, cwd=tmp_path)
    assert code == 0, out
    assert "online: Realtime API: ok: 127.0.0.1:" in out and "opened a session (session.created)" in out
    assert "online: Twilio credentials: not checked" in out
    session = await realtime.wait_for_session(0)
    await session.wait_closed(timeout=2)
    assert API_KEY not in out


async def test_check_online_reports_a_refused_key_without_printing_it(tmp_path: Path, realtime: RealtimeSimulator) -> None:
    config = config_file(tmp_path)
    env = {**GOOD_ENV, "OPENAI_API_KEY": "sk-wrong-key", "REALTIME_URL": realtime.url, "BRIDGE_CONFIG": str(config)}
    code, out, _ = await run_cli("check", "--online", env=env, cwd=tmp_path)
    assert code == 2
    assert "online: Realtime API: FAILED: " in out and "HTTP 401" in out
    assert "sk-wrong-key" not in out


async def test_check_online_verifies_the_twilio_credentials_with_one_authenticated_request(
    tmp_path: Path, realtime: RealtimeSimulator
) -> None:
    async with TwilioApiSimulator(auth_token=AUTH_TOKEN) as api:
        env = {**GOOD_ENV, "REALTIME_URL": realtime.url, "BRIDGE_CONFIG": str(config_file(tmp_path)),
               "TWILIO_API_URL": api.url, "TWILIO_ACCOUNT_SID": api.account_sid}
        code, out, _ = await run_cli("check", "--online", env=env, cwd=tmp_path)
    assert code == 0, out
    assert f"online: Twilio credentials: ok: 127.0.0.1:{api.port} (account {api.account_sid}, auth token): authenticated" in out
    [request] = api.requests
    assert (request.method, request.params, request.username) == ("GET", {"PageSize": "1"}, api.account_sid)


@pytest.mark.parametrize("credentials", [
    {"TWILIO_AUTH_TOKEN": "a-wrong-twilio-token"},
    {"TWILIO_API_KEY": "SK" + "0" * 32, "TWILIO_API_SECRET": "a-wrong-api-secret"},
])
async def test_check_online_reports_refused_twilio_credentials_without_printing_them(
    tmp_path: Path, realtime: RealtimeSimulator, credentials: dict[str, str]
) -> None:
    async with TwilioApiSimulator(auth_token=AUTH_TOKEN, api_key="SK" + "0" * 32, api_secret="the-right-secret") as api:
        env = {**GOOD_ENV, "REALTIME_URL": realtime.url, "BRIDGE_CONFIG": str(config_file(tmp_path)),
               "TWILIO_API_URL": api.url, "TWILIO_ACCOUNT_SID": api.account_sid, **credentials}
        code, out, err = await run_cli("check", "--online", env=env, cwd=tmp_path)
    assert code == 2
    assert "online: Twilio credentials: FAILED: " in out and "HTTP 401, Twilio error 20003" in out
    assert "the credentials were refused" in out
    assert all(secret not in out + err for secret in ("a-wrong-twilio-token", "a-wrong-api-secret"))
