"""The call controller: one phone call's state machine, with no I/O.

Events in (`handle`), actions out. It converts audio both ways, keeps count of what the caller
has heard of each answer, and decides barge-in:

* Every chunk of the model's audio sent to Twilio is followed by a mark. Twilio echoes a mark
  when the audio before it has *played*, so the last echo is a point (item, position, time) the
  playhead passed. Twilio plays its buffer in real time, so what the caller heard is the echoed
  position plus the time since the echo, capped at the audio sent for that item (the playhead
  waits there when the model falls behind) and at the audio the model generated.
* An echo reaches us a network delay after its audio played, and audio reaches Twilio a delay
  after we send it. The first chunk of each answer goes to an idle buffer, so its echo comes
  back after the round trip plus its own length: half that round trip (smoothed over answers)
  is added to the time since an echo and taken off the time since a first send. Without it the
  truncate point would lag what the caller heard by the one-way delay, 20-100 ms on real lines.
* When the service hears the caller start speaking while marks are pending (audio playing or
  queued at Twilio), the controller clears Twilio's buffer, truncates the playing item at what the
  caller heard, and drops the rest of that answer. With nothing pending there is nothing to cut.

Marks echoed after a `clear` mean "discarded", not "played": the controller forgets pending marks
when it clears, so those echoes are recognised as stale and ignored.

The Realtime session can fail at any time. The controller asks for a new one with backoff while a
budget lasts (the caller keeps the line; their audio is held meanwhile), configures it like the
first and carries the conversation over as text from the transcripts; past the budget it closes
the media stream so Twilio says the fallback message. A session near its maximum age is replaced
the same way at a quiet moment, and a media stream that goes quiet ends the call.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from .audio import Pcm24kToUlaw8k, Ulaw8kToPcm24k
from .config import CallProfile
from .events import (
    Action,
    AddCallerText,
    AddHistoryItem,
    AppendAudio,
    CallerAudio,
    ClearTwilio,
    CloseRealtime,
    CloseTwilio,
    ConfigureSession,
    CreateResponse,
    DigitPressed,
    EndCall,
    Event,
    MarkEchoed,
    ModelAudio,
    ModelAudioDone,
    OpenRealtime,
    Outcome,
    RealtimeConnected,
    RealtimeDisconnected,
    RealtimeErrorReported,
    RealtimeMessageRejected,
    ResponseDone,
    ResponseStarted,
    SendTwilioMark,
    SendTwilioMedia,
    SpeechStarted,
    SpeechStopped,
    StreamStarted,
    StreamStopped,
    Tick,
    TranscriptDone,
    TruncateItem,
    TwilioDisconnected,
    TwilioMessageRejected,
)

ULAW_BYTES_PER_MS = 8
PCM24K_BYTES_PER_MS = 48
MAX_HISTORY_ITEMS = 50
ONE_WAY_DELAY_SMOOTHING = 0.5
MAX_HELD_CALLER_AUDIO_MS = 5000
"""Caller audio that arrives before the Realtime socket opens is held, up to this much, then the oldest is dropped."""


@dataclass(frozen=True)
class CallTimings:
    """The call's deadlines, in seconds; the defaults are what a caller tolerates."""

    connect_budget_s: float = 2.5
    """How long the caller may wait for a (new) session before hearing the fallback."""
    retry_delays_s: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
    media_timeout_s: float = 10.0
    renew_session_after_s: float = 25 * 60.0
    """Realtime sessions have a maximum length (30 minutes for earlier models); renew before it."""


class Phase(enum.Enum):
    CONNECTING = "connecting"
    LIVE = "live"
    ENDED = "ended"


class PendingMark(NamedTuple):
    name: str
    item_id: str
    end_ms: float
    sent_at_s: float
    idle_probe_ms: float | None
    """For the first mark after Twilio's buffer ran empty: the audio sent before it, to time the round trip."""


