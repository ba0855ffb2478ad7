"""The value a call leaves behind: who, how long, how it ended, what was counted and said.

Metrics, the call log and the end-of-call log line read this frozen value and never the live call,
the way a closed websocket is handed over as one `ConnectionClosed` value. A scrape takes the same
value of each live call, so live and ended calls are counted by one code path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import astuple, dataclass, fields
from typing import Literal

from telephony_bridge.call.events import Outcome, TokenUsage, TranscriptDone
from telephony_bridge.tools.http_tools import ToolCallRecord

Activity = Literal["connecting", "listening", "speaking", "using_tool", "transferring"]
"""What a live call is doing now, as an operator watching it would say it."""


@dataclass(frozen=True, slots=True)
class CallCounters:
    """What a call counts as it runs; summed over calls by `+`, field by field."""

    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0
    """Audio frames dropped because a socket did not keep up (see `call.MAX_QUEUED_CHARS`)."""
    malformed_twilio: int = 0
    malformed_realtime: int = 0
    stale_marks: int = 0
    barge_ins: int = 0
    sessions_opened: int = 0
    reconnects: int = 0
    renewals: int = 0

    def __add__(self, other: CallCounters) -> CallCounters:
        return CallCounters(*(mine + theirs for mine, theirs in zip(astuple(self), astuple(other), strict=True)))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in fields(cls))


@dataclass(frozen=True, slots=True)
class TransferAttempt:
    """One transfer Twilio was asked to dial: to which configured target, and how the dialled leg ended."""

    target_name: str
    """The name in the number's `[transfer]` table (bounded: a metric label)."""
    connected: bool
    status: str
    """Twilio's `DialCallStatus` (busy, no-answer, completed, ...), or why the REST request was refused."""


@dataclass(frozen=True, slots=True)
class CallSummary:
    call_sid: str
    called_number: str
    caller_number: str
    model: str
    dialect: str
    duration_s: float
    """Seconds from the answer to the end (or to now, for a call still live)."""
    outcome: Outcome | None
    """None while the call is live."""
    end_reason: str
    counters: CallCounters
    realtime_errors: Mapping[str, int]
    realtime_failures: tuple[str, ...]
    response_latencies_ms: tuple[float, ...]
    """For each answer: from the caller stopping speaking to the model's first audio."""
    truncates: tuple[tuple[str, int], ...]
    """Each barge-in's truncate: (item id, audio_end_ms)."""
    dropped_model_audio_ms: float
    transcript: tuple[TranscriptDone, ...]
    """Both sides' words, with a `tool` line for each tool call, in the order they happened."""
    transcript_at_s: tuple[float, ...] = ()
    """When each transcript line was complete, in seconds from the call's answer."""
    tool_calls: tuple[ToolCallRecord, ...] = ()
    transfers: tuple[TransferAttempt, ...] = ()
    """Every transfer the call attempted, in order: a busy one that brought the caller back, then perhaps another."""
    profile_in_force: str = "always"
    """Which of its number's profiles the call started with and kept: `always`, `business_hours` or `after_hours`."""
    usage: TokenUsage = TokenUsage()
    """Tokens summed over every `response.done` of the call, across its sessions."""
    cost: float | None = None
    """Estimated from the operator's `[prices]` for the model; `None` without them."""
    direction: str = "inbound"
    """"outbound" for a call the bridge placed: its `caller_number` is then the person called, `called_number` ours."""
    amd_result: str | None = None
    """An outbound call's answering-machine detection result (Twilio's `AnsweredBy`), once it came."""
    opted_out: bool = False
    """The person asked not to be called again (the model's `opt_out`)."""
    activity: Activity = "listening"
    """What the call was doing when the value was taken (meaningful for a live call)."""

    @property
    def transfer_target(self) -> str | None:
        """The target of the call's last transfer; `None` for a call never transferred."""
        return self.transfers[-1].target_name if self.transfers else None

    @property
    def transfer_connected(self) -> bool | None:
        """Whether the call's last transfer connected; `None` for a call never transferred."""
        return self.transfers[-1].connected if self.transfers else None

    def timed_transcript(self) -> list[tuple[TranscriptDone, float | None]]:
        """Each transcript line with when it was complete (`None` where a summary was made without times)."""
        times: tuple[float | None, ...] = self.transcript_at_s or (None,) * len(self.transcript)
        return list(zip(self.transcript, times, strict=True))
