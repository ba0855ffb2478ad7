"""The Realtime session's supervisor: states, retries within the budget, renewal; a hand-moved clock."""

from __future__ import annotations

import pytest

from support import ManualClock
from telephony_bridge.call.supervision import CallTimings, Reopen, SessionState, SessionStateError, SessionSupervisor


def test_a_call_opens_its_first_session_and_is_ready_once_connected() -> None:
    supervisor = SessionSupervisor(CallTimings(), ManualClock())
    assert supervisor.state is SessionState.OPENING and not supervisor.ready
    assert supervisor.first_open() == Reopen(0.0, 2.5, "call answered")
    assert supervisor.connected() is False, "the first session replaces nothing"
    assert supervisor.state is SessionState.CONFIGURING and supervisor.open and not supervisor.ready
    supervisor.configured()
    assert supervisor.ready


def test_a_session_is_a_failed_try_when_its_configuration_is_not_confirmed_in_time() -> None:
    clock = ManualClock()
    supervisor = SessionSupervisor(CallTimings(configure_timeout_s=2.0), clock)
    supervisor.connected()
    clock.now += 1.9
    assert not supervisor.configuration_overdue()
    clock.now += 0.2
    assert supervisor.configuration_overdue()


def test_a_refused_configuration_may_be_retried_once_per_call() -> None:
    supervisor = SessionSupervisor(CallTimings(), ManualClock())
    assert supervisor.may_reconfigure()
    assert not supervisor.may_reconfigure()


def test_no_call_opens_more_sessions_a_minute_than_its_cap() -> None:
    clock = ManualClock()
    timings = CallTimings(stable_after_s=5, max_opens_per_minute=3)
    supervisor = SessionSupervisor(timings, clock)
    opened = 0
    reopen = supervisor.first_open()
    while reopen is not None:
        clock.now += reopen.delay_s
        supervisor.connected()
        supervisor.configured()
        opened += 1
        clock.now += 6  # each session lives long enough to count as stable
        reopen = supervisor.lost("gone", retryable=True)
    assert opened == 3
    assert supervisor.state is SessionState.FAILED


def test_a_lost_session_is_retried_with_backoff_within_the_budget_then_given_up() -> None:
    clock = ManualClock()
    supervisor = SessionSupervisor(CallTimings(connect_budget_s=2.5, retry_delays_s=(0.0, 0.25, 0.5, 1.0)), clock)
    supervisor.connected()
    tries = []
    while (reopen := supervisor.lost("gone", retryable=True)) is not None:
        assert supervisor.state is SessionState.DOWN
        tries.append(reopen.delay_s)
        clock.now += reopen.delay_s + 0.1
    assert tries == [0.0, 0.25, 0.5, 1.0]
    assert supervisor.state is SessionState.FAILED
    assert supervisor.reconnects == 4 and len(supervisor.failures) == 5


def test_a_refusal_that_retrying_cannot_help_fails_at_once() -> None:
    supervisor = SessionSupervisor(CallTimings(), ManualClock())
    assert supervisor.lost("HTTP 401", retryable=False) is None
    assert supervisor.state is SessionState.FAILED


def test_a_reconnected_session_needs_the_conversation_so_far() -> None:
    supervisor = SessionSupervisor(CallTimings(), ManualClock())
    supervisor.connected()
    supervisor.configured()
    supervisor.lost("gone", retryable=True)
    assert supervisor.connected() is True


def test_an_old_session_is_renewed_only_at_a_quiet_moment() -> None:
    clock = ManualClock()
    supervisor = SessionSupervisor(CallTimings(renew_session_after_s=60), clock)
    supervisor.connected()
    supervisor.configured()
    clock.now += 30
    assert supervisor.renewal_due(quiet=True) is None
    clock.now += 31
    assert supervisor.renewal_due(quiet=False) is None
    assert supervisor.renewal_due(quiet=True) == Reopen(0.0, 2.5, "session renewal")
    assert supervisor.state is SessionState.RENEWING and not supervisor.ready
    assert supervisor.renewals == 1
    assert supervisor.connected() is True
    supervisor.configured()
    assert supervisor.ready


def test_a_transition_the_table_lacks_raises_naming_the_state() -> None:
    supervisor = SessionSupervisor(CallTimings(), ManualClock())
    supervisor.close()
    assert supervisor.state is SessionState.CLOSED
    with pytest.raises(SessionStateError, match="cannot take 'connected' while closed"):
        supervisor.connected()
