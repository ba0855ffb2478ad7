"""Placing one outbound call, and the outcome it leaves: the interface campaigns build on.

The bridge issues an outbound id before dialling and binds the call's stream token to it, since
Twilio's CallSid is only known once the create request returns. The call is created with inline
TwiML (the same `<Connect><Stream>` as an inbound call) and asynchronous answering-machine detection;
the AMD result and the call's status reach us on signed callbacks, which name the outbound id.

An outcome fires once per call, when it is final: Twilio's status callback says `completed`,
`busy`, `no-answer`, `failed` or `canceled`, combined with the AMD result (and, for a call the
bridge spoke on, with whether the callee opted out). A number on the do-not-call list is never
dialled: `place` raises `OutboundRefused("do-not-call")` and listeners get a `do-not-call` outcome
with no CallSid, so a campaign that writes outcomes from its listener alone records it too.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from telephony_bridge.call.call_control import Dialled
from telephony_bridge.call.pump import Call
from telephony_bridge.call.summary import CallSummary
from telephony_bridge.call.switchboard import Switchboard
from telephony_bridge.config import CallProfile, Settings
from telephony_bridge.errors import ConfigError, TwilioCallGone, TwilioRestError
from telephony_bridge.logs import mask_number
from telephony_bridge.outbound import placing_fleet
from telephony_bridge.outbound.amd import OutcomeKind, outcome_of, voicemail_instructions
from telephony_bridge.outbound.do_not_call import DoNotCall, record_outcome
from telephony_bridge.outbound.placeholders import MissingPlaceholder, fill
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
CALL_END_WAIT_S = 15.0
"""How long a final status waits for the live call's own end (its summary says whether the person opted out)."""


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
    """In a fleet, the instance its stream reached when that is not the one that placed it: callbacks go there."""


