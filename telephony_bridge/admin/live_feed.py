"""Live calls as a stream of changes, for the admin API's server-sent events (`GET /admin/calls/live/events`).

Each call tells the feed its summary when what an operator watches changes (a transcript line is
complete, the model starts or stops speaking, a tool call or a transfer starts), and once more when
it ends. The feed keeps the latest value of each live call and wakes its watchers; each watcher
works out what it has not sent yet, so a slow browser skips intermediate states instead of queueing
them. Nothing here polls: a call with nothing new costs nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from telephony_bridge.call.summary import Activity, CallSummary
from telephony_bridge.logs import mask_number


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


class LiveFeed:
    """The latest summary of each live call, and the watchers to wake when one changes."""

    def __init__(self) -> None:
        self._live: dict[str, CallSummary] = {}
        self._ended: dict[str, CallSummary] = {}
        self._watchers: set[Watcher] = set()

    def changed(self, summary: CallSummary) -> None:
        """A call's new summary (the switchboard's `on_change`); one with an outcome has ended."""
        if summary.outcome is None:
            self._live[summary.call_sid] = summary
        else:
            self._live.pop(summary.call_sid, None)
            self._ended[summary.call_sid] = summary
            while len(self._ended) > 100:
                self._ended.pop(next(iter(self._ended)))
        for watcher in self._watchers:
            watcher.wake.set()

    def watch(self) -> Watcher:
        watcher = Watcher(self)
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)


class Watcher:
    """One subscriber's view: what it has been sent of each call, so each update carries only what is new."""

    def __init__(self, feed: LiveFeed) -> None:
        self.wake = asyncio.Event()
        self._feed = feed
        self._sent: dict[str, tuple[int, Activity, str]] = {}

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
        for call_sid in [sid for sid in self._sent if sid not in live]:
            del self._sent[call_sid]
            ended = self._feed._ended.get(call_sid)
            events.append(("ended", {
                "call_sid": call_sid,
                "outcome": ended.outcome if ended else None,
                "end_reason": ended.end_reason if ended else "",
            }))
        return events
