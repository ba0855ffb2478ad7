"""Placing one outbound call, and the outcome it leaves: the interface campaigns build on.

The bridge issues an outbound id before dialling and binds the call's stream token to it, since
Twilio's CallSid is only known once the create request returns. The call is created with inline
TwiML (the same `<Connect><Stream>` as an inbound call, after the same `<Say>` of the recording notice when the
number records: the callee hears it before the stream opens, so before the model's first word) and
asynchronous answering-machine detection;
the AMD result and the call's status reach us on signed callbacks, which name the outbound id.

An outcome fires once per call, when it is final: Twilio's status callback says `completed`,
`busy`, `no-answer`, `failed` or `canceled`, combined with the AMD result (and, for a call the
bridge spoke on, with whether the callee opted out). A number on the do-not-call list is never
dialled: `place` raises `OutboundRefused("do-not-call")` and listeners get a `do-not-call` outcome
with no CallSid, so a campaign that writes outcomes from its listener alone records it too.

In a fleet the instance that placed a call keeps its outcome (its listeners, a campaign's among them, live
there), and records itself as the outbound id's owner in the store, with the call's request. The stream may land
on another instance: that one asks the owner for the call and carries it. A callback landing anywhere is passed to
the owner, which passes who answered on to the carrier, and at the final status asks the carrier whether the
person opted out (`store.ask`, over LISTEN/NOTIFY). When the owner died before the stream came, the stream's
instance carries the call anyway from the request in the claim (the stream token was claimed once, so no other
instance does); its callbacks are then lost with the owner, and a campaign row is settled from Twilio's record by
the instance that adopts the dead one's rows.

A placed call is kept in memory until its outcome. When its final status callback is lost (the bridge was
restarting, a proxy dropped it), the bridge asks Twilio's record of the call once the callback is overdue
(`STATUS_WAIT_S` after the stream ended, or after the dial when no stream came) and reports the outcome that
record gives; a call Twilio cannot be asked about is forgotten after `MAX_KEEP_S`, so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from telephony_bridge.call.call_control import Dialled
from telephony_bridge.call.pump import Call
from telephony_bridge.call.summary import CallSummary
from telephony_bridge.call.switchboard import Switchboard
from telephony_bridge.config import CallProfile, Settings
from telephony_bridge.errors import ConfigError, TwilioCallGone, TwilioRestError
from telephony_bridge.logs import mask_number
from telephony_bridge.outbound.amd import OutcomeKind, outcome_of, voicemail_instructions
from telephony_bridge.outbound.do_not_call import DoNotCall
from telephony_bridge.outbound.placeholders import MissingPlaceholder, fill, placeholders
from telephony_bridge.store.base import Store, StoreUnavailable
from telephony_bridge.tls import tls_context
from telephony_bridge.twilio.rest import TwilioRest
from telephony_bridge.twilio.security import issue_stream_token
from telephony_bridge.twilio.webhook import (
    OUTBOUND_AMD_PATH,
    OUTBOUND_STATUS_PATH,
    STREAM_ENDED_PATH,
    STREAM_STATUS_PATH,
    stream_twiml,
)

__all__ = ["OutboundCalls", "OutboundOutcome", "OutboundRefused", "OutboundRequest", "OutcomeKind", "PlacedCall"]

log = logging.getLogger(__name__)

FINAL_STATUSES = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
OWNER_LIFETIME_S = 24 * 3600.0
"""How long a fleet remembers which instance placed an outbound call: longer than any call and its callbacks."""
FLEET_REQUEST_TIMEOUT_S = 5.0
"""How long a stream or callback landing on another instance waits for the placing instance's reply."""
CALL_END_WAIT_S = 15.0
"""How long a final status waits for the live call's own end (its summary says whether the person opted out)."""
STATUS_WAIT_S = 300.0
"""How long a placed call with no live stream (never answered, or its stream ended) waits for its final status callback
before the bridge asks Twilio's record instead. Twilio posts it within seconds of the end and retries a failed post only
briefly, so five minutes of silence means it was lost (the bridge was restarting, a proxy dropped it)."""
SWEEP_INTERVAL_S = 60.0
"""How often the placed calls are looked over for one whose status is overdue."""
MAX_KEEP_S = 24 * 3600.0
"""A placed call whose outcome neither a callback nor Twilio's record gave in this long is forgotten (logged): memory
stays bounded even when Twilio cannot be asked."""


