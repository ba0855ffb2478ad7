#!/usr/bin/env python3
"""What the fleet asks of PostgreSQL: writes per call, the claim's latency, and the claim and log paths at 10x this
machine's call rate.

1. Writes per call: calls placed end to end through a real bridge (DATABASE_URL set) with the Realtime
   simulator; PostgreSQL's own counters (pg_stat_database: transactions committed, rows inserted, updated,
   deleted) are read before and after, less what the same bridge does idle for as long (its heartbeats).
2. The claim: sequential `INSERT ... ON CONFLICT` claims from one instance, median and p99.
3. At 10x: each call's database work (two claims awaited by the routes; the registry row and the call's
   record through the write queue) started at `--rate` calls a second for `--seconds`, with the claims'
   latency under that load and how far the write queue fell behind.
4. The early session: how long a Realtime session takes to open (the simulator's handshake and
   `session.updated`), which is what opening it at the webhook saves the caller when the stream lands on
   the same instance.

Run: .venv/bin/python scripts/bench_store.py [--database-url URL] [--calls 20] [--rate 32] [--seconds 10]
Without --database-url it starts a throwaway PostgreSQL (as the tests do; needs postgresql-15).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import statistics
import sys
import time
from pathlib import Path

import psycopg

from telephony_bridge.call.events import TranscriptDone
from telephony_bridge.call.summary import CallCounters, CallSummary
from telephony_bridge.config import parse_config, settings_from_env
from telephony_bridge.store import PostgresStore
from telephony_bridge.testing.bridge_server import serve_bridge
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator
from telephony_bridge.testing.twilio_simulator import SimulatedCall, speech_like_ulaw

TOKEN = "bench-token"
PUBLIC_URL = "https://bridge.bench.invalid"
CONFIG = """
[defaults]
instructions = "You answer the phone."

[call_log]
path = ""
"""
MACHINE_CALL_RATE = 1.8
"""Calls a second this machine takes in steady state: 150-180 concurrent calls per core (README, Capacity), so about
330 on its 2 cores, of 3 minutes each. `--rate` defaults to ten times this."""


def counters(url: str) -> tuple[int, int, int]:
    """(transactions committed, rows written to the call's tables: claims, registry, log; transcript lines) so far.

    The heartbeat's table (`instances`) is left out of the rows; its transactions are taken out by the idle baseline."""
    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()), "
            "(SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables "
            " WHERE relname IN ('claims', 'live_calls', 'calls', 'transcript', 'stream_errors')), "
            "coalesce((SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'transcript'), 0)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


async def bridge_run(
    url: str | None, realtime: RealtimeSimulator, calls: int, seconds: float | None
) -> tuple[float, list[float]]:
    """Start a bridge, place `calls` calls through it (or none), keep it up `seconds` in all, stop it: its duration,
    and for each call how long its Realtime session took to open after the stream's socket was accepted.

    PostgreSQL publishes a connection's statistics when it closes, so the counters are read around whole runs."""
    settings = settings_from_env({
        "PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": TOKEN, "OPENAI_API_KEY": "sk-bench", "REALTIME_URL": realtime.url,
        "BRIDGE_INSTANCE_ID": "bench", "STREAM_TOKEN_SECRET": "bench-secret", **({"DATABASE_URL": url} if url else {}),
    })
    started = time.monotonic()
    opened: list[float] = []
    async with serve_bridge(settings, parse_config(CONFIG, "bench.toml")) as bridge:
        for _ in range(calls):
            call = SimulatedCall(bridge_url=bridge, public_url=PUBLIC_URL, auth_token=TOKEN, to_number="+14155550100")
            sessions = len(realtime.sessions)
            await call.dial()
            before = time.perf_counter()
            await call.connect()
            await realtime.wait_for_session(sessions)
            opened.append((time.perf_counter() - before) * 1000)
            call.say(speech_like_ulaw(600))
            await call.wait_said(10)
            await call.hang_up()
        await asyncio.sleep(max(0.5, (seconds or 0.0) - (time.monotonic() - started)))
    await asyncio.sleep(1.0)
    return time.monotonic() - started, opened


