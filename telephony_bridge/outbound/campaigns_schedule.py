"""A campaign's rows and when to dial each, sans I/O: rows and the time in, rows to dial and their changes out.

A row moves through a small table of states (`ROW_TRANSITIONS`); so does the campaign (`CAMPAIGN_TRANSITIONS`).
The one rule every transition serves: nobody is dialled twice by mistake. A row is `dialling` from just
before its create request to its outcome; only `pending` rows are ever dialled, and a row that was
`dialling` when the process stopped without a call SID to look up becomes `unknown` for an operator.

Time is data: `now` is an aware UTC datetime the caller passes in, and the calling window is checked in
the row's own time zone (its `timezone` column, an IANA name) or else the campaign's.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from telephony_bridge.errors import BridgeError

RETRIED_OUTCOMES = frozenset({"no-answer", "busy"})
"""An attempt that ended so is tried again, `retries` times at most; every other outcome is final."""
FINAL_OUTCOMES = frozenset({"human", "voicemail", "fax", "failed", "do-not-call", "opted-out", "refused"})
SETTLED_OUTCOMES = frozenset(FINAL_OUTCOMES | RETRIED_OUTCOMES)
"""What an operator may record for a row left `unknown`, having checked Twilio's call log."""


class RowState(enum.StrEnum):
    PENDING = "pending"
    """Waiting for its first attempt, or for a retry at `next_attempt_at`."""
    DIALLING = "dialling"
    """Committed as such before the create request; the call SID is kept once Twilio gives it."""
    DONE = "done"
    """Its outcome is final."""
    UNKNOWN = "unknown"
    """Found dialling after a restart with no call SID: whether Twilio placed the call is for an operator to find out.
    They settle it: `done` with the outcome they found, or back to `pending` to be dialled again."""


class CampaignState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    """No new dials; calls in progress finish and their outcomes are kept."""
    FINISHED = "finished"


ROW_TRANSITIONS: Mapping[tuple[RowState, str], RowState] = {
    (RowState.PENDING, "dial"): RowState.DIALLING,
    (RowState.DIALLING, "placed"): RowState.DIALLING,
    (RowState.DIALLING, "retry"): RowState.PENDING,
    (RowState.DIALLING, "final"): RowState.DONE,
    (RowState.DIALLING, "lost"): RowState.UNKNOWN,
    (RowState.UNKNOWN, "settle"): RowState.DONE,
    (RowState.UNKNOWN, "redial"): RowState.PENDING,
}
CAMPAIGN_TRANSITIONS: Mapping[tuple[CampaignState, str], CampaignState] = {
    (CampaignState.RUNNING, "pause"): CampaignState.PAUSED,
    (CampaignState.PAUSED, "resume"): CampaignState.RUNNING,
    (CampaignState.RUNNING, "finish"): CampaignState.FINISHED,
    (CampaignState.PAUSED, "finish"): CampaignState.FINISHED,
    (CampaignState.FINISHED, "reopen"): CampaignState.RUNNING,
}
"""A campaign finishes when each row is done or unknown; an operator who puts an unknown row back reopens it."""


class CampaignStateError(BridgeError):
    """A transition the state tables do not allow, named with the state it was tried in."""

    def __init__(self, what: str, state: str, event: str) -> None:
        self.state = state
        super().__init__(f"{what} is {state}: cannot {event}")


class CampaignInvalid(BridgeError):
    """A campaign submitted with something wrong, named (a row's number, a window, a time zone)."""


@dataclass(frozen=True)
class Window:
    """Local hours in which calls may be placed: `start` inclusive, `end` exclusive; past midnight when `end` < `start`."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> Window:
        """`"09:00-18:00"`; raises `CampaignInvalid` naming the text."""
        try:
            start, end = (time.fromisoformat(part.strip()) for part in text.split("-"))
        except ValueError:
            raise CampaignInvalid(f"between: {text!r} is not HH:MM-HH:MM such as 09:00-18:00") from None
        if start == end:
            raise CampaignInvalid(f"between: {text!r} is an empty window")
        return cls(start, end)

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def contains(self, local: datetime) -> bool:
        now = local.time().replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end

    def next_opening(self, local: datetime) -> datetime:
        """The first moment after `local` (aware) at which the window opens, in `local`'s zone."""
        zone = local.tzinfo
        opening = datetime.combine(local.date(), self.start, zone)
        if opening <= local:
            opening = datetime.combine(local.date() + timedelta(days=1), self.start, zone)
        return opening


