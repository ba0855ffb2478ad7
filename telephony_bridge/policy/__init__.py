"""Call policy an operator sets per number: hours, limits, usage and cost, retention; decisions only, no I/O.

The switchboard asks `profile_in_force` once, when a call is answered, and the call keeps that profile to
its end (a call that starts at 16:59 is not cut over to the after-hours persona at 17:00). The controller
asks `CallLimits` at each tick and each caller turn; it answers what to do next, and the controller does it
through the call-control hang-up, so a limit never cuts the model mid-sentence. `expired` says what of an
ended call its number's `retention_days` no longer allow to be kept.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from telephony_bridge.call.events import TokenUsage
from telephony_bridge.config import BridgeConfig, CallProfile, Hours, ModelPrices, Retention

InForce = Literal["always", "business_hours", "after_hours"]
"""Which of a number's profiles a call started with: `always` for a number without `hours`."""

WRAP_UP_LEAD_S = 60.0
"""How long before `max_call_minutes` the model is asked to wrap up (half the limit, for a limit under two minutes)."""

WRAP_UP_NOTE = ("About a minute of this call is left. Help the caller finish what they called for, "
                "and tell them the call will end soon if they need more time.")
PRESENCE_CHECK = "The line has been silent for a while. Ask, in one short sentence, whether the caller is still there."
GOODBYES = {
    "max_call_minutes": "This call has reached its time limit. Tell the caller so, briefly, and say goodbye.",
    "silence_hangup_seconds": "The caller did not answer. Say a short goodbye: the call ends now.",
    "max_cost_per_call": "This call has to end now. Apologise briefly, and say goodbye.",
}
"""The instructions of the goodbye each limit asks for; after it has played in full the line drops."""


def is_open(hours: Hours, when: datetime) -> bool:
    """Whether `when` (an aware datetime) falls in one of the day's spans, in the number's zone, and not on a holiday."""
    local = when.astimezone(ZoneInfo(hours.time_zone))
    if local.date().isoformat() in hours.holidays:
        return False
    now = local.time().replace(tzinfo=None)
    return any(start <= now and (end is None or now < end) for start, end in hours.spans(local.weekday()))


def profile_in_force(profile: CallProfile, when: datetime) -> tuple[InForce, CallProfile]:
    """The profile a call starting at `when` keeps to its end, and which one it is (for the call log)."""
    if profile.hours is None:
        return "always", profile
    if is_open(profile.hours, when):
        return "business_hours", profile
    return "after_hours", profile.after_hours if profile.after_hours is not None else profile


def cost_of(usage: TokenUsage, prices: ModelPrices | None) -> float | None:
    """The estimated cost of `usage` at `prices` (per million tokens); `None` without prices for the model."""
    if prices is None:
        return None
    cached_text = usage.cached_in - usage.cached_audio_in
    if prices.cached_in is None:
        cached = usage.cached_audio_in * prices.audio_in + cached_text * prices.text_in
    else:
        cached = usage.cached_in * prices.cached_in
    total = ((usage.audio_in - usage.cached_audio_in) * prices.audio_in + (usage.text_in - cached_text) * prices.text_in
             + cached + usage.audio_out * prices.audio_out + usage.text_out * prices.text_out)
    return total / 1_000_000


def unpriced_caps(config: BridgeConfig, model: str) -> list[tuple[str, str]]:
    """(key, reason) for each profile with a `max_cost_per_call` the model's missing `[prices]` would never enforce."""
    if model in config.prices:
        return []
    profiles = {"defaults": config.defaults, **{f'numbers."{number}"': p for number, p in config.numbers.items()}}
    reason = (f'needs [prices."{model}"] (the model calls use): without prices a call\'s cost is unknown, '
              "so the cap would never end a call")
    return [(f"{key}.max_cost_per_call", reason) for key, profile in profiles.items()
            if profile.max_cost_per_call is not None
            or profile.after_hours is not None and profile.after_hours.max_cost_per_call is not None]


