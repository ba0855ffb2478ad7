"""Call lists (campaigns) run in the server: the runner that dials rows through `OutboundCalls` and keeps their outcomes.

The decisions are `campaigns_schedule` (sans I/O); this module moves them to the database and to the placing
code. Its promises:

* a row is committed `dialling` before its create request goes out, so a restarted bridge never dials
  blindly someone it may have called: it asks Twilio's record of the call (`find_call`) when it kept the
  call SID, and leaves the row `unknown` for an operator when it did not;
* at most `concurrency` of a campaign's rows dial at once, and no dial takes the bridge past `[limits]
  max_calls` (live calls, inbound ones included, plus calls being placed);
* each row gets one final outcome, from the placing code's outcome (or from Twilio's record after a restart).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from telephony_bridge.call.switchboard import Switchboard
from telephony_bridge.errors import CallLogError
from telephony_bridge.outbound.campaigns_schedule import (
    FINAL_OUTCOMES,
    Campaign,
    CampaignInvalid,
    CampaignSettings,
    CampaignState,
    Row,
    RowState,
    Window,
    outcome_of_record,
    zone,
)
from telephony_bridge.outbound.campaigns_store import CampaignStore
from telephony_bridge.outbound.placing import OutboundOutcome, OutboundRefused, OutboundRequest, PlacedCall

log = logging.getLogger(__name__)

E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
TIMEZONE_COLUMN = "timezone"
"""A row's column naming its callee's time zone (IANA); the other columns besides `to` are the call's context."""
MAX_ROWS = 100_000
RECONCILE_INTERVAL_S = 30.0
"""How often a row found dialling after a restart asks Twilio's record of its call again, until the call is over
(`[campaigns] reconcile_seconds`)."""
BLOCKED_POLL_S = 1.0
"""How soon a campaign waiting for a free line looks again: calls end without telling the runner."""
IDLE_WAKE_S = 60.0
STOP_WAIT_S = 5.0
"""Twilio answers a create request in well under a second; a stop waits this long for those in flight."""


class Placing(Protocol):
    """What the runner needs of `OutboundCalls` (`app.state.outbound`)."""

    async def place(self, request: OutboundRequest) -> PlacedCall: ...

    def add_outcome_listener(self, listener: Callable[[OutboundOutcome], None]) -> None: ...

    async def find_call(self, call_sid: str) -> dict[str, Any] | None: ...

    def placeholders_of(self, from_number: str) -> list[str]: ...


class CampaignRequest(BaseModel):
    """`POST /admin/campaigns`: the rows and the settings."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_number: str = Field(alias="from")
    rows: list[dict[str, str]] = Field(min_length=1, max_length=MAX_ROWS)
    concurrency: int = Field(default=1, ge=1, le=1000)
    retries: int = Field(default=0, ge=0, le=10)
    retry_delay_s: float = Field(default=600.0, ge=0)
    between: str | None = None
    """`HH:MM-HH:MM`, in each row's `timezone` column, else in `timezone`."""
    timezone: str = "UTC"

    def campaign(self, campaign_id: str, placeholders: Collection[str] = ()) -> tuple[CampaignSettings, list[Row]]:
        """The settings and rows to store; raises `CampaignInvalid` naming the first thing wrong.

        `placeholders` are those the `from` number's texts hold: a row without a value for each is refused here,
        with its number and the placeholder, rather than found one by one as the rows come up for dialling.
        """
        if not E164.match(self.from_number):
            raise CampaignInvalid(f"from: {self.from_number!r} is not an E.164 number such as +15550001111")
        zone(self.timezone)
        window = Window.parse(self.between) if self.between else None
        rows = []
        for position, columns in enumerate(self.rows):
            to_number = columns.get("to", "").strip()
            if not E164.match(to_number):
                raise CampaignInvalid(f"row {position + 1}: to: {to_number!r} is not an E.164 number such as +15557654321")
            row_zone = columns.get(TIMEZONE_COLUMN, "").strip() or None
            if row_zone is not None:
                try:
                    zone(row_zone)
                except CampaignInvalid as error:
                    raise CampaignInvalid(f"row {position + 1}: {TIMEZONE_COLUMN}: {error}") from None
            context = {key: value for key, value in columns.items() if key not in ("to", TIMEZONE_COLUMN)}
            missing = next((name for name in placeholders if not context.get(name, "").strip()), None)
            if missing is not None:
                raise CampaignInvalid(
                    f"row {position + 1}: no value for the placeholder {{{missing}}} (a column {missing!r}, not empty)"
                )
            rows.append(Row(campaign_id, position, to_number, context, row_zone))
        settings = CampaignSettings(self.from_number, self.concurrency, self.retries, self.retry_delay_s, window,
                                    self.timezone)
        return settings, rows