class OutboundCalls:
    """Places calls for one server (on `app.state.outbound`), routes their callbacks and reports their outcomes."""

    def __init__(self, settings: Settings, switchboard: Switchboard, do_not_call: DoNotCall, log_path: Path | None,
                 fleet: Store | None = None) -> None:
        self.do_not_call = do_not_call
        self._fleet = fleet
        self._settings = settings
        self._switchboard = switchboard
        self._log_path = log_path
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
        return profile, Dialled(voicemail_instructions(instructions, message, context))

    async def place(self, request: OutboundRequest) -> PlacedCall:
        """Dial `request.to_number` from `request.from_number`; raises `OutboundRefused` when it is not placed."""
        profile, dialled = self.prepare(request)
        if not self._settings.twilio_account_sid:
            raise OutboundRefused("twilio: TWILIO_ACCOUNT_SID is required to place calls (no call brings its AccountSid)")
        outbound_id = "OB" + secrets.token_hex(12)
        placed = _Placed(outbound_id, request, profile, dialled)
        if await self.do_not_call.contains(request.to_number):
            self._report(placed, "do-not-call")
            raise OutboundRefused("do-not-call")
        if self._fleet is not None:
            try:
                await placing_fleet.share(self._fleet, outbound_id, placing_fleet.Shared(
                    self._fleet.instance, request.from_number, request.to_number, request.context, request.campaign_row))
            except StoreUnavailable:
                raise OutboundRefused("database-unavailable") from None
        self._placed[outbound_id] = placed
        base = self._settings.public_url.rstrip("/")
        token = issue_stream_token(self._settings.stream_token_secret, outbound_id, request.from_number, time.time())
        twiml = stream_twiml(
            self._settings.media_stream_url, request.from_number, token, base + STREAM_ENDED_PATH, base + STREAM_STATUS_PATH,
            outbound_id=outbound_id,
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
        return PlacedCall(outbound_id, placed.call_sid)

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
    async def connect_anywhere(self, outbound_id: str, call_sid: str, stream_id: str) -> Call | None:
        """`connect`, also for a call another instance of the fleet placed: this one takes it over and carries it."""
        if outbound_id in self._placed or self._fleet is None:
            return self.connect(outbound_id, call_sid, stream_id)
        try:
            shared = await placing_fleet.placer_of(self._fleet, outbound_id)
            if shared is None:
                return None
            request = OutboundRequest(shared.from_number, shared.to_number, shared.context, shared.campaign_row)
            carried = {"outbound": outbound_id, "by": self._fleet.instance}
            reply = await self._fleet.ask(shared.instance, "outbound_carried", carried, placing_fleet.REQUEST_TIMEOUT_S)
        except StoreUnavailable:
            return None
        if reply is None:
            # The placer died (or cannot answer): the stream token was claimed once, so carrying the call here is safe;
            # callbacks sent to the placer are lost, and the campaign row is settled from Twilio's record of the call.
            log.warning("outbound call %s: the instance that placed it does not answer; carried here", call_sid,
                        extra={"call_sid": call_sid})
            reply = {"ok": True}
        if not reply.get("ok"):
            return None
        try:
            profile, dialled = self.prepare(request)
        except OutboundRefused:
            return None
        self._placed[outbound_id] = _Placed(outbound_id, request, profile, dialled, call_sid=call_sid,
                                            amd_result=reply.get("amd_result"))
        return self.connect(outbound_id, call_sid, stream_id)

    def carried(self, outbound_id: str, by: str) -> dict[str, Any]:
        """Another instance got the stream of a call placed here: its callbacks are for that instance from now on."""
        placed = self._placed.get(outbound_id)
        if placed is None or placed.call is not None or placed.carrier is not None or placed.done:
            return {"ok": False}
        placed.carrier = by
        return {"ok": True, "amd_result": placed.amd_result}

    async def callback(self, kind: str, outbound_id: str, value: str) -> None:
        """An AMD (`kind` "amd") or status ("status") callback, run where the call is: here, or on the instance that
        carries it (asked through the fleet's database, via the instance that placed it when this one did not)."""
        placed = self._placed.get(outbound_id)
        if placed is not None and placed.carrier is None:
            (self.amd_result if kind == "amd" else self.status)(outbound_id, value)
            return
        if self._fleet is None:
            return
        reply = None
        try:
            if placed is not None and placed.carrier is not None:
                target = placed.carrier
            else:
                shared = await placing_fleet.placer_of(self._fleet, outbound_id)
                if shared is None or shared.instance == self._fleet.instance:
                    return
                target = shared.instance
            reply = await self._fleet.ask(target, "outbound_callback", {"kind": kind, "outbound": outbound_id, "value": value},
                                          placing_fleet.REQUEST_TIMEOUT_S)
        except StoreUnavailable:
            pass
        if placed is None or kind != "status" or value not in FINAL_STATUSES:
            if reply is None:
                log.warning("outbound call %s: a %s callback could not reach the instance carrying it", outbound_id, kind)
            return
        if reply is None:
            # The carrier died with the call: the placer reports the outcome it knows, so the row is not left dialling.
            log.warning("outbound call %s: the instance carrying it does not answer; its outcome is reported here",
                        outbound_id)
            placed.carrier = None
            self.status(outbound_id, value)
            return
        placed.done = True  # the carrier reported the outcome
        self._placed.pop(outbound_id, None)

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
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _opted_out(self, number: str, call_sid: str) -> None:
        await self.do_not_call.add(number, f"opted out on call {call_sid}")

    async def _finish(self, placed: _Placed) -> None:
        call = placed.call
        if call is not None:
            try:
                await asyncio.wait_for(call.ended.wait(), CALL_END_WAIT_S)
            except TimeoutError:
                log.warning("outbound call %s: Twilio says it ended, but its stream is still open", placed.call_sid)
        opted_out = call is not None and call.ended.is_set() and call.summary().opted_out
        self._report(placed, outcome_of(placed.final_status or "failed", placed.amd_result, opted_out))
        self._placed.pop(placed.outbound_id, None)

    def _report(self, placed: _Placed, outcome: OutcomeKind) -> None:
        if placed.done:
            return
        placed.done = True
        result = OutboundOutcome(placed.outbound_id, placed.call_sid, placed.request.campaign_row, outcome, placed.amd_result)
        log.info("outbound call %s to %s: %s", placed.outbound_id, self._shown(placed.request.to_number), outcome,
                 extra={"call_sid": placed.call_sid})
        if self._log_path is not None:
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
        assert self._log_path is not None
        try:
            await asyncio.to_thread(record_outcome, self._log_path, row)
        except sqlite3.Error as error:
            log.warning("the outcome of outbound call %s was not kept in the call log: %s", row["outbound_id"], error)