async def writes_per_call(url: str, calls: int) -> None:
    realtime = RealtimeSimulator(speed=8.0)
    await realtime.start()
    busy_from = counters(url)
    busy_s, opened = await bridge_run(url, realtime, calls, None)
    busy = [b - a for a, b in zip(busy_from, counters(url), strict=True)]
    idle_from = counters(url)
    await bridge_run(url, realtime, 0, busy_s - 1.0)
    idle = [b - a for a, b in zip(idle_from, counters(url), strict=True)]
    print(f"writes per call, end to end ({calls} calls through one bridge over {busy_s:.1f} s; "
          f"an idle bridge over the same time taken out):")
    print(f"  {(busy[0] - idle[0]) / calls:.1f} transactions (the pool's connection checks included), "
          f"{(busy[1] - idle[1]) / calls:.1f} rows written, of which {busy[2] / calls:.1f} transcript lines "
          "(each line said is one more row)")
    print(f"  idle, one instance: {idle[0] / busy_s:.2f} transactions/s (heartbeat every 2 s)")
    _, early = await bridge_run(None, realtime, calls, None)
    print(f"the stream's socket accepted to its Realtime session open (simulator on loopback): in a fleet (opened "
          f"where the stream lands) median {statistics.median(opened):.1f} ms, max {max(opened):.1f} ms; one bridge "
          f"(opened early, at the webhook) median {statistics.median(early):.1f} ms, max {max(early):.1f} ms")
    await realtime.stop()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def claim_latency(url: str, count: int = 2000) -> None:
    store = PostgresStore(url, "bench-claims")
    await store.start()
    latencies = []
    for _ in range(count):
        before = time.perf_counter()
        await store.claim("answer", secrets.token_hex(8), "{}", 60)
        latencies.append((time.perf_counter() - before) * 1000)
    taken = secrets.token_hex(8)
    await store.claim("answer", taken, "{}", 60)
    refused = []
    for _ in range(200):
        before = time.perf_counter()
        await store.claim("answer", taken, "{}", 60)
        refused.append((time.perf_counter() - before) * 1000)
    await store.close()
    print(f"claim latency, {count} claims one after another: median {statistics.median(latencies):.2f} ms, "
          f"p99 {percentile(latencies, 0.99):.2f} ms; a refused claim (two statements): "
          f"median {statistics.median(refused):.2f} ms, p99 {percentile(refused, 0.99):.2f} ms")


async def ask_latency(url: str, count: int = 500) -> None:
    """A request to another instance and its reply (LISTEN/NOTIFY): what an outbound call's stream or callback landing
    on another instance than its placer waits for, once per hop."""
    asker, owner = PostgresStore(url, "bench-asker"), PostgresStore(url, "bench-owner")

    async def echo(op: str, args: dict[str, object]) -> dict[str, object]:
        return {"op": op}

    owner.on_request(echo)
    await asker.start()
    await owner.start()
    latencies = []
    for _ in range(count):
        before = time.perf_counter()
        assert await asker.ask("bench-owner", "outbound_amd", {"outbound_id": "OB1"}, 5) == {"op": "outbound_amd"}
        latencies.append((time.perf_counter() - before) * 1000)
    await asker.close()
    await owner.close()
    print(f"a request to another instance and its reply, {count} one after another: "
          f"median {statistics.median(latencies):.2f} ms, p99 {percentile(latencies, 0.99):.2f} ms")


def summary_of(call_sid: str) -> CallSummary:
    return CallSummary(
        call_sid=call_sid, called_number="+14155550100", caller_number="+15551234567", model="gpt-realtime", dialect="ga",
        duration_s=180.0, outcome="caller_hung_up", end_reason="", counters=CallCounters(), realtime_errors={},
        realtime_failures=(), response_latencies_ms=(), truncates=(), dropped_model_audio_ms=0.0,
        transcript=(TranscriptDone("caller", "i1", "I would like an appointment."), TranscriptDone("model", "i2", "Sure.")),
    )


