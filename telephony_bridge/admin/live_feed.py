"""Live calls as a stream of changes, for the admin API's server-sent events (`GET /admin/calls/live/events`).

Each call tells the feed its summary when what an operator watches changes (a transcript line is
complete, the model starts or stops speaking, a tool call or a transfer starts), and once more when
it ends. The feed keeps the latest value of each live call and wakes its watchers; each watcher
works out what it has not sent yet, so a slow browser skips intermediate states instead of queueing
them. Nothing here polls: a call with nothing new costs nothing.

In a fleet the calls of the other instances come in as their changes (`fleet_change`, published over
PostgreSQL's NOTIFY, which carries under 8000 bytes: so the last `FLEET_TAIL_LINES` transcript lines at most),
and the registry seeds the calls that have not changed since a watcher started (`seed`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

from telephony_bridge.call.summary import Activity, CallSummary
from telephony_bridge.logs import mask_number
from telephony_bridge.store.base import LiveCall

FLEET_TAIL_LINES = 6
"""The transcript lines a change published to the fleet carries: what the console shows of a live call."""
MAX_CHANGE_BYTES = 7000
"""A published change stays under this (NOTIFY's limit is 8000 bytes, with room for the envelope)."""
ENDED_KEPT = 100


def live_call_json(summary: CallSummary, lines_from: int = 0) -> dict[str, Any]:
    """A live call as the admin API shows it; `transcript` holds its lines from `lines_from` on, with their times."""
    timed = summary.timed_transcript()[lines_from:]
    return {
        "call_sid": summary.call_sid,
        "number": summary.called_number,
        "caller": mask_number(summary.caller_number) if summary.caller_number else "",
        "duration_s": round(summary.duration_s, 1),
        "state": "in_progress" if summary.counters.frames_in else "connecting",
        "activity": summary.activity,
        "lines_from": lines_from,
        "transcript": [{"speaker": turn.speaker, "text": turn.text, "at_s": at_s} for turn, at_s in timed],
    }


def fleet_change(summary: CallSummary) -> dict[str, Any]:
    """What the other instances of a fleet are told of a call's change: its tail while live (`lines`: how many in
    all), or its end."""
    if summary.outcome is not None:
        return {"call_sid": summary.call_sid, "ended": True, "outcome": summary.outcome, "end_reason": summary.end_reason}
    lines = len(summary.transcript)
    change = {**live_call_json(summary, lines_from=max(0, lines - FLEET_TAIL_LINES)), "lines": lines}
    while change["transcript"] and len(json.dumps(change).encode()) > MAX_CHANGE_BYTES:
        change["transcript"] = change["transcript"][1:]
        change["lines_from"] += 1
    return change


class LiveFeed:
    """The latest state of each live call (this instance's summaries, other instances' changes), and the watchers
    to wake when one changes."""

    def __init__(self) -> None:
        self._live: dict[str, CallSummary] = {}
        self._remote: dict[str, dict[str, Any]] = {}
        self._ended: dict[str, tuple[str | None, str]] = {}
        self._watchers: set[Watcher] = set()

    def changed(self, summary: CallSummary) -> None:
        """A call's new summary (the switchboard's `on_change`); one with an outcome has ended."""
        if summary.outcome is None:
            self._live[summary.call_sid] = summary
        else:
            self._live.pop(summary.call_sid, None)
            self._end(summary.call_sid, summary.outcome, summary.end_reason)
        self._wake()

    def fleet_changed(self, change: dict[str, Any]) -> None:
        """A change another instance published (`fleet_change`), or a lost call's end."""
        call_sid = str(change.get("call_sid", ""))
        if change.get("ended"):
            if self._remote.pop(call_sid, None) is not None:
                self._end(call_sid, change.get("outcome"), str(change.get("end_reason", "")))
        elif call_sid not in self._live:
            self._remote[call_sid] = change
        self._wake()

    def seed(self, registered: Iterable[LiveCall], here: str) -> None:
        """Align the other instances' calls with the fleet's registry: add those not heard of (a call quiet since
        this instance started), drop those it no longer holds (an end whose news was lost)."""
        calls = {call.call_sid: call for call in registered if call.instance != here}
        for call_sid in [sid for sid in self._remote if sid not in calls]:
            del self._remote[call_sid]
        for call_sid, call in calls.items():
            self._remote.setdefault(call_sid, {
                "call_sid": call_sid, "instance": call.instance, "number": call.number,
                "caller": mask_number(call.caller) if call.caller else "", "duration_s": round(call.duration_s, 1),
                "state": "in_progress", "activity": "listening", "lines_from": 0, "lines": 0, "transcript": [],
            })
        self._wake()

    def watch(self) -> Watcher:
        watcher = Watcher(self)
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def _end(self, call_sid: str, outcome: str | None, end_reason: str) -> None:
        self._ended[call_sid] = (outcome, end_reason)
        while len(self._ended) > ENDED_KEPT:
            self._ended.pop(next(iter(self._ended)))

    def _wake(self) -> None:
        for watcher in self._watchers:
            watcher.wake.set()


class Watcher:
    """One subscriber's view: what it has been sent of each call, so each update carries only what is new."""

    def __init__(self, feed: LiveFeed) -> None:
        self.wake = asyncio.Event()
        self._feed = feed
        self._sent: dict[str, tuple[int, Activity | str, str]] = {}

    def updates(self) -> list[tuple[str, dict[str, Any]]]:
        """(event name, data) for every change since the last call: `call` for a new or changed call, `ended` for one gone."""
        self.wake.clear()
        events: list[tuple[str, dict[str, Any]]] = []
        live = self._feed._live
        for call_sid, summary in live.items():
            lines, activity, state = self._sent.get(call_sid, (0, "connecting", ""))
            shown = (len(summary.transcript), summary.activity, "in_progress" if summary.counters.frames_in else "connecting")
            if call_sid in self._sent and shown == (lines, activity, state):
                continue
            self._sent[call_sid] = shown
            events.append(("call", live_call_json(summary, lines_from=lines)))
        remote = self._feed._remote
        for call_sid, change in remote.items():
            sent = self._sent.get(call_sid)
            published = (int(change["lines"]), str(change["activity"]), str(change["state"]))
            if sent == published:
                continue
            self._sent[call_sid] = published
            lines_from = max(sent[0] if sent else 0, int(change["lines_from"]))
            events.append(("call", {
                **{key: value for key, value in change.items() if key != "lines"},
                "lines_from": lines_from, "transcript": change["transcript"][lines_from - int(change["lines_from"]):],
            }))
        for call_sid in [sid for sid in self._sent if sid not in live and sid not in remote]:
            del self._sent[call_sid]
            outcome, end_reason = self._feed._ended.get(call_sid, (None, ""))
            events.append(("ended", {"call_sid": call_sid, "outcome": outcome, "end_reason": end_reason}))
        return events
