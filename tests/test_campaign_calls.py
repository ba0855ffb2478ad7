"""Campaigns over real sockets: the bridge runs a call list through the Twilio REST stand-in, which answers each call
with a simulated person, fax, busy line or no answer; the CLI submits the list and writes the outcomes."""

from __future__ import annotations

import asyncio
import csv
import os
import sqlite3
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

from support import API_KEY, AUTH_TOKEN, PUBLIC_URL
from telephony_bridge.config import parse_config, settings_from_env
from telephony_bridge.testing.bridge_server import serve_bridge
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator
from telephony_bridge.testing.twilio_api import Answerer, TwilioApiSimulator

ADMIN_TOKEN = "admin-token-for-campaign-tests"
CLINIC = "+14155550100"
LIVE = ("queued", "ringing", "in-progress")

CONFIG = f"""
[defaults]
instructions = "You answer the phone."

[numbers."{CLINIC}"]
instructions = "You are the reminder line of Bright Smile Dental, calling {{name}}."
greeting = "Hello {{name}}, this is Bright Smile Dental."

[call_log]
path = "LOG"

[campaigns]
reconcile_seconds = 0.3
"""


def number(position: int) -> str:
    return f"+1555700{position:04d}"


@asynccontextmanager
async def bridge(
    realtime: RealtimeSimulator, api: TwilioApiSimulator, log: Path, extra_config: str = ""
) -> AsyncIterator[httpx.AsyncClient]:
    """A bridge on `log`'s database, placing calls through `api`; yields an admin client."""
    settings = settings_from_env({
        "PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "OPENAI_API_KEY": API_KEY, "REALTIME_URL": realtime.url,
        "TWILIO_API_URL": api.url, "TWILIO_ACCOUNT_SID": api.account_sid, "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN,
    })
    config = parse_config(CONFIG.replace("LOG", str(log)) + extra_config, "campaign.toml")
    async with serve_bridge(settings, config) as url:
        api.place_calls_on(url, PUBLIC_URL)
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30) as admin:
            yield admin


@asynccontextmanager
async def watching(api: TwilioApiSimulator, *, hang_up: bool = True) -> AsyncIterator[Callable[[], int]]:
    """Samples how many placed calls are live at once (the most seen is what the callable returns); with `hang_up`,
    each person hangs up once the answering-machine detection has said they are one."""
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            placed = list(api.placed.values())
            most = max(most, sum(call.status in LIVE for call in placed))
            for call in placed:
                if hang_up and call.answered_by == "human" and call.call is not None and not call.call.over:
                    await call.call.hang_up()
            await asyncio.sleep(0.005)

    task = asyncio.get_running_loop().create_task(watch())
    try:
        yield lambda: most
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


async def finished(admin: httpx.AsyncClient, campaign_id: str, timeout: float = 60.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            campaign = (await admin.get(f"/admin/campaigns/{campaign_id}")).json()
            if campaign["state"] == "finished":
                return dict(campaign)
            await asyncio.sleep(0.1)


def created_per_number(api: TwilioApiSimulator) -> Counter[str]:
    return Counter(create["To"] for create in api.created)


async def test_twenty_rows_at_concurrency_three_each_outcome_once_busy_and_no_answer_retried(
    realtime: RealtimeSimulator, tmp_path: Path
) -> None:
    expected: dict[str, str] = {}
    async with TwilioApiSimulator(auth_token=AUTH_TOKEN) as api:
        for position in range(20):
            kind = ("busy", "busy", "no-answer")[position] if position < 3 else "fax" if position % 2 else "person"
            api.answerers[number(position)] = Answerer(kind)  # type: ignore[arg-type]
            expected[number(position)] = "human" if kind == "person" else kind
        calls = tmp_path / "calls.csv"
        calls.write_text("to,name\n" + "".join(f"{number(p)},Patient {p}\n" for p in range(20)), encoding="utf-8")
        outcomes = tmp_path / "outcomes.csv"
        async with bridge(realtime, api, tmp_path / "calls.db") as admin, watching(api) as most_live:
            cli = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "telephony_bridge", "campaign", str(calls), "--from", CLINIC, "--concurrency", "3",
                "--retries", "1", "--retry-delay", "0.2", "--output", str(outcomes), "--url", str(admin.base_url),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN}, cwd=tmp_path,
            )
            stdout, stderr = await asyncio.wait_for(cli.communicate(), 90)
            assert cli.returncode == 0, stderr.decode()
            campaign_id = stdout.decode().split()[1].rstrip(":")
            campaign = await finished(admin, campaign_id)
        assert most_live() == 3
    written = list(csv.DictReader(outcomes.open(encoding="utf-8")))
    assert sorted(row["to"] for row in written) == sorted(expected)  # one line per row, each written once
    assert {row["to"]: row["outcome"] for row in written} == expected
    tries = created_per_number(api)
    assert {to: tries[to] for to in expected} == {to: 2 if outcome in ("busy", "no-answer") else 1
                                                   for to, outcome in expected.items()}
    assert all(int(row["attempts"]) == tries[row["to"]] for row in written)
    rows = campaign["rows"]
    assert all(row["state"] == "done" and row["call_sid"] for row in rows)
    assert "finished: 20/20 final" in stdout.decode()


