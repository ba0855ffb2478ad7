"""The campaign scheduler without sockets: calling window, time zones, retries, concurrency, free lines."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from telephony_bridge.outbound.campaigns_schedule import (
    Campaign,
    CampaignInvalid,
    CampaignSettings,
    CampaignState,
    CampaignStateError,
    Row,
    RowState,
    Window,
    outcome_of_record,
)

FROM = "+15550001111"
NOON_UTC = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def campaign(count: int = 5, **settings: object) -> Campaign:
    rows = [Row("c1", position, f"+1555000{position:04d}") for position in range(count)]
    return Campaign("c1", CampaignSettings(FROM, **settings), rows)  # type: ignore[arg-type]


def test_no_more_than_concurrency_rows_dial_at_once() -> None:
    plan = campaign(10, concurrency=3)
    first = plan.to_dial(NOON_UTC, free_lines=100)
    assert [row.position for row in first] == [0, 1, 2]
    for row in first:
        plan.dial(row.position)
    assert plan.to_dial(NOON_UTC, free_lines=100) == []
    plan.ended(0, "human", NOON_UTC)
    assert [row.position for row in plan.to_dial(NOON_UTC, free_lines=100)] == [3]


def test_free_lines_cap_the_dials_below_concurrency() -> None:
    plan = campaign(10, concurrency=5)
    assert len(plan.to_dial(NOON_UTC, free_lines=2)) == 2
    assert plan.to_dial(NOON_UTC, free_lines=0) == []


def test_busy_and_no_answer_are_retried_after_the_delay_then_final() -> None:
    plan = campaign(1, retries=1, retry_delay_s=600)
    plan.dial(0)
    retried = plan.ended(0, "busy", NOON_UTC)
    assert retried is not None and retried.state is RowState.PENDING
    assert retried.next_attempt_at == NOON_UTC + timedelta(seconds=600)
    assert plan.to_dial(NOON_UTC + timedelta(seconds=599), free_lines=1) == []
    assert plan.next_wake(NOON_UTC) == NOON_UTC + timedelta(seconds=600)
    later = NOON_UTC + timedelta(seconds=600)
    assert [row.position for row in plan.to_dial(later, free_lines=1)] == [0]
    assert plan.dial(0).attempts == 2
    final = plan.ended(0, "no-answer", later)
    assert final is not None and final.state is RowState.DONE and final.outcome == "no-answer"
    assert plan.finish_if_settled() and plan.state is CampaignState.FINISHED


@pytest.mark.parametrize("outcome", ["human", "voicemail", "failed", "fax", "do-not-call", "opted-out"])
def test_other_outcomes_are_final_at_once(outcome: str) -> None:
    plan = campaign(1, retries=3)
    plan.dial(0)
    row = plan.ended(0, outcome, NOON_UTC)
    assert row is not None and row.state is RowState.DONE and row.outcome == outcome


def test_an_outcome_heard_twice_changes_nothing() -> None:
    plan = campaign(1, retries=2)
    plan.dial(0)
    assert plan.ended(0, "busy", NOON_UTC) is not None
    assert plan.ended(0, "busy", NOON_UTC) is None
    assert plan.rows[0].attempts == 1


def test_the_sid_from_a_create_answered_after_the_outcome_is_kept() -> None:
    plan = campaign(1)
    plan.dial(0)
    plan.ended(0, "human", NOON_UTC)
    row = plan.placed(0, "CA123")
    assert row.state is RowState.DONE and row.call_sid == "CA123"


def test_outside_the_window_nothing_is_dialled_until_it_opens() -> None:
    plan = campaign(2, window=Window.parse("09:00-18:00"), timezone="UTC")
    evening = datetime(2026, 3, 2, 19, 0, tzinfo=UTC)
    assert plan.to_dial(evening, free_lines=5) == []
    assert plan.next_wake(evening) == datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
    assert len(plan.to_dial(datetime(2026, 3, 3, 9, 0, tzinfo=UTC), free_lines=5)) == 1


def test_the_rows_own_time_zone_decides_its_window() -> None:
    rows = [Row("c1", 0, "+12125550100", timezone="America/New_York"), Row("c1", 1, "+442071838750")]
    plan = Campaign("c1", CampaignSettings(FROM, concurrency=5, window=Window.parse("09:00-18:00"),
                                           timezone="Europe/London"), rows)
    # 12:00 UTC is 07:00 in New York (EST) and 12:00 in London.
    assert [row.position for row in plan.to_dial(NOON_UTC, free_lines=5)] == [1]
    plan.dial(1)
    assert plan.next_wake(NOON_UTC) == datetime(2026, 3, 2, 14, 0, tzinfo=UTC)


def test_a_window_across_midnight() -> None:
    window = Window.parse("22:00-06:00")
    assert window.contains(datetime(2026, 3, 2, 23, 30)) and window.contains(datetime(2026, 3, 2, 5, 59))
    assert not window.contains(datetime(2026, 3, 2, 12, 0))


def test_a_retry_due_after_the_window_closes_waits_for_the_next_day() -> None:
    plan = campaign(1, retries=1, retry_delay_s=3600, window=Window.parse("09:00-18:00"))
    late = datetime(2026, 3, 2, 17, 30, tzinfo=UTC)
    plan.dial(0)
    plan.ended(0, "no-answer", late)
    assert plan.next_wake(late) == datetime(2026, 3, 3, 9, 0, tzinfo=UTC)


def test_a_paused_campaign_dials_nobody_and_resumes() -> None:
    plan = campaign(3, concurrency=3)
    plan.move("pause")
    assert plan.to_dial(NOON_UTC, free_lines=5) == [] and plan.next_wake(NOON_UTC) is None
    plan.move("resume")
    assert len(plan.to_dial(NOON_UTC, free_lines=5)) == 3


def test_illegal_transitions_name_the_state() -> None:
    plan = campaign(1)
    with pytest.raises(CampaignStateError, match="is running: cannot resume"):
        plan.move("resume")
    with pytest.raises(CampaignStateError, match="row 0 of campaign c1 is pending: cannot placed"):
        plan.rows[0].moved("placed")


def test_a_row_dialling_without_a_sid_after_a_restart_is_left_for_an_operator() -> None:
    plan = campaign(1)
    plan.dial(0)
    row = plan.lost(0)
    assert row.state is RowState.UNKNOWN
    assert plan.to_dial(NOON_UTC, free_lines=5) == [] and plan.settled


@pytest.mark.parametrize("text", ["9-18", "18:00", "10:00-10:00", "nine-five"])
def test_bad_windows_are_refused(text: str) -> None:
    with pytest.raises(CampaignInvalid, match="between"):
        Window.parse(text)


def test_window_parse_keeps_the_times() -> None:
    assert Window.parse("09:00-18:30") == Window(time(9), time(18, 30))


@pytest.mark.parametrize(("record", "outcome"), [
    ({"status": "in-progress"}, None),
    ({"status": "ringing"}, None),
    ({"status": "busy"}, "busy"),
    ({"status": "no-answer"}, "no-answer"),
    ({"status": "canceled"}, "failed"),
    ({"status": "completed", "answered_by": "human"}, "human"),
    ({"status": "completed", "answered_by": "machine_end_beep"}, "voicemail"),
    ({"status": "completed", "answered_by": "fax"}, "fax"),
    ({"status": "completed", "answered_by": None}, "human"),
])
def test_twilios_record_gives_the_outcome(record: dict[str, object], outcome: str | None) -> None:
    assert outcome_of_record(record) == outcome
