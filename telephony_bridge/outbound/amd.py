"""Twilio's answering-machine detection, seen from placing a call: the voicemail to leave, and the outcome.

With `MachineDetection=DetectMessageEnd` and `AsyncAmd=true` the call connects at once and the
result (`AnsweredBy`) arrives later on the `AsyncAmdStatusCallback`; what the live call does with
each result is `call_control.answered_by`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from telephony_bridge.call.call_control import answered_by

OutcomeKind = Literal["human", "voicemail", "no-answer", "busy", "failed", "fax", "do-not-call", "opted-out"]
"""How an outbound call ended, as a campaign records it."""


def voicemail_instructions(instructions: str, message: str | None, context: Mapping[str, str]) -> str:
    """The response that leaves the voicemail: the persona, then the number's message, or one composed from the context."""
    if message:
        return f"{instructions.strip()}\n\nYou reached a voicemail. Leave exactly this message, then stop: {message}"
    facts = "; ".join(f"{key}: {value}" for key, value in context.items()) or "none"
    return (f"{instructions.strip()}\n\nYou reached a voicemail. Leave a short message (under 30 seconds) saying who "
            f"you are and why you called, using these details: {facts}. Then stop.")


def outcome_of(call_status: str, amd_result: str | None, opted_out: bool) -> OutcomeKind:
    """A call's final outcome: Twilio's final status, what AMD said and whether the callee opted out."""
    if call_status == "busy":
        return "busy"
    if call_status == "no-answer":
        return "no-answer"
    if call_status != "completed":
        return "failed"
    if opted_out:
        return "opted-out"
    kind = answered_by(amd_result or "human")
    return "fax" if kind == "fax" else "voicemail" if kind == "machine" else "human"
