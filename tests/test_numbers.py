"""`telephony-bridge twilio numbers` and `twilio configure` against the Twilio REST stand-in, in their own process."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from support import AUTH_TOKEN, PUBLIC_URL
from telephony_bridge.config import CallProfile
from telephony_bridge.testing.twilio_api import TwilioApiSimulator
from telephony_bridge.twilio.numbers import ECHO_TWIMLET, echo_url, fallback_twiml

CLINIC, SHOP, SPARE = "+14155550100", "+442071838750", "+15550001111"
CONFIG = f"""
[defaults]
fallback_message = "Sorry, please call back later."

[numbers."{CLINIC}"]
fallback_message = "The clinic cannot answer now."
transfer = {{ front_desk = "+15550009999" }}
fallback_transfer = "front_desk"

[numbers."{SHOP}"]
instructions = "You are the support line of Corner Hardware."
"""
VOICE_URL = f"{PUBLIC_URL}/twilio/voice"
KEPT = ("TWILIO_AUTH_TOKEN", "TWILIO_API_URL", "TWILIO_ACCOUNT_SID", "TWILIO_API_KEY", "TWILIO_API_SECRET", "PUBLIC_URL",
        "BRIDGE_CONFIG", "OPENAI_API_KEY", "REALTIME_URL")


def a_number(sid: str, phone_number: str, voice_url: str = "", **more: str) -> dict[str, Any]:
    return {"sid": sid, "phone_number": phone_number, "voice_url": voice_url, "voice_method": "POST",
            "voice_fallback_url": "", "voice_fallback_method": "POST", "status_callback": "", **more}


@pytest.fixture
async def api() -> AsyncIterator[TwilioApiSimulator]:
    async with TwilioApiSimulator(auth_token=AUTH_TOKEN) as simulator:
        simulator.numbers = [
            a_number("PN01", CLINIC, voice_url="https://old.example.com/voice", voice_method="GET",
                     status_callback="https://old.example.com/status"),
            a_number("PN02", SHOP, voice_url=VOICE_URL),
            a_number("PN03", SPARE),
        ]
        yield simulator


async def twilio_cli(api: TwilioApiSimulator, tmp_path: Path, *args: str, **env: str) -> tuple[int, str, str]:
    """`telephony-bridge twilio ARGS` in its own process, beside the stand-in on this event loop."""
    config = tmp_path / "bridge.toml"
    config.write_text(CONFIG)
    settings = {"PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_API_URL": api.url,
                "TWILIO_ACCOUNT_SID": api.account_sid, "BRIDGE_CONFIG": str(config), **env}
    clean = {key: value for key, value in os.environ.items() if key not in KEPT}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "telephony_bridge", "twilio", *args, env={**clean, **settings}, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def posts(api: TwilioApiSimulator) -> list[dict[str, str]]:
    return [request.params for request in api.requests if request.method == "POST"]


async def test_numbers_lists_each_number_and_whether_it_points_here(api: TwilioApiSimulator, tmp_path: Path) -> None:
    code, out, err = await twilio_cli(api, tmp_path, "numbers")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["NUMBER", "SID", "POINTS", "HERE", "VOICE", "URL"]
    assert [row.split()[:3] for row in rows] == [[CLINIC, "PN01", "no"], [SHOP, "PN02", "yes"], [SPARE, "PN03", "no"]]
    assert posts(api) == []


async def test_configure_points_the_number_here_and_prints_each_change_before_and_after(
    api: TwilioApiSimulator, tmp_path: Path
) -> None:
    code, out, err = await twilio_cli(api, tmp_path, "configure", CLINIC)
    assert code == 0, err
    [sent] = posts(api)
    assert (sent["VoiceUrl"], sent["VoiceMethod"], sent["VoiceFallbackMethod"]) == (VOICE_URL, "POST", "GET")
    assert "StatusCallback" not in sent and api.numbers[0]["status_callback"] == "https://old.example.com/status"
    assert f"  VoiceUrl: https://old.example.com/voice -> {VOICE_URL}" in out.splitlines()
    assert "  VoiceMethod: GET -> POST" in out.splitlines()
    assert "  VoiceFallbackUrl: (empty) -> https://twimlets.com/echo?Twiml=" in out
    assert "StatusCallback: left as it is (https://old.example.com/status): the bridge has no call status route" in out
    assert AUTH_TOKEN not in out + err
    assert api.numbers[0]["voice_url"] == VOICE_URL


async def test_configure_twice_changes_nothing_the_second_time(api: TwilioApiSimulator, tmp_path: Path) -> None:
    await twilio_cli(api, tmp_path, "configure", SHOP)
    code, out, _ = await twilio_cli(api, tmp_path, "configure", SHOP)
    assert code == 0
    assert f"{SHOP} (PN02) points at this bridge already; nothing changed" in out
    assert len(posts(api)) == 1


async def test_the_default_fallback_dials_the_fallback_target_then_says_the_fallback_message(
    api: TwilioApiSimulator, tmp_path: Path
) -> None:
    await twilio_cli(api, tmp_path, "configure", CLINIC)
    fallback = urlsplit(api.numbers[0]["voice_fallback_url"])
    assert f"{fallback.scheme}://{fallback.netloc}{fallback.path}" == ECHO_TWIMLET
    [twiml] = parse_qs(fallback.query)["Twiml"]
    assert twiml.endswith('<Dial timeout="25">+15550009999</Dial><Say>The clinic cannot answer now.</Say></Response>')


def test_a_number_without_a_fallback_target_gets_only_its_message_and_the_echo_url_round_trips() -> None:
    twiml = fallback_twiml(CallProfile(fallback_message="Back soon & sorry."))
    assert twiml.endswith("<Response><Say>Back soon &amp; sorry.</Say></Response>")
    assert parse_qs(urlsplit(echo_url(twiml)).query) == {"Twiml": [twiml]}


async def test_a_fallback_url_of_ones_own_is_set_and_the_twiml_to_host_there_is_printed(
    api: TwilioApiSimulator, tmp_path: Path
) -> None:
    code, out, _ = await twilio_cli(api, tmp_path, "configure", SPARE, "--fallback-url", "https://handler.twilio.com/twiml/EH1")
    assert code == 0
    assert api.numbers[2]["voice_fallback_url"] == "https://handler.twilio.com/twiml/EH1"
    assert f"note: {SPARE} is not in [numbers]" in out
    assert "<Say>Sorry, please call back later.</Say>" in out


async def test_dry_run_prints_what_would_change_and_changes_nothing(api: TwilioApiSimulator, tmp_path: Path) -> None:
    code, out, _ = await twilio_cli(api, tmp_path, "configure", CLINIC, "--dry-run")
    assert code == 0 and "would change" in out and "VoiceUrl: https://old.example.com/voice ->" in out
    assert posts(api) == [] and api.numbers[0]["voice_url"] == "https://old.example.com/voice"


async def test_a_number_the_account_does_not_have_is_named_with_the_ones_it_has(api: TwilioApiSimulator, tmp_path: Path) -> None:
    code, _, err = await twilio_cli(api, tmp_path, "configure", "+15559999999")
    assert code == 2
    assert f"+15559999999: not a number of account {api.account_sid} (it has: {CLINIC}, {SHOP}, {SPARE})" in err
    assert posts(api) == []


async def test_wrong_credentials_are_reported_without_the_secret(api: TwilioApiSimulator, tmp_path: Path) -> None:
    code, out, err = await twilio_cli(api, tmp_path, "numbers", TWILIO_AUTH_TOKEN="a-wrong-twilio-token")
    assert code == 1
    assert "HTTP 401, Twilio error 20003" in err and "a-wrong-twilio-token" not in out + err


@pytest.mark.parametrize(("env", "named"), [
    ({"PUBLIC_URL": "http://127.0.0.1:8080"}, "PUBLIC_URL: must be the https URL Twilio reaches"),
    ({"TWILIO_ACCOUNT_SID": ""}, "TWILIO_ACCOUNT_SID: required to read and configure"),
])
async def test_configure_refuses_a_set_up_twilio_cannot_use(
    api: TwilioApiSimulator, tmp_path: Path, env: dict[str, str], named: str
) -> None:
    code, _, err = await twilio_cli(api, tmp_path, "configure", CLINIC, **env)
    assert code == 2 and named in err
    assert api.requests == []
