"""Guessing the admin token at the console's sign-in: five wrong tokens a minute from one address, then 429."""

from __future__ import annotations

import logging

import httpx
import pytest

from support import bridge_for
from telephony_bridge.admin.sessions import SignInThrottle
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator

ADMIN_TOKEN = "console-sign-in-admin-token"


def test_five_failures_in_a_minute_throttle_an_address_until_the_oldest_ages_out() -> None:
    throttle = SignInThrottle()
    for n in range(5):
        assert throttle.retry_after("10.0.0.1", 100.0 + n) is None
        throttle.failed("10.0.0.1", 100.0 + n)
    assert throttle.retry_after("10.0.0.1", 105.0) == 55
    assert throttle.retry_after("10.0.0.2", 105.0) is None, "another address is not held back"
    assert throttle.retry_after("10.0.0.1", 160.0) is None, "the first failure aged out"


def test_a_success_forgets_the_failures_and_old_ones_never_count() -> None:
    throttle = SignInThrottle()
    for n in range(4):
        throttle.failed("10.0.0.1", float(n))
    throttle.succeeded("10.0.0.1")
    assert throttle.failed("10.0.0.1", 10.0) == 1
    assert throttle.failed("10.0.0.1", 100.0) == 1


async def test_the_sixth_wrong_token_in_a_minute_is_refused_with_retry_after_and_logged_without_the_token(
    realtime: RealtimeSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    guesses = [f"guess-number-{n}" for n in range(6)]
    caplog.set_level(logging.WARNING)
    async with bridge_for(realtime, env={"BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN}) as url, httpx.AsyncClient(base_url=url) as client:
        answers = [await client.post("/console/sign-in", data={"token": guess}) for guess in guesses]
        right_but_held = await client.post("/console/sign-in", data={"token": ADMIN_TOKEN})
        api = await client.get("/admin/calls/live", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert [answer.status_code for answer in answers] == [401] * 5 + [429]
    assert 55 <= int(answers[-1].headers["Retry-After"]) <= 60
    assert "Try again in" in answers[-1].text and answers[-1].headers["Content-Security-Policy"]
    assert right_but_held.status_code == 429 and "set-cookie" not in right_but_held.headers
    assert api.status_code == 200, "the admin API's bearer token is not the console's sign-in"
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert logged.count("console sign-in from 127.0.0.1 with a wrong token") == 5
    assert "console sign-in from 127.0.0.1 refused: 5 failed sign-ins" in logged
    assert not any(guess in logged for guess in guesses) and ADMIN_TOKEN not in logged


async def test_a_right_token_after_a_few_wrong_ones_signs_in(realtime: RealtimeSimulator) -> None:
    async with bridge_for(realtime, env={"BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN}) as url, httpx.AsyncClient(base_url=url) as client:
        wrong = [(await client.post("/console/sign-in", data={"token": "nope"})).status_code for _ in range(4)]
        right = await client.post("/console/sign-in", data={"token": ADMIN_TOKEN})
    assert wrong == [401] * 4
    assert right.status_code == 303 and "bridge_console=" in right.headers["set-cookie"]
