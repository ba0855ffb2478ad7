"""What an operator does with a campaign: a list refused whole at submit time when a row cannot be dialled, and a row
a restart left `unknown` settled by hand (done with the outcome they checked, or dialled again), over real sockets."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
from test_campaign_calls import ADMIN_TOKEN, CLINIC, bridge, finished, number, watching

from support import AUTH_TOKEN
from telephony_bridge.outbound.campaigns import CampaignRequest
from telephony_bridge.outbound.campaigns_store import CampaignStore
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator
from telephony_bridge.testing.twilio_api import Answerer, TwilioApiSimulator


async def test_a_list_from_a_number_the_bridge_does_not_have_is_refused_before_anything_is_stored(
    realtime: RealtimeSimulator, tmp_path: Path
) -> None:
    async with TwilioApiSimulator(auth_token=AUTH_TOKEN) as api, bridge(realtime, api, tmp_path / "calls.db") as admin:
        refused = await admin.post("/admin/campaigns", json={"from": "+15550009999", "rows": [{"to": number(1), "name": "Ada"}]})
        listed = (await admin.get("/admin/campaigns")).json()["campaigns"]
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert detail == 'from: +15550009999 is not one of the bridge\'s numbers (no [numbers."+15550009999"] table)'
    assert listed == [] and api.created == []


async def test_a_row_missing_a_placeholder_refuses_the_whole_list_naming_the_row_and_the_placeholder(
    realtime: RealtimeSimulator, tmp_path: Path
) -> None:
    rows = [{"to": number(1), "name": "Ada"}, {"to": number(2), "name": "Grace"}, {"to": number(3), "name": " "}]
    async with TwilioApiSimulator(auth_token=AUTH_TOKEN) as api, bridge(realtime, api, tmp_path / "calls.db") as admin:
        blank = await admin.post("/admin/campaigns", json={"from": CLINIC, "rows": rows})
        absent = await admin.post("/admin/campaigns", json={"from": CLINIC, "rows": [{"to": number(1), "nom": "Ada"}]})
        listed = (await admin.get("/admin/campaigns")).json()["campaigns"]
    assert blank.status_code == 422 and blank.json()["detail"].startswith("row 3: no value for the placeholder {name}")
    assert absent.status_code == 422 and absent.json()["detail"].startswith("row 1: no value for the placeholder {name}")
    assert listed == [] and api.created == []


async def left_unknown(log: Path, rows: int) -> str:
    """A campaign as a bridge that stopped mid-dial left it: row 1 dialling with no call SID, the others done."""
    store = CampaignStore(log)
    await store.open()
    request = CampaignRequest.model_validate({"from": CLINIC, "rows": [{"to": number(n), "name": "Ada"} for n in range(rows)]})
    settings, stored = request.campaign("CMleft")
    await store.create("CMleft", settings, stored, datetime.now(UTC))
    await store.save(stored[0].moved("dial", attempts=1))
    for row in stored[1:]:
        await store.save(row.moved("dial", attempts=1).moved("final", outcome="human", call_sid=f"CAold{row.position}"))
    await store.close()
    return "CMleft"


async def test_an_operator_marks_an_unknown_row_done_with_the_outcome_they_checked(
    realtime: RealtimeSimulator, tmp_path: Path
) -> None:
    log = tmp_path / "calls.db"
    campaign_id = await left_unknown(log, 2)
    async with TwilioApiSimulator(auth_token=AUTH_TOKEN) as api, bridge(realtime, api, log) as admin:
        before = await finished(admin, campaign_id)
        bad = await admin.post(f"/admin/campaigns/{campaign_id}/rows/0", json={"outcome": "happy"})
        neither = await admin.post(f"/admin/campaigns/{campaign_id}/rows/0", json={})
        settled = await admin.post(f"/admin/campaigns/{campaign_id}/rows/0", json={"outcome": "voicemail", "call_sid": "CAseen"})
        again = await admin.post(f"/admin/campaigns/{campaign_id}/rows/0", json={"redial": True})
        done_row = await admin.post(f"/admin/campaigns/{campaign_id}/rows/1", json={"outcome": "busy"})
        no_row = await admin.post(f"/admin/campaigns/{campaign_id}/rows/7", json={"outcome": "busy"})
        async with httpx.AsyncClient(base_url=admin.base_url) as anonymous:
            unsigned = await anonymous.post(f"/admin/campaigns/{campaign_id}/rows/0", json={"outcome": "human"})
    assert before["rows"][0]["state"] == "unknown" and before["counts"]["unknown"] == 1
    assert bad.status_code == 422 and "'happy' is not one of" in bad.json()["detail"]
    assert neither.status_code == 422
    assert settled.status_code == 200
    row = settled.json()["rows"][0]
    assert (row["state"], row["outcome"], row["call_sid"]) == ("done", "voicemail", "CAseen")
    assert row["detail"] == "settled by an operator"
    assert settled.json()["state"] == "finished"
    assert again.status_code == 409 and "is done: cannot redial" in again.json()["detail"]
    assert done_row.status_code == 409 and no_row.status_code == 404 and unsigned.status_code == 401
    assert api.created == []


async def test_an_unknown_row_put_back_is_dialled_once_and_its_finished_campaign_runs_again(
    realtime: RealtimeSimulator, tmp_path: Path
) -> None:
    log = tmp_path / "calls.db"
    campaign_id = await left_unknown(log, 2)
    async with TwilioApiSimulator(auth_token=AUTH_TOKEN) as api:
        api.answerers[number(0)] = Answerer("fax")
        async with bridge(realtime, api, log) as admin, watching(api):
            await finished(admin, campaign_id)
            env = {"BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN}
            result = await asyncio.to_thread(
                run_cli, "campaign", "--settle", campaign_id, "--row", "1", "--redial", "--url", str(admin.base_url), env=env
            )
            campaign = await finished(admin, campaign_id)
    assert result.returncode == 0, result.stderr
    assert f"campaign {campaign_id}: row 1 ({number(0)}) is pending; the campaign is running" in result.stdout
    assert [create["To"] for create in api.created] == [number(0)]
    outcomes = [(row["state"], row["outcome"], row["attempts"]) for row in campaign["rows"]]
    assert outcomes == [("done", "fax", 2), ("done", "human", 1)]


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("TWILIO_AUTH_TOKEN", "OPENAI_API_KEY", "BRIDGE_CONFIG")}
    return subprocess.run([sys.executable, "-m", "telephony_bridge", *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=30)


def test_the_settle_flags_need_a_row_and_one_decision(tmp_path: Path) -> None:
    env = {"BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN}
    without_row = run_cli("campaign", "--settle", "CMx", "--outcome", "human", "--url", "http://127.0.0.1:9", env=env)
    both = run_cli("campaign", "--settle", "CMx", "--row", "1", "--outcome", "human", "--redial", "--url", "http://127.0.0.1:9",
                   env=env)
    assert (without_row.returncode, both.returncode) == (2, 2)
    assert "--settle needs --row N" in both.stderr
