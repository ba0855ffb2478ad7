"""The one vocabulary of the call controller: events in, actions out.

The socket adapters parse Twilio messages and Realtime events (in either dialect) into these
small frozen classes, and encode the actions back into each wire format, so the controller
never sees JSON, base64 or a dialect.

The four that carry audio (`CallerAudio`, `ModelAudio`, `AppendAudio`, `SendTwilioMedia`) are
not frozen, though nothing changes them either: they are made 75 to 150 times a call-second, and a
frozen dataclass sets each field through `object.__setattr__`, which cost 0.7 µs of the 14 µs a
model delta takes through the bridge (docs/cpu.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from telephony_bridge.config import CallProfile, HttpTool

Outcome = Literal[
    "caller_hung_up", "stream_dropped", "media_timeout", "realtime_unavailable", "shut_down", "no_media_stream",
    "bridge_error", "agent_ended", "transferred", "operator_ended", "policy_ended",
]
"""How a call ended, as operators count it (metrics, logs, the call log); the end reason gives the detail."""

ToolOutcome = Literal["ok", "timeout", "http_error", "not_json", "too_large", "unreachable", "bad_arguments"]
"""How an operator's tool call went, as metrics count it; all but `ok` give the model `{"error": ...}`."""


# Events from Twilio's Media Stream.
@dataclass(frozen=True, slots=True)
class StreamStarted:
    stream_sid: str
    call_sid: str
    custom_parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class CallerAudio:
    """20 ms of the caller's voice, in practice: raw 8 kHz μ-law."""

    ulaw: bytes


@dataclass(frozen=True, slots=True)
class MarkEchoed:
    """Twilio has played (or, after a clear, discarded) all audio sent before this mark."""

    name: str


@dataclass(frozen=True, slots=True)
class DigitPressed:
    digit: str


@dataclass(frozen=True, slots=True)
class StreamStopped:
    """The caller hung up or the call was ended: Twilio's `stop`."""


@dataclass(frozen=True, slots=True)
class TwilioDisconnected:
    """The media socket closed without a `stop`."""


@dataclass(frozen=True, slots=True)
class OperatorEnded:
    """An operator ended the call (the admin API): Twilio says `goodbye` and hangs up, so the stream's stop is theirs."""

    goodbye: str


@dataclass(frozen=True, slots=True)
class TwilioMessageRejected:
    """A message from Twilio that could not be understood; counted, and the call goes on."""

    reason: str


@dataclass(frozen=True, slots=True)
class EndCall:
    """The bridge itself ends the call: shutting down, or no media stream arrived."""

    reason: str
    outcome: Outcome


# Events from the Realtime session.
@dataclass(frozen=True, slots=True)
class RealtimeConnected:
    """The Realtime websocket is open; actions for it can be sent from now on."""


@dataclass(frozen=True, slots=True)
class SessionConfigured:
    """The service confirmed the session's configuration (`session.updated`): the model has its persona."""


@dataclass(frozen=True, slots=True)
class ConfigurationRefused:
    """The service refused the bridge's `session.update`; `field` names the optional setting it refused, if any."""

    field: str | None
    message: str


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The service's voice activity detection heard the caller start speaking."""


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """The service heard the caller stop speaking: the clock of the model's response latency starts."""


@dataclass(frozen=True, slots=True)
class ResponseStarted:
    response_id: str


@dataclass(slots=True)
class ModelAudio:
    """A chunk of the model's answer for one conversation item: 24 kHz PCM16, or mu-law with `audio_format = "pcmu"`."""

    response_id: str
    item_id: str
    pcm: bytes