class Playhead(NamedTuple):
    """A moment Twilio confirmed: `item_id` had played up to `position_ms` at `at_s`."""

    item_id: str
    position_ms: float
    at_s: float


@dataclass
class CallStats:
    """What happened on the call, for logs, metrics and tests."""

    frames_in: int = 0
    frames_out: int = 0
    malformed_twilio: int = 0
    malformed_realtime: int = 0
    realtime_errors: Counter[str] = field(default_factory=Counter)
    stale_marks: int = 0
    barge_ins: int = 0
    truncates: list[tuple[str, int]] = field(default_factory=list)
    dropped_model_audio_ms: float = 0.0
    reconnects: int = 0
    renewals: int = 0
    realtime_failures: list[str] = field(default_factory=list)
    response_latencies_ms: list[float] = field(default_factory=list)
    """For each answer: from the caller stopping speaking to the model's first audio."""
    end_reason: str | None = None
    outcome: Outcome | None = None


class CallController:
    """One call's state: the stream, the audio converters, what was sent and what was played."""

    def __init__(self, profile: CallProfile, clock: Callable[[], float], timings: CallTimings = CallTimings()) -> None:
        self.profile = profile
        self.timings = timings
        self.stats = CallStats()
        self.transcript: list[TranscriptDone] = []
        self.phase = Phase.CONNECTING
        self.stream_sid: str | None = None
        self._clock = clock
        self._caller_to_model = Ulaw8kToPcm24k()
        self._model_to_caller = Pcm24kToUlaw8k()
        self._twilio_ready = False
        self._realtime_ready = False
        self._held_for_twilio: list[Action] = []
        self._held_for_realtime: deque[Action] = deque()
        self._held_caller_ms = 0.0
        self._mark_serial = 0
        self._pending_marks: deque[PendingMark] = deque()
        self._playhead: Playhead | None = None
        self._one_way_delay_s = 0.0
        self._outbound_item: str | None = None
        self._sent_ms: dict[str, float] = {}
        self._generated_ms: dict[str, float] = {}
        self._first_sent_at: dict[str, float] = {}
        self._cut_items: set[str] = set()
        self._active_response: str | None = None
        self._cut_response: str | None = None
        self._respond_when_idle = False
        self._caller_stopped_at: float | None = None
        self._started_at = clock()
        self._last_media_at = self._started_at
        self._session_opened_at: float | None = None
        self._session_items: set[str] = set()
        self._outage_deadline: float | None = self._started_at + timings.connect_budget_s
        self._failed_tries = 0

    def start(self) -> list[Action]:
        """The first actions of a call: open the session, configure it and, with a greeting, let the model speak first."""
        actions: list[Action] = [ConfigureSession(self.profile)]
        if self.profile.greeting:
            actions.append(CreateResponse(f"Greet the caller by saying exactly this: {self.profile.greeting}"))
        return [OpenRealtime(0.0, self.timings.connect_budget_s, "call answered"), *self._route(actions)]

    def handle(self, event: Event) -> list[Action]:
        """Take one event; return what must be sent or closed, in order."""
        if self.phase is Phase.ENDED:
            return []
        handler = _HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"the controller has no handler for {type(event).__name__}")
        return self._route(handler(self, event))

    @property
    def heard_ms(self) -> float:
        """How much of the playing answer the caller has heard by now (0 when nothing is playing)."""
        return self._heard_ms(self._pending_marks[0].item_id) if self._pending_marks else 0.0

    def _route(self, actions: list[Action]) -> list[Action]:
        """Hold back actions whose socket is not ready yet; release them, in order, when it is."""
        ready: list[Action] = []
        for action in actions:
            if isinstance(action, (SendTwilioMedia, SendTwilioMark, ClearTwilio)) and not self._twilio_ready:
                self._held_for_twilio.append(action)
            elif isinstance(action, _SESSION_ACTIONS) and not self._realtime_ready:
                self._hold_for_realtime(action)
            else:
                ready.append(action)
        return ready

    def _hold_for_realtime(self, action: Action) -> None:
        self._held_for_realtime.append(action)
        if isinstance(action, AppendAudio):
            self._held_caller_ms += len(action.pcm) / PCM24K_BYTES_PER_MS
            while self._held_caller_ms > MAX_HELD_CALLER_AUDIO_MS:
                oldest = next(a for a in self._held_for_realtime if isinstance(a, AppendAudio))
                self._held_for_realtime.remove(oldest)
                self._held_caller_ms -= len(oldest.pcm) / PCM24K_BYTES_PER_MS

    def _end(self, outcome: Outcome, reason: str, close: Action) -> list[Action]:
        self.phase = Phase.ENDED
        self.stats.end_reason = reason
        self.stats.outcome = outcome
        return [close]

    # Twilio events.
    def _on_stream_started(self, event: StreamStarted) -> list[Action]:
        if self.stream_sid is not None:
            self.stats.malformed_twilio += 1
            return []
        self.stream_sid = event.stream_sid
        self._twilio_ready = True
        now = self._clock()
        self._first_sent_at = {item_id: now for item_id in self._first_sent_at}
        if self._realtime_ready:
            self.phase = Phase.LIVE
        held, self._held_for_twilio = self._held_for_twilio, []
        return held

    def _on_caller_audio(self, event: CallerAudio) -> list[Action]:
        self.stats.frames_in += 1
        self._last_media_at = self._clock()
        pcm = self._caller_to_model.convert(event.ulaw)
        return [AppendAudio(pcm)] if pcm else []

    def _on_mark_echoed(self, event: MarkEchoed) -> list[Action]:
        if not any(mark.name == event.name for mark in self._pending_marks):
            self.stats.stale_marks += 1
            return []
        now = self._clock()
        while self._pending_marks:
            mark = self._pending_marks.popleft()
            self._playhead = Playhead(mark.item_id, mark.end_ms, now)
            if mark.name == event.name:
                break
        if mark.idle_probe_ms is not None:
            round_trip_s = now - mark.sent_at_s - mark.idle_probe_ms / 1000.0
            if round_trip_s >= 0:
                self._one_way_delay_s += ONE_WAY_DELAY_SMOOTHING * (round_trip_s / 2 - self._one_way_delay_s)
        return []

    def _on_digit_pressed(self, event: DigitPressed) -> list[Action]:
        actions: list[Action] = [AddCallerText(f"The caller pressed {event.digit} on the keypad.")]
        if self._active_response is None:
            actions.append(CreateResponse())
        else:
            self._respond_when_idle = True
        return actions

    def _on_stream_stopped(self, event: StreamStopped) -> list[Action]:
        return self._end("caller_hung_up", "caller hung up", CloseRealtime("caller hung up"))

    def _on_twilio_disconnected(self, event: TwilioDisconnected) -> list[Action]:
        return self._end("stream_dropped", "media stream dropped", CloseRealtime("media stream dropped"))

    def _on_end_call(self, event: EndCall) -> list[Action]:
        return self._end(event.outcome, event.reason, CloseRealtime(event.reason))

    def _on_twilio_rejected(self, event: TwilioMessageRejected) -> list[Action]:
        self.stats.malformed_twilio += 1
        return []

    # Realtime events.
    def _on_realtime_connected(self, event: RealtimeConnected) -> list[Action]:
        replacing = self._session_opened_at is not None
        self._realtime_ready = True
        self._session_opened_at = self._clock()
        self._session_items.clear()
        self._outage_deadline = None
        self._failed_tries = 0
        if self._twilio_ready:
            self.phase = Phase.LIVE
        actions: list[Action] = []
        if replacing:
            actions.append(ConfigureSession(self.profile))
            actions += [
                AddHistoryItem("user" if turn.speaker == "caller" else "assistant", turn.text)
                for turn in self.transcript[-MAX_HISTORY_ITEMS:]
                if turn.text
            ]
        actions += [a for a in self._held_for_realtime if not (replacing and isinstance(a, TruncateItem))]
        self._held_for_realtime.clear()
        self._held_caller_ms = 0.0
        return actions

    def _on_realtime_disconnected(self, event: RealtimeDisconnected) -> list[Action]:
        """Try a new session while the budget lasts; past it, or when retrying cannot help, fall back."""
        now = self._clock()
        self.stats.realtime_failures.append(event.reason)
        self._realtime_ready = False
        self._active_response = None
        if self._outbound_item is not None:
            self._cut_items.add(self._outbound_item)
            self._outbound_item = None
        self._model_to_caller.reset()
        if self._outage_deadline is None:
            self._outage_deadline = now + self.timings.connect_budget_s
        delays = self.timings.retry_delays_s
        if event.retryable and self._failed_tries < len(delays):
            delay = delays[self._failed_tries]
            remaining = self._outage_deadline - now - delay
            if remaining > 0.05:
                self._failed_tries += 1
                if self._session_opened_at is not None:
                    self.stats.reconnects += 1
                return [OpenRealtime(delay, remaining, f"session lost: {event.reason}")]
        return self._end("realtime_unavailable", f"realtime session unavailable: {event.reason}", CloseTwilio(event.reason))

    def _on_tick(self, event: Tick) -> list[Action]:
        now = self._clock()
        if self._twilio_ready and now - self._last_media_at > self.timings.media_timeout_s:
            return self._end("media_timeout", "media stream went quiet", CloseRealtime("media stream went quiet"))
        session_age = now - self._session_opened_at if self._realtime_ready and self._session_opened_at else 0.0
        idle = not self._pending_marks and self._active_response is None and self._outbound_item is None
        if session_age > self.timings.renew_session_after_s and idle:
            self._realtime_ready = False
            self._outage_deadline = now + self.timings.connect_budget_s
            self.stats.renewals += 1
            return [OpenRealtime(0.0, self.timings.connect_budget_s, "session renewal")]
        return []

    def _on_response_started(self, event: ResponseStarted) -> list[Action]:
        self._active_response = event.response_id
        return []

    def _on_model_audio(self, event: ModelAudio) -> list[Action]:
        if event.item_id in self._cut_items or event.response_id == self._cut_response:
            self._cut_items.add(event.item_id)
            self.stats.dropped_model_audio_ms += len(event.pcm) / PCM24K_BYTES_PER_MS
            return []
        actions: list[Action] = []
        if event.item_id != self._outbound_item:
            if self._outbound_item is not None:
                actions += self._send_to_caller(self._outbound_item, self._model_to_caller.flush())
            self._outbound_item = event.item_id
        if self._caller_stopped_at is not None:
            self.stats.response_latencies_ms.append((self._clock() - self._caller_stopped_at) * 1000.0)
            self._caller_stopped_at = None
        self._session_items.add(event.item_id)
        self._generated_ms[event.item_id] = self._generated_ms.get(event.item_id, 0.0) + len(event.pcm) / PCM24K_BYTES_PER_MS
        actions += self._send_to_caller(event.item_id, self._model_to_caller.convert(event.pcm))
        return actions

    def _on_model_audio_done(self, event: ModelAudioDone) -> list[Action]:
        if event.item_id != self._outbound_item:
            return []
        self._outbound_item = None
        return self._send_to_caller(event.item_id, self._model_to_caller.flush())

    def _send_to_caller(self, item_id: str, ulaw: bytes) -> list[Action]:
        if not ulaw:
            return []
        chunk_ms = len(ulaw) / ULAW_BYTES_PER_MS
        sent_ms = self._sent_ms.get(item_id, 0.0) + chunk_ms
        self._sent_ms[item_id] = sent_ms
        now = self._clock()
        self._first_sent_at.setdefault(item_id, now)
        idle_probe_ms = chunk_ms if self._twilio_ready and not self._pending_marks else None
        self._mark_serial += 1
        name = f"a{self._mark_serial}"
        self._pending_marks.append(PendingMark(name, item_id, sent_ms, now, idle_probe_ms))
        self.stats.frames_out += 1
        return [SendTwilioMedia(ulaw), SendTwilioMark(name)]

    def _heard_ms(self, item_id: str) -> float:
        """The playhead's position in `item_id`: the last echo plus the time since, bounded by what was sent."""
        now = self._clock()
        delay = self._one_way_delay_s
        playhead = self._playhead
        if playhead is not None and playhead.item_id == item_id:
            position, since = playhead.position_ms, playhead.at_s - delay
        else:
            position = 0.0
            since = self._first_sent_at[item_id] + delay
            if playhead is not None:
                since = max(since, playhead.at_s - delay)
        limit = min(self._sent_ms[item_id], self._generated_ms[item_id])
        return max(position, min(position + (now - since) * 1000.0, limit))

    def _on_speech_started(self, event: SpeechStarted) -> list[Action]:
        actions: list[Action] = []
        if self._active_response is not None:
            self._cut_response = self._active_response
        if self._outbound_item is not None:
            self._cut_items.add(self._outbound_item)
            self._outbound_item = None
        self._model_to_caller.reset()
        if not self._pending_marks:
            return actions
        playing = self._pending_marks[0].item_id
        audio_end_ms = int(self._heard_ms(playing))
        self._cut_items.update(mark.item_id for mark in self._pending_marks)
        self._pending_marks.clear()
        self._playhead = None
        self.stats.barge_ins += 1
        actions.append(ClearTwilio())
        if playing in self._session_items:
            self.stats.truncates.append((playing, audio_end_ms))
            actions.append(TruncateItem(playing, audio_end_ms))
        return actions

    def _on_speech_stopped(self, event: SpeechStopped) -> list[Action]:
        self._caller_stopped_at = self._clock()
        return []

    def _on_response_done(self, event: ResponseDone) -> list[Action]:
        if event.response_id == self._active_response:
            self._active_response = None
        if self._respond_when_idle and self._active_response is None:
            self._respond_when_idle = False
            return [CreateResponse()]
        return []

    def _on_transcript_done(self, event: TranscriptDone) -> list[Action]:
        self.transcript.append(event)
        return []

    def _on_realtime_error(self, event: RealtimeErrorReported) -> list[Action]:
        self.stats.realtime_errors[event.code] += 1
        return []

    def _on_realtime_rejected(self, event: RealtimeMessageRejected) -> list[Action]:
        self.stats.malformed_realtime += 1
        return []