def switchboard_lines(switchboard: Switchboard) -> Callable[[Collection[str | None]], int]:
    """Free lines under `max_calls`: the limit less the live calls and the dials that are not live calls yet."""

    def free(dialling: Collection[str | None]) -> int:
        live = {call.call_sid for call in switchboard.calls_in_progress()}
        placing = sum(1 for call_sid in dialling if call_sid is None or call_sid not in live)
        return switchboard.config.limits.max_calls - len(live) - placing

    return free


class RunnerLifecycle(ABC):
    """What both campaign runners share: the submit-time check of a list, pause and resume, and a stop that gives
    create requests in flight `STOP_WAIT_S` to answer, so their rows keep the call SID that settles them after the
    restart (one still unanswered is abandoned, its row `unknown` then)."""

    store: Any
    _placing: Placing
    _task: asyncio.Task[None] | None
    _calls: set[asyncio.Task[None]]
    _stopped: bool

    async def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._calls:
            await asyncio.wait(list(self._calls), timeout=STOP_WAIT_S)
        for task in list(self._calls):
            task.cancel()
        await asyncio.gather(*self._calls, return_exceptions=True)
        await self.store.close()

    def _checked_list(self, request: CampaignRequest) -> tuple[str, CampaignSettings, list[Row]]:
        """A new campaign's id, settings and rows; raises `CampaignInvalid` (an unknown number, a missing placeholder)."""
        campaign_id = "CM" + secrets.token_hex(8)
        try:
            needed = self._placing.placeholders_of(request.from_number)
        except OutboundRefused:
            raise CampaignInvalid(
                f"from: {request.from_number} is not one of the bridge's numbers (no [numbers.\"{request.from_number}\"] table)"
            ) from None
        settings, rows = request.campaign(campaign_id, needed)
        return campaign_id, settings, rows

    async def pause(self, campaign_id: str) -> CampaignState | None:
        return await self._move(campaign_id, "pause")

    async def resume(self, campaign_id: str) -> CampaignState | None:
        return await self._move(campaign_id, "resume")

    @abstractmethod
    async def _move(self, campaign_id: str, event: str) -> CampaignState | None:
        """Pause or resume a campaign (`event`): its new state, `None` when there is no such campaign here."""


