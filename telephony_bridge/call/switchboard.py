"""The live calls of one bridge process: answered by the webhook, claimed once by their media socket.

The webhook answers a call and its Realtime session starts opening at once; Twilio connects the
Media Stream a moment later and claims the call with its stream token. A token's stream id claims
once: a second socket presenting it (a replay, or a stranger who copied it) gets nothing. A call
no socket claims in time is ended, so a caller who hung up during the handshake runs up no bill.

A CallSid is answered once. Twilio's signatures carry no nonce, so a captured webhook replays with
a valid signature; each answer is remembered, TwiML and all, until `STREAM_TOKEN_LIFETIME_S` after
its call ends (no token issued for it is valid by then), and a second webhook for the CallSid is
refused. The one exception is Twilio's own retry of a webhook whose answer it did not get: the
same `I-Twilio-Idempotency-Token` before the stream was claimed gets the same answer, so the
retry and the first answer hold one token between them and open one session. That header is not
signed, so it proves nothing alone: a replayer who copies it before the stream connects gets a
token that can claim nothing Twilio has not claimed first, or loses the race to Twilio's socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from telephony_bridge.call.call_control import Dialled
from telephony_bridge.call.events import Outcome
from telephony_bridge.call.pump import Call, CallTap, LatencyObserver
from telephony_bridge.call.summary import CallSummary
from telephony_bridge.call.supervision import CallTimings
from telephony_bridge.config import BridgeConfig, CallProfile, RealtimeEndpoint
from telephony_bridge.policy import profile_in_force
from telephony_bridge.twilio.call_updates import CallUpdates
from telephony_bridge.twilio.security import STREAM_TOKEN_LIFETIME_S
from telephony_bridge.twilio.transfers import Transfers

log = logging.getLogger(__name__)

UNCLAIMED_CALL_TIMEOUT_S = 10.0
"""Twilio opens the stream a second or two after the webhook answers; a call still unclaimed after this was hung up."""


@dataclass(frozen=True)
class _Answer:
    """What the webhook answered for a CallSid: sent again, byte for byte, to Twilio's retry of it."""

    twiml: str
    idempotency_token: str | None
    stream_id: str | None
    """The stream its token may claim; `None` for a refusal (busy, draining), which streams nothing."""


def _timings(config: BridgeConfig) -> CallTimings:
    limits = config.limits
    return CallTimings(media_timeout_s=limits.media_timeout_seconds, renew_session_after_s=limits.session_renew_minutes * 60)


