"""What the bridge answers Twilio's callbacks about a call: after its stream, a transfer's whisper and outcome.

* After the stream (`<Connect action>`): what the caller hears next matches why the stream ended —
  nothing after a goodbye, a hang-up or a connected transfer; the fallback message when the model
  could not be reached; a short apology when the bridge had to end a conversation (shutting
  down); and the fallback message for a call this process does not know (it restarted).
* The whisper (`<Number url>`): the model's one-sentence summary, said to the person who answered
  before the caller is joined.
* The dial's outcome (`<Dial action>`): redeems the transfer's single-use id once. Connected, the
  call is over; otherwise the caller returns to the agent on a new stream admitted by a fresh
  single-use stream id, or, when the model was down, hears the fallback message.
"""

from __future__ import annotations

import time

from telephony_bridge.call.events import Outcome
from telephony_bridge.call.switchboard import Switchboard
from telephony_bridge.twilio.security import issue_stream_token
from telephony_bridge.twilio.webhook import hangup_twiml, say_twiml, stream_twiml

CALLER_GONE: frozenset[Outcome | None] = frozenset(
    {"caller_hung_up", "stream_dropped", "media_timeout", "agent_ended", "transferred", "operator_ended", None}
)
"""Outcomes after which there is nobody to speak to, or nothing left to say."""


def after_stream(switchboard: Switchboard, call_sid: str, shutdown_message: str, unknown_call_message: str) -> str:
    ending = switchboard.ending(call_sid)
    if ending is None:
        return say_twiml(unknown_call_message)
    outcome, profile = ending
    if outcome in CALLER_GONE:
        return hangup_twiml()
    if outcome == "shut_down":
        return say_twiml(shutdown_message)
    return say_twiml(profile.fallback_message)


def after_stream_elsewhere(outcome: str | None, shutdown_message: str, fallback_message: str) -> str:
    """`after_stream` for a call another instance of the fleet carried, by the outcome its owner logged."""
    if outcome is None:
        return say_twiml(fallback_message)
    if outcome in CALLER_GONE:
        return hangup_twiml()
    return say_twiml(shutdown_message if outcome == "shut_down" else fallback_message)


def whisper(switchboard: Switchboard, transfer_id: str) -> str:
    summary = switchboard.transfers.whisper(transfer_id)
    return say_twiml(summary) if summary else say_twiml("A caller is being transferred to you.")


def dial_ended(
    switchboard: Switchboard,
    transfer_id: str,
    dial_status: str,
    *,
    secret: bytes,
    stream_url: str,
    stream_ended_url: str,
    status_url: str,
) -> str:
    pending = switchboard.transfers.redeem(transfer_id)
    if pending is None:
        return hangup_twiml()
    call = pending.call
    call.transfer_ended(dial_status)
    if dial_status in ("completed", "answered"):
        return hangup_twiml()
    if pending.fallback or call.ended.is_set():
        return say_twiml(call.profile.fallback_message)
    token = issue_stream_token(secret, call.call_sid, call.called_number, time.time())
    return stream_twiml(stream_url, call.called_number, token, stream_ended_url, status_url)
