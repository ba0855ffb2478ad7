"""Whose turn it is: the model's responses, what waits until the model is idle, and what was said.

The service runs one response at a time: a `response.create` while one is active is refused with
`conversation_already_has_active_response`. With server VAD it also starts a response of its own
when the caller stops speaking, a moment after `speech_stopped` and before `response.created`
reaches us; a key press in that gap used to collide with it. So a response the bridge asks for
(after a key press, after function outputs) waits while a response is active or expected, and is
sent when the model is idle.

The transcript kept here is what a replacement session is given as history, and what the call
log shows.
"""

from __future__ import annotations

from collections.abc import Callable

from telephony_bridge.call.events import Action, AddHistoryItem, CreateResponse, TranscriptDone

MAX_HISTORY_ITEMS = 50
EXPECTED_RESPONSE_S = 1.5
"""How long after the caller stops speaking the service's own response is awaited before the model counts as idle."""


class Conversation:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.transcript: list[TranscriptDone] = []
        self.said_at_s: list[float] = []
        """For each transcript line: seconds from the start of the call to the line being complete."""
        self.response_latencies_ms: list[float] = []
        """For each answer: from the caller stopping speaking to the model's first audio."""
        self.active_response: str | None = None
        self.cut_response: str | None = None
        """The response the caller spoke over: whatever else it says is dropped."""
        self._clock = clock
        self._started = clock()
        self._caller_stopped_at: float | None = None
        self._response_expected_until: float | None = None
        self._spoken: set[str] = set()
        self._waiting: list[Action] = []

    @property
    def idle(self) -> bool:
        """No response is active, and none is about to start on the service's own account."""
        expected = self._response_expected_until
        return self.active_response is None and (expected is None or self._clock() > expected)

    def said(self, turn: TranscriptDone) -> None:
        """A line of the transcript is complete: what was said, and when."""
        self.transcript.append(turn)
        self.said_at_s.append(self._clock() - self._started)

    def caller_stopped(self, response_expected: bool = True) -> None:
        """The caller stopped speaking; without `response_expected` (automatic responses are off) nobody waits for one."""
        now = self._clock()
        self._caller_stopped_at = now
        if response_expected:
            self._response_expected_until = now + EXPECTED_RESPONSE_S

    def response_started(self, response_id: str) -> None:
        self.active_response = response_id
        self._response_expected_until = None

    def model_spoke(self, response_id: str) -> None:
        """Audio of `response_id` arrived; the first audio after the caller stopped times the model's answer."""
        self._spoken.add(response_id)
        if self._caller_stopped_at is not None:
            self.response_latencies_ms.append((self._clock() - self._caller_stopped_at) * 1000.0)
            self._caller_stopped_at = None

    def caller_barged_in(self) -> None:
        if self.active_response is not None:
            self.cut_response = self.active_response

    def response_done(self, response_id: str) -> bool:
        """A response ended; returns whether it said anything (its audio may still be playing)."""
        spoke = response_id in self._spoken
        self._spoken.discard(response_id)
        if response_id == self.active_response:
            self.active_response = None
        if self.active_response is None:
            self.cut_response = None
        return spoke

    def when_idle(self, actions: list[Action]) -> list[Action]:
        """`actions` now if the model is idle, else held until it is (see `released`).

        A `response.create` sent makes a response expected, so the next one waits for it; one that
        is already waiting is not asked for twice.
        """
        if self.idle and not self._waiting:
            return self._sending(actions)
        self._waiting += [a for a in actions if not (isinstance(a, CreateResponse) and a in self._waiting)]
        return []

    def released(self) -> list[Action]:
        """What waited for the model, once it is idle (after a response, or when an expected one did not come)."""
        if not self._waiting or not self.idle:
            return []
        waiting, self._waiting = self._waiting, []
        return self._sending(waiting)

    def _sending(self, actions: list[Action]) -> list[Action]:
        if any(isinstance(a, CreateResponse) for a in actions):
            self._response_expected_until = self._clock() + EXPECTED_RESPONSE_S
        return actions

    def session_lost(self) -> None:
        self.active_response = None
        self._response_expected_until = None
        self._spoken.clear()

    def history(self) -> list[Action]:
        """The conversation so far as text items, for a session that replaces a lost or old one."""
        return [
            AddHistoryItem("user" if turn.speaker == "caller" else "assistant", turn.text)
            for turn in self.transcript[-MAX_HISTORY_ITEMS:]
            if turn.text and turn.speaker != "tool"
        ]