class Switchboard:
    def __init__(
        self,
        config: BridgeConfig,
        endpoint: RealtimeEndpoint,
        clock: Callable[[], float],
        *,
        unclaimed_timeout_s: float = UNCLAIMED_CALL_TIMEOUT_S,
        tap_for: Callable[[str, str, CallProfile, Dialled | None], CallTap | None] = lambda sid, number, profile, dialled: None,
        on_call_end: Callable[[CallSummary], None] = lambda summary: None,
        on_latency: LatencyObserver | None = None,
        call_updates: CallUpdates | None = None,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_change: Callable[[CallSummary], None] | None = None,
        on_call_start: Callable[[str, str, str], None] = lambda call_sid, number, caller: None,
    ) -> None:
        self.config = config
        self._wall_clock = wall_clock
        """The date and time a call is answered at, for its number's `hours`."""
        self.transfers: Transfers[Call] = call_updates.transfers if call_updates else Transfers(clock)
        self.draining = False
        """Set at shutdown: new calls are refused, live ones run on."""
        self._endpoint = endpoint
        self._clock = clock
        self._unclaimed_timeout_s = unclaimed_timeout_s
        self._tap_for = tap_for
        self._on_call_end = on_call_end
        self._on_call_start = on_call_start
        """(CallSid, called number, caller's number) of each call opened here: the fleet's live-call registry."""
        self._on_latency = on_latency
        self._call_updates = call_updates
        self._on_change = on_change
        """Told each live call's summary as what an operator watches changes, and once more when it ends."""
        self._timings = _timings(config)
        self._calls: dict[str, Call] = {}
        self._claimed_until: dict[str, float] = {}
        """Stream ids claimed, until any token carrying them has expired."""
        self._expiry_timers: dict[str, asyncio.TimerHandle] = {}
        self._answers: dict[str, _Answer] = {}
        self._endings: dict[str, tuple[Outcome | None, CallProfile]] = {}
        """How each call answered here ended (kept as long as its answer), for what Twilio plays after its stream."""
        self._forget: deque[tuple[float, str]] = deque()
        """(when, CallSid) of answers to forget, in time order: each is queued a fixed lifetime after its call ended."""

    def reconfigure(self, config: BridgeConfig) -> None:
        """New calls get `config` (a reload); a live call keeps the profile and timings it started with."""
        self.config = config
        self._timings = _timings(config)

    @property
    def live_calls(self) -> int:
        return sum(1 for call in self._calls.values() if not call.ended.is_set())

    def calls_in_progress(self) -> list[Call]:
        """The calls not ended yet (a call that has ended is out of this list before `on_call_end` runs)."""
        return [call for call in self._calls.values() if not call.ended.is_set()]

    def answered(self, call_sid: str) -> bool:
        """Whether the webhook answered this CallSid already (within a token's lifetime of its call's end)."""
        now = self._clock()
        while self._forget and self._forget[0][0] <= now:
            _, forgotten = self._forget.popleft()
            self._answers.pop(forgotten, None)
            self._endings.pop(forgotten, None)
        return call_sid in self._answers

    def answer_again(self, call_sid: str, idempotency_token: str | None) -> str | None:
        """The TwiML answered first, if this webhook is Twilio's retry of it; `None` (refuse it) otherwise.

        A retry carries the first webhook's idempotency token and comes before that answer's stream
        was claimed: once it has been, Twilio has the answer and only a replay asks again.
        """
        first = self._answers.get(call_sid)
        if first is None or idempotency_token is None or idempotency_token != first.idempotency_token:
            return None
        if first.stream_id is not None and self._claimed(first.stream_id):
            return None
        return first.twiml

    def remember_answer(self, call_sid: str, twiml: str, idempotency_token: str | None, stream_id: str | None) -> None:
        """Keep the webhook's answer for a CallSid; a refusal (no `stream_id`) is forgotten a token lifetime from now."""
        self._answers[call_sid] = _Answer(twiml, idempotency_token, stream_id)
        if stream_id is None:
            self._forget.append((self._clock() + STREAM_TOKEN_LIFETIME_S, call_sid))

    def ending(self, call_sid: str) -> tuple[Outcome | None, CallProfile] | None:
        """How a call answered here ended (`None` as the outcome while it is live), with its profile; `None` if unknown."""
        self.answered(call_sid)
        call = self._calls.get(call_sid)
        if call is not None and not call.ended.is_set():
            return None, call.profile
        return self._endings.get(call_sid)

    def answer(self, call_sid: str, called_number: str, caller_number: str = "", account_sid: str = "") -> Call | None:
        """Accept a call and start its Realtime session; `None` when the line is at `max_calls`."""
        existing = self._calls.get(call_sid)
        if existing is not None:
            return existing
        if self.live_calls >= self.config.limits.max_calls:
            return None
        call = self._open(call_sid, called_number, caller_number, account_sid)
        self._expiry_timers[call_sid] = asyncio.get_running_loop().call_later(
            self._unclaimed_timeout_s, self._expire_unclaimed, call_sid
        )
        return call

    def claim(self, call_sid: str, called_number: str, stream_id: str, caller_number: str = "",
              account_sid: str = "") -> Call | None:
        """The call a media socket with a valid token belongs to; `None` if the token's stream id was used already.

        A valid token with no call here (the webhook reached another process, or this one restarted)
        opens the session now.
        """
        if self._claimed(stream_id):
            return None
        self._claimed_until[stream_id] = self._clock() + STREAM_TOKEN_LIFETIME_S
        timer = self._expiry_timers.pop(call_sid, None)
        if timer is not None:
            timer.cancel()
        call = self._calls.get(call_sid)
        if call is None:
            if self.live_calls >= self.config.limits.max_calls:
                return None
            call = self._open(call_sid, called_number, caller_number, account_sid)
        return call

    def claim_outbound(
        self, call_sid: str, stream_id: str, from_number: str, to_number: str, profile: CallProfile, dialled: Dialled
    ) -> Call | None:
        """The media stream of a call the bridge placed: its session opens now, with the profile filled for this call.

        `None` when the token's stream id was used already, or the line is at `max_calls`. Its CallSid is
        remembered like an answered one, so what Twilio asks after the stream is answered as for any call.
        """
        if self._claimed(stream_id) or self.live_calls >= self.config.limits.max_calls:
            return None
        self._claimed_until[stream_id] = self._clock() + STREAM_TOKEN_LIFETIME_S
        self._answers[call_sid] = _Answer("", None, stream_id)
        call = Call(
            call_sid, from_number, profile, self._endpoint, self._clock, caller_number=to_number,
            call_updates=self._call_updates, timings=self._timings, on_end=self._ended,
            tap=self._tap_for(call_sid, from_number, profile, dialled), on_latency=self._on_latency,
            mask_caller_number=self.config.logging.mask_caller_numbers, dialled=dialled, on_change=self._on_change,
        )
        self._calls[call_sid] = call
        call.begin()
        self._on_call_start(call_sid, from_number, to_number)
        return call

    def live_call(self, call_sid: str) -> Call | None:
        """The call with this CallSid, if it is live on this process."""
        call = self._calls.get(call_sid)
        return call if call is not None and not call.ended.is_set() else None

    async def drain(self, timeout_s: float) -> int:
        """Stop taking calls; wait up to `timeout_s` for live ones to end by themselves, then end the rest.

        Returns how many calls the bridge had to end: Twilio asks each one's `<Connect action>` what comes next.
        """
        self.draining = True
        live = [call for call in self._calls.values() if not call.ended.is_set()]
        log.info("draining: %d live calls, waiting up to %g s", len(live), timeout_s)
        if live:
            await asyncio.wait([asyncio.ensure_future(call.ended.wait()) for call in live], timeout=timeout_s)
        return await self.end_all("bridge shutting down")

    async def end_all(self, reason: str) -> int:
        """End every live call (at shutdown) and wait until each has closed its sockets; how many there were."""
        calls = [call for call in self._calls.values() if not call.ended.is_set()]
        for call in calls:
            call.end(reason, "shut_down")
        await asyncio.gather(*(call.ended.wait() for call in calls))
        return len(calls)

    def _open(self, call_sid: str, called_number: str, caller_number: str = "", account_sid: str = "") -> Call:
        in_force, profile = profile_in_force(self.config.profile_for(called_number), self._wall_clock())
        call = Call(
            call_sid,
            called_number,
            profile,
            self._endpoint,
            self._clock,
            caller_number=caller_number,
            account_sid=account_sid,
            call_updates=self._call_updates,
            timings=self._timings,
            on_end=self._ended,
            tap=self._tap_for(call_sid, called_number, profile, None),
            on_latency=self._on_latency,
            mask_caller_number=self.config.logging.mask_caller_numbers,
            in_force=in_force,
            prices=self.config.prices.get(self._endpoint.model),
            on_change=self._on_change,
        )
        self._calls[call_sid] = call
        call.begin()
        self._on_call_start(call_sid, called_number, caller_number)
        return call

    def _claimed(self, stream_id: str) -> bool:
        now = self._clock()
        self._claimed_until = {sid: until for sid, until in self._claimed_until.items() if until > now}
        return stream_id in self._claimed_until

    def _ended(self, call: Call) -> None:
        if call.call_sid not in self._expiry_timers:
            self._calls.pop(call.call_sid, None)
        summary = call.summary()
        if call.call_sid in self._answers:
            self._forget.append((self._clock() + STREAM_TOKEN_LIFETIME_S, call.call_sid))
            self._endings[call.call_sid] = (summary.outcome, call.profile)
        self._on_call_end(summary)

    def _expire_unclaimed(self, call_sid: str) -> None:
        self._expiry_timers.pop(call_sid, None)
        call = self._calls.pop(call_sid, None)
        if call is not None and not call.ended.is_set():
            log.warning("call %s: no media stream arrived within %g s; ending its session", call_sid, self._unclaimed_timeout_s)
            call.end("no media stream", "no_media_stream")
