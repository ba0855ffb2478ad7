"""A campaign run by three bridge instances behind HAProxy on one PostgreSQL, the Twilio REST stand-in placing the calls.

The stand-in rings each callee through the balancer, so a call's stream and callbacks reach any instance, not
necessarily the one that placed it. The module has a fleet of its own (its numbers table and account SID differ
from `test_fleet.py`'s) on the session's PostgreSQL, pinned to the "fleet" worker.
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from fleet_servers import Balancer, Instance, PostgresServer, RealtimeProcess, free_port
from support import AUTH_TOKEN, PUBLIC_URL
from telephony_bridge.testing.twilio_api import Answerer, TwilioApiSimulator

pytestmark = pytest.mark.xdist_group("fleet")

ADMIN_TOKEN = "fleet-campaign-admin-token"
ACCOUNT_SID = "AC" + "c" * 32
CLINIC = "+14155550100"
LOST_AFTER_S = 4.0
LIVE = ("queued", "ringing", "in-progress")

NUMBERS = """
[numbers."CLINIC"]
instructions = "You are the reminder line of Bright Smile Dental, calling {name}."
greeting = "Hello {name}."

[campaigns]
reconcile_seconds = 0.5

[call_log]
path = "LOG"
"""


@dataclass
class Fleet:
    database: str
    instances: list[Instance]
    balancer: Balancer
    api_port: int

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database, autocommit=True) as connection:
            return connection.execute(sql, params).fetchall()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fleet(postgres: PostgresServer) -> Iterator[Fleet]:
    folder = Path(tempfile.mkdtemp(prefix="bridge-fleet-campaigns-"))
    database = postgres.database("fleet_campaigns")
    realtime = RealtimeProcess(folder)
    api_port = free_port()
    env = {
        "DATABASE_URL": database, "PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "OPENAI_API_KEY": "sk-fleet",
        "REALTIME_URL": realtime.url, "STREAM_TOKEN_SECRET": "one-secret-for-the-whole-fleet",
        "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN, "TWILIO_API_URL": f"http://127.0.0.1:{api_port}",
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "FLEET_LOST_AFTER_SECONDS": str(LOST_AFTER_S),
    }
    instances = [
        Instance(name, folder, env, drain_s=2.0,
                 extra_config=NUMBERS.replace("CLINIC", CLINIC).replace("LOG", str(folder / f"{name}.sqlite3")))
        for name in ("camp-a", "camp-b", "camp-c")
    ]
    for instance in instances:
        instance.start()
    balancer = Balancer(folder, instances)
    yield Fleet(database, instances, balancer, api_port)
    balancer.close()
    for instance in instances:
        instance.stop()
    realtime.close()


@pytest.fixture
async def api(fleet: Fleet) -> AsyncIterator[TwilioApiSimulator]:
    for instance in fleet.instances:
        if not instance.running():
            instance.start()
    simulator = TwilioApiSimulator(auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID)
    await simulator.start(fleet.api_port)
    simulator.place_calls_on(fleet.balancer.url, PUBLIC_URL)
    yield simulator
    await simulator.stop()


def number(position: int) -> str:
    return f"+1555800{position:04d}"


def admin(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)


@asynccontextmanager
async def watching(api: TwilioApiSimulator, hang_up: Callable[[], bool] | None = None) -> AsyncIterator[Callable[[], int]]:
    """Samples how many placed calls are live at once (the callable returns the most seen). Each person hangs up once
    the answering-machine detection has said they are one; with `hang_up`, every callee whose stream opened does once
    `hang_up()` is true (whether or not detection got through to the bridge)."""
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            placed = list(api.placed.values())
            most = max(most, sum(call.status in LIVE for call in placed))
            for call in placed:
                if call.call is None or call.call.over:
                    continue
                if call.answered_by == "human" or (hang_up is not None and hang_up() and call.call.connected_at is not None):
                    await call.call.hang_up()
            await asyncio.sleep(0.005)

    task = asyncio.get_running_loop().create_task(watch())
    try:
        yield lambda: most
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


async def finished(client: httpx.AsyncClient, campaign_id: str, api: TwilioApiSimulator, timeout: float = 90.0
                   ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        campaign = (await client.get(f"/admin/campaigns/{campaign_id}")).json()
        if campaign["state"] == "finished":
            return dict(campaign)
        unsettled = [(row["to"], row["state"], row["call_sid"]) for row in campaign["rows"] if row["state"] != "done"]
        placed = {call.to_number: call.status for call in api.placed.values()}
        assert time.monotonic() < deadline, f"not finished: {unsettled}; the stand-in's calls: {placed}"
        await asyncio.sleep(0.2)


async def reconciled(client: httpx.AsyncClient, campaign_id: str, api: TwilioApiSimulator, dead: str, fleet: Fleet,
                     timeout: float = 60.0) -> dict[str, Any]:
    """Until every row is settled, or dialling under a live instance's name while Twilio still reports its call live
    (the stand-in keeps a call whose stream died with its instance in progress; the adopter waits for its record)."""
    deadline = time.monotonic() + timeout
    while True:
        campaign = (await client.get(f"/admin/campaigns/{campaign_id}")).json()
        live = {call.call_sid for call in api.placed.values() if call.status in LIVE}
        waiting = [row for row in campaign["rows"] if row["state"] not in ("done", "unknown")]
        dialling_dead = fleet.query("SELECT position FROM campaign_rows WHERE campaign_id = %s AND instance = %s"
                                    " AND state = 'dialling'", (campaign_id, dead))
        if not dialling_dead and all(row["state"] == "dialling" and row["call_sid"] in live for row in waiting):
            return dict(campaign)
        assert time.monotonic() < deadline, f"not reconciled: {waiting}; rows dialling under {dead}: {dialling_dead}"
        await asyncio.sleep(0.2)


def placers(fleet: Fleet) -> Counter[str]:
    """How many calls each instance placed (its record of each, made before the create request)."""
    rows = fleet.query("SELECT value::json->>'instance' FROM claims WHERE kind = 'outbound'")
    return Counter(str(row[0]) for row in rows)


def count_outcome_writes(fleet: Fleet) -> None:
    """From now on, every write to a row that leaves it `done` is counted in `done_writes`: a second one would show."""
    with psycopg.connect(fleet.database, autocommit=True) as db:
        db.execute("CREATE TABLE IF NOT EXISTS done_writes (campaign_id TEXT, position INTEGER)")
        db.execute(
            "CREATE OR REPLACE FUNCTION count_done() RETURNS trigger AS $$ BEGIN"
            " INSERT INTO done_writes VALUES (NEW.campaign_id, NEW.position); RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        db.execute("DROP TRIGGER IF EXISTS done_writes ON campaign_rows")
        db.execute("CREATE TRIGGER done_writes AFTER UPDATE OF state, outcome ON campaign_rows FOR EACH ROW"
                   " WHEN (NEW.state = 'done') EXECUTE FUNCTION count_done()")


async def test_twenty_rows_at_concurrency_three_run_across_the_fleet_each_outcome_written_once(
    fleet: Fleet, api: TwilioApiSimulator
) -> None:
    count_outcome_writes(fleet)
    expected = {}
    for position in range(20):
        kind = ("person", "fax", "busy", "no-answer")[position % 4]
        api.answerers[number(position)] = Answerer(kind, amd_delay_s=0.1)  # type: ignore[arg-type]
        expected[number(position)] = "human" if kind == "person" else kind
    rows = [{"to": number(position), "name": f"Patient {position}"} for position in range(20)]
    async with watching(api) as most_live, admin(fleet.instances[0].url) as submitter:
        answer = await submitter.post("/admin/campaigns", json={"from": CLINIC, "rows": rows, "concurrency": 3})
        assert answer.status_code == 201, answer.text
        campaign_id = answer.json()["id"]
        async with admin(fleet.instances[2].url) as elsewhere:  # progress read from another instance than the submitter
            campaign = await finished(elsewhere, campaign_id, api)
    assert 0 < most_live() <= 3
    assert Counter(create["To"] for create in api.created) == Counter(expected.keys())  # nobody called twice
    assert {row["to"]: row["outcome"] for row in campaign["rows"]} == expected
    assert all(row["state"] == "done" and row["call_sid"] for row in campaign["rows"])
    assert len([instance for instance, n in placers(fleet).items() if n]) >= 2, placers(fleet)
    writes = fleet.query("SELECT position, count(*) FROM done_writes WHERE campaign_id = %s GROUP BY position",
                         (campaign_id,))
    assert sorted(writes) == [(position, 1) for position in range(20)]


async def test_paused_on_one_instance_no_instance_dials_until_resumed_on_another(fleet: Fleet, api: TwilioApiSimulator) -> None:
    rows = [{"to": number(100 + position), "name": "Ada"} for position in range(6)]
    for position in range(6):
        api.answerers[number(100 + position)] = Answerer("fax", amd_delay_s=0.05)
    async with admin(fleet.instances[0].url) as first, admin(fleet.instances[1].url) as second, \
            admin(fleet.instances[2].url) as third:
        campaign_id = (await first.post("/admin/campaigns", json={"from": CLINIC, "rows": rows})).json()["id"]
        paused = await second.post(f"/admin/campaigns/{campaign_id}/pause")
        assert paused.status_code == 200 and paused.json()["state"] == "paused"
        await asyncio.sleep(2.5)  # more than two steps of every instance
        dialled = len(api.created)
        assert dialled <= 1  # the first row may have been taken before the pause
        await asyncio.sleep(1.5)
        assert len(api.created) == dialled
        assert (await first.post(f"/admin/campaigns/{campaign_id}/pause")).status_code == 409
        assert (await third.post(f"/admin/campaigns/{campaign_id}/resume")).json()["state"] == "running"
        campaign = await finished(second, campaign_id, api)
    assert [row["outcome"] for row in campaign["rows"]] == ["fax"] * 6


async def test_a_list_from_an_unknown_number_or_missing_a_placeholder_is_refused_by_any_instance_before_it_is_stored(
    fleet: Fleet, api: TwilioApiSimulator
) -> None:
    before = fleet.query("SELECT count(*) FROM campaigns")
    async with admin(fleet.instances[1].url) as client:
        unknown = await client.post("/admin/campaigns", json={"from": "+14155550188", "rows": [{"to": number(300)}]})
        missing = await client.post("/admin/campaigns", json={"from": CLINIC, "rows": [{"to": number(301), "name": ""}]})
    assert unknown.status_code == 422 and "not one of the bridge's numbers" in unknown.text
    assert missing.status_code == 422 and "{name}" in missing.text
    assert fleet.query("SELECT count(*) FROM campaigns") == before


async def test_an_instance_killed_mid_campaign_calls_nobody_twice_and_its_rows_are_reconciled(
    fleet: Fleet, api: TwilioApiSimulator
) -> None:
    rows = [{"to": number(200 + position), "name": "Grace"} for position in range(9)]
    for position in range(9):
        api.answerers[number(200 + position)] = Answerer("person", amd_delay_s=0.05)
    killed = False
    async with watching(api, hang_up=lambda: killed) as most_live, admin(fleet.balancer.url) as client:
        answer = await client.post("/admin/campaigns", json={"from": CLINIC, "rows": rows, "concurrency": 3})
        campaign_id = answer.json()["id"]
        deadline = time.monotonic() + 30
        while True:  # nobody hangs up yet: three rows are dialling with their call SIDs
            dialling = fleet.query("SELECT instance, call_sid FROM campaign_rows WHERE campaign_id = %s AND state = 'dialling'",
                                   (campaign_id,))
            if len(dialling) == 3 and all(call_sid for _, call_sid in dialling):
                break
            assert time.monotonic() < deadline, dialling
            await asyncio.sleep(0.1)
        victim = next(instance for instance in fleet.instances if instance.name == dialling[0][0])
        victims_rows = {str(call_sid) for name, call_sid in dialling if name == victim.name}
        victim.signal(signal.SIGKILL)
        victim.wait(10)
        killed = True
        survivor = next(instance for instance in fleet.instances if instance is not victim)
        async with admin(survivor.url) as reader:
            campaign = await reconciled(reader, campaign_id, api, victim.name, fleet)
    assert most_live() <= 3
    assert Counter(create["To"] for create in api.created) == Counter(row["to"] for row in rows)  # nobody called twice
    by_sid = {row["call_sid"]: row for row in campaign["rows"]}
    assert all(by_sid[call_sid]["state"] in ("done", "dialling") for call_sid in victims_rows), campaign["rows"]
    assert not fleet.query("SELECT 1 FROM campaign_rows WHERE campaign_id = %s AND instance = %s AND state = 'dialling'",
                           (campaign_id, victim.name))