@dataclass(frozen=True)
class OutboundRequest:
    from_number: str
    """One of the bridge's numbers: its `[numbers]` table is the call's profile."""
    to_number: str
    context: Mapping[str, str] = field(default_factory=dict)
    """Fills the `{name}` placeholders of the instructions, greeting and voicemail message."""
    campaign_row: str | None = None
    """An opaque id the campaign runner passes; echoed in the outcome."""


@dataclass(frozen=True)
class PlacedCall:
    outbound_id: str
    """The id the bridge issued before dialling (the stream token is bound to it)."""
    call_sid: str


class OutboundRefused(Exception):
    """The call was not placed; `reason` says why ("do-not-call", "unknown-number", "missing-placeholder: name", ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class OutboundOutcome:
    outbound_id: str
    call_sid: str | None
    campaign_row: str | None
    outcome: OutcomeKind
    amd_result: str | None
    """Twilio's `AnsweredBy` (human, unknown, machine_end_beep, fax, ...), if detection gave one."""


OutcomeListener = Callable[[OutboundOutcome], None]


@dataclass
class _Placed:
    """One call the bridge placed, from the dial to its outcome."""

    outbound_id: str
    request: OutboundRequest
    profile: CallProfile
    dialled: Dialled
    call_sid: str | None = None
    amd_result: str | None = None
    call: Call | None = None
    final_status: str | None = None
    done: bool = False
    carrier: str | None = None
    """In a fleet, the instance whose stream carries the call when it is not this one (which placed it)."""
    owner: str | None = None
    """In a fleet, the instance that placed the call, when this one only carries its stream."""
    placed_at: float = 0.0
    quiet_since: float = 0.0
    """When the call was last seen with a live stream (or placed): the final status is overdue `STATUS_WAIT_S` after."""