class CampaignRunner(RunnerLifecycle):
    """Runs every unfinished campaign of the database; one per server, started and stopped with it."""

    def __init__(
        self,
        store: CampaignStore,
        placing: Placing,
        free_lines: Callable[[Collection[str | None]], int],
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        reconcile_interval_s: float = RECONCILE_INTERVAL_S,
    ) -> None:
        self.store = store
        self._placing = placing
        self._free_lines = free_lines
        self._now = now
        self._reconcile_interval = timedelta(seconds=reconcile_interval_s)
        self._campaigns: dict[str, Campaign] = {}
        self._checked: dict[str, datetime] = {}
        """Rows found dialling at start, by key, and when Twilio's record of their call was last asked."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self._stopped = False

    async def start(self) -> None:
        """Take up the unfinished campaigns: rows dialling with no call SID become `unknown`, the others are looked up."""
        for campaign in await self.store.unfinished():
            self._campaigns[campaign.id] = campaign
            for row in campaign.dialling:
                if row.call_sid is None:
                    log.warning("campaign %s: row %d (%s) was being dialled when the bridge stopped; left as unknown",
                                campaign.id, row.position + 1, row.to_number)
                    self._keep(campaign, campaign.lost(row.position))
                else:
                    self._checked[row.key] = datetime.min.replace(tzinfo=UTC)
            self._keep_state(campaign)
        self._placing.add_outcome_listener(self._heard)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="campaigns")

    async def submit(self, request: CampaignRequest) -> str:
        """Store a new campaign and start dialling it; its id. Raises `CampaignInvalid`."""
        campaign_id, settings, rows = self._checked_list(request)
        await self.store.create(campaign_id, settings, rows, self._now())
        self._campaigns[campaign_id] = Campaign(campaign_id, settings, rows)
        log.info("campaign %s: %d rows from %s, %d at once", campaign_id, len(rows), settings.from_number,
                 settings.concurrency)
        self._wake.set()
        return campaign_id

    async def _move(self, campaign_id: str, event: str) -> CampaignState | None:
        """`None` when the campaign is not running here (unknown, or finished); raises `CampaignStateError`."""
        campaign = self._campaigns.get(campaign_id)
        if campaign is None:
            return None
        state = campaign.move(event)
        await self.store.set_state(campaign_id, state)
        log.info("campaign %s: %s", campaign_id, state)
        self._wake.set()
        return state

    async def settle(self, campaign_id: str, position: int, outcome: str | None, *, call_sid: str | None = None) -> Row | None:
        """An operator settles a row left `unknown`: `outcome` (what they found in Twilio's call log) makes it done;
        `None` puts it back to pending, to be dialled again (reopening the campaign if it had finished).

        `None` when there is no such campaign or row; raises `CampaignStateError` (the row is not unknown) or
        `CampaignInvalid` (not an outcome).
        """
        campaign = self._campaigns.get(campaign_id)
        if campaign is None:
            view = await self.store.view(campaign_id)
            if view is None:
                return None
            campaign = Campaign(view.campaign_id, view.settings, view.rows, view.state)
        if position not in campaign.rows:
            return None
        if outcome is None:
            row = campaign.redial(position, "put back to pending by an operator")
        else:
            row = campaign.settle(position, outcome, "settled by an operator", call_sid)
        await self.store.save(row)
        log.info("campaign %s: row %d (%s) settled by an operator: %s", campaign_id, position + 1, row.to_number,
                 outcome or "dial again")
        if campaign.state is CampaignState.RUNNING and campaign_id not in self._campaigns:
            await self.store.set_state(campaign_id, CampaignState.RUNNING)
            self._campaigns[campaign_id] = campaign
        self._wake.set()
        return row

    def known(self, campaign_id: str) -> bool:
        return campaign_id in self._campaigns

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            wait_s = await self._step()
            try:
                await asyncio.wait_for(self._wake.wait(), wait_s)
            except TimeoutError:
                pass

    async def _step(self) -> float:
        """Reconcile, dial what is due; how long to wait before the next step unless something wakes the runner."""
        now = self._now()
        await self._reconcile(now)
        wake_s = IDLE_WAKE_S
        if self._checked:
            wake_s = min(wake_s, self._reconcile_interval.total_seconds())
        for campaign in list(self._campaigns.values()):
            free = self._free_lines([row.call_sid for c in self._campaigns.values() for row in c.dialling])
            due = campaign.to_dial(now, free)
            for row in due:
                if campaign.state is not CampaignState.RUNNING:
                    break
                dialling = campaign.dial(row.position)
                try:
                    await self.store.save(dialling)
                except Exception:
                    log.exception("campaign %s: the database cannot be written; the campaign is paused", campaign.id)
                    campaign.move("pause")
                    break
                task = asyncio.get_running_loop().create_task(self._place(campaign, dialling))
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)
            next_due = campaign.next_wake(now)
            if next_due is not None:
                # Due already but not dialled: waiting for a line or a concurrency slot, which no event may announce.
                wake_s = min(wake_s, BLOCKED_POLL_S if next_due <= now else (next_due - now).total_seconds())
        return wake_s

    async def _place(self, campaign: Campaign, row: Row) -> None:
        request = OutboundRequest(campaign.settings.from_number, row.to_number, dict(row.context), row.key)
        try:
            placed = await self._placing.place(request)
        except OutboundRefused as refused:
            outcome = refused.reason if refused.reason in FINAL_OUTCOMES else "refused"
            self._settle(campaign, campaign.ended(row.position, outcome, self._now(), detail=refused.reason))
            return
        except Exception as error:  # the create request may have gone out: the row is settled, never dialled again
            log.exception("campaign %s: placing row %d failed", campaign.id, row.position + 1)
            self._settle(campaign, campaign.ended(row.position, "failed", self._now(), detail=type(error).__name__))
            return
        self._keep(campaign, campaign.placed(row.position, placed.call_sid))

    def _heard(self, outcome: OutboundOutcome) -> None:
        """The placing code's outcome of a call: the row it names moves on (once)."""
        if self._stopped:
            return  # a call ended during the shutdown: its row is settled from Twilio's record after the restart
        found = self._row_of(outcome)
        if found is None:
            return
        campaign, position = found
        self._settle(campaign, campaign.ended(position, outcome.outcome, self._now(), amd_result=outcome.amd_result,
                                              call_sid=outcome.call_sid))

    def _row_of(self, outcome: OutboundOutcome) -> tuple[Campaign, int] | None:
        if outcome.campaign_row:
            campaign_id, _, position = outcome.campaign_row.partition(":")
            campaign = self._campaigns.get(campaign_id)
            if campaign is not None and position.isdigit() and int(position) in campaign.rows:
                return campaign, int(position)
        for campaign in self._campaigns.values():
            for row in campaign.dialling:
                if outcome.call_sid and row.call_sid == outcome.call_sid:
                    return campaign, row.position
        return None

    async def _reconcile(self, now: datetime) -> None:
        """Ask Twilio's record of each call a previous process left dialling, until the call is over."""
        for campaign in list(self._campaigns.values()):
            for row in campaign.dialling:
                last = self._checked.get(row.key)
                if last is None or row.call_sid is None or now - last < self._reconcile_interval:
                    continue
                self._checked[row.key] = now
                try:
                    record = await self._placing.find_call(row.call_sid)
                except Exception as error:
                    log.warning("campaign %s: Twilio's record of call %s cannot be read now: %s", campaign.id,
                                row.call_sid, type(error).__name__)
                    continue
                if record is None:
                    self._settle(campaign, campaign.lost(row.position, "Twilio has no record of this call"))
                    continue
                outcome = outcome_of_record(record)
                if outcome is not None:
                    answered_by = record.get("answered_by")
                    self._settle(campaign, campaign.ended(
                        row.position, outcome, now, amd_result=str(answered_by) if answered_by else None,
                        detail="from Twilio's record of the call, after a restart",
                    ))

    def _settle(self, campaign: Campaign, row: Row | None) -> None:
        if row is None:
            return
        if row.state is not RowState.DIALLING:
            self._checked.pop(row.key, None)
        self._keep(campaign, row)
        self._keep_state(campaign)
        self._wake.set()

    def _keep(self, campaign: Campaign, row: Row) -> None:
        """Queue the row's write now, so the file sees the changes in the order they were made."""
        self.store.save_soon(row).add_done_callback(_log_failure)

    def _keep_state(self, campaign: Campaign) -> None:
        if campaign.finish_if_settled():
            counts: dict[str, int] = {}
            for row in campaign.rows.values():
                counts[row.outcome or row.state] = counts.get(row.outcome or row.state, 0) + 1
            log.info("campaign %s finished: %s", campaign.id, ", ".join(f"{n} {what}" for what, n in sorted(counts.items())))
            self.store.set_state_soon(campaign.id, CampaignState.FINISHED).add_done_callback(_log_failure)
            del self._campaigns[campaign.id]


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("a campaign change was not written to the database: %s", future.exception())


def progress_counts(rows: Collection[Row]) -> Mapping[str, int]:
    """How many rows are in each state, and how many final ones ended in each outcome."""
    counts: dict[str, int] = {state.value: 0 for state in RowState}
    for row in rows:
        counts[row.state.value] += 1
        if row.state is RowState.DONE and row.outcome:
            counts[row.outcome] = counts.get(row.outcome, 0) + 1
    return counts


async def start_campaigns(
    path: Path, placing: Placing, switchboard: Switchboard, reconcile_interval_s: float = RECONCILE_INTERVAL_S
) -> CampaignRunner | None:
    """The server's runner on the call log's database, with its unfinished campaigns taken up; `None` (campaigns off,
    with a warning) when the database cannot be opened: like the call log, it never keeps the bridge from answering."""
    store = CampaignStore(path)
    try:
        await store.open()
    except (sqlite3.Error, CallLogError) as error:
        log.warning("campaigns are off: the call log's database %s cannot be opened: %s", path, error)
        await store.close()
        return None
    runner = CampaignRunner(store, placing, switchboard_lines(switchboard), reconcile_interval_s=reconcile_interval_s)
    await runner.start()
    return runner
