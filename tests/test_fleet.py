"""Three bridge instances behind HAProxy (round-robin, websockets upgraded) on one PostgreSQL: the issue's proof.

One fleet for the module: the tests that stop an instance come last and start it again when they are done.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from twilio.request_validator import RequestValidator

from fleet_servers import DB_PASSWORD, OUTBOUND_LINE, Balancer, Instance, PostgresServer, RealtimeProcess, free_port
from support import AUTH_TOKEN, CLINIC, PUBLIC_URL
from telephony_bridge.admin.sessions import COOKIE, CSRF_HEADER, ConsoleSessions
from telephony_bridge.testing.twilio_api import Answerer, TwilioApiSimulator
from telephony_bridge.testing.twilio_simulator import SimulatedCall, speech_like_ulaw

pytestmark = pytest.mark.xdist_group("fleet")

ADMIN_TOKEN = "fleet-admin-token"
ACCOUNT_SID = "AC" + "f" * 32
PATIENT = "+15557654321"
LOST_AFTER_S = 6.0
"""Short for the test, yet three heartbeats: a loaded machine must not make a live instance look dead."""


@dataclass
class Fleet:
    database: str
    instances: list[Instance]
    balancer: Balancer
    api_port: int
    postgres: PostgresServer

    def by_name(self, name: str) -> Instance:
        return next(instance for instance in self.instances if instance.name == name)

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with psycopg.connect(self.database, autocommit=True) as connection:
            return connection.execute(sql, params).fetchall()  # type: ignore[arg-type]

    def all_ready(self) -> None:
        for instance in self.instances:
            if not instance.running():
                instance.start()


@pytest.fixture(scope="module")
def fleet(postgres: PostgresServer) -> Iterator[Fleet]:
    folder = Path(tempfile.mkdtemp(prefix="bridge-fleet-"))
    database = postgres.database("fleet")
    realtime = RealtimeProcess(folder)
    api_port = free_port()
    env = {
        "DATABASE_URL": database, "PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "OPENAI_API_KEY": "sk-fleet",
        "REALTIME_URL": realtime.url, "STREAM_TOKEN_SECRET": "one-secret-for-the-whole-fleet",
        "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN, "TWILIO_API_URL": f"http://127.0.0.1:{api_port}",
        "FLEET_LOST_AFTER_SECONDS": str(LOST_AFTER_S), "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
    }
    instances = [Instance(name, folder, env, drain_s=20.0) for name in ("bridge-a", "bridge-b", "bridge-c")]
    for instance in instances:
        instance.start()
    balancer = Balancer(folder, instances)
    yield Fleet(database, instances, balancer, api_port, postgres)
    balancer.close()
    for instance in instances:
        instance.stop()
    realtime.close()


@pytest.fixture
async def api(fleet: Fleet) -> AsyncIterator[TwilioApiSimulator]:
    fleet.all_ready()
    simulator = TwilioApiSimulator(auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID)
    await simulator.start(fleet.api_port)
    yield simulator
    await simulator.stop()


def new_call(url: str, api: TwilioApiSimulator) -> SimulatedCall:
    call = SimulatedCall(bridge_url=url, public_url=PUBLIC_URL, auth_token=AUTH_TOKEN, to_number=CLINIC)
    api.register(call)
    return call


async def place(fleet: Fleet, api: TwilioApiSimulator, url: str | None = None) -> SimulatedCall:
    call = new_call(url or fleet.balancer.url, api)
    await call.dial()
    assert call.stream_url is not None, call.twiml
    await call.connect()
    return call


async def wait_for(condition: object, timeout_s: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def owners(fleet: Fleet, calls: list[SimulatedCall]) -> dict[str, str]:
    rows = fleet.query("SELECT call_sid, instance FROM live_calls WHERE call_sid = ANY(%s)", ([c.call_sid for c in calls],))
    return {str(sid): str(instance) for sid, instance in rows}


def cli(fleet: Fleet, instance: Instance, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN, "PYTHONPATH": str(Path(__file__).parent.parent),
           "DATABASE_URL": fleet.database}
    return subprocess.run([sys.executable, "-m", "telephony_bridge", *args, "--url", instance.url],
                          env=env, capture_output=True, text=True, timeout=60)


async def hang_up_all(calls: list[SimulatedCall]) -> None:
    for call in calls:
        await call.hang_up()


async def test_calls_spread_over_the_instances_with_webhook_and_stream_on_different_ones(
    fleet: Fleet, api: TwilioApiSimulator
) -> None:
    calls = [await place(fleet, api) for _ in range(6)]
    await wait_for(lambda: len(owners(fleet, calls)) == 6, what="six calls in the live registry")
    stream_on = owners(fleet, calls)
    webhook_on = dict(fleet.query("SELECT key, instance FROM claims WHERE kind = 'answer' AND key = ANY(%s)",
                                  ([c.call_sid for c in calls],)))
    assert set(stream_on.values()) == {"bridge-a", "bridge-b", "bridge-c"}
    assert any(webhook_on[sid] != stream_on[sid] for sid in stream_on), (webhook_on, stream_on)
    for call in calls:
        call.say(speech_like_ulaw(600))
    await wait_for(lambda: all(call.said for call in calls), what="every caller hearing the model")
    await hang_up_all(calls)
    await wait_for(lambda: not owners(fleet, calls), what="the calls leaving the registry")
    logged = fleet.query("SELECT call_sid, outcome, from_number FROM calls WHERE call_sid = ANY(%s)",
                         ([c.call_sid for c in calls],))
    assert sorted(logged) == sorted((call.call_sid, "caller_hung_up", call.from_number) for call in calls)


async def test_after_its_stream_a_call_carried_elsewhere_gets_what_its_outcome_calls_for(
    fleet: Fleet, api: TwilioApiSimulator
) -> None:
    call = await place(fleet, api)
    await wait_for(lambda: owners(fleet, [call]), what="the call in the registry")
    await call.hang_up()
    await wait_for(lambda: fleet.query("SELECT outcome FROM calls WHERE call_sid = %s", (call.call_sid,)) != [],
                   what="the call in the log")
    for instance in fleet.instances:
        assert "<Hangup" in await stream_ended(instance, call.call_sid), instance.name
        assert "Sorry, please call back later." in await stream_ended(instance, "CA" + "0" * 32), instance.name


async def stream_ended(instance: Instance, call_sid: str) -> str:
    """Twilio's `<Connect action>` request after a call's stream, signed, sent straight to `instance`."""
    params = {"CallSid": call_sid, "To": CLINIC, "AccountSid": ACCOUNT_SID}
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + "/twilio/stream-ended", params)
    async with httpx.AsyncClient() as client:
        response = await client.post(instance.url + "/twilio/stream-ended", data=params,
                                     headers={"X-Twilio-Signature": signature})
    assert response.status_code == 200
    return response.text


async def test_the_call_log_of_the_fleet_is_read_by_the_calls_command_and_any_instances_admin_api(
    fleet: Fleet, api: TwilioApiSimulator
) -> None:
    call = await place(fleet, api)
    await wait_for(lambda: owners(fleet, [call]), what="the call in the registry")
    await call.hang_up()
    await wait_for(lambda: fleet.query("SELECT 1 FROM calls WHERE call_sid = %s", (call.call_sid,)) != [],
                   what="the call in the log")
    env = {**os.environ, "DATABASE_URL": fleet.database, "PYTHONPATH": str(Path(__file__).parent.parent)}
    listed = subprocess.run([sys.executable, "-m", "telephony_bridge", "calls"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0 and call.call_sid in listed.stdout, listed.stderr
    shown = subprocess.run([sys.executable, "-m", "telephony_bridge", "calls", "show", call.call_sid], env=env,
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert f"Call {call.call_sid}" in shown.stdout and "caller_hung_up" in shown.stdout
    assert DB_PASSWORD not in listed.stdout + listed.stderr + shown.stdout + shown.stderr
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient() as client:
        for instance in fleet.instances:
            history = (await client.get(instance.url + "/admin/calls", headers=headers)).json()
            assert call.call_sid in [logged["call_sid"] for logged in history["calls"]], instance.name
            detail = await client.get(f"{instance.url}/admin/calls/{call.call_sid}", headers=headers)
            assert detail.status_code == 200 and detail.json()["from"] == call.from_number, instance.name


async def test_a_replayed_webhook_is_refused_by_every_instance(fleet: Fleet, api: TwilioApiSimulator) -> None:
    call = await place(fleet, api)
    for instance in fleet.instances:
        replay = SimulatedCall(bridge_url=instance.url, public_url=PUBLIC_URL, auth_token=AUTH_TOKEN, to_number=CLINIC,
                               call_sid=call.call_sid, account_sid=call.account_sid, from_number=call.from_number)
        await replay.dial()
        assert replay.verbs == ["Hangup"], (instance.name, replay.twiml)
    await call.hang_up()


async def test_a_replayed_stream_token_is_refused_by_every_instance(fleet: Fleet, api: TwilioApiSimulator) -> None:
    call = await place(fleet, api)
    await wait_for(lambda: owners(fleet, [call]), what="the call in the registry")
    for instance in fleet.instances:
        replay = SimulatedCall(bridge_url=instance.url, public_url=PUBLIC_URL, auth_token=AUTH_TOKEN, to_number=CLINIC,
                               call_sid=call.call_sid, account_sid=call.account_sid)
        await replay.connect(stream_url=call.stream_url, parameters=call.parameters)
        assert await replay.wait_closed_by_bridge() is not None, instance.name
        assert replay.close_code == 1008, instance.name
    assert owners(fleet, [call]) != {}
    await call.hang_up()


async def test_calls_live_on_one_instance_lists_the_fleet_and_ends_a_call_another_carries(
    fleet: Fleet, api: TwilioApiSimulator
) -> None:
    calls = [await place(fleet, api) for _ in range(3)]
    await wait_for(lambda: len(owners(fleet, calls)) == 3, what="three calls in the live registry")
    stream_on = owners(fleet, calls)
    assert len(set(stream_on.values())) == 3
    asking = fleet.by_name("bridge-a")
    listed = await asyncio.to_thread(cli, fleet, asking, "calls", "--live")
    assert listed.returncode == 0, listed.stderr
    for call in calls:
        assert call.call_sid in listed.stdout and stream_on[call.call_sid] in listed.stdout
    victim = next(call for call in calls if stream_on[call.call_sid] != "bridge-a")
    ended = await asyncio.to_thread(cli, fleet, asking, "calls", "end", victim.call_sid)
    assert ended.returncode == 0, ended.stdout + ended.stderr
    await victim.wait_over(10)
    assert any("This call is being ended now" in text for text in victim.spoken), victim.spoken
    await wait_for(lambda: fleet.query("SELECT outcome FROM calls WHERE call_sid = %s", (victim.call_sid,))
                   == [("operator_ended",)], what="the ended call in the log")
    others = [call for call in calls if call is not victim]
    assert set(owners(fleet, others)) == {call.call_sid for call in others}
    await hang_up_all(others)


async def test_an_outbound_call_placed_by_one_instance_streamed_to_another_and_called_back_on_a_third_behaves_as_on_one(
    fleet: Fleet, api: TwilioApiSimulator
) -> None:
    placer, carrier, called_back = (fleet.by_name(name) for name in ("bridge-a", "bridge-b", "bridge-c"))
    api.place_calls_on(carrier.url, PUBLIC_URL, callbacks_url=called_back.url)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30) as admin:
        placed = await admin.post(placer.url + "/admin/calls",
                                  json={"from": OUTBOUND_LINE, "to": PATIENT, "context": {"name": "Ada"}})
    assert placed.status_code == 201, placed.text
    outbound_id, call_sid = placed.json()["outbound_id"], placed.json()["call_sid"]
    (callee,) = await api.wait_placed(1)
    await wait_for(lambda: callee.call is not None, what="the callee answering")
    assert callee.call is not None
    await wait_for(lambda: owners(fleet, [callee.call]) == {call_sid: "bridge-b"}, what="the call carried by bridge-b")
    await callee.call.wait_heard(200, timeout=15)  # the greeting waits for "human": the AMD callback reached bridge-b
    amd_posts = [(url, status) for url, fields, status in callee.callbacks if "AnsweredBy" in fields]
    assert [status for _, status in amd_posts] == [204]
    await callee.call.hang_up()
    await wait_for(lambda: fleet.query("SELECT outcome, amd_result, call_sid FROM outbound_calls WHERE outbound_id = %s",
                                       (outbound_id,)) == [("human", "human", call_sid)], 20,
                   what="the outcome kept by the placing instance")
    await wait_for(lambda: fleet.query("SELECT direction, amd_result, outcome FROM calls WHERE call_sid = %s", (call_sid,))
                   == [("outbound", "human", "caller_hung_up")], what="the call in the log")
    assert "outbound call" in placer.log() and outbound_id in placer.log()


async def test_a_number_put_on_the_do_not_call_list_through_one_instance_is_never_dialled_by_another(
    fleet: Fleet, api: TwilioApiSimulator
) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as admin:
        listed = await admin.post(fleet.by_name("bridge-c").url + "/admin/dnc", json={"number": "+15550007777"})
        assert listed.status_code == 201
        refused = await admin.post(fleet.by_name("bridge-a").url + "/admin/calls",
                                   json={"from": OUTBOUND_LINE, "to": "+15550007777", "context": {"name": "Bo"}})
        assert refused.status_code == 409 and refused.json() == {"refused": "do-not-call"}
        assert (await admin.request("DELETE", fleet.by_name("bridge-b").url + "/admin/dnc",
                                     json={"number": "+15550007777"})).json() \
            == {"number": "+15550007777", "removed": True}
    assert api.created == []


async def test_the_console_event_stream_of_one_instance_follows_and_ends_the_calls_of_the_others(
    fleet: Fleet, api: TwilioApiSimulator
) -> None:
    watching, carrying, quiet_on = (fleet.by_name(name) for name in ("bridge-a", "bridge-b", "bridge-c"))
    quiet = await place(fleet, api, quiet_on.url)  # started before the stream: the registry seeds it
    await wait_for(lambda: owners(fleet, [quiet]), what="the quiet call in the registry")
    seen: list[tuple[str, dict[str, Any]]] = []
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as admin, \
            admin.stream("GET", watching.url + "/admin/calls/live/events") as stream:
        events = sse_events(stream)

        async def until(wanted: Callable[[str, dict[str, Any]], bool]) -> dict[str, Any]:
            while not any(wanted(name, data) for name, data in seen):
                seen.append(await asyncio.wait_for(anext(events), 15))
            return next(data for name, data in seen if wanted(name, data))

        seeded = await until(lambda name, data: name == "call" and data["call_sid"] == quiet.call_sid)
        assert seeded["instance"] == "bridge-c"
        call = await place(fleet, api, carrying.url)
        call.say(speech_like_ulaw(600))
        spoken = await until(lambda name, data: name == "call" and data["call_sid"] == call.call_sid
                             and bool(data["transcript"]))
        assert spoken["instance"] == "bridge-b" and spoken["caller"].endswith("****")
        revealed = await admin.post(f"{watching.url}/admin/calls/{call.call_sid}/caller")
        assert revealed.json() == {"call_sid": call.call_sid, "caller": call.from_number}, revealed.text
        # The console's own request: its session cookie (any instance sharing the admin token accepts it) and CSRF token.
        cookie, session = ConsoleSessions(ADMIN_TOKEN).issue(time.time())
        async with httpx.AsyncClient(cookies={COOKIE: cookie}, headers={CSRF_HEADER: session.csrf_token},
                                     timeout=30) as console:
            ended = await console.post(f"{watching.url}/admin/calls/{call.call_sid}/end")
        assert ended.status_code == 200 and ended.json()["outcome"] == "operator_ended", ended.text
        gone = await until(lambda name, data: name == "ended" and data["call_sid"] == call.call_sid)
        assert gone["outcome"] == "operator_ended"
    updates = [data for name, data in seen if name == "call" and data["call_sid"] == call.call_sid]
    sent = 0
    for data in updates:
        assert data["lines_from"] >= sent, "each update carries only lines not sent yet"
        sent = data["lines_from"] + len(data["transcript"])
    await call.wait_over(10)
    await quiet.hang_up()


async def sse_events(stream: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    name = ""
    async for line in stream.aiter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            yield name, json.loads(line[6:])


async def test_the_database_restarted_mid_call_the_calls_go_on(fleet: Fleet, api: TwilioApiSimulator) -> None:
    calls = [await place(fleet, api) for _ in range(3)]
    await wait_for(lambda: len(owners(fleet, calls)) == 3, what="three calls in the live registry")
    fleet.postgres.stop()
    try:
        await wait_for(lambda: httpx.get(fleet.instances[0].url + "/readyz").status_code == 503, what="readyz 503")
        # Straight to an instance: the balancer, seeing every /readyz at 503, soon answers 503 itself (Twilio then
        # plays the number's fallback URL); the instance's own answer is the fallback message.
        refused = new_call(fleet.instances[0].url, api)
        await refused.dial()
        assert refused.verbs == ["Say", "Hangup"], refused.twiml
        before = [len(call.said) for call in calls]
        for call in calls:
            call.say(speech_like_ulaw(600))
        await wait_for(lambda: all(len(call.said) > n for call, n in zip(calls, before, strict=True)),
                       what="the callers still hearing the model with the database down")
    finally:
        fleet.postgres.start()
    await wait_for(lambda: all(httpx.get(i.url + "/readyz").status_code == 200 for i in fleet.instances), 15,
                   what="every instance ready again")
    assert all(not call.over for call in calls)
    await hang_up_all(calls)
    await wait_for(lambda: len(fleet.query("SELECT 1 FROM calls WHERE call_sid = ANY(%s)",
                                           ([c.call_sid for c in calls],))) == 3, what="the calls logged")
    for instance in fleet.instances:
        assert DB_PASSWORD not in instance.log()


async def test_sigterm_lets_its_calls_finish_sends_new_calls_elsewhere_and_loses_nothing(
    fleet: Fleet, api: TwilioApiSimulator
) -> None:
    calls = [await place(fleet, api) for _ in range(3)]
    await wait_for(lambda: len(owners(fleet, calls)) == 3, what="three calls in the live registry")
    stream_on = owners(fleet, calls)
    leaving = fleet.by_name(stream_on[calls[0].call_sid])
    leaving.signal(signal.SIGTERM)
    await wait_for(lambda: httpx.get(leaving.url + "/readyz").status_code == 503, what="the leaving instance draining")
    await asyncio.sleep(1.0)  # HAProxy's check (every 300 ms) takes it out
    later = [await place(fleet, api) for _ in range(3)]
    await wait_for(lambda: len(owners(fleet, later)) == 3, what="the new calls in the registry")
    assert leaving.name not in owners(fleet, later).values()
    assert not calls[0].over
    await hang_up_all(calls + later)
    assert await asyncio.to_thread(leaving.wait, 30) == 0
    everyone = [c.call_sid for c in calls + later]
    await wait_for(lambda: len(fleet.query("SELECT 1 FROM calls WHERE call_sid = ANY(%s)", (everyone,))) == 6,
                   what="all six calls in the log")
    assert {str(o) for (o,) in fleet.query("SELECT outcome FROM calls WHERE call_sid = ANY(%s)", (everyone,))} \
        == {"caller_hung_up"}


async def test_kill_9_marks_its_calls_lost_and_the_rest_goes_on(fleet: Fleet, api: TwilioApiSimulator) -> None:
    calls = [await place(fleet, api) for _ in range(3)]
    await wait_for(lambda: len(owners(fleet, calls)) == 3, what="three calls in the live registry")
    stream_on = owners(fleet, calls)
    victim_call = calls[0]
    dying = fleet.by_name(stream_on[victim_call.call_sid])
    dying.signal(signal.SIGKILL)
    dying.wait(10)
    await wait_for(lambda: fleet.query("SELECT outcome FROM calls WHERE call_sid = %s", (victim_call.call_sid,))
                   == [("lost",)], LOST_AFTER_S + 10, what="the dead instance's call marked lost")
    survivors = [call for call in calls if stream_on[call.call_sid] != dying.name]
    assert all(not call.over for call in survivors)
    await asyncio.sleep(1.0)
    later = await place(fleet, api)
    await wait_for(lambda: owners(fleet, [later]), what="a new call taken by a live instance")
    assert owners(fleet, [later])[later.call_sid] != dying.name
    await hang_up_all([*survivors, later])


async def test_an_outbound_call_whose_placer_died_before_its_stream_came_is_carried_by_the_stream_instance(
    fleet: Fleet, api: TwilioApiSimulator
) -> None:
    placer, carrier, called_back = (fleet.by_name(name) for name in ("bridge-a", "bridge-b", "bridge-c"))
    api.place_calls_on(carrier.url, PUBLIC_URL, callbacks_url=called_back.url)
    api.answerers[PATIENT] = Answerer("person", ring_s=2.0)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30) as admin:
        placed = await admin.post(placer.url + "/admin/calls",
                                  json={"from": OUTBOUND_LINE, "to": PATIENT, "context": {"name": "Ada"}})
    assert placed.status_code == 201, placed.text
    call_sid = placed.json()["call_sid"]
    placer.signal(signal.SIGKILL)  # still ringing: nobody but the claim knows what the call asked
    placer.wait(10)
    (callee,) = await api.wait_placed(1)
    await wait_for(lambda: callee.call is not None, what="the callee answering")
    assert callee.call is not None
    await wait_for(lambda: owners(fleet, [callee.call]) == {call_sid: "bridge-b"}, 15, what="the call carried by bridge-b")
    assert "does not answer; the call is carried here" in carrier.log()
    await callee.call.hang_up()
    await wait_for(lambda: fleet.query("SELECT direction FROM calls WHERE call_sid = %s", (call_sid,)) == [("outbound",)],
                   15, what="the carried call in the log")