@dataclass(frozen=True, slots=True)
class ModelAudioDone:
    item_id: str


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens a response used, as `response.done`'s `usage` reports them; summed over a call by `+`.

    `text_in` and `audio_in` count the whole conversation the model read for the response (its input grows
    turn by turn); `cached_in` is the part of that input the service served from its cache (a subset, not
    more), `cached_audio_in` the audio among it.
    """

    audio_in: int = 0
    text_in: int = 0
    cached_in: int = 0
    audio_out: int = 0
    text_out: int = 0
    cached_audio_in: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(self.audio_in + other.audio_in, self.text_in + other.text_in, self.cached_in + other.cached_in,
                          self.audio_out + other.audio_out, self.text_out + other.text_out,
                          self.cached_audio_in + other.cached_audio_in)


@dataclass(frozen=True, slots=True)
class ResponseDone:
    response_id: str
    status: str
    usage: TokenUsage | None = None


@dataclass(frozen=True, slots=True)
class TranscriptDone:
    """A finished transcript of one side of the call (`speaker` is "caller" or "model")."""

    speaker: str
    item_id: str
    text: str


@dataclass(frozen=True, slots=True)
class FunctionCallRequested:
    """The model called a function; acted on only once its response is done and `completed`."""

    response_id: str
    call_id: str
    name: str
    arguments: str
    """JSON text, as the model wrote it: it may not parse."""


@dataclass(frozen=True, slots=True)
class RealtimeErrorReported:
    """The service rejected something; logged and counted, never the end of a call."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class RealtimeMessageRejected:
    reason: str


@dataclass(frozen=True, slots=True)
class RealtimeDisconnected:
    """The session closed or could not be opened; `retryable` is False when trying again cannot help (401)."""

    reason: str
    retryable: bool = True


# Events from Twilio's REST API and its callbacks about this call.
@dataclass(frozen=True, slots=True)
class HangUpFailed:
    """The REST hang-up failed; `gone` when Twilio says the call no longer exists (20404)."""

    reason: str
    gone: bool = False


@dataclass(frozen=True, slots=True)
class TransferFailed:
    """The REST request that starts a transfer failed: the caller is still with the agent."""

    reason: str


@dataclass(frozen=True, slots=True)
class TransferEnded:
    """Twilio's `<Dial action>`: how the dialled leg ended (`DialCallStatus`)."""

    dial_status: str

    @property
    def connected(self) -> bool:
        return self.dial_status in ("completed", "answered")


@dataclass(frozen=True, slots=True)
class AnsweredBy:
    """An outbound call's answering-machine detection result (Twilio's `AnsweredBy`): human, unknown, machine_end_*, fax."""

    result: str


# Events from work done off the audio path.
@dataclass(frozen=True, slots=True)
class ToolAnswered:
    """An operator's tool answered, or failed: `output` is the call's `function_call_output` either way."""

    call_id: str
    output: str
    outcome: ToolOutcome
    latency_ms: float
    """From the request's start to its answer (or its failure)."""


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: the controller checks its deadlines (a quiet media stream, an old session)."""


Event = (
    StreamStarted
    | CallerAudio
    | MarkEchoed
    | DigitPressed
    | StreamStopped
    | TwilioDisconnected
    | TwilioMessageRejected
    | EndCall
    | OperatorEnded
    | RealtimeConnected
    | SessionConfigured
    | ConfigurationRefused
    | SpeechStarted
    | SpeechStopped
    | ResponseStarted
    | ModelAudio
    | ModelAudioDone
    | ResponseDone
    | TranscriptDone
    | FunctionCallRequested
    | RealtimeErrorReported
    | RealtimeMessageRejected
    | RealtimeDisconnected
    | HangUpFailed
    | TransferFailed
    | TransferEnded
    | AnsweredBy
    | ToolAnswered
    | Tick
)


# Actions. Each is classified once, by its base class: a message on the Twilio socket, a message
# on the Realtime socket, or a change to the call's sockets themselves.
class Action:
    """Something the controller decided; the call's I/O carries it out."""

    __slots__ = ()


class TwilioMessage(Action):
    """A message the Media Stream socket sends to Twilio, in the order the controller decided it."""

    __slots__ = ()


class RealtimeMessage(Action):
    """A client event the Realtime socket sends to the service, in the order the controller decided it."""

    __slots__ = ()


class SessionSetup(RealtimeMessage):
    """A message that configures a new session: sent as soon as it opens, before anything held for it."""

    __slots__ = ()