def zone(name: str) -> ZoneInfo:
    """An IANA time zone by name; raises `CampaignInvalid` naming it when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CampaignInvalid(f"{name!r} is not a time zone name such as Europe/London or America/New_York") from None


@dataclass(frozen=True)
class CampaignSettings:
    from_number: str
    concurrency: int = 1
    retries: int = 0
    retry_delay_s: float = 600.0
    window: Window | None = None
    timezone: str = "UTC"
    """The operator's zone: the window's zone for rows without their own."""


@dataclass(frozen=True)
class Row:
    """One callee of a campaign, as stored; `position` is its line in the list (from 0)."""

    campaign_id: str
    position: int
    to_number: str
    context: Mapping[str, str] = field(default_factory=dict)
    timezone: str | None = None
    state: RowState = RowState.PENDING
    attempts: int = 0
    next_attempt_at: datetime | None = None
    outcome: str | None = None
    """The last attempt's outcome; final once `state` is `done`."""
    detail: str = ""
    call_sid: str | None = None
    amd_result: str | None = None

    @property
    def key(self) -> str:
        """What the placing code is given as `campaign_row`, and gives back with the outcome."""
        return f"{self.campaign_id}:{self.position}"

    def moved(self, event: str, **changes: object) -> Row:
        target = ROW_TRANSITIONS.get((self.state, event))
        if target is None:
            raise CampaignStateError(f"row {self.position} of campaign {self.campaign_id}", self.state, event)
        return replace(self, state=target, **changes)  # type: ignore[arg-type]


