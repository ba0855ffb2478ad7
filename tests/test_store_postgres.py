"""The fleet's store on a real PostgreSQL: claims taken once under a race, migrations under a race, lost calls,
requests between instances, and a connection string that never reaches a log line."""

from __future__ import annotations

import asyncio
import logging

import psycopg
import pytest

from fleet_servers import DB_PASSWORD, PostgresServer, free_port
from telephony_bridge.call_log import CallQuery
from telephony_bridge.config import settings_from_env
from telephony_bridge.errors import ConfigError
from telephony_bridge.store import PostgresStore, StoreUnavailable
from telephony_bridge.store.postgres import migrate, search_calls
from telephony_bridge.store.schema import MIGRATIONS

pytestmark = pytest.mark.xdist_group("fleet")


@pytest.fixture
def database(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    return postgres.database(request.node.name.lower().replace("[", "_").replace("]", "")[:60])


def test_a_fleet_without_one_stream_token_secret_does_not_start() -> None:
    with pytest.raises(ConfigError, match="STREAM_TOKEN_SECRET"):
        settings_from_env({"DATABASE_URL": "postgresql://bridge@db/bridge"})
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        settings_from_env({"DATABASE_URL": "mysql://bridge@db/bridge", "STREAM_TOKEN_SECRET": "s"})
    settings = settings_from_env({"DATABASE_URL": "postgresql://bridge:pw@db/bridge", "STREAM_TOKEN_SECRET": "s"})
    assert "pw" not in repr(settings)


async def test_a_key_is_claimed_once_by_many_instances_racing(database: str) -> None:
    stores = [PostgresStore(database, f"instance-{n}") for n in range(3)]
    for store in stores:
        await store.start()
    try:
        results = await asyncio.gather(*(store.claim("answer", "CA123", f"from {n}", 60)
                                         for n in range(10) for store in stores))
        assert sum(result is None for result in results) == 1
        winner = next(n for n, result in enumerate(results) if result is None)
        assert {result for result in results if result is not None} == {f"from {winner // 3}"}
    finally:
        for store in stores:
            await store.close()


async def test_an_expired_claim_can_be_taken_again(database: str) -> None:
    store = PostgresStore(database, "one")
    await store.start()
    try:
        assert await store.claim("stream", "s1", "", 0.001) is None
        await asyncio.sleep(0.05)
        assert await store.claim("stream", "s1", "again", 60) is None
        assert await store.claim("stream", "s1", "third", 60) == "again"
    finally:
        await store.close()


async def test_instances_starting_at_once_migrate_the_schema_once(database: str) -> None:
    async def one() -> int:
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as connection:
            return await migrate(connection)

    assert await asyncio.gather(*(one() for _ in range(6))) == [len(MIGRATIONS)] * 6
    with psycopg.connect(database) as connection:
        assert connection.execute("SELECT count(*), max(version) FROM schema_version").fetchone() == (1, len(MIGRATIONS))


async def test_calls_of_an_instance_that_stopped_heartbeating_are_logged_as_lost(database: str) -> None:
    dead, alive = PostgresStore(database, "dead"), PostgresStore(database, "alive", lost_after_s=0.5)
    await dead.start()
    await alive.start()
    try:
        dead.call_started("CAlost", "+14155550100", "+15551234567")
        await asyncio.wait_for(dead._writes.join(), 5)
        assert [call.call_sid for call in await alive.live_calls()] == ["CAlost"]
        await asyncio.sleep(0.7)
        with psycopg.connect(database, autocommit=True) as connection:  # the dead one's last heartbeat, long ago
            connection.execute("UPDATE instances SET heartbeat_at = now() - interval '1 minute' WHERE instance = 'dead'")
        assert await alive.beat() == 1
        assert await alive.live_calls() == []
        records, _ = search_calls(database, CallQuery(outcome="lost"))
        assert [(r.call_sid, r.to_number, r.from_number) for r in records] == [("CAlost", "+14155550100", "+15551234567")]
        assert "dead" in records[0].end_reason
    finally:
        await dead.close()
        await alive.close()


async def test_a_request_reaches_the_instance_it_names_and_its_reply_comes_back(database: str) -> None:
    asker, owner = PostgresStore(database, "asker"), PostgresStore(database, "owner")

    async def handle(op: str, args: dict[str, object]) -> dict[str, object]:
        return {"op": op, "echo": args, "by": owner.instance}

    owner.on_request(handle)
    await asker.start()
    await owner.start()
    try:
        reply = await asker.ask("owner", "end", {"call_sid": "CA1"}, 5)
        assert reply == {"op": "end", "echo": {"call_sid": "CA1"}, "by": "owner"}
        assert await asker.ask("nobody", "end", {}, 0.3) is None
    finally:
        await asker.close()
        await owner.close()


async def test_an_unreachable_database_is_reported_without_its_connection_string(caplog: pytest.LogCaptureFixture) -> None:
    url = f"postgresql://bridge:{DB_PASSWORD}@127.0.0.1:{free_port()}/calls"
    store = PostgresStore(url, "lonely", heartbeat_s=0.2)
    caplog.set_level(logging.DEBUG)
    await store.start(wait_s=1.0)
    try:
        assert not store.available
        with pytest.raises(StoreUnavailable) as refused:
            await store.claim("answer", "CA1", "", 60)
        assert DB_PASSWORD not in str(refused.value)
        await asyncio.sleep(0.5)
    finally:
        await store.close(timeout_s=0.5)
    assert caplog.records, "the unreachable database was not reported at all"
    assert all(DB_PASSWORD not in record.getMessage() and url not in record.getMessage() for record in caplog.records)


async def test_writes_beyond_the_queue_are_dropped_and_counted_while_the_database_is_away() -> None:
    failures: list[str] = []
    store = PostgresStore(f"postgresql://bridge:{DB_PASSWORD}@127.0.0.1:{free_port()}/calls", "lonely",
                          on_failure=failures.append, max_queued=2)
    await store.start(wait_s=0.5)
    try:
        for n in range(6):
            store.call_started(f"CA{n}", "+14155550100", "")
        assert failures.count("queue_full") >= 3
    finally:
        await store.close(timeout_s=0.5)
