"""The Realtime session of one call: its states, and when to open, replace or give up on it.

A session is ready only once the service has confirmed its configuration (`session.updated`):
until then nothing of the caller's reaches a model that lacks its instructions. The session can
fail at any time. A new one is asked for with backoff while a budget lasts (the caller keeps the
line and their audio is held meanwhile); past the budget, or when trying again cannot help (a
401), the call falls back. A service that accepts sessions and then drops them must not make the
bridge open hundreds a second: a session that dies before it was stable for `stable_after_s` is
a failed try, so the backoff goes on growing, and no call opens more than
`max_opens_per_minute`. A session near its maximum age is replaced at a quiet moment, the new one
opened before the old one closes.

The states and the events that move between them are one table, in the manner of h11's
`_state.py`: an event a state does not expect raises `SessionStateError` naming both.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from telephony_bridge.errors import BridgeError


@dataclass(frozen=True)
class CallTimings:
    """The call's deadlines, in seconds; the defaults are what a caller tolerates."""

    connect_budget_s: float = 2.5
    """How long the caller may wait for a (new) session before hearing the fallback."""
    retry_delays_s: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
    media_timeout_s: float = 10.0
    renew_session_after_s: float = 25 * 60.0
    """Realtime sessions have a maximum length (30 minutes for earlier models); renew before it."""
    configure_timeout_s: float = 2.0
    """How long a new session may take to confirm its configuration before it counts as a failed try."""
    stable_after_s: float = 10.0
    """A session that lived this long was healthy: a later loss starts a fresh set of tries."""
    max_opens_per_minute: int = 8


class SessionState(enum.Enum):
    OPENING = "opening"
    """The call's first session is being opened."""
    CONFIGURING = "configuring"
    """A session is open and has been sent its configuration; the service has not confirmed it yet."""
    READY = "ready"
    """A configured session takes the call's events."""
    RENEWING = "renewing"
    """The session is old: a new one is opening, and takes over once open."""
    DOWN = "down"
    """The session was lost: a new one is opening (after a backoff delay)."""
    PARKED = "parked"
    """The caller is away (being transferred): no session until they come back."""
    FAILED = "failed"
    """No session could be had within the budget: the caller gets the fallback."""
    CLOSED = "closed"
    """The call ended."""


class SessionEvent(enum.Enum):
    CONNECTED = "connected"
    CONFIGURED = "configured"
    RETRY = "retry"
    GIVE_UP = "give up"
    RENEW = "renew"
    PARK = "park"
    RESUME = "resume"
    CLOSE = "close"


_TRANSITIONS: dict[tuple[SessionState, SessionEvent], SessionState] = {
    (SessionState.OPENING, SessionEvent.CONNECTED): SessionState.CONFIGURING,
    (SessionState.OPENING, SessionEvent.RETRY): SessionState.OPENING,
    (SessionState.OPENING, SessionEvent.GIVE_UP): SessionState.FAILED,
    (SessionState.CONFIGURING, SessionEvent.CONFIGURED): SessionState.READY,
    (SessionState.CONFIGURING, SessionEvent.RETRY): SessionState.DOWN,
    (SessionState.CONFIGURING, SessionEvent.GIVE_UP): SessionState.FAILED,
    (SessionState.READY, SessionEvent.RETRY): SessionState.DOWN,
    (SessionState.READY, SessionEvent.GIVE_UP): SessionState.FAILED,
    (SessionState.READY, SessionEvent.RENEW): SessionState.RENEWING,
    (SessionState.RENEWING, SessionEvent.CONNECTED): SessionState.CONFIGURING,
    (SessionState.RENEWING, SessionEvent.RETRY): SessionState.DOWN,
    (SessionState.RENEWING, SessionEvent.GIVE_UP): SessionState.FAILED,
    (SessionState.DOWN, SessionEvent.CONNECTED): SessionState.CONFIGURING,
    (SessionState.DOWN, SessionEvent.RETRY): SessionState.DOWN,
    (SessionState.DOWN, SessionEvent.GIVE_UP): SessionState.FAILED,
    (SessionState.PARKED, SessionEvent.RESUME): SessionState.DOWN,
    **{
        (state, SessionEvent.PARK): SessionState.PARKED
        for state in (SessionState.OPENING, SessionState.CONFIGURING, SessionState.READY, SessionState.RENEWING)
    },
    (SessionState.DOWN, SessionEvent.PARK): SessionState.PARKED,
    **{(state, SessionEvent.CLOSE): SessionState.CLOSED for state in SessionState if state is not SessionState.CLOSED},
}
"""A loss is decided first (RETRY or GIVE_UP), then moves the state."""


class SessionStateError(BridgeError):
    """The session was told something its state cannot follow: a bug in the caller of the supervisor."""