class CallUpdate(Action):
    """A change to the phone call itself, made through Twilio's REST API."""

    __slots__ = ()


class SocketChange(Action):
    """Open or close a socket of the call."""

    __slots__ = ()


class Work(Action):
    """Work off the audio path (an HTTP request): done in a task of its own; its result comes back as an event."""

    __slots__ = ()


class CarriesAudio:
    """Marks the messages that carry audio, whose time in the bridge the latency observer measures."""

    __slots__ = ()


# Messages to Twilio.
@dataclass(slots=True)
class SendTwilioMedia(TwilioMessage, CarriesAudio):
    ulaw: bytes


@dataclass(frozen=True, slots=True)
class SendTwilioMark(TwilioMessage):
    name: str


@dataclass(frozen=True, slots=True)
class ClearTwilio(TwilioMessage):
    """Empty Twilio's playback buffer: the caller stops hearing the model at once."""


# Messages to the Realtime service.
@dataclass(frozen=True, slots=True)
class ConfigureSession(SessionSetup):
    profile: CallProfile
    omit: frozenset[str] = frozenset()
    """Optional settings the service refused, left out so the session can still be configured."""
    auto_respond: bool = True
    """Whether the service answers (and is interrupted) on its own when the caller speaks; off until an outbound call
    knows a person answered, so server VAD never answers a voicemail greeting."""


@dataclass(slots=True)
class AppendAudio(RealtimeMessage, CarriesAudio):
    """Caller audio for the service in the session's format: 24 kHz PCM16, or mu-law with `audio_format = "pcmu"`."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class TruncateItem(RealtimeMessage):
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class AddCallerText(RealtimeMessage):
    text: str


@dataclass(frozen=True, slots=True)
class AnswerFunctionCall(RealtimeMessage):
    """The output of one function call (`function_call_output`), as text the model reads."""

    call_id: str
    output: str


@dataclass(frozen=True, slots=True)
class AddNote(RealtimeMessage):
    """Tell the model something that happened on the call (a system message), e.g. a failed transfer."""

    text: str


@dataclass(frozen=True, slots=True)
class CreateResponse(RealtimeMessage):
    instructions: str | None = None


@dataclass(frozen=True, slots=True)
class AddHistoryItem(SessionSetup):
    """One turn of the conversation so far, as text, for a session that replaces a lost or old one."""

    role: str
    text: str


# Changes to the phone call (Twilio's REST API).
@dataclass(frozen=True, slots=True)
class HangUp(CallUpdate):
    """End the phone call; with `goodbye`, Twilio says it first (`<Say>` then `<Hangup/>` replace the stream)."""

    reason: str
    goodbye: str | None = None


@dataclass(frozen=True, slots=True)
class Transfer(CallUpdate):
    """Dial `target` for the caller; whoever answers first hears `summary` before the two are joined."""

    target_name: str
    target: str
    summary: str
    fallback: bool = False
    """Made because the model could not be reached: if nobody answers, the caller hears the fallback message."""


# Work off the audio path.
@dataclass(frozen=True, slots=True)
class RunTool(Work):
    """POST one of the model's calls to an operator's tool; the answer comes back as `ToolAnswered`."""

    call_id: str
    tool: HttpTool
    arguments: str
    """JSON text, as the model wrote it."""


# Changes to the call's sockets.
@dataclass(frozen=True, slots=True)
class OpenRealtime(SocketChange):
    """Open a (new) Realtime session after `delay_s`, giving the handshake at most `timeout_s`."""

    delay_s: float
    timeout_s: float
    reason: str


@dataclass(frozen=True, slots=True)
class CloseRealtime(SocketChange):
    """End the call from the Realtime side: the session closes at once, then the media stream."""

    reason: str


@dataclass(frozen=True, slots=True)
class ParkRealtime(SocketChange):
    """Close the Realtime session but keep the call: the caller is away (being transferred) and may come back."""


@dataclass(frozen=True, slots=True)
class CloseTwilio(SocketChange):
    """End the media stream, so Twilio goes on to the TwiML after `<Connect>` (the fallback)."""

    reason: str
