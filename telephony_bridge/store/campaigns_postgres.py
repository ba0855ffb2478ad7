"""Campaigns on the fleet's PostgreSQL: the rows are the truth, and every instance takes its share of them.

An instance never holds a campaign in memory; each decision is one short transaction:

* **Taking rows.** `take` locks a running campaign's row `FOR UPDATE SKIP LOCKED` (an instance that finds it
  locked by another moves on to the next campaign rather than wait), counts the campaign's `dialling` rows
  across the fleet, and moves as many due `pending` rows as the concurrency leaves room for to `dialling`,
  stamped with this instance. The commit comes before any create request goes out, so no two instances dial
  one row and the fleet never has more than `concurrency` rows dialling.
* **Outcomes once.** `ended` locks the row and changes it only while it is `dialling` (and, when both are known,
  for the same call SID): a second report of one outcome, from whichever instance, changes nothing.
* **Reconciliation once.** `adopt` runs under a transaction-scoped advisory lock that only one instance gets at a
  time: rows left `dialling` by an instance whose heartbeat (`instances`) is older than `lost_after_s` become
  `unknown` when they have no call SID, and are adopted by the caller otherwise, to be settled from Twilio's
  record of the call.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from telephony_bridge.outbound.campaigns_schedule import (
    CAMPAIGN_TRANSITIONS,
    Campaign,
    CampaignSettings,
    CampaignState,
    CampaignStateError,
    Row,
    RowState,
    Window,
)
from telephony_bridge.outbound.campaigns_store import CampaignView
from telephony_bridge.store.base import StoreUnavailable
from telephony_bridge.store.postgres import redact

RECONCILE_LOCK = 0x7E1E_CA3A16
"""The advisory lock an instance holds while it reconciles the rows of dead instances: one at a time."""
CANDIDATES = 200
"""Pending rows read per campaign and step when a calling window may leave some of them not due yet."""

_Connection = psycopg.AsyncConnection[dict[str, Any]]
_Taken = list[tuple[CampaignSettings, Row]]


def _row(found: Mapping[str, Any]) -> Row:
    return Row(
        campaign_id=found["campaign_id"], position=found["position"], to_number=found["to_number"],
        context=json.loads(found["context"]), timezone=found["timezone"], state=RowState(found["state"]),
        attempts=found["attempts"], next_attempt_at=found["next_attempt_at"], outcome=found["outcome"],
        detail=found["detail"], call_sid=found["call_sid"], amd_result=found["amd_result"],
    )


def _settings(found: Mapping[str, Any]) -> CampaignSettings:
    return CampaignSettings(
        from_number=found["from_number"], concurrency=found["concurrency"], retries=found["retries"],
        retry_delay_s=found["retry_delay_s"],
        window=Window.parse(found["calling_window"]) if found["calling_window"] else None, timezone=found["timezone"],
    )


class PostgresCampaigns:
    """The campaign tables of `DATABASE_URL`, through a small pool of its own (the routes' pool stays theirs)."""

    def __init__(self, url: str, instance: str, *, lost_after_s: float, pool_size: int = 2) -> None:
        self.instance = instance
        self._url = url
        self._lost_after_s = lost_after_s
        self._pool: AsyncConnectionPool[_Connection] = AsyncConnectionPool(
            url, min_size=1, max_size=pool_size, open=False, kwargs={"autocommit": True, "row_factory": dict_row},
            check=AsyncConnectionPool.check_connection, timeout=5.0,
        )

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    async def _in_transaction(self, work: Callable[[_Connection], Any]) -> Any:
        """`work(connection)` in one transaction; `StoreUnavailable` (connection string left out) when it fails."""
        try:
            async with self._pool.connection() as connection, connection.transaction():
                return await work(connection)
        except (psycopg.Error, PoolTimeout) as error:
            raise StoreUnavailable(redact(str(error), self._url)) from None

    async def create(self, campaign_id: str, settings: CampaignSettings, rows: list[Row], now: datetime) -> None:
        async def work(db: _Connection) -> None:
            await db.execute(
                "INSERT INTO campaigns (campaign_id, created_at, state, from_number, concurrency, retries, retry_delay_s,"
                " calling_window, timezone) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (campaign_id, now.isoformat(), CampaignState.RUNNING.value, settings.from_number, settings.concurrency,
                 settings.retries, settings.retry_delay_s, str(settings.window) if settings.window else None,
                 settings.timezone),
            )
            async with db.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO campaign_rows (campaign_id, position, to_number, context, timezone, state, updated_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [(campaign_id, row.position, row.to_number, json.dumps(dict(row.context)), row.timezone,
                      row.state.value, now) for row in rows],
                )

        await self._in_transaction(work)

    async def move(self, campaign_id: str, event: str) -> CampaignState | None:
        """Pause or resume from any instance; `None` when there is no such campaign. Raises `CampaignStateError`."""
        async def work(db: _Connection) -> CampaignState | None:
            cursor = await db.execute("SELECT state FROM campaigns WHERE campaign_id = %s FOR UPDATE", (campaign_id,))
            found = await cursor.fetchone()
            if found is None:
                return None
            target = CAMPAIGN_TRANSITIONS.get((CampaignState(found["state"]), event))
            if target is None:
                raise CampaignStateError(f"campaign {campaign_id}", found["state"], event)
            await db.execute("UPDATE campaigns SET state = %s WHERE campaign_id = %s", (target.value, campaign_id))
            return target

        result: CampaignState | None = await self._in_transaction(work)
        return result

    async def take(self, now: datetime, free_lines: int) -> list[tuple[CampaignSettings, Row]]:
        """Rows this instance dials now, already committed `dialling` by it: at most `free_lines` in all."""
        taken: list[tuple[CampaignSettings, Row]] = []
        for campaign_id in await self._in_transaction(self._running):
            if len(taken) >= free_lines:
                break
            room = free_lines - len(taken)

            async def work(db: _Connection, campaign_id: str = campaign_id, room: int = room) -> _Taken:
                return await self._take_of(db, campaign_id, now, room)

            taken.extend(await self._in_transaction(work))
        return taken

    @staticmethod
    async def _running(db: _Connection) -> list[str]:
        cursor = await db.execute("SELECT campaign_id FROM campaigns WHERE state = %s ORDER BY created_at",
                                  (CampaignState.RUNNING.value,))
        return [found["campaign_id"] for found in await cursor.fetchall()]

    async def _take_of(self, db: _Connection, campaign_id: str, now: datetime, room: int) -> list[tuple[CampaignSettings, Row]]:
        cursor = await db.execute(
            "SELECT * FROM campaigns WHERE campaign_id = %s AND state = %s FOR UPDATE SKIP LOCKED",
            (campaign_id, CampaignState.RUNNING.value),
        )
        found = await cursor.fetchone()
        if found is None:
            return []  # another instance is taking rows of it right now, or it was paused meanwhile
        settings = _settings(found)
        cursor = await db.execute(
            "SELECT count(*) AS n FROM campaign_rows WHERE campaign_id = %s AND state = %s",
            (campaign_id, RowState.DIALLING.value),
        )
        counted = await cursor.fetchone()
        room = min(room, settings.concurrency - int(counted["n"] if counted else 0))
        if room <= 0:
            return []
        cursor = await db.execute(
            "SELECT * FROM campaign_rows WHERE campaign_id = %s AND state = %s"
            " AND (next_attempt_at IS NULL OR next_attempt_at <= %s) ORDER BY position LIMIT %s FOR UPDATE SKIP LOCKED",
            (campaign_id, RowState.PENDING.value, now, room if settings.window is None else CANDIDATES),
        )
        candidates = [_row(row) for row in await cursor.fetchall()]
        campaign = Campaign(campaign_id, settings, candidates)
        due = campaign.to_dial(now, room)
        if not due:
            # A settling instance that stopped between its commit and its check left the campaign running.
            await self._finish_if_settled(db, campaign_id)
        taken = []
        for row in due:
            dialling = campaign.dial(row.position)
            await db.execute(
                "UPDATE campaign_rows SET state = %s, attempts = %s, next_attempt_at = NULL, call_sid = NULL,"
                " instance = %s, updated_at = %s WHERE campaign_id = %s AND position = %s",
                (dialling.state.value, dialling.attempts, self.instance, now, campaign_id, row.position),
            )
            taken.append((settings, dialling))
        return taken

    async def placed(self, row: Row, call_sid: str) -> None:
        """Twilio created the row's call: its SID is kept (whatever state the row reached meanwhile)."""
        async def work(db: _Connection) -> None:
            await db.execute(
                "UPDATE campaign_rows SET call_sid = COALESCE(call_sid, %s), updated_at = now()"
                " WHERE campaign_id = %s AND position = %s AND attempts = %s",
                (call_sid, row.campaign_id, row.position, row.attempts),
            )

        await self._in_transaction(work)

    async def ended(self, key: str, outcome: str, now: datetime, *, amd_result: str | None = None,
                    call_sid: str | None = None, detail: str = "") -> Row | None:
        """The outcome of the row `key` names (`campaign:position`), written once: `None` when it changed nothing."""
        campaign_id, _, position = key.partition(":")
        if not position.isdigit():
            return None

        async def work(db: _Connection) -> Row | None:
            cursor = await db.execute(
                "SELECT r.*, c.from_number, c.concurrency, c.retries, c.retry_delay_s, c.calling_window,"
                " c.timezone AS campaign_timezone FROM campaign_rows r JOIN campaigns c USING (campaign_id)"
                " WHERE r.campaign_id = %s AND r.position = %s FOR UPDATE OF r",
                (campaign_id, int(position)),
            )
            found = await cursor.fetchone()
            if found is None or found["state"] != RowState.DIALLING.value:
                return None
            if call_sid and found["call_sid"] and found["call_sid"] != call_sid:
                return None  # the outcome of an earlier attempt, heard late
            settings = _settings({**found, "timezone": found["campaign_timezone"]})
            campaign = Campaign(campaign_id, settings, [_row(found)])
            moved = campaign.ended(int(position), outcome, now, amd_result=amd_result, call_sid=call_sid, detail=detail)
            if moved is not None:
                await self._write(db, moved, now)
            return moved

        result: Row | None = await self._in_transaction(work)
        if result is not None:
            await self._finish(campaign_id)
        return result

    async def settle(self, campaign_id: str, position: int, outcome: str | None, now: datetime, *,
                     call_sid: str | None = None) -> Row | None:
        """An operator's outcome for a row left `unknown` (`None`: dial it again, reopening a finished campaign); `None`
        when there is no such row. Raises `CampaignStateError` (the row is not unknown) or `CampaignInvalid`."""
        async def work(db: _Connection) -> Row | None:
            cursor = await db.execute("SELECT * FROM campaigns WHERE campaign_id = %s FOR UPDATE", (campaign_id,))
            found = await cursor.fetchone()
            if found is None:
                return None
            cursor = await db.execute("SELECT * FROM campaign_rows WHERE campaign_id = %s AND position = %s FOR UPDATE",
                                      (campaign_id, position))
            row = await cursor.fetchone()
            if row is None:
                return None
            campaign = Campaign(campaign_id, _settings(found), [_row(row)], CampaignState(found["state"]))
            if outcome is None:
                moved = campaign.redial(position, "put back to pending by an operator")
            else:
                moved = campaign.settle(position, outcome, "settled by an operator", call_sid)
            await self._write(db, moved, now)
            await db.execute("UPDATE campaigns SET state = %s WHERE campaign_id = %s", (campaign.state.value, campaign_id))
            return moved

        result: Row | None = await self._in_transaction(work)
        return result

    @staticmethod
    async def _write(db: _Connection, row: Row, now: datetime) -> None:
        await db.execute(
            "UPDATE campaign_rows SET state = %s, attempts = %s, next_attempt_at = %s, outcome = %s, detail = %s,"
            " call_sid = %s, amd_result = %s, updated_at = %s WHERE campaign_id = %s AND position = %s",
            (row.state.value, row.attempts, row.next_attempt_at, row.outcome, row.detail, row.call_sid, row.amd_result,
             now, row.campaign_id, row.position),
        )

    async def _finish(self, campaign_id: str) -> None:
        """Finish the campaign if every row is settled, checked after the settling commit, not inside it.

        Inside it, two instances settling a campaign's last two rows at once each saw the other's row
        still dialling (neither had committed) and neither finished it: every row done, the campaign
        running for good. Checked after its commit, the later of the two sees both.
        """
        async def work(db: _Connection) -> None:
            await self._finish_if_settled(db, campaign_id)

        await self._in_transaction(work)

    @staticmethod
    async def _finish_if_settled(db: _Connection, campaign_id: str) -> None:
        await db.execute(
            "UPDATE campaigns SET state = %s WHERE campaign_id = %s AND state != %s AND NOT EXISTS"
            " (SELECT 1 FROM campaign_rows WHERE campaign_id = %s AND state IN (%s, %s))",
            (CampaignState.FINISHED.value, campaign_id, CampaignState.FINISHED.value, campaign_id,
             RowState.PENDING.value, RowState.DIALLING.value),
        )

    async def adopt(self, now: datetime) -> tuple[list[Row], list[Row]]:
        """Rows left dialling by dead instances, if this instance got the reconciliation lock: those made `unknown`
        (no call SID), and those adopted by this instance to settle from Twilio's record."""
        async def work(db: _Connection) -> tuple[list[Row], list[Row]]:
            cursor = await db.execute("SELECT pg_try_advisory_xact_lock(%s) AS mine", (RECONCILE_LOCK,))
            locked = await cursor.fetchone()
            if not locked or not locked["mine"]:
                return [], []
            cursor = await db.execute(
                "SELECT * FROM campaign_rows r WHERE state = %s AND instance IS DISTINCT FROM %s AND NOT EXISTS"
                " (SELECT 1 FROM instances i WHERE i.instance = r.instance"
                "  AND i.heartbeat_at >= now() - make_interval(secs => %s)) FOR UPDATE SKIP LOCKED",
                (RowState.DIALLING.value, self.instance, self._lost_after_s),
            )
            lost, adopted = [], []
            for found in await cursor.fetchall():
                row = _row(found)
                if row.call_sid is None:
                    moved = row.moved("lost", detail=f"its instance {found['instance']} stopped while placing this call;"
                                                      " check Twilio's call log")
                    await self._write(db, moved, now)
                    lost.append(moved)
                else:
                    await db.execute(
                        "UPDATE campaign_rows SET instance = %s, updated_at = %s WHERE campaign_id = %s AND position = %s",
                        (self.instance, now, row.campaign_id, row.position),
                    )
                    adopted.append(row)
            return lost, adopted

        result: tuple[list[Row], list[Row]] = await self._in_transaction(work)
        for campaign_id in sorted({row.campaign_id for row in result[0]}):
            await self._finish(campaign_id)
        return result

    async def dialling_here(self) -> list[Row]:
        """The rows dialling under this instance's name: those it placed or adopted (and, at start, those a previous run
        with the same instance id left)."""
        async def work(db: _Connection) -> list[Row]:
            cursor = await db.execute("SELECT * FROM campaign_rows WHERE state = %s AND instance = %s",
                                      (RowState.DIALLING.value, self.instance))
            return [_row(found) for found in await cursor.fetchall()]

        result: list[Row] = await self._in_transaction(work)
        return result

    async def view(self, campaign_id: str) -> CampaignView | None:
        async def work(db: _Connection) -> CampaignView | None:
            cursor = await db.execute("SELECT * FROM campaigns WHERE campaign_id = %s", (campaign_id,))
            found = await cursor.fetchone()
            if found is None:
                return None
            cursor = await db.execute("SELECT * FROM campaign_rows WHERE campaign_id = %s ORDER BY position", (campaign_id,))
            rows = tuple(_row(row) for row in await cursor.fetchall())
            return CampaignView(campaign_id, datetime.fromisoformat(found["created_at"]).astimezone(UTC),
                                CampaignState(found["state"]), _settings(found), rows)

        result: CampaignView | None = await self._in_transaction(work)
        return result

    async def counts(self) -> list[tuple[str, str, Mapping[str, int]]]:
        async def work(db: _Connection) -> list[tuple[str, str, Mapping[str, int]]]:
            cursor = await db.execute("SELECT campaign_id, state FROM campaigns ORDER BY created_at DESC")
            campaigns = await cursor.fetchall()
            cursor = await db.execute("SELECT campaign_id, state, count(*) AS n FROM campaign_rows GROUP BY campaign_id, state")
            counted: dict[str, dict[str, int]] = {}
            for found in await cursor.fetchall():
                counted.setdefault(found["campaign_id"], {})[found["state"]] = int(found["n"])
            return [(c["campaign_id"], c["state"], counted.get(c["campaign_id"], {})) for c in campaigns]

        result: list[tuple[str, str, Mapping[str, int]]] = await self._in_transaction(work)
        return result