async def at_rate(url: str, rate: float, seconds: float) -> None:
    stores = [PostgresStore(url, f"bench-{n}", max_queued=100_000) for n in range(3)]
    for store in stores:
        await store.start()
    latencies: list[float] = []

    async def one_call(store: PostgresStore) -> None:
        call_sid = "CA" + secrets.token_hex(16)
        for kind, key in (("answer", call_sid), ("stream", secrets.token_urlsafe(12))):
            before = time.perf_counter()
            assert await store.claim(kind, key, "{}", 300) is None
            latencies.append((time.perf_counter() - before) * 1000)
        store.call_started(call_sid, "+14155550100", "+15551234567")
        store.call_ended(summary_of(call_sid))

    started = time.perf_counter()
    tasks = []
    total = int(rate * seconds)
    for n in range(total):
        await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one_call(stores[n % 3])))
    await asyncio.gather(*tasks)
    offered_s = time.perf_counter() - started
    await asyncio.gather(*(store._writes.join() for store in stores))
    drained_s = time.perf_counter() - started
    for store in stores:
        await store.close()
    print(f"at {rate:g} calls/s for {seconds:g} s over 3 instances ({total} calls, 10x this machine's "
          f"{MACHINE_CALL_RATE} calls/s): claim median {statistics.median(latencies):.2f} ms, "
          f"p99 {percentile(latencies, 0.99):.2f} ms; the write queue drained {drained_s - offered_s:.2f} s after the last call")


async def max_throughput(url: str, calls: int = 3000) -> None:
    store = PostgresStore(url, "bench-max", max_queued=100_000, pool_size=8)
    await store.start()
    started = time.perf_counter()
    semaphore = asyncio.Semaphore(32)

    async def one_call() -> None:
        async with semaphore:
            call_sid = "CA" + secrets.token_hex(16)
            await store.claim("answer", call_sid, "{}", 300)
            await store.claim("stream", secrets.token_urlsafe(12), "{}", 300)
            store.call_started(call_sid, "+14155550100", "")
            store.call_ended(summary_of(call_sid))

    await asyncio.gather(*(one_call() for _ in range(calls)))
    await store._writes.join()
    elapsed = time.perf_counter() - started
    await store.close()
    print(f"flat out, one instance, 32 calls in flight: {calls / elapsed:.0f} calls/s of database work "
          f"(claims, registry, log) on this machine's PostgreSQL")


async def landing(url: str, calls: int = 30) -> None:
    """Behind HAProxy round-robin over three instances: how often the stream reaches the instance that took the webhook,
    which is where an early session would be of use."""
    import tempfile

    from fleet_servers import Balancer, Instance, RealtimeProcess

    folder = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    realtime = RealtimeProcess(folder)
    env = {"DATABASE_URL": url, "PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": TOKEN, "OPENAI_API_KEY": "sk-bench",
           "REALTIME_URL": realtime.url, "STREAM_TOKEN_SECRET": "bench-fleet-secret"}
    instances = [Instance(name, folder, env) for name in ("bench-a", "bench-b", "bench-c")]
    for instance in instances:
        instance.start()
    balancer = Balancer(folder, instances)
    try:
        placed = []
        for n in range(calls):
            call = SimulatedCall(bridge_url=balancer.url, public_url=PUBLIC_URL, auth_token=TOKEN, to_number="+14155550100")
            await call.dial()
            if n % 2:  # other traffic between a webhook and its stream (another call's webhook) shifts the rotation
                other = SimulatedCall(bridge_url=balancer.url, public_url=PUBLIC_URL, auth_token=TOKEN)
                await other.dial()
                placed.append(other)
            await call.connect()
            placed.append(call)
        await asyncio.sleep(1.0)
        with psycopg.connect(url) as connection:
            rows = connection.execute(
                "SELECT c.instance = l.instance FROM claims c JOIN live_calls l ON l.call_sid = c.key WHERE c.kind = 'answer'"
            ).fetchall()
        for call in placed:
            await call.hang_up()
    finally:
        balancer.close()
        for instance in instances:
            instance.stop()
        realtime.close()
    same = sum(1 for (hit,) in rows if hit)
    print(f"behind HAProxy round-robin, 3 instances: {same} of {len(rows)} streams reached the instance that took "
          "their webhook (the only ones an early session would have served)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--rate", type=float, default=MACHINE_CALL_RATE * 10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--only", choices=["ask"], help="measure only this figure")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    server = None
    url = args.database_url
    if url is None:
        sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
        from fleet_servers import PostgresServer

        server = PostgresServer()
        url = server.database("bench")
    try:
        if args.only == "ask":
            await ask_latency(url)
            return
        await writes_per_call(url, args.calls)
        await claim_latency(url)
        await ask_latency(url)
        await at_rate(url, args.rate, args.seconds)
        await max_throughput(url)
        await landing(server.database("landing") if server is not None else url)
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    asyncio.run(main())
