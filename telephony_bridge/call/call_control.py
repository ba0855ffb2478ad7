"""The model ends and transfers calls: its two functions, and when the phone call acts on them.

`end_call`: the caller hears the goodbye in full, then the line drops. The goodbye is either in
the response that called the function (hang up once that audio has played, known from the mark
echoes) or, when the call came alone, in the next response, which the function's output asks
for. `transfer_call`: the same for "let me connect you", then Twilio dials the target. A caller
who speaks over the goodbye or the hand-over keeps the line, and the model is told so.

While Twilio dials, the caller is away from the bridge: the media stream has ended, the Realtime
session is parked, and the call waits for the `<Dial action>` callback. A connected transfer ends
the call; one that is busy, unanswered or failed brings the caller back on a new stream, and the
model, on a new session with the conversation so far, is told why.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from telephony_bridge.call.events import Action, AddNote, CallUpdate, HangUp, Transfer
from telephony_bridge.config import CallProfile

END_CALL = "end_call"
TRANSFER_CALL = "transfer_call"
OPT_OUT = "opt_out"
BUILT_IN_FUNCTIONS = frozenset({END_CALL, TRANSFER_CALL, OPT_OUT})

PERSON_RESULTS = frozenset({"human", "unknown"})
MACHINE_RESULTS = frozenset({"machine_end_beep", "machine_end_silence", "machine_end_other", "machine_start"})


@dataclass(frozen=True)
class Dialled:
    """An outbound call: silent until answering-machine detection says who answered, then greets or leaves a message."""

    voicemail_instructions: str
    """The instructions of the response that leaves the voicemail (the persona and the message)."""
    callee: str = ""
    """The number dialled."""
    context: Mapping[str, str] = field(default_factory=dict)
    """What the placeholders were filled from: a recording keeps it, so a replay places the same call."""


def answered_by(amd_result: str) -> Literal["person", "machine", "fax"]:
    """Who answered, by Twilio's `AnsweredBy`: `unknown` and anything new count as a person, who is never hung up on."""
    if amd_result == "fax":
        return "fax"
    return "machine" if amd_result in MACHINE_RESULTS else "person"


def function_tools(profile: CallProfile) -> list[dict[str, Any]]:
    """The built-in functions a number's session offers the model: only those that apply to it."""
    tools: list[dict[str, Any]] = []
    if profile.end_call:
        tools.append({
            "type": "function",
            "name": END_CALL,
            "description": "Hang up the phone call. Use it when the conversation is over: the caller said goodbye or "
                           "has what they needed. Say a short goodbye in the same response, before calling it.",
            "parameters": {"type": "object", "properties": {}},
        })
    if profile.transfer:
        tools.append({
            "type": "function",
            "name": TRANSFER_CALL,
            "description": "Transfer the caller to a person or team. Use it when the caller asks for a person or you "
                           "cannot help. First tell the caller you are connecting them, in the same response.",
            "parameters": {
                "type": "object",
                "properties": {
                    "target": {"type": "string", "enum": sorted(profile.transfer), "description": "Who to transfer to."},
                    "summary": {"type": "string", "description": "One sentence for the person who answers: "
                                "who is calling and what they need."},
                },
                "required": ["target", "summary"],
            },
        })
    if profile.opt_out:
        tools.append({
            "type": "function",
            "name": OPT_OUT,
            "description": "The person asks not to be called again: add them to the do-not-call list. Say a short, "
                           "polite goodbye in the same response, before calling it; the call ends after it.",
            "parameters": {"type": "object", "properties": {}},
        })
    return tools


class Step(enum.Enum):
    TALKING = "talking"
    GOODBYE = "goodbye"
    """`end_call` accepted: the line drops once the goodbye has played."""
    CONNECTING = "connecting"
    """`transfer_call` accepted: Twilio dials once the hand-over has played."""
    VOICEMAIL = "voicemail"
    """An answering machine took the call: the line drops once the message has played, whatever the machine does."""
    HANGING_UP = "hanging up"
    DIALING = "dialing"
    """The `<Dial>` went to Twilio: the stream ends, the caller is away until the dial's outcome."""
    RETURNING = "returning"
    """The transfer did not connect: the caller comes back on a new stream."""