_SESSION_ACTIONS = (AppendAudio, ConfigureSession, CreateResponse, AddCallerText, AddHistoryItem, TruncateItem)

_HANDLERS: dict[type, Callable[[CallController, Event], list[Action]]] = {
    StreamStarted: CallController._on_stream_started,
    CallerAudio: CallController._on_caller_audio,
    MarkEchoed: CallController._on_mark_echoed,
    DigitPressed: CallController._on_digit_pressed,
    StreamStopped: CallController._on_stream_stopped,
    TwilioDisconnected: CallController._on_twilio_disconnected,
    TwilioMessageRejected: CallController._on_twilio_rejected,
    EndCall: CallController._on_end_call,
    RealtimeConnected: CallController._on_realtime_connected,
    ResponseStarted: CallController._on_response_started,
    ModelAudio: CallController._on_model_audio,
    ModelAudioDone: CallController._on_model_audio_done,
    SpeechStarted: CallController._on_speech_started,
    SpeechStopped: CallController._on_speech_stopped,
    ResponseDone: CallController._on_response_done,
    TranscriptDone: CallController._on_transcript_done,
    RealtimeErrorReported: CallController._on_realtime_error,
    RealtimeMessageRejected: CallController._on_realtime_rejected,
    RealtimeDisconnected: CallController._on_realtime_disconnected,
    Tick: CallController._on_tick,
}