class Stage(enum.Enum):
    TALKING = "talking"
    CHECKING = "checking presence"
    """The line was silent for `silence_hangup_seconds`: the model asked whether the caller is there."""
    ENDING = "ending"
    """A limit was reached: the goodbye is asked for, and the line drops once it has played."""


class Decision(enum.Enum):
    WRAP_UP = "wrap up"
    CHECK_PRESENCE = "check presence"
    END = "end"


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision
    limit: str = ""
    """For `END`: the key of the limit that was reached (`max_call_minutes`, ...)."""


class CallLimits:
    """A call's time, silence and cost limits; sans I/O, on the call's clock (seconds).

    Stages: TALKING -> CHECKING (silence) -> TALKING (the caller spoke) or ENDING (silence again);
    TALKING or CHECKING -> ENDING (time or cost). ENDING is final. The wrap-up note is asked for once.
    """

    def __init__(self, profile: CallProfile, started_at: float) -> None:
        self.stage = Stage.TALKING
        self._max_s = profile.max_call_minutes * 60.0 if profile.max_call_minutes is not None else None
        self._silence_s = profile.silence_hangup_seconds
        self._max_cost = profile.max_cost_per_call
        self._started_at = started_at
        self._active_at = started_at
        self._wrapped_up = False

    @property
    def wrap_up_at_s(self) -> float | None:
        """Seconds into the call at which the model is asked to wrap up."""
        if self._max_s is None:
            return None
        return self._max_s - min(WRAP_UP_LEAD_S, self._max_s / 2)

    def active(self, now: float) -> None:
        """Someone is speaking (the caller, or the model's audio is playing): the silence starts again."""
        self._active_at = now

    def caller_spoke(self, now: float) -> None:
        """The caller answered: a presence check is over, and the silence starts again."""
        self._active_at = now
        if self.stage is Stage.CHECKING:
            self.stage = Stage.TALKING

    def check(self, now: float, *, quiet: bool, cost: float | None) -> Verdict | None:
        """What a limit asks for now. Presence checks and goodbyes are only asked for on a `quiet` line (neither
        side speaking, the model idle), so nobody is cut off mid-sentence; the wrap-up note goes at once."""
        if self.stage is Stage.ENDING:
            return None
        elapsed = now - self._started_at
        limit = ""
        if self._max_s is not None and elapsed >= self._max_s:
            limit = "max_call_minutes"
        elif self._max_cost is not None and cost is not None and cost >= self._max_cost:
            limit = "max_cost_per_call"
        elif self._silence_s is not None and self.stage is Stage.CHECKING and now - self._active_at >= self._silence_s:
            limit = "silence_hangup_seconds"
        if limit and quiet:
            self.stage = Stage.ENDING
            return Verdict(Decision.END, limit)
        if limit:
            return None
        wrap_up_at = self.wrap_up_at_s
        if wrap_up_at is not None and not self._wrapped_up and elapsed >= wrap_up_at:
            self._wrapped_up = True
            return Verdict(Decision.WRAP_UP)
        if self._silence_s is not None and quiet and self.stage is Stage.TALKING and now - self._active_at >= self._silence_s:
            self.stage = Stage.CHECKING
            self._active_at = now
            return Verdict(Decision.CHECK_PRESENCE)
        return None


PurgeKind = Literal["recording", "transcript"]


def expired(retention: Retention, ended_at: datetime, now: datetime) -> frozenset[PurgeKind]:
    """What of a call that ended at `ended_at` its number's `retention_days` no longer allow at `now`."""
    due: set[PurgeKind] = set()
    if retention.recordings is not None and now - ended_at >= timedelta(days=retention.recordings):
        due.add("recording")
    if retention.transcripts is not None and now - ended_at >= timedelta(days=retention.transcripts):
        due.add("transcript")
    return frozenset(due)