class CallControl:
    """When the phone call itself acts on the model's `end_call` and `transfer_call`; sans I/O."""

    def __init__(self, profile: CallProfile) -> None:
        self.step = Step.TALKING
        self.transfer: Transfer | None = None
        self.return_reason = ""
        self.opted_out = False
        """The model called `opt_out`: the callee goes on the do-not-call list when the call ends."""
        self._profile = profile
        self._after_next_response = False
        self.policy_limit = ""
        """The limit of the number's policy that ends the call (`max_call_minutes`, ...); empty when the model ends it."""

    @property
    def caller_away(self) -> bool:
        """The media stream ended for a transfer: its end is not the end of the call."""
        return self.step in (Step.DIALING, Step.RETURNING)

    def end_call(self, spoke: bool) -> tuple[str, bool]:
        """Accept `end_call`; returns the function's output and whether the model must speak (the goodbye) next."""
        if not self._profile.end_call or self.step is not Step.TALKING:
            return json.dumps({"error": "the call cannot be ended now"}), True
        self.step = Step.GOODBYE
        self._after_next_response = not spoke
        if spoke:
            return json.dumps({"status": "the line drops once your goodbye has played"}), False
        return json.dumps({"status": "say a short goodbye now; the line drops once it has played"}), True

    def end_by_policy(self, limit: str) -> bool:
        """A limit of the number's policy ends the call: the line drops once the goodbye the model is asked for
        next has played. Not while another ending or a transfer is under way; whether it was accepted."""
        if self.step is not Step.TALKING:
            return False
        self.step = Step.GOODBYE
        self.policy_limit = limit
        self._after_next_response = True
        return True
    def opt_out(self, spoke: bool) -> tuple[str, bool]:
        """Accept `opt_out`: the callee is recorded as opted out and the call ends after the goodbye."""
        if not self._profile.opt_out:
            return json.dumps({"error": "there is no function 'opt_out'"}), True
        self.opted_out = True
        if self.step is not Step.TALKING:
            return json.dumps({"status": "recorded: they will not be called again"}), True
        self.step = Step.GOODBYE
        self._after_next_response = not spoke
        if spoke:
            return json.dumps({"status": "recorded; the line drops once your goodbye has played"}), False
        return json.dumps({"status": "recorded; say a short, polite goodbye now; the line drops once it has played"}), True

    def leave_voicemail(self) -> None:
        """An answering machine answered: the next response is the message, and the line drops once it has played."""
        self.step = Step.VOICEMAIL
        self._after_next_response = True

    def hang_up_now(self) -> HangUp:
        """Hang up without a word (a fax answered)."""
        self.step = Step.HANGING_UP
        return HangUp("a fax machine answered")

    def transfer_to(self, arguments: str, spoke: bool) -> tuple[str, bool]:
        """Accept `transfer_call` to a configured target, or refuse it with the reason for the model."""
        try:
            parsed = json.loads(arguments)
            name, summary = str(parsed["target"]), str(parsed.get("summary") or "")
        except (ValueError, TypeError, KeyError):
            return json.dumps({"error": "transfer_call needs a target and a summary"}), True
        if name not in self._profile.transfer:
            choices = ", ".join(sorted(self._profile.transfer)) or "none"
            return json.dumps({"error": f"unknown target {name!r}; the targets are: {choices}"}), True
        if self.step is not Step.TALKING:
            return json.dumps({"error": "the call cannot be transferred now"}), True
        self.transfer = Transfer(name, self._profile.transfer[name], summary[:500])
        self.step = Step.CONNECTING
        self._after_next_response = not spoke
        if spoke:
            return json.dumps({"status": f"connecting to {name} once your words have played"}), False
        return json.dumps({"status": f"tell the caller you are connecting them to {name}; the transfer follows"}), True

    def fall_back(self) -> Transfer | None:
        """The model cannot be reached: a transfer to the number's `fallback_transfer`, if it has one."""
        target = self._profile.fallback_transfer
        if target is None or self.step in (Step.HANGING_UP, Step.DIALING):
            return None
        summary = "The caller could not reach the assistant."
        self.transfer = Transfer(target, self._profile.transfer_target(target), summary, fallback=True)
        self.step = Step.DIALING
        return self.transfer

    def response_done(self, spoke: bool) -> None:
        if self._after_next_response and spoke:
            self._after_next_response = False

    def due(self, playing: bool, model_idle: bool) -> CallUpdate | None:
        """The hang-up or the transfer, once its goodbye or hand-over has been heard in full."""
        if self.step not in (Step.GOODBYE, Step.CONNECTING, Step.VOICEMAIL) or self._after_next_response or playing \
                or not model_idle:
            return None
        if self.step is Step.VOICEMAIL:
            self.step = Step.HANGING_UP
            return HangUp("the voicemail message was left")
        if self.step is Step.GOODBYE:
            self.step = Step.HANGING_UP
            return HangUp(f"{self.policy_limit} reached" if self.policy_limit else "the model ended the call")
        self.step = Step.DIALING
        return self.transfer

    def caller_spoke(self) -> list[Action]:
        """The caller spoke over the goodbye or the hand-over: the call goes on, and the model hears why.

        A limit's goodbye is not called off: the model's answer to the caller, heard in full, is the goodbye."""
        if self.step is Step.GOODBYE and self.policy_limit:
            self._after_next_response = True
            return []
        if self.step is Step.GOODBYE:
            self.step = Step.TALKING
            return [AddNote("The caller spoke before your goodbye finished, so the call was not ended. Answer them.")]
        if self.step is Step.CONNECTING:
            self.step = Step.TALKING
            self.transfer = None
            return [AddNote("The caller spoke before the transfer started, so it was not started. Answer them; "
                            "transfer them again if they still want it.")]
        return []

    def hang_up_failed(self) -> None:
        self.step = Step.TALKING

    def transfer_failed(self, reason: str) -> list[Action]:
        """The transfer could not be started; the caller is still on the line with the model."""
        name = self.transfer.target_name if self.transfer else "the target"
        self.step = Step.TALKING
        self.transfer = None
        return [AddNote(f"The transfer to {name} could not be started ({reason}). Tell the caller and help them "
                        "another way, or offer to take a message.")]

    def dial_ended(self, connected: bool, dial_status: str) -> None:
        self.step = Step.HANGING_UP if connected else Step.RETURNING
        self.return_reason = "" if connected else dial_status

    def returned(self) -> list[Action]:
        """The caller is back after a transfer that did not connect: the model hears why, first."""
        name = self.transfer.target_name if self.transfer else "the target"
        reason = {"busy": "the line was busy", "no-answer": "nobody answered"}.get(self.return_reason, self.return_reason)
        self.step = Step.TALKING
        self.transfer = None
        return [AddNote(f"The transfer to {name} did not go through: {reason}. The caller is back on the line with you. "
                        "Tell them, and help them another way or offer to take a message.")]
