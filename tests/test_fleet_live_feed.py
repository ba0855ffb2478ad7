"""The live feed's calls of other instances, without sockets: changes published by another instance become events
that carry only lines not sent yet, the registry seeds quiet calls and drops stale ones, and an end is sent once."""

from __future__ import annotations

from typing import Any

from telephony_bridge.admin.live_feed import LiveFeed
from telephony_bridge.store.base import LiveCall


def change(call_sid: str, lines: int, tail: int = 6, activity: str = "listening") -> dict[str, Any]:
    """What `fleet_change` publishes: the last `tail` of `lines` transcript lines."""
    first = max(0, lines - tail)
    return {"call_sid": call_sid, "instance": "bridge-b", "number": "+14155550100", "caller": "+1555123****",
            "duration_s": 3.0, "state": "in_progress", "activity": activity, "lines_from": first, "lines": lines,
            "transcript": [{"speaker": "caller", "text": f"line {n}", "at_s": float(n)} for n in range(first, lines)]}


def test_another_instances_call_is_sent_with_only_its_new_lines() -> None:
    feed = LiveFeed()
    watcher = feed.watch()
    feed.fleet_changed(change("CA1", 2))
    ((name, first),) = watcher.updates()
    assert name == "call" and first["instance"] == "bridge-b" and "lines" not in first
    assert (first["lines_from"], [line["text"] for line in first["transcript"]]) == (0, ["line 0", "line 1"])
    feed.fleet_changed(change("CA1", 3))
    ((_, second),) = watcher.updates()
    assert (second["lines_from"], [line["text"] for line in second["transcript"]]) == (2, ["line 2"])
    assert watcher.updates() == []


def test_lines_published_while_a_watcher_lagged_behind_the_tail_start_where_the_tail_does() -> None:
    feed = LiveFeed()
    watcher = feed.watch()
    feed.fleet_changed(change("CA1", 1))
    watcher.updates()
    feed.fleet_changed(change("CA1", 20))
    ((_, update),) = watcher.updates()
    assert update["lines_from"] == 14 and len(update["transcript"]) == 6


def test_an_ended_call_is_sent_once_with_its_outcome() -> None:
    feed = LiveFeed()
    watcher = feed.watch()
    feed.fleet_changed(change("CA1", 1))
    watcher.updates()
    feed.fleet_changed({"call_sid": "CA1", "ended": True, "outcome": "lost", "end_reason": "its bridge instance b stopped",
                        "instance": "bridge-c"})
    assert watcher.updates() == [("ended", {"call_sid": "CA1", "outcome": "lost",
                                            "end_reason": "its bridge instance b stopped"})]
    assert watcher.updates() == []


def test_the_registry_seeds_quiet_calls_of_other_instances_and_drops_stale_ones() -> None:
    feed = LiveFeed()
    feed.fleet_changed(change("CAstale", 1))
    watcher = feed.watch()
    feed.seed([LiveCall("CAquiet", "bridge-c", "+14155550100", "+15551234567", 42.0),
               LiveCall("CAmine", "bridge-a", "+14155550100", "", 1.0)], here="bridge-a")
    updates = watcher.updates()
    assert [(name, data["call_sid"]) for name, data in updates] == [("call", "CAquiet")]
    assert updates[0][1]["caller"] == "+1555123****" and updates[0][1]["instance"] == "bridge-c"
