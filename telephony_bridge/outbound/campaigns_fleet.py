"""Call lists run by a fleet (`DATABASE_URL` set): every instance's runner takes rows from the shared tables.

The SQLite runner (`campaigns.CampaignRunner`) keeps one process's campaigns in memory and is their only writer.
Here the database is the only truth (`store.campaigns_postgres`): each step an instance takes due rows under
row locks (`SKIP LOCKED`), the campaign's concurrency counted across the fleet, commits them `dialling` under
its own name, then places them. A row's outcome is written once, by the instance that placed its call (which hears
it wherever the call's stream and callbacks landed: `placing.OutboundCalls`). Rows left
dialling by an instance that died are reconciled by one instance at a time: `unknown` without a call SID, else
adopted and settled from Twilio's record of the call, never dialled blindly again.

Both runners offer the admin routes the same methods (`submit`, `pause`, `resume`, `store.view`, `store.counts`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta

from telephony_bridge.call.switchboard import Switchboard
from telephony_bridge.outbound.campaigns import BLOCKED_POLL_S, CampaignRequest, Placing, RunnerLifecycle, switchboard_lines
from telephony_bridge.outbound.campaigns_schedule import (
    FINAL_OUTCOMES,
    CampaignSettings,
    CampaignState,
    Row,
    outcome_of_record,
)
from telephony_bridge.outbound.placing import OutboundOutcome, OutboundRefused, OutboundRequest
from telephony_bridge.store.base import StoreUnavailable
from telephony_bridge.store.campaigns_postgres import PostgresCampaigns

log = logging.getLogger(__name__)

STEP_S = BLOCKED_POLL_S
"""How often an instance looks for rows to take: a campaign submitted, resumed or freed elsewhere is not announced."""


class FleetCampaignRunner(RunnerLifecycle):
    """This instance's share of the fleet's campaigns; one per server, started and stopped with it."""

    def __init__(
        self,
        store: PostgresCampaigns,
        placing: Placing,
        free_lines: Callable[[Collection[str | None]], int],
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        reconcile_interval_s: float = 30.0,
        step_s: float = STEP_S,
    ) -> None:
        self.store = store
        self._placing = placing
        self._free_lines = free_lines
        self._now = now
        self._reconcile_interval = timedelta(seconds=reconcile_interval_s)
        self._step_s = step_s
        self._dialling: dict[str, str | None] = {}
        """This instance's rows between their take and their outcome, by key: the call SID once Twilio gave it."""
        self._checked: dict[str, tuple[Row, datetime]] = {}
        """Rows to settle from Twilio's record (adopted from a dead instance, or left by this one's last run)."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self._stopped = False

    async def start(self) -> None:
        await self.store.open()
        try:
            for row in await self.store.dialling_here():
                self._look_up_later(row)
        except StoreUnavailable as error:
            log.warning("campaigns: the database cannot be read now; this instance's rows are looked at later: %s", error)
        self._placing.add_outcome_listener(self._heard)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="campaigns")

    async def submit(self, request: CampaignRequest) -> str:
        """Store a new campaign for the fleet to dial; its id. Raises `CampaignInvalid` or `StoreUnavailable`."""
        campaign_id, settings, rows = self._checked_list(request)
        await self.store.create(campaign_id, settings, rows, self._now())
        log.info("campaign %s: %d rows from %s, %d at once across the fleet", campaign_id, len(rows), settings.from_number,
                 settings.concurrency)
        self._wake.set()
        return campaign_id

    async def _move(self, campaign_id: str, event: str) -> CampaignState | None:
        """`None` when no such campaign exists; raises `CampaignStateError`. Every instance sees it at its next step."""
        state = await self.store.move(campaign_id, event)
        if state is not None:
            log.info("campaign %s: %s", campaign_id, state)
            self._wake.set()
        return state

    async def settle(self, campaign_id: str, position: int, outcome: str | None, *, call_sid: str | None = None) -> Row | None:
        """An operator settles a row left `unknown`, as `CampaignRunner.settle` does, on the fleet's tables."""
        row = await self.store.settle(campaign_id, position, outcome, self._now(), call_sid=call_sid)
        if row is not None:
            log.info("campaign %s: row %d (%s) settled by an operator: %s", campaign_id, position + 1, row.to_number,
                     outcome or "dial again")
            self._wake.set()
        return row

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._step()
            except StoreUnavailable as error:
                log.warning("campaigns: the database does not answer; no row is taken until it does: %s", error)
            try:
                await asyncio.wait_for(self._wake.wait(), self._step_s)
            except TimeoutError:
                pass

    async def _step(self) -> None:
        now = self._now()
        lost, adopted = await self.store.adopt(now)
        for row in lost:
            log.warning("campaign %s: row %d (%s) was being dialled by an instance that stopped; left as unknown",
                        row.campaign_id, row.position + 1, row.to_number)
        for row in adopted:
            log.info("campaign %s: row %d adopted from a stopped instance; settled from Twilio's record of %s",
                     row.campaign_id, row.position + 1, row.call_sid)
            self._look_up_later(row)
        await self._reconcile(now)
        # A row whose outcome this instance never heard (its call forgotten, no status from callback nor Twilio) frees
        # its line here once another instance wrote one.
        still = {row.key for row in await self.store.dialling_here()}
        for key in [key for key in self._dialling if key not in still]:
            del self._dialling[key]
        free = self._free_lines(list(self._dialling.values()))
        if free <= 0:
            return
        for settings, row in await self.store.take(now, free):
            self._dialling[row.key] = None
            task = asyncio.get_running_loop().create_task(self._place(settings, row))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _place(self, settings: CampaignSettings, row: Row) -> None:
        request = OutboundRequest(settings.from_number, row.to_number, dict(row.context), row.key)
        try:
            placed = await self._placing.place(request)
        except OutboundRefused as refused:
            outcome = refused.reason if refused.reason in FINAL_OUTCOMES else "refused"
            await self._settle(row.key, outcome, detail=refused.reason)
            self._wake.set()  # nothing was dialled: the next row at once
            return
        except Exception as error:  # the create request may have gone out: the row is settled, never dialled again
            log.exception("campaign %s: placing row %d failed", row.campaign_id, row.position + 1)
            await self._settle(row.key, "failed", detail=type(error).__name__)
            self._wake.set()
            return
        if row.key in self._dialling:
            self._dialling[row.key] = placed.call_sid
        try:
            await self.store.placed(row, placed.call_sid)
        except StoreUnavailable as error:
            log.warning("campaign %s: row %d's call SID %s was not written: %s", row.campaign_id, row.position + 1,
                        placed.call_sid, error)

    def _heard(self, outcome: OutboundOutcome) -> None:
        """The outcome of a call placed here: its row moves on, once fleet-wide. The line it frees is left to whichever
        instance steps first (no wake here): the placer hears every outcome of its calls, and waking it at each would
        let the instance that took the first rows take all of them."""
        if self._stopped or not outcome.campaign_row:
            return
        task = asyncio.get_running_loop().create_task(
            self._settle(outcome.campaign_row, outcome.outcome, amd_result=outcome.amd_result, call_sid=outcome.call_sid)
        )
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _settle(self, key: str, outcome: str, *, amd_result: str | None = None, call_sid: str | None = None,
                      detail: str = "") -> None:
        self._dialling.pop(key, None)
        self._checked.pop(key, None)
        try:
            await self.store.ended(key, outcome, self._now(), amd_result=amd_result, call_sid=call_sid or None,
                                   detail=detail)
        except StoreUnavailable as error:
            log.error("campaign row %s: its outcome %s was not written: %s", key, outcome, error)

    def _look_up_later(self, row: Row) -> None:
        if row.call_sid is not None:
            self._checked[row.key] = (row, datetime.min.replace(tzinfo=UTC))

    async def _reconcile(self, now: datetime) -> None:
        """Ask Twilio's record of each call adopted here, until the call is over."""
        for key, (row, last) in list(self._checked.items()):
            if now - last < self._reconcile_interval or row.call_sid is None:
                continue
            self._checked[key] = (row, now)
            try:
                record = await self._placing.find_call(row.call_sid)
            except Exception as error:
                log.warning("campaign %s: Twilio's record of call %s cannot be read now: %s", row.campaign_id,
                            row.call_sid, type(error).__name__)
                continue
            if record is None:
                await self._settle(key, "failed", call_sid=row.call_sid, detail="Twilio has no record of this call")
                continue
            outcome = outcome_of_record(record)
            if outcome is not None:
                answered_by = record.get("answered_by")
                await self._settle(key, outcome, amd_result=str(answered_by) if answered_by else None, call_sid=row.call_sid,
                                   detail="from Twilio's record of the call, after its instance stopped")


async def start_fleet_campaigns(
    url: str, instance: str, lost_after_s: float, placing: Placing, switchboard: Switchboard, reconcile_interval_s: float
) -> FleetCampaignRunner:
    """The server's runner on the fleet's database, with the rows it left dialling in an earlier run taken up."""
    runner = FleetCampaignRunner(PostgresCampaigns(url, instance, lost_after_s=lost_after_s), placing,
                                 switchboard_lines(switchboard), reconcile_interval_s=reconcile_interval_s)
    await runner.start()
    return runner