async def test_a_restart_mid_campaign_calls_nobody_twice(realtime: RealtimeSimulator, tmp_path: Path) -> None:
    log = tmp_path / "calls.db"
    rows = [{"to": number(position), "name": f"Patient {position}"} for position in range(8)]
    async with TwilioApiSimulator(auth_token=AUTH_TOKEN) as api:
        async with bridge(realtime, api, log) as admin:
            answer = await admin.post("/admin/campaigns", json={"from": CLINIC, "rows": rows, "concurrency": 3})
            assert answer.status_code == 201
            campaign_id = answer.json()["id"]
            await api.wait_placed(3, status="in-progress")  # nobody hangs up: three rows are dialling at the stop
        with sqlite3.connect(log) as db:
            dialling = db.execute("SELECT COUNT(*) FROM campaign_rows WHERE state = 'dialling'").fetchone()[0]
        assert dialling == 3
        async with bridge(realtime, api, log) as admin, watching(api):
            campaign = await finished(admin, campaign_id)
    assert created_per_number(api) == Counter({row["to"]: 1 for row in rows})
    assert {row["state"] for row in campaign["rows"]} == {"done"}


async def test_a_paused_campaign_dials_nobody_until_resumed(realtime: RealtimeSimulator, tmp_path: Path) -> None:
    rows = [{"to": number(position), "name": "Ada"} for position in range(4)]
    async with TwilioApiSimulator(auth_token=AUTH_TOKEN) as api:
        for position in range(4):
            api.answerers[number(position)] = Answerer("fax")
        async with bridge(realtime, api, tmp_path / "calls.db") as admin:
            campaign_id = (await admin.post("/admin/campaigns", json={"from": CLINIC, "rows": rows})).json()["id"]
            paused = await admin.post(f"/admin/campaigns/{campaign_id}/pause")
            assert paused.status_code == 200 and paused.json()["state"] == "paused"
            await asyncio.sleep(1.0)
            assert len(api.created) <= 1  # the first row may have been dialling before the pause
            assert (await admin.post(f"/admin/campaigns/{campaign_id}/pause")).status_code == 409
            assert (await admin.post(f"/admin/campaigns/{campaign_id}/resume")).json()["state"] == "running"
            campaign = await finished(admin, campaign_id)
    assert [row["outcome"] for row in campaign["rows"]] == ["fax"] * 4


async def test_the_campaign_routes_need_the_admin_token_and_valid_rows(realtime: RealtimeSimulator, tmp_path: Path) -> None:
    async with TwilioApiSimulator(auth_token=AUTH_TOKEN) as api, bridge(realtime, api, tmp_path / "calls.db") as admin:
        body = {"from": CLINIC, "rows": [{"to": number(1)}]}
        async with httpx.AsyncClient(base_url=admin.base_url) as anonymous:
            assert (await anonymous.post("/admin/campaigns", json=body)).status_code == 401
            assert (await anonymous.get("/admin/campaigns/CM00")).status_code == 401
        bad_number = await admin.post("/admin/campaigns", json={"from": CLINIC, "rows": [{"to": "555-1234"}]})
        assert bad_number.status_code == 422 and "row 1: to" in bad_number.json()["detail"]
        bad_zone = await admin.post("/admin/campaigns", json={**body, "rows": [{"to": number(1), "timezone": "Mars/Base"}]})
        assert bad_zone.status_code == 422 and "Mars/Base" in bad_zone.json()["detail"]
        bad_window = await admin.post("/admin/campaigns", json={**body, "between": "9-5"})
        assert bad_window.status_code == 422 and "between" in bad_window.json()["detail"]
        assert (await admin.get("/admin/campaigns/CMnothing")).status_code == 404
    assert api.created == []


async def test_no_dial_takes_the_bridge_past_max_calls(realtime: RealtimeSimulator, tmp_path: Path) -> None:
    rows = [{"to": number(position), "name": "Ada"} for position in range(6)]
    async with TwilioApiSimulator(auth_token=AUTH_TOKEN) as api:
        for position in range(6):
            api.answerers[number(position)] = Answerer("fax")
        limits = "\n[limits]\nmax_calls = 2\n"
        async with bridge(realtime, api, tmp_path / "calls.db", limits) as admin, watching(api) as most_live:
            body = {"from": CLINIC, "rows": rows, "concurrency": 5}
            campaign = await finished(admin, (await admin.post("/admin/campaigns", json=body)).json()["id"])
        assert most_live() == 2
    assert [row["outcome"] for row in campaign["rows"]] == ["fax"] * 6
