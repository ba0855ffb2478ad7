"""The call controller: one phone call's coordinator, with no I/O.

Events in (`handle`), actions out. It converts audio both ways (or, with `audio_format = "pcmu"`,
passes the caller's mu-law through) and hands the two hard questions to
machines of their own: `Playback` knows what the caller has heard of each answer, and
`SessionSupervisor` when the Realtime session opens, is replaced or is given up. This class
decides barge-in and routes actions: those for a socket that is not ready yet are held and released
in order when it is.

Barge-in: when the service hears the caller start speaking while audio is playing or queued at
Twilio, the controller clears Twilio's buffer, truncates the playing item at what the caller heard,
and drops the rest of that answer. With nothing pending there is nothing to cut.

A lost session is replaced and configured like the first, with the conversation carried over as
text from the transcripts; past the supervisor's budget the media stream closes so Twilio says the
fallback message. A media stream that goes quiet ends the call.

The number's limits (`policy.CallLimits`: time, silence, cost) are asked at each tick; a goodbye they call
for is asked of the model only on a quiet line, and the line drops through the same call-control hang-up
as the model's `end_call`, once the goodbye has been heard in full. Each `response.done`'s usage is summed.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from types import MappingProxyType
from typing import Any, get_args

from telephony_bridge.audio import Pcm24kToUlaw8k, Ulaw8kToPcm24k, UlawPassthrough
from telephony_bridge.call.call_control import END_CALL, OPT_OUT, TRANSFER_CALL, CallControl, Dialled, Step, answered_by
from telephony_bridge.call.conversation import Conversation
from telephony_bridge.call.events import (
    Action,
    AddCallerText,
    AddNote,
    AnsweredBy,
    AppendAudio,
    CallerAudio,
    ClearTwilio,
    CloseRealtime,
    CloseTwilio,
    ConfigurationRefused,
    ConfigureSession,
    CreateResponse,
    DigitPressed,
    EndCall,
    Event,
    FunctionCallRequested,
    HangUp,
    HangUpFailed,
    MarkEchoed,
    ModelAudio,
    ModelAudioDone,
    OpenRealtime,
    OperatorEnded,
    Outcome,
    ParkRealtime,
    RealtimeConnected,
    RealtimeDisconnected,
    RealtimeErrorReported,
    RealtimeMessage,
    RealtimeMessageRejected,
    ResponseDone,
    ResponseStarted,
    SendTwilioMark,
    SendTwilioMedia,
    SessionConfigured,
    SessionSetup,
    SocketChange,
    SpeechStarted,
    SpeechStopped,
    StreamStarted,
    StreamStopped,
    Tick,
    TokenUsage,
    ToolAnswered,
    TranscriptDone,
    TransferEnded,
    TransferFailed,
    TruncateItem,
    TwilioDisconnected,
    TwilioMessage,
    TwilioMessageRejected,
)
from telephony_bridge.call.functions import FunctionCalls
from telephony_bridge.call.held_actions import HeldActions
from telephony_bridge.call.playback import Playback
from telephony_bridge.call.summary import Activity, CallCounters, CallSummary, TransferAttempt
from telephony_bridge.call.supervision import CallTimings, Reopen, SessionState, SessionSupervisor
from telephony_bridge.config import CallProfile, ModelPrices
from telephony_bridge.policy import GOODBYES, PRESENCE_CHECK, WRAP_UP_NOTE, CallLimits, Decision, InForce, cost_of
from telephony_bridge.tools.http_tools import HOLDING_INSTRUCTIONS, ToolCalls
from telephony_bridge.wire import pcm24k_ms, ulaw_ms

FATAL_ERROR_CODES = frozenset({"insufficient_quota", "invalid_api_key", "model_not_found"})
"""Error codes after which a new session would fail the same way: the call falls back instead of retrying."""

log = logging.getLogger(__name__)


class CallController:
    """One call's coordinator: the stream, the audio converters, barge-in and the routing of actions."""

    def __init__(
        self, profile: CallProfile, clock: Callable[[], float], timings: CallTimings = CallTimings(),
        dialled: Dialled | None = None, *, in_force: InForce = "always", prices: ModelPrices | None = None,
    ) -> None:
        self.profile = profile
        self.in_force: InForce = in_force
        self.limits = CallLimits(profile, clock())
        self.usage = TokenUsage()
        self._prices = prices
        self._caller_speaking = False
        self.dialled = dialled
        """Set for an outbound call: silent, with automatic responses off, until `AnsweredBy` says who answered."""
        self.amd_result: str | None = None
        self._awaiting_amd = dialled is not None
        self.timings = timings
        self.stream_sid: str | None = None
        self.outcome: Outcome | None = None
        self.end_reason = ""
        self.playback = Playback(clock)
        self.session = SessionSupervisor(timings, clock)
        self.conversation = Conversation(clock)
        self.functions = FunctionCalls()
        self.control = CallControl(profile)
        self.tools = ToolCalls()
        self._clock = clock
        self._counts: Counter[str] = Counter()
        self._realtime_errors: Counter[str] = Counter()
        self._truncates: list[tuple[str, int]] = []
        self._transfers: list[TransferAttempt] = []
        self._dropped_model_audio_ms = 0.0
        ulaw_model = profile.audio_format == "pcmu"
        self._caller_to_model: Ulaw8kToPcm24k | UlawPassthrough = UlawPassthrough() if ulaw_model else Ulaw8kToPcm24k()
        self._model_to_caller: Pcm24kToUlaw8k | UlawPassthrough = UlawPassthrough() if ulaw_model else Pcm24kToUlaw8k()
        self._model_audio_ms = ulaw_ms if ulaw_model else pcm24k_ms
        """Milliseconds in n bytes of the model's audio format, the playhead's and the held audio's unit."""
        self._held = HeldActions(self._model_audio_ms)
        self._omitted_settings: frozenset[str] = frozenset()
        self._fatal_error = False
        self._operator_ending = False
        """An operator asked Twilio to end the call: the stream's end that follows is theirs, not the caller's."""
        self._outbound_item: str | None = None
        self._muted_items: set[str] = set()
        self._session_items: set[str] = set()
        self._last_media_at = clock()

    @property
    def ended(self) -> bool:
        return self.outcome is not None

    def start(self) -> list[Action]:
        """The first actions of a call: open the session and, with a greeting, let the model speak first once configured.

        A response's own `instructions` replace the session's for that response, so the greeting's carry the
        number's instructions and then the greeting line: the persona speaks the greeting. (A system item with
        the line would do it too, but would stay in the conversation, telling the model to greet at every turn.)
        """
        actions: list[Action] = []
        if self.profile.greeting and self.dialled is None:
            actions.append(CreateResponse(greeting_instructions(self.profile)))
        return [_open(self.session.first_open()), *self._route(actions)]

    def handle(self, event: Event) -> list[Action]:
        """Take one event; return what must be sent, opened or closed, in order."""
        if self.ended:
            return []
        handler = _HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"the controller has no handler for {type(event).__name__}")
        return self._route(handler(self, event))

    @property
    def activity(self) -> Activity:
        """What the call is doing now: a transfer outranks a tool call, which outranks the model's voice."""
        if self.control.caller_away or self.control.step is Step.CONNECTING:
            return "transferring"
        if self.tools.out:
            return "using_tool"
        if self.playback.playing:
            return "speaking"
        return "listening" if self.stream_sid is not None else "connecting"

    def shown(self) -> tuple[int, Activity]:
        """What a watching operator sees change: the transcript's length and the activity (cheap, for every event)."""
        return len(self.conversation.transcript), self.activity

    def counters(self, frames_dropped: int = 0) -> CallCounters:
        session = self.session
        return CallCounters(
            **self._counts, stale_marks=self.playback.stale_marks, sessions_opened=session.sessions_opened,
            reconnects=session.reconnects, renewals=session.renewals, frames_dropped=frames_dropped,
        )

    def summarise(
        self, *, call_sid: str, called_number: str, caller_number: str, model: str, dialect: str, duration_s: float,
        frames_dropped: int = 0,
    ) -> CallSummary:
        """The call as a value, for whoever needs it after (or, at a scrape, during) the call; the I/O adds its drops."""
        return CallSummary(
            call_sid=call_sid, called_number=called_number, caller_number=caller_number, model=model, dialect=dialect,
            duration_s=duration_s, outcome=self.outcome, end_reason=self.end_reason,
            counters=self.counters(frames_dropped),
            realtime_errors=MappingProxyType(dict(self._realtime_errors)),
            realtime_failures=tuple(self.session.failures),
            response_latencies_ms=tuple(self.conversation.response_latencies_ms), truncates=tuple(self._truncates),
            dropped_model_audio_ms=self._dropped_model_audio_ms, transcript=tuple(self.conversation.transcript),
            transcript_at_s=tuple(self.conversation.said_at_s),
            tool_calls=tuple(self.tools.records),
            transfers=tuple(self._transfers),
            profile_in_force=self.in_force, usage=self.usage, cost=self.cost,
            direction="outbound" if self.dialled is not None else "inbound",
            amd_result=self.amd_result,
            opted_out=self.control.opted_out,
            activity=self.activity,
        )

    @property
    def cost(self) -> float | None:
        """The call's estimated cost so far, from the operator's prices for the model; `None` without them."""
        return cost_of(self.usage, self._prices)

    def _route(self, actions: list[Action]) -> list[Action]:
        """Hold back messages whose socket is not ready yet; release them, in order, when it is."""
        if self.stream_sid is not None and self.session.ready:
            return actions
        ready: list[Action] = []
        for action in actions:
            if isinstance(action, TwilioMessage) and self.stream_sid is None:
                self._held.hold_for_twilio(action)
            elif isinstance(action, RealtimeMessage) and not (
                self.session.ready or self.session.open and isinstance(action, SessionSetup)
            ):
                self._held.hold_for_realtime(action)
            else:
                ready.append(action)
        return ready

    def _end(self, outcome: Outcome, reason: str, close: SocketChange) -> list[Action]:
        self.outcome = outcome
        self.end_reason = reason
        self.session.close()
        return [close]

    # Twilio events.
    def _on_stream_started(self, event: StreamStarted) -> list[Action]:
        if self.control.step is Step.RETURNING:
            return self._caller_returned(event)
        if self.stream_sid is not None:
            self._counts["malformed_twilio"] += 1
            return []
        self.stream_sid = event.stream_sid
        self.playback.stream_started()
        return self._held.release_for_twilio()

    def _caller_returned(self, event: StreamStarted) -> list[Action]:
        """A transfer did not connect and the caller is back, on a new stream: a new session hears why."""
        self.stream_sid = event.stream_sid
        self.playback = Playback(self._clock)
        self.playback.stream_started()
        self._last_media_at = self._clock()
        self._held.release_for_twilio()
        return [_open(self.session.resume()), *self.control.returned(), *self.conversation.when_idle([CreateResponse()])]

    def _on_caller_audio(self, event: CallerAudio) -> list[Action]:
        self._counts["frames_in"] += 1
        self._last_media_at = self._clock()
        pcm = self._caller_to_model.convert(event.ulaw)
        return [AppendAudio(pcm)] if pcm else []

    def _on_mark_echoed(self, event: MarkEchoed) -> list[Action]:
        self.playback.echoed(event.name)
        return self._call_update_due()

    def _on_digit_pressed(self, event: DigitPressed) -> list[Action]:
        self.limits.caller_spoke(self._clock())
        text = f"The caller pressed {event.digit} on the keypad."
        if event.digit == "0" and self.profile.transfer:
            text += " They ask for a person: transfer them with transfer_call."
        elif event.digit == "0":
            text += " They ask for a person, but nobody can take the call now: offer to take a message."
        return [AddCallerText(text), *self.conversation.when_idle([CreateResponse()])]

    def _on_stream_stopped(self, event: StreamStopped) -> list[Action]:
        if self._operator_ending:
            return self._end("operator_ended", "ended by the operator", CloseRealtime("ended by the operator"))
        if self.control.caller_away:
            return self._caller_went_away()
        if self.control.step is Step.HANGING_UP and self.control.policy_limit:
            reason = f"{self.control.policy_limit} reached"
            return self._end("policy_ended", reason, CloseRealtime(reason))
        if self.control.step is Step.HANGING_UP:
            return self._end("agent_ended", "the model ended the call", CloseRealtime("the model ended the call"))
        return self._end("caller_hung_up", "caller hung up", CloseRealtime("caller hung up"))

    def _on_twilio_disconnected(self, event: TwilioDisconnected) -> list[Action]:
        if self._operator_ending:
            return self._end("operator_ended", "ended by the operator", CloseRealtime("ended by the operator"))
        if self.control.caller_away:
            return self._caller_went_away()
        return self._end("stream_dropped", "media stream dropped", CloseRealtime("media stream dropped"))

    def _caller_went_away(self) -> list[Action]:
        """The stream ended for a transfer: the session is parked until the dial's outcome."""
        if self.stream_sid is None:
            return []
        self.stream_sid = None
        self._stop_outbound_item()  # no stream to mark: a returning caller starts a new playback
        self.conversation.session_lost()
        self.functions.session_lost()
        if self.session.state in (SessionState.FAILED, SessionState.PARKED):
            return []
        self.session.park()
        return [ParkRealtime()]

    def _on_end_call(self, event: EndCall) -> list[Action]:
        return self._end(event.outcome, event.reason, CloseRealtime(event.reason))

    def _on_operator_ended(self, event: OperatorEnded) -> list[Action]:
        """Twilio replaces the call's TwiML with the goodbye, ends the stream and hangs up; asked once."""
        if self._operator_ending:
            return []
        self._operator_ending = True
        return [HangUp("ended by the operator", goodbye=event.goodbye)]

    def _on_twilio_message_rejected(self, event: TwilioMessageRejected) -> list[Action]:
        self._counts["malformed_twilio"] += 1
        return []

    def _on_tick(self, event: Tick) -> list[Action]:
        now = self._clock()
        streaming = self.stream_sid is not None and not self.control.caller_away
        if streaming and now - self._last_media_at > self.timings.media_timeout_s:
            return self._end("media_timeout", "media stream went quiet", CloseRealtime("media stream went quiet"))
        if self.session.configuration_overdue():
            return self._session_lost("the service did not confirm the session's configuration in time", retryable=True)
        quiet = not self.playback.playing and self.conversation.idle and self._outbound_item is None
        renewal = self.session.renewal_due(quiet and not self.functions.outstanding)
        if renewal is not None:
            return [_open(renewal)]
        holding = self.conversation.idle and self.tools.holding_phrase_due(now)
        return (self.conversation.released() + self._call_update_due()
                + (self.conversation.when_idle([CreateResponse(HOLDING_INSTRUCTIONS)]) if holding else [])
                + self._policy(now))

    def _policy(self, now: float) -> list[Action]:
        """Ask the number's limits what is due: a wrap-up note, a presence check, or a goodbye and then the hang-up."""
        speaking = (self._caller_speaking or self.playback.playing or self._outbound_item is not None
                    or not self.conversation.idle)
        if speaking:
            self.limits.active(now)
        quiet = (not speaking and not self.functions.outstanding and self.control.step is Step.TALKING
                 and self.session.ready and self.stream_sid is not None)
        verdict = self.limits.check(now, quiet=quiet, cost=self.cost)
        if verdict is None:
            return []
        if verdict.decision is Decision.WRAP_UP:
            return [AddNote(WRAP_UP_NOTE)]
        if verdict.decision is Decision.CHECK_PRESENCE:
            return self.conversation.when_idle([CreateResponse(self._instructions(PRESENCE_CHECK))])
        if not self.control.end_by_policy(verdict.limit):
            return []
        log.info("call ending: %s reached", verdict.limit, extra={"event": "policy_limit", "limit": verdict.limit})
        return self.conversation.when_idle([CreateResponse(self._instructions(GOODBYES[verdict.limit]))])

    def _instructions(self, line: str) -> str:
        """A response's own instructions replace the session's: the number's persona, then what to do now."""
        return f"{self.profile.instructions.strip()}\n\n{line}"

    # The Realtime session.
    def _on_realtime_connected(self, event: RealtimeConnected) -> list[Action]:
        replacing = self.session.connected()
        self._session_items.clear()
        self._muted_items.clear()
        actions: list[Action] = [self._configure()]
        if replacing:
            actions += self.conversation.history()
        return actions

    def _configure(self) -> ConfigureSession:
        return ConfigureSession(self.profile, self._omitted_settings, auto_respond=not self._awaiting_amd)

    def _on_session_configured(self, event: SessionConfigured) -> list[Action]:
        if self.session.state is not SessionState.CONFIGURING:
            return []
        self.session.configured()
        return self._held.release_for_realtime()

    def _on_configuration_refused(self, event: ConfigurationRefused) -> list[Action]:
        """Retry once without an optional setting the service refused; a session it cannot configure is no session."""
        if not self.session.open:
            return []
        if event.field is not None and event.field not in self._omitted_settings and self.session.may_reconfigure():
            log.warning("the Realtime service refused %s (%s); configuring the session without it", event.field, event.message)
            self._omitted_settings |= {event.field}
            return [self._configure()]
        return self._session_lost(f"the service refused the session's configuration: {event.message}", retryable=False)

    def _on_realtime_disconnected(self, event: RealtimeDisconnected) -> list[Action]:
        return self._session_lost(event.reason, event.retryable and not self._fatal_error)

    def _session_lost(self, reason: str, retryable: bool) -> list[Action]:
        """Try a new session while the budget lasts; past it, or when retrying cannot help, fall back."""
        self.conversation.session_lost()
        last_mark = self._stop_outbound_item()
        self._model_to_caller.reset()
        reopen = self.session.lost(reason, retryable)
        if reopen is not None:
            return [*last_mark, _open(reopen)]
        transfer = self.control.fall_back()
        if transfer is not None:
            return [*last_mark, ParkRealtime(), transfer]
        return [*last_mark, *self._end("realtime_unavailable", f"realtime session unavailable: {reason}", CloseTwilio(reason))]

    def _on_response_started(self, event: ResponseStarted) -> list[Action]:
        self.conversation.response_started(event.response_id)
        return []

    def _on_model_audio(self, event: ModelAudio) -> list[Action]:
        ms = self._model_audio_ms(len(event.pcm))
        if event.item_id in self._muted_items or event.response_id == self.conversation.cut_response:
            self._muted_items.add(event.item_id)
            self._dropped_model_audio_ms += ms
            return []
        actions: list[Action] = []
        if event.item_id != self._outbound_item:
            if self._outbound_item is not None:
                actions += self._send_to_caller(self._outbound_item, self._model_to_caller.flush())
                actions += _mark(self.playback.complete(self._outbound_item))
            self._outbound_item = event.item_id
        self.conversation.model_spoke(event.response_id)
        self._session_items.add(event.item_id)
        self.playback.generated(event.item_id, ms)
        actions += self._send_to_caller(event.item_id, self._model_to_caller.convert(event.pcm))
        return actions

    def _on_model_audio_done(self, event: ModelAudioDone) -> list[Action]:
        if event.item_id != self._outbound_item:
            return []
        self._outbound_item = None
        actions = self._send_to_caller(event.item_id, self._model_to_caller.flush())
        return actions + _mark(self.playback.complete(event.item_id))

    def _send_to_caller(self, item_id: str, ulaw: bytes) -> list[Action]:
        if not ulaw:
            return []
        mark = self.playback.sent(item_id, ulaw_ms(len(ulaw)))
        self._counts["frames_out"] += 1
        return [SendTwilioMedia(ulaw), *_mark(mark)]

    def _stop_outbound_item(self) -> list[Action]:
        """The item being streamed will send no more audio: what came of it is muted from now on.

        Returns the mark after its last audio sent, if that audio had none yet.
        """
        if self._outbound_item is None:
            return []
        self._muted_items.add(self._outbound_item)
        mark = self.playback.complete(self._outbound_item)
        self._outbound_item = None
        return _mark(mark)

    def _on_speech_started(self, event: SpeechStarted) -> list[Action]:
        if self.control.step is Step.VOICEMAIL:
            return []  # a machine's noise never cuts the message being left on it
        self._caller_speaking = True
        self.limits.caller_spoke(self._clock())
        self.conversation.caller_barged_in()
        notes = self.control.caller_spoke()
        cut, dropped = self.playback.cut()  # before the streaming item is stopped: a cut needs to know it was unfinished
        self._stop_outbound_item()  # the cut dropped its unmarked audio with the rest: no mark is due
        self._model_to_caller.reset()
        if cut is None:
            return notes
        self._muted_items |= dropped
        self._counts["barge_ins"] += 1
        actions: list[Action] = [ClearTwilio()]
        if cut.item_id in self._session_items and not cut.played_through:
            self._truncates.append((cut.item_id, cut.audio_end_ms))
            actions.append(TruncateItem(cut.item_id, cut.audio_end_ms))
        return actions + notes

    def _on_speech_stopped(self, event: SpeechStopped) -> list[Action]:
        self._caller_speaking = False
        self.limits.caller_spoke(self._clock())
        self.conversation.caller_stopped(response_expected=not self._awaiting_amd and self.control.step is not Step.VOICEMAIL)
        return []

    def _on_response_done(self, event: ResponseDone) -> list[Action]:
        if event.usage is not None:
            self.usage += event.usage
        cut = event.response_id == self.conversation.cut_response
        spoke = self.conversation.response_done(event.response_id)
        if self.conversation.active_response is None:
            self._muted_items.clear()
        self.control.response_done(spoke and not cut)
        actions: list[Action] = []
        for call in self.functions.response_done(event.response_id, event.status):
            actions += self._run_function(call, spoke)
        return self.conversation.released() + self._respond_when_idle(actions) + self._call_update_due()

    def _on_function_call_requested(self, event: FunctionCallRequested) -> list[Action]:
        self.functions.requested(event)
        return []

    def _run_function(self, call: FunctionCallRequested, spoke: bool) -> list[Action]:
        """A built-in function's output now; an operator's tool is run off the audio path; any other name is no function."""
        tool = self.profile.tool(call.name)
        if call.name == END_CALL:
            output, respond = self.control.end_call(spoke)
        elif call.name == OPT_OUT:
            output, respond = self.control.opt_out(spoke)
        elif call.name == TRANSFER_CALL:
            output, respond = self.control.transfer_to(call.arguments, spoke)
        elif tool is not None:
            run = self.tools.start(call, tool, self._clock())
            return [run] if not isinstance(run, ToolAnswered) else self._tool_answer(run)
        else:
            output, respond = json.dumps({"error": f"there is no function {call.name!r}"}), True
        return self.functions.answer(call.call_id, output, respond=respond)

    def _respond_when_idle(self, actions: list[Action]) -> list[Action]:
        """Send `actions`, but a `response.create` among them only once the model is idle."""
        now = [a for a in actions if not isinstance(a, CreateResponse)]
        later: list[Action] = [a for a in actions if isinstance(a, CreateResponse)]
        return now + self.conversation.when_idle(later)

    def _call_update_due(self) -> list[Action]:
        playing = self.playback.playing or self._outbound_item is not None
        update = self.control.due(playing, model_idle=self.conversation.active_response is None)
        return [update] if update is not None else []

    # Twilio's REST API and callbacks.
    def _on_hang_up_failed(self, event: HangUpFailed) -> list[Action]:
        if self._operator_ending:
            # Closing the stream still ends the call; its <Connect action> then hangs up without the fallback message.
            if event.gone:
                return self._end("operator_ended", "ended by the operator", CloseRealtime("call already gone"))
            reason = f"ended by the operator; the REST goodbye failed: {event.reason}"
            return self._end("operator_ended", reason, CloseTwilio(event.reason))
        outcome: Outcome = "policy_ended" if self.control.policy_limit else "agent_ended"
        ended = f"{self.control.policy_limit} reached" if self.control.policy_limit else "the model ended the call"
        if event.gone:
            return self._end(outcome, ended, CloseRealtime("call already gone"))
        return self._end(outcome, f"{ended}; the REST hang-up failed: {event.reason}", CloseTwilio(event.reason))

    def _on_transfer_failed(self, event: TransferFailed) -> list[Action]:
        if self.control.transfer is not None:
            self._transfers.append(TransferAttempt(self.control.transfer.target_name, False, f"not started: {event.reason}"))
        if self.session.state is SessionState.FAILED:
            return self._end("realtime_unavailable", f"fallback transfer failed: {event.reason}", CloseTwilio(event.reason))
        return self.control.transfer_failed(event.reason) + self.conversation.when_idle([CreateResponse()])

    def _on_transfer_ended(self, event: TransferEnded) -> list[Action]:
        transfer = self.control.transfer
        name = transfer.target_name if transfer else "?"
        self.control.dial_ended(event.connected, event.dial_status)
        self._transfers.append(TransferAttempt(name, event.connected, event.dial_status))
        if self._operator_ending:
            return self._end("operator_ended", "ended by the operator", CloseRealtime("ended by the operator"))
        if event.connected:
            return self._end("transferred", f"transferred to {name} (connected)", CloseRealtime("transferred"))
        if self.session.state is SessionState.FAILED:
            reason = f"fallback transfer to {name}: {event.dial_status}"
            return self._end("realtime_unavailable", reason, CloseRealtime("fallback"))
        return []

    def _on_answered_by(self, event: AnsweredBy) -> list[Action]:
        """Who answered an outbound call: a person is greeted, a machine gets the message, a fax the hang-up; once."""
        if self.dialled is None or not self._awaiting_amd:
            return []
        self._awaiting_amd = False
        self.amd_result = event.result
        kind = answered_by(event.result)
        if kind == "fax":
            return [self.control.hang_up_now()]
        if kind == "machine":
            self.control.leave_voicemail()
            return self.conversation.when_idle([CreateResponse(self.dialled.voicemail_instructions)])
        return [self._configure(), *self.conversation.when_idle([CreateResponse(outbound_greeting_instructions(self.profile))])]

    # Work off the audio path.
    def _on_tool_answered(self, event: ToolAnswered) -> list[Action]:
        """A tool's answer (or failure) is the call's output; with its batch's last, one `response.create`."""
        return self._respond_when_idle(self._tool_answer(event))

    def _tool_answer(self, event: ToolAnswered) -> list[Action]:
        record = self.tools.answered(event)
        if record is None:
            return []
        self.conversation.said(TranscriptDone("tool", event.call_id, record.transcript_line()))
        return self.functions.answer(event.call_id, event.output)

    def _on_transcript_done(self, event: TranscriptDone) -> list[Action]:
        self.conversation.said(event)
        return []

    def _on_realtime_error_reported(self, event: RealtimeErrorReported) -> list[Action]:
        self._realtime_errors[event.code] += 1
        if event.code in FATAL_ERROR_CODES:
            self._fatal_error = True
        return []

    def _on_realtime_message_rejected(self, event: RealtimeMessageRejected) -> list[Action]:
        self._counts["malformed_realtime"] += 1
        return []


def greeting_instructions(profile: CallProfile) -> str:
    """The instructions of the greeting's response: the number's own, then the line to say."""
    return f"{profile.instructions.strip()}\n\nNow greet the caller by saying exactly this: {profile.greeting}"


def outbound_greeting_instructions(profile: CallProfile) -> str:
    """A person answered a call the bridge placed: the number's greeting, or one the persona makes up."""
    if profile.greeting:
        return greeting_instructions(profile)
    return (f"{profile.instructions.strip()}\n\nYou placed this phone call and the person has just answered. "
            "Greet them, say who you are and why you are calling, in one or two short sentences.")


def _mark(name: str | None) -> list[Action]:
    return [SendTwilioMark(name)] if name is not None else []


def _open(reopen: Reopen) -> OpenRealtime:
    return OpenRealtime(reopen.delay_s, reopen.timeout_s, reopen.reason)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


_HANDLERS: dict[type, Callable[[CallController, Any], list[Action]]] = {
    event_type: getattr(CallController, f"_on_{_snake(event_type.__name__)}") for event_type in get_args(Event)
}
"""Each event type's handler, `_on_<event in snake case>`: an event type without one fails at import."""