class Campaign:
    """One campaign's rows in memory and the decisions about them; every change returns the row to store."""

    def __init__(self, campaign_id: str, settings: CampaignSettings, rows: Iterable[Row],
                 state: CampaignState = CampaignState.RUNNING) -> None:
        self.id = campaign_id
        self.settings = settings
        self.state = state
        self.rows: dict[int, Row] = {row.position: row for row in rows}
        self._zones: dict[str, ZoneInfo] = {}

    def move(self, event: str) -> CampaignState:
        target = CAMPAIGN_TRANSITIONS.get((self.state, event))
        if target is None:
            raise CampaignStateError(f"campaign {self.id}", self.state, event)
        self.state = target
        return target

    @property
    def dialling(self) -> list[Row]:
        return [row for row in self.rows.values() if row.state is RowState.DIALLING]

    @property
    def settled(self) -> bool:
        """Every row's outcome is final (or left for an operator)."""
        return all(row.state in (RowState.DONE, RowState.UNKNOWN) for row in self.rows.values())

    def _local(self, row: Row, now: datetime) -> datetime:
        name = row.timezone or self.settings.timezone
        if name not in self._zones:
            self._zones[name] = zone(name)
        return now.astimezone(self._zones[name])

    def due_at(self, row: Row, now: datetime) -> datetime:
        """When `row` (pending) may be dialled: its retry time, moved on to the window's next opening if that is closed."""
        at = max(now, row.next_attempt_at) if row.next_attempt_at is not None else now
        window = self.settings.window
        if window is None:
            return at
        local = self._local(row, at)
        return at if window.contains(local) else window.next_opening(local).astimezone(UTC)

    def to_dial(self, now: datetime, free_lines: int) -> list[Row]:
        """The pending rows to dial now, in list order: at most `concurrency` dialling at once, and at most `free_lines`."""
        if self.state is not CampaignState.RUNNING:
            return []
        room = min(self.settings.concurrency - len(self.dialling), free_lines)
        chosen: list[Row] = []
        for row in sorted(self.rows.values(), key=lambda row: row.position):
            if len(chosen) >= room:
                break
            if row.state is RowState.PENDING and self.due_at(row, now) <= now:
                chosen.append(row)
        return chosen

    def next_wake(self, now: datetime) -> datetime | None:
        """When a pending row next falls due (a retry's delay, a window opening); `None`: none waits on time."""
        if self.state is not CampaignState.RUNNING:
            return None
        return min((self.due_at(row, now) for row in self.rows.values() if row.state is RowState.PENDING), default=None)

    def _put(self, row: Row) -> Row:
        self.rows[row.position] = row
        return row

    def dial(self, position: int) -> Row:
        row = self.rows[position]
        return self._put(row.moved("dial", attempts=row.attempts + 1, next_attempt_at=None, call_sid=None))

    def placed(self, position: int, call_sid: str) -> Row:
        """Twilio created the call; an outcome may have come first, and then only the SID is kept."""
        row = self.rows[position]
        if row.state is not RowState.DIALLING:
            return self._put(replace(row, call_sid=row.call_sid or call_sid))
        return self._put(row.moved("placed", call_sid=call_sid))

    def ended(self, position: int, outcome: str, now: datetime, *, amd_result: str | None = None,
              call_sid: str | None = None, detail: str = "") -> Row | None:
        """The attempt's outcome: retried later if no-answer or busy and retries are left, else final.

        `None` when the row is not dialling (an outcome heard twice, or after the row was settled): nothing changes.
        """
        row = self.rows[position]
        if row.state is not RowState.DIALLING:
            return None
        changes: dict[str, object] = {"outcome": outcome, "amd_result": amd_result, "detail": detail,
                                      "call_sid": call_sid or row.call_sid}
        if outcome in RETRIED_OUTCOMES and row.attempts <= self.settings.retries:
            moved = row.moved("retry", next_attempt_at=now + timedelta(seconds=self.settings.retry_delay_s), **changes)
        else:
            moved = row.moved("final", **changes)
        return self._put(moved)

    def lost(self, position: int, detail: str = "the bridge stopped while placing this call; check Twilio's call log") -> Row:
        """Found dialling after a restart with no call SID (or one Twilio does not know): never dialled again."""
        row = self.rows[position]
        return self._put(row.moved("lost", detail=detail))

    def settle(self, position: int, outcome: str, detail: str, call_sid: str | None = None) -> Row:
        """An operator's outcome for a row left unknown; raises `CampaignInvalid` for an outcome that is not one."""
        if outcome not in SETTLED_OUTCOMES:
            raise CampaignInvalid(f"outcome: {outcome!r} is not one of {', '.join(sorted(SETTLED_OUTCOMES))}")
        row = self.rows[position]
        return self._put(row.moved("settle", outcome=outcome, detail=detail, call_sid=call_sid or row.call_sid))

    def redial(self, position: int, detail: str) -> Row:
        """An operator found no call to a row left unknown: it is pending again (and the campaign runs, if it had finished)."""
        row = self.rows[position].moved("redial", detail=detail, next_attempt_at=None)
        if self.state is CampaignState.FINISHED:
            self.move("reopen")
        return self._put(row)

    def finish_if_settled(self) -> bool:
        """Move to `finished` once every row is settled; True when it just did."""
        if self.state is not CampaignState.FINISHED and self.settled:
            self.move("finish")
            return True
        return False


def outcome_of_record(record: Mapping[str, object]) -> str | None:
    """The outcome of a call from Twilio's record of it (`status`, `answered_by`); `None` while it is not over."""
    status = str(record.get("status") or "")
    if status in ("queued", "initiated", "ringing", "in-progress"):
        return None
    if status in ("busy", "no-answer", "failed"):
        return status
    if status == "canceled":
        return "failed"
    answered_by = str(record.get("answered_by") or "")
    if answered_by.startswith("machine"):
        return "voicemail"
    if answered_by == "fax":
        return "fax"
    return "human" if status == "completed" else "failed"
