"""The fleet's campaign tables on a real PostgreSQL: several instances taking rows of one list at once, outcomes
written once, and the rows of a dead instance reconciled by one instance."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import psycopg
import pytest

from fleet_servers import PostgresServer
from telephony_bridge.outbound.campaigns_schedule import CampaignInvalid, CampaignSettings, CampaignStateError, Row, RowState
from telephony_bridge.store.campaigns_postgres import PostgresCampaigns
from telephony_bridge.store.postgres import migrate

pytestmark = pytest.mark.xdist_group("fleet")

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
async def database(postgres: PostgresServer) -> AsyncIterator[str]:
    url = postgres.database("campaign_tables")
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        await migrate(connection)
        await connection.execute("INSERT INTO instances VALUES ('alive-1', now()), ('alive-2', now()), ('alive-3', now()),"
                                 " ('dead', now() - interval '1 hour')")
    yield url


async def stores(url: str, *names: str) -> list[PostgresCampaigns]:
    opened = [PostgresCampaigns(url, name, lost_after_s=30.0) for name in names]
    for store in opened:
        await store.open()
    return opened


def rows(campaign_id: str, n: int) -> list[Row]:
    return [Row(campaign_id, position, f"+1555900{position:04d}") for position in range(n)]


async def test_three_instances_taking_rows_at_once_never_share_one_nor_pass_the_concurrency(database: str) -> None:
    fleet = await stores(database, "alive-1", "alive-2", "alive-3")
    await fleet[0].create("CMrace", CampaignSettings("+14155550100", concurrency=3), rows("CMrace", 20), NOW)
    taken = await asyncio.gather(*(store.take(NOW, free_lines=10) for store in fleet for _ in range(3)))
    keys = [row.key for batch in taken for _, row in batch]
    assert len(keys) == len(set(keys)) == 3
    assert all(row.state is RowState.DIALLING and row.attempts == 1 for batch in taken for _, row in batch)
    assert await fleet[1].take(NOW, free_lines=10) == []  # the fleet's three are dialling
    for store in fleet:
        await store.close()


async def test_an_outcome_is_written_once_whoever_reports_it(database: str) -> None:
    first, second = await stores(database, "alive-1", "alive-2")
    await first.create("CMonce", CampaignSettings("+14155550100"), rows("CMonce", 1), NOW)
    [(_, row)] = await first.take(NOW, free_lines=1)
    await first.placed(row, "CA1")
    reports = await asyncio.gather(first.ended(row.key, "human", NOW, call_sid="CA1"),
                                   second.ended(row.key, "human", NOW, call_sid="CA1"))
    assert sum(report is not None for report in reports) == 1
    view = await second.view("CMonce")
    assert view is not None and view.state == "finished" and view.rows[0].outcome == "human"
    assert await first.ended(row.key, "busy", NOW, call_sid="CA1") is None
    await first.close()
    await second.close()


async def test_a_dead_instances_rows_are_reconciled_by_one_instance(database: str) -> None:
    dead, first, second = await stores(database, "dead", "alive-1", "alive-2")
    await dead.create("CMdead", CampaignSettings("+14155550100", concurrency=2), rows("CMdead", 3), NOW)
    taken = [row for _, row in await dead.take(NOW, free_lines=2)]
    await dead.placed(taken[0], "CAplaced")  # the other died between its commit and Twilio's answer
    await dead.close()
    results = await asyncio.gather(first.adopt(NOW), second.adopt(NOW))
    lost = [row for made_unknown, _ in results for row in made_unknown]
    adopted = [row for _, took in results for row in took]
    assert [row.position for row in lost] == [taken[1].position]
    assert [row.call_sid for row in adopted] == ["CAplaced"]
    assert await first.adopt(NOW) == ([], []) and await second.adopt(NOW) == ([], [])
    adopter = first if any(took for _, took in results[:1]) else second
    assert [row.call_sid for row in await adopter.dialling_here()] == ["CAplaced"]
    view = await first.view("CMdead")
    assert view is not None and [row.state for row in view.rows] == [RowState.DIALLING, RowState.UNKNOWN, RowState.PENDING]
    await first.close()
    await second.close()


async def test_a_row_left_unknown_is_settled_by_an_operator_or_put_back_to_be_dialled_reopening_the_campaign(
    database: str
) -> None:
    dead, first = await stores(database, "dead", "alive-1")
    await dead.create("CMsettle", CampaignSettings("+14155550100", concurrency=2), rows("CMsettle", 2), NOW)
    await dead.take(NOW, free_lines=2)  # it died before Twilio gave either call a SID
    await dead.close()
    assert len((await first.adopt(NOW))[0]) == 2
    view = await first.view("CMsettle")
    assert view is not None and view.state == "finished"
    with pytest.raises(CampaignInvalid):
        await first.settle("CMsettle", 0, "maybe", NOW)
    settled = await first.settle("CMsettle", 0, "voicemail", NOW, call_sid="CAfound")
    assert settled is not None and settled.state is RowState.DONE and settled.call_sid == "CAfound"
    with pytest.raises(CampaignStateError):
        await first.settle("CMsettle", 0, "human", NOW)
    redialled = await first.settle("CMsettle", 1, None, NOW)
    assert redialled is not None and redialled.state is RowState.PENDING
    view = await first.view("CMsettle")
    assert view is not None and view.state == "running"
    assert [row.position for _, row in await first.take(NOW, free_lines=2)] == [1]
    assert await first.settle("CMsettle", 9, "human", NOW) is None
    assert await first.settle("CMnone", 0, "human", NOW) is None
    await first.close()


async def test_the_last_two_rows_settled_at_once_by_two_instances_finish_the_campaign(database: str) -> None:
    """Each settling commit is held back half a second, after its transaction's own statements: a check of the other
    rows made inside the transaction sees the other row still dialling, and the campaign stayed running for good."""
    first, second = await stores(database, "alive-1", "alive-2")
    await first.create("CMlast", CampaignSettings("+14155550100", concurrency=2), rows("CMlast", 2), NOW)
    taken = [row for _, row in await first.take(NOW, free_lines=2)]
    for row in taken:
        await first.placed(row, f"CA{row.position}")
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as db:
        await db.execute("CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql"
                         " AS $$ BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$")
        await db.execute("CREATE CONSTRAINT TRIGGER slow_commit AFTER UPDATE ON campaign_rows DEFERRABLE INITIALLY DEFERRED"
                         " FOR EACH ROW WHEN (NEW.state = 'done') EXECUTE FUNCTION slow_commit()")
    settled = await asyncio.gather(first.ended(taken[0].key, "human", NOW, call_sid="CA0"),
                                   second.ended(taken[1].key, "busy", NOW, call_sid="CA1"))
    assert all(row is not None and row.state is RowState.DONE for row in settled)
    view = await second.view("CMlast")
    assert view is not None and view.state == "finished"
    await first.close()
    await second.close()


async def test_a_campaign_whose_last_settler_stopped_before_finishing_it_is_finished_by_the_next_take(database: str) -> None:
    first, second = await stores(database, "alive-1", "alive-2")
    await first.create("CMstop", CampaignSettings("+14155550100"), rows("CMstop", 1), NOW)
    [(_, row)] = await first.take(NOW, free_lines=1)
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as db:  # its commit, then nothing
        await db.execute("UPDATE campaign_rows SET state = 'done', outcome = 'human' WHERE campaign_id = 'CMstop'")
    assert await second.take(NOW, free_lines=1) == []
    view = await second.view("CMstop")
    assert view is not None and view.state == "finished"
    await first.close()
    await second.close()
