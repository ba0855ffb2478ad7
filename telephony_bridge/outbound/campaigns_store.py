"""Campaigns and their rows in the call log's database (the `campaigns` and `campaign_rows` tables).

Every statement runs on the store's one worker thread, in the order it was submitted, so the event loop that
carries the calls never waits on the disk, and a row's changes reach the file in the order they were made.
A row is written `dialling`, and the write committed, before its create request goes out: that commit is
what lets a restarted bridge know whom it may have called.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from telephony_bridge.call_log import open_for_writing
from telephony_bridge.outbound.campaigns_schedule import Campaign, CampaignSettings, CampaignState, Row, RowState, Window

T = TypeVar("T")


@dataclass(frozen=True)
class CampaignView:
    """A campaign as the admin API shows it: its settings, state and every row."""

    campaign_id: str
    created_at: datetime
    state: CampaignState
    settings: CampaignSettings
    rows: tuple[Row, ...]


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _row(row: sqlite3.Row) -> Row:
    return Row(
        campaign_id=row["campaign_id"], position=row["position"], to_number=row["to_number"],
        context=json.loads(row["context"]), timezone=row["timezone"], state=RowState(row["state"]),
        attempts=row["attempts"], next_attempt_at=_when(row["next_attempt_at"]), outcome=row["outcome"],
        detail=row["detail"], call_sid=row["call_sid"], amd_result=row["amd_result"],
    )


def _settings(row: sqlite3.Row) -> CampaignSettings:
    return CampaignSettings(
        from_number=row["from_number"], concurrency=row["concurrency"], retries=row["retries"],
        retry_delay_s=row["retry_delay_s"], window=Window.parse(row["calling_window"]) if row["calling_window"] else None,
        timezone=row["timezone"],
    )


class CampaignStore:
    """The campaign tables of the database at `path`, through one connection on one worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="campaigns")
        self._connection: sqlite3.Connection | None = None

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, work, *args)

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = open_for_writing(self.path)
            self._connection.row_factory = sqlite3.Row
        return self._connection

    async def open(self) -> None:
        """Create the file or bring its schema up to date; raises `sqlite3.Error` or `CallLogError` if it cannot.

        Tried twice: the call log's own thread opens the same file at start, and one of two connections
        migrating the schema at once finds the other's tables there.
        """
        try:
            await self._run(self._db)
        except sqlite3.Error:
            await asyncio.sleep(0.5)
            await self._run(self._db)

    async def close(self) -> None:
        def close() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        await self._run(close)
        self._worker.shutdown(wait=True)

    async def create(self, campaign_id: str, settings: CampaignSettings, rows: list[Row], now: datetime) -> None:
        await self._run(self._create, campaign_id, settings, rows, now)

    def _create(self, campaign_id: str, settings: CampaignSettings, rows: list[Row], now: datetime) -> None:
        db = self._db()
        with db:
            db.execute(
                "INSERT INTO campaigns (campaign_id, created_at, state, from_number, concurrency, retries, retry_delay_s,"
                " calling_window, timezone) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (campaign_id, now.isoformat(), CampaignState.RUNNING.value, settings.from_number, settings.concurrency,
                 settings.retries, settings.retry_delay_s, str(settings.window) if settings.window else None,
                 settings.timezone),
            )
            db.executemany(
                "INSERT INTO campaign_rows (campaign_id, position, to_number, context, timezone, state, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(campaign_id, row.position, row.to_number, json.dumps(dict(row.context)), row.timezone,
                  row.state.value, now.isoformat()) for row in rows],
            )

    def save_soon(self, row: Row) -> asyncio.Future[None]:
        """Queue the row's write now (so writes keep the order of the changes); await the future to know it is committed."""
        return asyncio.get_running_loop().run_in_executor(self._worker, self._save, row, datetime.now(UTC))

    async def save(self, row: Row) -> None:
        await self.save_soon(row)

    def _save(self, row: Row, now: datetime) -> None:
        db = self._db()
        with db:
            db.execute(
                "UPDATE campaign_rows SET state = ?, attempts = ?, next_attempt_at = ?, outcome = ?, detail = ?,"
                " call_sid = ?, amd_result = ?, updated_at = ? WHERE campaign_id = ? AND position = ?",
                (row.state.value, row.attempts, row.next_attempt_at.isoformat() if row.next_attempt_at else None,
                 row.outcome, row.detail, row.call_sid, row.amd_result, now.isoformat(), row.campaign_id, row.position),
            )

    def set_state_soon(self, campaign_id: str, state: CampaignState) -> asyncio.Future[None]:
        return asyncio.get_running_loop().run_in_executor(self._worker, self._set_state, campaign_id, state)

    async def set_state(self, campaign_id: str, state: CampaignState) -> None:
        await self.set_state_soon(campaign_id, state)

    def _set_state(self, campaign_id: str, state: CampaignState) -> None:
        db = self._db()
        with db:
            db.execute("UPDATE campaigns SET state = ? WHERE campaign_id = ?", (state.value, campaign_id))

    async def unfinished(self) -> list[Campaign]:
        """Every campaign not finished, with its rows: what a starting bridge takes up again."""
        def read() -> list[Campaign]:
            db = self._db()
            campaigns = db.execute("SELECT * FROM campaigns WHERE state != ?", (CampaignState.FINISHED.value,)).fetchall()
            loaded = []
            for found in campaigns:
                rows = db.execute("SELECT * FROM campaign_rows WHERE campaign_id = ?", (found["campaign_id"],)).fetchall()
                loaded.append(Campaign(found["campaign_id"], _settings(found), [_row(row) for row in rows],
                                       CampaignState(found["state"])))
            return loaded

        return await self._run(read)

    async def view(self, campaign_id: str) -> CampaignView | None:
        """The campaign as committed, after every write queued before this call."""
        def read() -> CampaignView | None:
            db = self._db()
            found = db.execute("SELECT * FROM campaigns WHERE campaign_id = ?", (campaign_id,)).fetchone()
            if found is None:
                return None
            rows = db.execute(
                "SELECT * FROM campaign_rows WHERE campaign_id = ? ORDER BY position", (campaign_id,)
            ).fetchall()
            return CampaignView(campaign_id, datetime.fromisoformat(found["created_at"]), CampaignState(found["state"]),
                                _settings(found), tuple(_row(row) for row in rows))

        return await self._run(read)

    async def counts(self) -> list[tuple[str, str, Mapping[str, int]]]:
        """Every campaign, newest first: its id, state and how many rows are in each row state."""
        def read() -> list[tuple[str, str, Mapping[str, int]]]:
            db = self._db()
            campaigns = db.execute("SELECT campaign_id, state FROM campaigns ORDER BY created_at DESC").fetchall()
            counted: dict[str, dict[str, int]] = {}
            for row in db.execute("SELECT campaign_id, state, COUNT(*) AS n FROM campaign_rows GROUP BY campaign_id, state"):
                counted.setdefault(row["campaign_id"], {})[row["state"]] = row["n"]
            return [(found["campaign_id"], found["state"], counted.get(found["campaign_id"], {})) for found in campaigns]

        return await self._run(read)