@dataclass(frozen=True)
class Reopen:
    """Open a (new) session after `delay_s`, giving its handshake at most `timeout_s`."""

    delay_s: float
    timeout_s: float
    reason: str


class SessionSupervisor:
    """Decides when the call's Realtime session opens, is replaced and is given up; sans I/O."""

    def __init__(self, timings: CallTimings, clock: Callable[[], float]) -> None:
        self.state = SessionState.OPENING
        self.sessions_opened = 0
        self.reconnects = 0
        self.renewals = 0
        self.failures: list[str] = []
        self._timings = timings
        self._clock = clock
        self._opened_at: float | None = None
        self._ready_at: float | None = None
        self._opens: deque[float] = deque()
        self._outage_deadline: float | None = clock() + timings.connect_budget_s
        self._failed_tries = 0
        self._reconfigured = False

    @property
    def ready(self) -> bool:
        """Events for the service can be sent now (otherwise they are held for the next session)."""
        return self.state is SessionState.READY

    @property
    def open(self) -> bool:
        """A session is open, configured or not: its own configuration can be sent."""
        return self.state in (SessionState.CONFIGURING, SessionState.READY)

    def first_open(self) -> Reopen:
        return Reopen(0.0, self._timings.connect_budget_s, "call answered")

    def connected(self) -> bool:
        """A session opened; returns True when it replaces an earlier one (it needs the conversation so far)."""
        replacing = self._opened_at is not None
        self._move(SessionEvent.CONNECTED)
        self._opened_at = self._clock()
        self._ready_at = None
        self._opens.append(self._opened_at)
        self.sessions_opened += 1
        return replacing

    def configured(self) -> None:
        """The service confirmed the configuration: the session takes the call from now on."""
        self._move(SessionEvent.CONFIGURED)
        self._ready_at = self._clock()
        self._outage_deadline = None

    def may_reconfigure(self) -> bool:
        """Whether a refused configuration may be sent once more without the refused setting (once per call)."""
        if self._reconfigured:
            return False
        self._reconfigured = True
        return True

    def configuration_overdue(self) -> bool:
        return (
            self.state is SessionState.CONFIGURING
            and self._opened_at is not None
            and self._clock() - self._opened_at > self._timings.configure_timeout_s
        )

    def lost(self, reason: str, retryable: bool) -> Reopen | None:
        """The session closed, could not be opened or configured: a new try while the budget lasts, else `None`."""
        now = self._clock()
        self.failures.append(reason)
        if self._ready_at is not None and now - self._ready_at >= self._timings.stable_after_s:
            self._failed_tries = 0
        self._ready_at = None
        if self._outage_deadline is None:
            self._outage_deadline = now + self._timings.connect_budget_s
        while self._opens and now - self._opens[0] > 60.0:
            self._opens.popleft()
        delays = self._timings.retry_delays_s
        if retryable and self._failed_tries < len(delays) and len(self._opens) < self._timings.max_opens_per_minute:
            delay = delays[self._failed_tries]
            remaining = self._outage_deadline - now - delay
            if remaining > 0.05:
                self._failed_tries += 1
                if self._opened_at is not None:
                    self.reconnects += 1
                self._move(SessionEvent.RETRY)
                return Reopen(delay, remaining, f"session lost: {reason}")
        self._move(SessionEvent.GIVE_UP)
        return None

    def renewal_due(self, quiet: bool) -> Reopen | None:
        """At a quiet moment, a session older than the renewal age is replaced by a new one."""
        if self.state is not SessionState.READY or not quiet or self._opened_at is None:
            return None
        now = self._clock()
        if now - self._opened_at <= self._timings.renew_session_after_s:
            return None
        self._move(SessionEvent.RENEW)
        self._outage_deadline = now + self._timings.connect_budget_s
        self.renewals += 1
        return Reopen(0.0, self._timings.connect_budget_s, "session renewal")

    def park(self) -> None:
        """The caller went away for a while: the session is closed, and no loss of it is news."""
        self._move(SessionEvent.PARK)
        self._outage_deadline = None

    def resume(self) -> Reopen:
        """The caller is back: a new session, with the conversation so far."""
        self._move(SessionEvent.RESUME)
        self._outage_deadline = self._clock() + self._timings.connect_budget_s
        self._failed_tries = 0
        return Reopen(0.0, self._timings.connect_budget_s, "the caller is back")

    def close(self) -> None:
        if self.state is not SessionState.CLOSED:
            self._move(SessionEvent.CLOSE)

    def _move(self, event: SessionEvent) -> None:
        try:
            self.state = _TRANSITIONS[self.state, event]
        except KeyError:
            raise SessionStateError(f"the Realtime session cannot take {event.value!r} while {self.state.value}") from None