class OutboundCalls:
    """Places calls for one server (on `app.state.outbound`), routes their callbacks and reports their outcomes."""

    def __init__(
        self, settings: Settings, switchboard: Switchboard, do_not_call: DoNotCall, store: Store | None = None, *,
        status_wait_s: float = STATUS_WAIT_S, sweep_interval_s: float = SWEEP_INTERVAL_S, max_keep_s: float = MAX_KEEP_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.do_not_call = do_not_call
        self._store = store
        self.status_wait_s = status_wait_s
        self.sweep_interval_s = sweep_interval_s
        self.max_keep_s = max_keep_s
        self._clock = clock
        self._sweeper: asyncio.Task[None] | None = None
        self._settings = settings
        self._switchboard = switchboard
        self._placed: dict[str, _Placed] = {}
        self._listeners: list[OutcomeListener] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def add_outcome_listener(self, listener: Callable[[OutboundOutcome], None]) -> None:
        self._listeners.append(listener)

    def prepare(self, request: OutboundRequest) -> tuple[CallProfile, Dialled]:
        """The call's profile with its placeholders filled; raises `OutboundRefused` before anything is dialled."""
        config = self._switchboard.config
        number = config.numbers.get(request.from_number)
        if number is None:
            raise OutboundRefused("unknown-number")
        context = dict(request.context)
        try:
            instructions = fill(number.instructions, context)
            greeting = fill(number.greeting, context) if number.greeting else None
            message = fill(number.voicemail_message, context) if number.voicemail_message else None
        except MissingPlaceholder as missing:
            raise OutboundRefused(f"missing-placeholder: {missing.name}") from None
        profile = number.model_copy(update={
            "instructions": instructions, "greeting": greeting, "voicemail_message": message, "opt_out": True,
        })
        return profile, Dialled(voicemail_instructions(instructions, message, context), request.to_number, context)

    def placeholders_of(self, from_number: str) -> list[str]:
        """The placeholders `from_number`'s instructions, greeting and voicemail message hold, which every call's context
        must fill; raises `OutboundRefused("unknown-number")` for a number the configuration does not have."""
        number = self._switchboard.config.numbers.get(from_number)
        if number is None:
            raise OutboundRefused("unknown-number")
        texts = (number.instructions, number.greeting or "", number.voicemail_message or "")
        return list(dict.fromkeys(name for text in texts for name in placeholders(text)))

    async def place(self, request: OutboundRequest) -> PlacedCall:
        """Dial `request.to_number` from `request.from_number`; raises `OutboundRefused` when it is not placed."""
        profile, dialled = self.prepare(request)
        if not self._settings.twilio_account_sid:
            raise OutboundRefused("twilio: TWILIO_ACCOUNT_SID is required to place calls (no call brings its AccountSid)")
        outbound_id = "OB" + secrets.token_hex(12)
        now = self._clock()
        placed = _Placed(outbound_id, request, profile, dialled, placed_at=now, quiet_since=now)
        try:
            listed = await self.do_not_call.contains(request.to_number)
        except StoreUnavailable:
            raise OutboundRefused("database: the do-not-call list cannot be checked") from None
        if listed:
            self._report(placed, "do-not-call")
            raise OutboundRefused("do-not-call")
        if self._store is not None:
            try:
                await self._store.claim("outbound", outbound_id, orjson.dumps({
                    "instance": self._store.instance, "request": _asked(request)}).decode(), OWNER_LIFETIME_S)
            except StoreUnavailable:
                raise OutboundRefused("database: the call's owner cannot be recorded for its callbacks") from None
        self._placed[outbound_id] = placed
        base = self._settings.public_url.rstrip("/")
        token = issue_stream_token(self._settings.stream_token_secret, outbound_id, request.from_number, time.time())
        twiml = stream_twiml(
            self._settings.media_stream_url, request.from_number, token, base + STREAM_ENDED_PATH, base + STREAM_STATUS_PATH,
            notice=profile.recording_notice if profile.record else None, outbound_id=outbound_id,
        )
        try:
            async with TwilioRest.from_settings(self._settings, None, tls=await tls_context()) as rest:
                answer = await rest.create_call(
                    self._settings.twilio_account_sid, To=request.to_number, From=request.from_number, Twiml=twiml,
                    MachineDetection="DetectMessageEnd", AsyncAmd="true",
                    AsyncAmdStatusCallback=f"{base}{OUTBOUND_AMD_PATH}?outbound={outbound_id}",
                    AsyncAmdStatusCallbackMethod="POST",
                    StatusCallback=f"{base}{OUTBOUND_STATUS_PATH}?outbound={outbound_id}", StatusCallbackMethod="POST",
                    StatusCallbackEvent="completed",
                )
        except (TwilioRestError, ConfigError) as error:
            del self._placed[outbound_id]
            log.warning("outbound call %s to %s: Twilio did not place it: %s", outbound_id, self._shown(request.to_number), error)
            self._report(placed, "failed")
            raise OutboundRefused(f"twilio: {error}") from None
        placed.call_sid = str(answer.get("sid") or "")
        log.info("outbound call %s placed: %s", outbound_id, placed.call_sid, extra={"call_sid": placed.call_sid})
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="outbound-status-sweeper")
        return PlacedCall(outbound_id, placed.call_sid)

    @property
    def awaiting_status(self) -> int:
        """Placed calls the bridge keeps until their final status (a callback, or Twilio's record when that is overdue)."""
        return len(self._placed)

    async def _sweep(self) -> None:
        while self._placed:
            await asyncio.sleep(self.sweep_interval_s)
            await self._expire_overdue()

    async def _expire_overdue(self) -> None:
        """Settle each placed call whose final status callback is overdue from Twilio's record of it, or forget it."""
        now = self._clock()
        for placed in list(self._placed.values()):
            if placed.final_status is not None:
                continue  # its outcome is being reported
            if placed.call is not None and not placed.call.ended.is_set():
                placed.quiet_since = now
                continue
            if now - placed.quiet_since < self.status_wait_s:
                continue
            if placed.owner is not None:
                # Carried here for the instance that placed it, which reports the outcome (or, if it died, a campaign's
                # adopter settles the row from Twilio's record): this instance only stops waiting for its question.
                log.info("outbound call %s: carried here and over; its placer never asked how it ended", placed.call_sid,
                         extra={"call_sid": placed.call_sid})
                self._placed.pop(placed.outbound_id, None)
                continue
            try:
                record = await self.find_call(placed.call_sid) if placed.call_sid else None
            except TwilioRestError as error:
                if now - placed.placed_at >= self.max_keep_s:
                    log.warning("outbound call %s: no final status in %.0f s and Twilio cannot be asked (%s); forgotten",
                                placed.call_sid, now - placed.placed_at, error, extra={"call_sid": placed.call_sid})
                    self._placed.pop(placed.outbound_id, None)
                continue
            status = str(record.get("status") or "") if record is not None else "failed"
            if status not in FINAL_STATUSES:
                placed.quiet_since = now  # Twilio says the call goes on: its callback may still come
                continue
            log.warning("outbound call %s: its final status callback never came; Twilio's record says %s",
                        placed.call_sid, status if record is not None else "nothing (no such call)",
                        extra={"call_sid": placed.call_sid})
            answered = record.get("answered_by") if record is not None else None
            placed.amd_result = placed.amd_result or (str(answered) if answered else None)
            placed.final_status = status
            await self._finish(placed)

    async def find_call(self, call_sid: str) -> dict[str, Any] | None:
        """Twilio's record of a call (GET Calls/{sid}.json), for reconciliation after a crash; `None` if Twilio has none.

        Raises `TwilioRestError` when Twilio could not be asked (after the client's retries): unknown is not "none".
        """
        try:
            async with TwilioRest.from_settings(self._settings, None, tls=await tls_context()) as rest:
                return await rest.fetch_call(self._settings.twilio_account_sid or "", call_sid)
        except TwilioCallGone:
            return None

    # The media stream and Twilio's callbacks.
    async def connect_stream(self, outbound_id: str, call_sid: str, stream_id: str) -> Call | None:
        """`connect`, in a fleet too: a stream landing on another instance than the one that placed the call asks
        that one for the call's request (its profile is filled here, from the same configuration)."""
        if outbound_id in self._placed or self._store is None:
            return self.connect(outbound_id, call_sid, stream_id)
        claim = await self._claim(outbound_id)
        owner = str(claim["instance"]) if claim else None
        try:
            reply = await self._store.ask(owner, "outbound_connect", {
                "outbound_id": outbound_id, "call_sid": call_sid, "carrier": self._store.instance,
            }, FLEET_REQUEST_TIMEOUT_S) if owner else None
        except StoreUnavailable:
            return None
        if reply is None and claim is not None and "request" in claim:
            log.warning("outbound call %s: %s, the instance that placed it, does not answer; the call is carried here",
                        call_sid, owner, extra={"call_sid": call_sid})
            reply = {"request": claim["request"]}
        if not reply or "request" not in reply:
            log.warning("outbound call %s: its stream arrived, but the instance that placed it does not know it", call_sid)
            return None
        asked = reply["request"]
        request = OutboundRequest(asked["from_number"], asked["to_number"], asked["context"], asked["campaign_row"])
        try:
            profile, dialled = self.prepare(request)
        except OutboundRefused as refused:
            log.warning("outbound call %s: cannot be carried here: %s", call_sid, refused.reason)
            return None
        self._placed[outbound_id] = _Placed(outbound_id, request, profile, dialled, call_sid, reply.get("amd_result"),
                                            owner=owner)
        return self.connect(outbound_id, call_sid, stream_id)

    async def amd_callback(self, outbound_id: str, answered_by: str) -> None:
        """`AsyncAmdStatusCallback`, wherever it lands: the instance that placed the call takes it."""
        owner = await self._owner_elsewhere(outbound_id)
        if owner is None:
            self.amd_result(outbound_id, answered_by)
        else:
            await self._pass_on(owner, "outbound_amd", {"outbound_id": outbound_id, "answered_by": answered_by})

    async def status_callback(self, outbound_id: str, call_status: str) -> None:
        """`StatusCallback`, wherever it lands: the instance that placed the call reports its outcome."""
        owner = await self._owner_elsewhere(outbound_id)
        if owner is None:
            self.status(outbound_id, call_status)
        else:
            await self._pass_on(owner, "outbound_status", {"outbound_id": outbound_id, "status": call_status})

    async def _pass_on(self, owner: str, op: str, args: dict[str, Any]) -> None:
        assert self._store is not None
        try:
            reply = await self._store.ask(owner, op, args, FLEET_REQUEST_TIMEOUT_S)
        except StoreUnavailable as error:
            reply = {"error": str(error)}
        if reply is None or "error" in reply:
            log.warning("outbound call %s: a callback did not reach %s, the instance that placed it: %s",
                        args["outbound_id"], owner, "no reply" if reply is None else reply["error"])

    async def fleet_request(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """What another instance asks of an outbound call: the placer is asked by the stream's and callbacks'
        instances, the carrier by the placer."""
        outbound_id = str(args.get("outbound_id", ""))
        placed = self._placed.get(outbound_id)
        if op == "outbound_connect":
            if placed is None or placed.owner is not None or placed.carrier is not None or placed.call is not None:
                return {}
            placed.carrier, placed.call_sid = str(args["carrier"]), placed.call_sid or str(args["call_sid"])
            return {"request": _asked(placed.request), "amd_result": placed.amd_result}
        if op == "outbound_amd":
            self.amd_result(outbound_id, str(args["answered_by"]))
        elif op == "outbound_status":
            self.status(outbound_id, str(args["status"]))
        elif op == "outbound_answered_by" and placed is not None and placed.call is not None:
            placed.amd_result = str(args["answered_by"])
            placed.call.answered_by(placed.amd_result)
        elif op == "outbound_ended" and placed is not None:
            return {"opted_out": await self._opted_out_when_ended(placed)}
        return {}

    def connect(self, outbound_id: str, call_sid: str, stream_id: str) -> Call | None:
        """The stream of a placed call arrived (its token checked): the call's session opens now."""
        placed = self._placed.get(outbound_id)
        if placed is None or placed.call is not None:
            return None
        placed.call_sid = placed.call_sid or call_sid
        request = placed.request
        call = self._switchboard.claim_outbound(
            call_sid, stream_id, request.from_number, request.to_number, placed.profile, placed.dialled
        )
        placed.call = call
        if call is not None and placed.amd_result is not None:
            call.answered_by(placed.amd_result)
        return call

    def amd_result(self, outbound_id: str, answered_by: str) -> None:
        """The asynchronous AMD callback: the live call hears who answered (or will, when its stream arrives)."""
        placed = self._placed.get(outbound_id)
        if placed is None or placed.amd_result is not None or not answered_by:
            return
        placed.amd_result = answered_by
        log.info("outbound call %s: answered by %s", placed.call_sid, answered_by, extra={"call_sid": placed.call_sid})
        if placed.call is not None:
            placed.call.answered_by(answered_by)
        elif placed.carrier is not None and self._store is not None:
            self._spawn(self._store.ask(placed.carrier, "outbound_answered_by",
                                        {"outbound_id": placed.outbound_id, "answered_by": answered_by},
                                        FLEET_REQUEST_TIMEOUT_S))

    def status(self, outbound_id: str, call_status: str) -> None:
        """A status callback; a final one reports the outcome, once the live call (if any) has ended too."""
        placed = self._placed.get(outbound_id)
        if placed is None or call_status not in FINAL_STATUSES or placed.final_status is not None:
            return
        placed.final_status = call_status
        task = asyncio.get_running_loop().create_task(self._finish(placed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def call_ended(self, summary: CallSummary) -> None:
        """Every call's end: a person who opted out goes on the do-not-call list."""
        if summary.direction != "outbound" or not summary.opted_out:
            return
        task = asyncio.get_running_loop().create_task(self._opted_out(summary.caller_number, summary.call_sid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _opted_out(self, number: str, call_sid: str) -> None:
        await self.do_not_call.add(number, f"opted out on call {call_sid}")

    async def _finish(self, placed: _Placed) -> None:
        if placed.carrier is not None and self._store is not None:
            reply = await self._store.ask(placed.carrier, "outbound_ended", {"outbound_id": placed.outbound_id},
                                          CALL_END_WAIT_S + 2)
            opted_out = bool(reply and reply.get("opted_out"))
        else:
            opted_out = await self._opted_out_when_ended(placed)
        self._report(placed, outcome_of(placed.final_status or "failed", placed.amd_result, opted_out))
        self._placed.pop(placed.outbound_id, None)

    async def _opted_out_when_ended(self, placed: _Placed) -> bool:
        """Whether the person opted out, once the call carried here has ended (or `CALL_END_WAIT_S` has passed)."""
        call = placed.call
        if call is not None:
            try:
                await asyncio.wait_for(call.ended.wait(), CALL_END_WAIT_S)
            except TimeoutError:
                log.warning("outbound call %s: Twilio says it ended, but its stream is still open", placed.call_sid)
        if placed.owner is not None:
            self._placed.pop(placed.outbound_id, None)
        return call is not None and call.ended.is_set() and call.summary().opted_out

    async def _claim(self, outbound_id: str) -> dict[str, Any] | None:
        """The claim the placing instance made for an outbound call (`instance`, `request`); `None` if none did."""
        assert self._store is not None
        try:
            value = await self._store.claim_value("outbound", outbound_id)
        except StoreUnavailable:
            return None
        try:
            claim = orjson.loads(value) if value else None
        except orjson.JSONDecodeError:
            return None
        return claim if isinstance(claim, dict) and "instance" in claim else None

    async def _owner(self, outbound_id: str) -> str | None:
        """The instance that placed an outbound call, from its claim; `None` if no instance did."""
        claim = await self._claim(outbound_id)
        return str(claim["instance"]) if claim else None

    async def _owner_elsewhere(self, outbound_id: str) -> str | None:
        """The instance to pass a callback to: `None` when this one placed the call (or there is no fleet)."""
        placed = self._placed.get(outbound_id)
        if self._store is None or (placed is not None and placed.owner is None):
            return None
        if placed is not None:
            return placed.owner
        owner = await self._owner(outbound_id)
        return owner if owner != self._store.instance else None

    def _spawn(self, work: Awaitable[object]) -> None:
        async def run() -> None:
            try:
                await work
            except StoreUnavailable as error:
                log.warning("an outbound call's news did not reach the instance carrying it: %s", error)
        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _report(self, placed: _Placed, outcome: OutcomeKind) -> None:
        if placed.done:
            return
        placed.done = True
        result = OutboundOutcome(placed.outbound_id, placed.call_sid, placed.request.campaign_row, outcome, placed.amd_result)
        log.info("outbound call %s to %s: %s", placed.outbound_id, self._shown(placed.request.to_number), outcome,
                 extra={"call_sid": placed.call_sid})
        if self.do_not_call.keeps_outcomes:
            row = {
                "outbound_id": placed.outbound_id, "call_sid": placed.call_sid, "from_number": placed.request.from_number,
                "to_number": placed.request.to_number, "campaign_row": placed.request.campaign_row,
                "ended_at": datetime.now(UTC).isoformat(), "outcome": outcome, "amd_result": placed.amd_result,
            }
            task = asyncio.get_running_loop().create_task(self._keep(row))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        for listener in self._listeners:
            try:
                listener(result)
            except Exception:  # one listener's failure must not hide the outcome from the others
                log.exception("an outbound outcome listener failed")

    def _shown(self, number: str) -> str:
        """A callee's number as log lines show it: masked unless `[logging] mask_caller_numbers` is off."""
        return mask_number(number) if self._switchboard.config.logging.mask_caller_numbers else number

    async def _keep(self, row: dict[str, str | None]) -> None:
        try:
            await self.do_not_call.record_outcome(row)
        except (sqlite3.Error, StoreUnavailable) as error:
            log.warning("the outcome of outbound call %s was not kept in the call log: %s", row["outbound_id"], error)


def _asked(request: OutboundRequest) -> dict[str, Any]:
    """A request as the fleet passes it (in the owner's claim, and in its answer to the stream's instance)."""
    return {"from_number": request.from_number, "to_number": request.to_number, "context": dict(request.context),
            "campaign_row": request.campaign_row}
