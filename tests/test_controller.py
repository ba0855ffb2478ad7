"""The call controller driven with plain events and a hand-moved clock: no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support import ManualClock
from telephony_bridge.call.controller import CallController
from telephony_bridge.call.events import (
    AddCallerText,
    AddHistoryItem,
    AppendAudio,
    CallerAudio,
    ClearTwilio,
    CloseRealtime,
    CloseTwilio,
    ConfigurationRefused,
    ConfigureSession,
    CreateResponse,
    DigitPressed,
    FunctionCallRequested,
    HangUp,
    HangUpFailed,
    MarkEchoed,
    ModelAudio,
    ModelAudioDone,
    OpenRealtime,
    ParkRealtime,
    RealtimeConnected,
    RealtimeDisconnected,
    RealtimeErrorReported,
    ResponseDone,
    ResponseStarted,
    SendTwilioMark,
    SendTwilioMedia,
    SessionConfigured,
    SpeechStarted,
    SpeechStopped,
    StreamStarted,
    StreamStopped,
    Tick,
    TranscriptDone,
    Transfer,
    TransferEnded,
    TransferFailed,
    TruncateItem,
    TwilioDisconnected,
    TwilioMessageRejected,
)
from telephony_bridge.call.summary import CallSummary
from telephony_bridge.call.supervision import CallTimings, SessionStateError
from telephony_bridge.config import CallProfile

PCM_100MS = b"\x10\x00" * 2400

@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def live_controller(clock: ManualClock, profile: CallProfile = CallProfile()) -> CallController:
    controller = CallController(profile, clock)
    controller.start()
    controller.handle(RealtimeConnected())
    controller.handle(SessionConfigured())
    controller.handle(StreamStarted(stream_sid="MZ1", call_sid="CA1"))
    return controller


def summary_of(controller: CallController) -> CallSummary:
    return controller.summarise(call_sid="CA1", called_number="+1555", caller_number="", model="m", dialect="ga", duration_s=1.0)


def marks(actions: list) -> list[str]:
    return [a.name for a in actions if isinstance(a, SendTwilioMark)]


def play_answer(controller: CallController, item_id: str = "item1", chunks: int = 10) -> list[str]:
    """The model streams `chunks` x 100 ms of audio for one item; returns the mark names sent."""
    controller.handle(ResponseStarted("resp1"))
    names: list[str] = []
    for _ in range(chunks):
        names += marks(controller.handle(ModelAudio("resp1", item_id, PCM_100MS)))
    return names


def test_start_opens_the_session_then_configures_it_and_greets_first_when_a_greeting_is_set(clock: ManualClock) -> None:
    controller = CallController(CallProfile(greeting="Hello, Bright Smile Dental."), clock)
    assert [type(a) for a in controller.start()] == [OpenRealtime]
    assert [type(a) for a in controller.handle(RealtimeConnected())] == [ConfigureSession]
    released = controller.handle(SessionConfigured())
    assert isinstance(released[0], CreateResponse) and "Bright Smile Dental" in released[0].instructions


def test_nothing_of_the_caller_reaches_the_model_before_it_confirms_its_configuration(clock: ManualClock) -> None:
    controller = CallController(CallProfile(), clock)
    controller.start()
    controller.handle(StreamStarted(stream_sid="MZ1", call_sid="CA1"))
    assert [type(a) for a in controller.handle(RealtimeConnected())] == [ConfigureSession]
    assert controller.handle(CallerAudio(b"\xff" * 160)) == []
    assert controller.handle(DigitPressed("1")) == []
    released = controller.handle(SessionConfigured())
    assert [type(a) for a in released] == [AppendAudio, AddCallerText, CreateResponse]


def test_a_refused_setting_is_left_out_once_and_the_call_goes_on(clock: ManualClock) -> None:
    controller = CallController(CallProfile(voice="nova"), clock)
    controller.start()
    controller.handle(RealtimeConnected())
    retry = controller.handle(ConfigurationRefused("voice", "Invalid value: 'nova'"))
    assert retry == [ConfigureSession(CallProfile(voice="nova"), frozenset({"voice"}))]
    controller.handle(SessionConfigured())
    assert controller.session.ready


def test_a_configuration_the_service_refuses_twice_gives_the_caller_the_fallback(clock: ManualClock) -> None:
    controller = CallController(CallProfile(voice="nova", transcription="whisper-1"), clock)
    controller.start()
    controller.handle(RealtimeConnected())
    controller.handle(ConfigurationRefused("voice", "Invalid value"))
    actions = controller.handle(ConfigurationRefused("transcription", "Invalid model"))
    assert [type(a) for a in actions] == [CloseTwilio]
    assert controller.outcome == "realtime_unavailable"


def test_a_refusal_of_a_setting_the_session_cannot_do_without_gives_the_fallback(clock: ManualClock) -> None:
    controller = CallController(CallProfile(), clock)
    controller.start()
    controller.handle(RealtimeConnected())
    assert [type(a) for a in controller.handle(ConfigurationRefused(None, "Invalid instructions"))] == [CloseTwilio]


def test_a_session_that_never_confirms_its_configuration_is_a_failed_try(clock: ManualClock) -> None:
    controller = CallController(CallProfile(), clock)
    controller.start()
    controller.handle(RealtimeConnected())
    clock.advance_ms(2100)
    actions = controller.handle(Tick())
    assert [type(a) for a in actions] in ([OpenRealtime], [CloseTwilio])
    assert summary_of(controller).realtime_failures == ("the service did not confirm the session's configuration in time",)


def test_a_service_that_drops_every_session_at_once_gets_the_fallback_within_the_budget(clock: ManualClock) -> None:
    controller = CallController(CallProfile(), clock)
    actions = controller.start()
    opens = 0
    while actions and isinstance(actions[0], OpenRealtime):
        opens += 1
        clock.advance_ms(actions[0].delay_s * 1000 + 20)
        controller.handle(RealtimeConnected())
        actions = controller.handle(RealtimeDisconnected("connection lost (1011)"))
    assert [type(a) for a in actions] == [CloseTwilio]
    assert opens <= 5
    assert clock.now - 1000.0 < 2.6


def test_a_session_that_keeps_dying_soon_after_it_is_ready_is_given_up(clock: ManualClock) -> None:
    controller = live_controller(clock)
    opens = 1
    while True:
        clock.advance_ms(3000)
        actions = controller.handle(RealtimeDisconnected("connection lost (1011)"))
        if not isinstance(actions[0], OpenRealtime):
            break
        opens += 1
        clock.advance_ms(actions[0].delay_s * 1000 + 20)
        controller.handle(RealtimeConnected())
        controller.handle(SessionConfigured())
    assert [type(a) for a in actions] == [CloseTwilio]
    assert opens <= 5, "the backoff goes on growing while sessions die young"


def test_quota_exhausted_is_not_retried(clock: ManualClock) -> None:
    controller = live_controller(clock)
    controller.handle(RealtimeErrorReported("insufficient_quota", "You exceeded your current quota"))
    assert [type(a) for a in controller.handle(RealtimeDisconnected("connection lost (1000)"))] == [CloseTwilio]


def test_model_audio_before_the_stream_starts_is_held_then_released_in_order(clock: ManualClock) -> None:
    controller = CallController(CallProfile(), clock)
    controller.handle(RealtimeConnected())
    assert controller.handle(ModelAudio("r", "i", PCM_100MS)) == []
    assert controller.handle(ModelAudioDone("i")) == []
    released = controller.handle(StreamStarted(stream_sid="MZ1", call_sid="CA1"))
    assert [type(a) for a in released] == [SendTwilioMedia, SendTwilioMedia, SendTwilioMark]


def test_caller_audio_becomes_24k_pcm_of_the_same_length_over_a_call(clock: ManualClock) -> None:
    controller = live_controller(clock)
    sent = b"".join(
        a.pcm for _ in range(50) for a in controller.handle(CallerAudio(b"\xff" * 160)) if isinstance(a, AppendAudio)
    )
    held_back_ms = 1000 - len(sent) / 48
    assert 0 <= held_back_ms <= 3


def test_each_chunk_of_model_audio_is_followed_by_a_mark(clock: ManualClock) -> None:
    controller = live_controller(clock)
    actions = controller.handle(ModelAudio("r", "i", PCM_100MS))
    assert [type(a) for a in actions] == [SendTwilioMedia, SendTwilioMark]


def test_the_filter_tail_reaches_the_caller_when_the_item_is_done(clock: ManualClock) -> None:
    controller = live_controller(clock)
    sent = b""
    for _ in range(3):
        sent += b"".join(a.ulaw for a in controller.handle(ModelAudio("r", "i", PCM_100MS)) if isinstance(a, SendTwilioMedia))
    sent += b"".join(a.ulaw for a in controller.handle(ModelAudioDone("i")) if isinstance(a, SendTwilioMedia))
    assert len(sent) == 300 * 8


def test_barge_in_clears_twilio_and_truncates_at_the_last_echoed_mark_plus_elapsed_time(clock: ManualClock) -> None:
    controller = live_controller(clock)
    names = play_answer(controller)
    clock.advance_ms(300)
    controller.handle(MarkEchoed(names[2]))
    clock.advance_ms(40)
    actions = controller.handle(SpeechStarted())
    assert isinstance(actions[0], ClearTwilio)
    truncate = actions[1]
    assert isinstance(truncate, TruncateItem) and truncate.item_id == "item1"
    assert abs(truncate.audio_end_ms - 340) <= 20


def test_the_playhead_waits_at_the_end_of_the_audio_sent_when_the_model_falls_behind(clock: ManualClock) -> None:
    controller = live_controller(clock)
    names = play_answer(controller, chunks=3)
    controller.handle(MarkEchoed(names[1]))
    clock.advance_ms(5000)
    truncate = controller.handle(SpeechStarted())[1]
    assert 295 <= truncate.audio_end_ms <= 300


def test_truncate_point_never_exceeds_the_audio_generated(clock: ManualClock) -> None:
    controller = live_controller(clock)
    play_answer(controller, chunks=2)
    clock.advance_ms(10_000)
    truncate = controller.handle(SpeechStarted())[1]
    assert truncate.audio_end_ms <= 200


def test_barge_in_before_any_mark_echo_counts_from_when_the_audio_was_sent(clock: ManualClock) -> None:
    controller = live_controller(clock)
    play_answer(controller)
    clock.advance_ms(60)
    truncate = controller.handle(SpeechStarted())[1]
    assert abs(truncate.audio_end_ms - 60) <= 20


def test_after_barge_in_the_rest_of_that_answer_is_not_forwarded(clock: ManualClock) -> None:
    controller = live_controller(clock)
    play_answer(controller, chunks=3)
    controller.handle(SpeechStarted())
    assert controller.handle(ModelAudio("resp1", "item1", PCM_100MS)) == []
    assert controller.handle(ModelAudioDone("item1")) == []


def test_no_truncate_when_the_caller_heard_the_whole_answer(clock: ManualClock) -> None:
    controller = live_controller(clock)
    names = play_answer(controller, chunks=2)
    names += marks(controller.handle(ModelAudioDone("item1")))
    controller.handle(ResponseDone("resp1", "completed"))
    for name in names:
        controller.handle(MarkEchoed(name))
    actions = controller.handle(SpeechStarted())
    assert not any(isinstance(a, (TruncateItem, ClearTwilio)) for a in actions)


def test_the_greeting_response_keeps_the_numbers_instructions_and_adds_the_line_to_say(clock: ManualClock) -> None:
    profile = CallProfile(instructions="You are the receptionist of Bright Smile Dental.", greeting="Bright Smile, hello!")
    controller = CallController(profile, clock)
    controller.start()
    controller.handle(RealtimeConnected())
    greeting = [a for a in controller.handle(SessionConfigured()) if isinstance(a, CreateResponse)]
    assert greeting == [CreateResponse(
        "You are the receptionist of Bright Smile Dental.\n\nNow greet the caller by saying exactly this: Bright Smile, hello!"
    )]


def test_speech_just_after_the_whole_answer_played_clears_twilio_but_truncates_nothing(clock: ManualClock) -> None:
    controller = live_controller(clock)
    names = play_answer(controller, chunks=6)
    names += marks(controller.handle(ModelAudioDone("item1")))
    start = clock.now
    for index, name in enumerate(names[:5]):  # the echoes arrive 40 ms after their audio played
        clock.now = start + ((index + 1) * 100 + 40) / 1000
        controller.handle(MarkEchoed(name))
    clock.now = start + 0.630  # 30 ms after the last audio played, 10 ms before its echo
    actions = controller.handle(SpeechStarted())
    assert [type(a) for a in actions] == [ClearTwilio]
    assert summary_of(controller).truncates == ()


def test_speech_300_ms_before_the_end_of_a_finished_answer_truncates_it_there(clock: ManualClock) -> None:
    controller = live_controller(clock)
    names = play_answer(controller, chunks=6)
    names += marks(controller.handle(ModelAudioDone("item1")))
    start = clock.now
    for index, name in enumerate(names[:2]):
        clock.now = start + ((index + 1) * 100 + 40) / 1000
        controller.handle(MarkEchoed(name))
    clock.now = start + 0.300
    clear, truncate = controller.handle(SpeechStarted())
    assert isinstance(clear, ClearTwilio) and isinstance(truncate, TruncateItem)
    assert abs(truncate.audio_end_ms - 300) <= 40


def test_marks_echoed_after_a_clear_are_ignored_as_stale(clock: ManualClock) -> None:
    controller = live_controller(clock)
    names = play_answer(controller, chunks=3)
    controller.handle(SpeechStarted())
    for name in names:
        assert controller.handle(MarkEchoed(name)) == []
    assert controller.counters().stale_marks == 3
    assert controller.playback.heard_ms() == 0


def test_the_next_answer_after_barge_in_plays_normally(clock: ManualClock) -> None:
    controller = live_controller(clock)
    play_answer(controller, chunks=3)
    controller.handle(SpeechStarted())
    controller.handle(ResponseStarted("resp2"))
    actions = controller.handle(ModelAudio("resp2", "item2", PCM_100MS))
    assert [type(a) for a in actions] == [SendTwilioMedia, SendTwilioMark]


def test_stop_closes_the_realtime_session_and_ends_the_call(clock: ManualClock) -> None:
    controller = live_controller(clock)
    assert controller.handle(StreamStopped()) == [CloseRealtime("caller hung up")]
    assert controller.handle(CallerAudio(b"\xff" * 160)) == []


def test_a_dropped_media_socket_closes_the_realtime_session(clock: ManualClock) -> None:
    controller = live_controller(clock)
    assert isinstance(controller.handle(TwilioDisconnected())[0], CloseRealtime)


def test_a_lost_session_is_reopened_at_once_then_with_backoff(clock: ManualClock) -> None:
    controller = live_controller(clock)
    first = controller.handle(RealtimeDisconnected("gone"))
    assert [type(a) for a in first] == [OpenRealtime] and first[0].delay_s == 0
    second = controller.handle(RealtimeDisconnected("refused"))
    assert second[0].delay_s > 0 and second[0].timeout_s <= CallTimings().connect_budget_s - second[0].delay_s


def test_the_caller_falls_back_when_no_session_can_be_had_within_the_budget(clock: ManualClock) -> None:
    controller = live_controller(clock)
    actions = controller.handle(RealtimeDisconnected("gone"))
    while isinstance(actions[0], OpenRealtime):
        clock.advance_ms(actions[0].delay_s * 1000 + 100)
        actions = controller.handle(RealtimeDisconnected("refused"))
    assert isinstance(actions[0], CloseTwilio)
    assert controller.end_reason.startswith("realtime session unavailable")


def test_a_refusal_that_retrying_cannot_fix_falls_back_at_once(clock: ManualClock) -> None:
    controller = CallController(CallProfile(), clock)
    controller.start()
    assert isinstance(controller.handle(RealtimeDisconnected("HTTP 401", retryable=False))[0], CloseTwilio)


def test_a_new_session_gets_the_same_configuration_and_the_conversation_so_far(clock: ManualClock) -> None:
    controller = live_controller(clock)
    controller.handle(TranscriptDone("caller", "u1", "Do you open on Saturdays?"))
    controller.handle(TranscriptDone("model", "i1", "Yes, from nine to noon."))
    controller.handle(RealtimeDisconnected("gone"))
    caller_audio = controller.handle(CallerAudio(b"\xff" * 160))
    assert caller_audio == []
    released = controller.handle(RealtimeConnected())
    assert isinstance(released[0], ConfigureSession)
    history = [AddHistoryItem("user", "Do you open on Saturdays?"), AddHistoryItem("assistant", "Yes, from nine to noon.")]
    assert released[1:] == history
    assert isinstance(controller.handle(SessionConfigured())[0], AppendAudio)


def test_after_a_new_session_a_barge_in_on_old_audio_clears_without_truncating(clock: ManualClock) -> None:
    controller = live_controller(clock)
    play_answer(controller, chunks=3)
    controller.handle(RealtimeDisconnected("gone"))
    controller.handle(RealtimeConnected())
    controller.handle(SessionConfigured())
    actions = controller.handle(SpeechStarted())
    assert ClearTwilio() in actions and not any(isinstance(a, TruncateItem) for a in actions)


def test_a_quiet_media_stream_ends_the_call(clock: ManualClock) -> None:
    controller = live_controller(clock)
    clock.advance_ms(9000)
    assert controller.handle(Tick()) == []
    controller.handle(CallerAudio(b"\xff" * 160))
    clock.advance_ms(10_500)
    assert controller.handle(Tick()) == [CloseRealtime("media stream went quiet")]


def test_an_old_session_is_renewed_only_when_nobody_is_speaking(clock: ManualClock) -> None:
    controller = CallController(CallProfile(), clock, CallTimings(renew_session_after_s=60, media_timeout_s=1e9))
    controller.start()
    controller.handle(RealtimeConnected())
    controller.handle(SessionConfigured())
    controller.handle(StreamStarted(stream_sid="MZ1", call_sid="CA1"))
    play_answer(controller, chunks=2)
    clock.advance_ms(61_000)
    assert controller.handle(Tick()) == []
    controller.handle(ResponseDone("resp1", "completed"))
    controller.handle(SpeechStarted())
    renewal = controller.handle(Tick())
    assert [type(a) for a in renewal] == [OpenRealtime] and renewal[0].reason == "session renewal"
    assert isinstance(controller.handle(RealtimeConnected())[0], ConfigureSession)


def test_the_model_response_latency_runs_from_the_caller_stopping_to_the_first_audio(clock: ManualClock) -> None:
    controller = live_controller(clock)
    controller.handle(SpeechStopped())
    clock.advance_ms(420)
    controller.handle(ModelAudio("r", "i", PCM_100MS))
    controller.handle(ModelAudio("r", "i", PCM_100MS))
    assert summary_of(controller).response_latencies_ms == (pytest.approx(420),)


def test_a_realtime_error_is_counted_and_the_call_goes_on(clock: ManualClock) -> None:
    controller = live_controller(clock)
    assert controller.handle(RealtimeErrorReported("invalid_value", "bad truncate")) == []
    assert summary_of(controller).realtime_errors == {"invalid_value": 1}
    assert controller.handle(CallerAudio(b"\xff" * 160))


def test_a_malformed_twilio_message_is_counted_and_the_call_goes_on(clock: ManualClock) -> None:
    controller = live_controller(clock)
    controller.handle(TwilioMessageRejected("not JSON"))
    assert controller.counters().malformed_twilio == 1
    assert controller.handle(CallerAudio(b"\xff" * 160))


def test_a_key_press_becomes_a_caller_message_and_a_response(clock: ManualClock) -> None:
    controller = live_controller(clock)
    actions = controller.handle(DigitPressed("5"))
    assert isinstance(actions[0], AddCallerText) and "pressed 5" in actions[0].text
    assert isinstance(actions[1], CreateResponse)


def test_a_key_press_during_an_answer_waits_for_it_to_finish_before_asking_for_a_response(clock: ManualClock) -> None:
    controller = live_controller(clock)
    controller.handle(ResponseStarted("resp1"))
    assert [type(a) for a in controller.handle(DigitPressed("#"))] == [AddCallerText]
    assert controller.handle(ResponseDone("resp1", "completed")) == [CreateResponse()]


def test_a_key_press_just_after_the_caller_stops_speaking_waits_for_the_response_the_service_starts(clock: ManualClock) -> None:
    controller = live_controller(clock)
    controller.handle(SpeechStopped())
    clock.advance_ms(100)
    assert [type(a) for a in controller.handle(DigitPressed("1"))] == [AddCallerText]
    controller.handle(ResponseStarted("resp1"))
    assert controller.handle(ResponseDone("resp1", "completed")) == [CreateResponse()]


def test_a_key_press_waits_no_longer_than_the_expected_response_takes_to_come(clock: ManualClock) -> None:
    controller = live_controller(clock)
    controller.handle(SpeechStopped())
    controller.handle(DigitPressed("1"))
    clock.advance_ms(1600)
    assert controller.handle(Tick()) == [CreateResponse()]


def test_caller_audio_before_the_realtime_socket_opens_is_held_and_bounded(clock: ManualClock) -> None:
    controller = CallController(CallProfile(), clock)
    controller.handle(StreamStarted(stream_sid="MZ1", call_sid="CA1"))
    for _ in range(400):
        assert controller.handle(CallerAudio(b"\xff" * 160)) == []
    controller.handle(RealtimeConnected())
    released = controller.handle(SessionConfigured())
    held_ms = sum(len(a.pcm) for a in released if isinstance(a, AppendAudio)) / 48
    assert 4900 <= held_ms <= 5000


def test_a_session_event_the_state_cannot_follow_is_an_error_naming_the_state(clock: ManualClock) -> None:
    controller = live_controller(clock)
    with pytest.raises(SessionStateError, match="cannot take 'connected' while ready"):
        controller.handle(RealtimeConnected())


EVENTS = st.one_of(
    st.builds(StreamStarted, stream_sid=st.sampled_from(["MZ1", "MZ2"]), call_sid=st.just("CA1")),
    st.builds(CallerAudio, ulaw=st.binary(max_size=400)),
    st.builds(MarkEchoed, name=st.sampled_from(["a1", "a2", "a3", "a9", ""])),
    st.builds(DigitPressed, digit=st.sampled_from(list("0123456789*#"))),
    st.just(StreamStopped()),
    st.just(TwilioDisconnected()),
    st.builds(TwilioMessageRejected, reason=st.text(max_size=5)),
    st.just(RealtimeConnected()),
    st.just(SessionConfigured()),
    st.builds(ConfigurationRefused, field=st.sampled_from([None, "voice", "transcription"]), message=st.just("no")),
    st.just(SpeechStarted()),
    st.just(SpeechStopped()),
    st.builds(ResponseStarted, response_id=st.sampled_from(["r1", "r2"])),
    st.builds(ModelAudio, response_id=st.sampled_from(["r1", "r2"]), item_id=st.sampled_from(["i1", "i2"]),
              pcm=st.binary(max_size=2000).map(lambda b: b[: len(b) // 2 * 2])),
    st.builds(ModelAudioDone, item_id=st.sampled_from(["i1", "i2", "i3"])),
    st.builds(ResponseDone, response_id=st.sampled_from(["r1", "r2", "r3"]), status=st.just("completed")),
    st.builds(TranscriptDone, speaker=st.sampled_from(["caller", "model"]), item_id=st.just("i1"), text=st.text(max_size=5)),
    st.builds(RealtimeErrorReported, code=st.text(max_size=5), message=st.text(max_size=5)),
    st.builds(RealtimeDisconnected, reason=st.just("x"), retryable=st.booleans()),
    st.builds(FunctionCallRequested, response_id=st.sampled_from(["r1", "r2"]), call_id=st.sampled_from(["c1", "c2"]),
              name=st.sampled_from(["end_call", "transfer_call", "other"]),
              arguments=st.sampled_from(["{}", '{"target": "desk", "summary": "s"}', "not json"])),
    st.builds(ResponseDone, response_id=st.sampled_from(["r1", "r2"]), status=st.sampled_from(["completed", "cancelled"])),
    st.builds(TransferEnded, dial_status=st.sampled_from(["completed", "busy", "no-answer"])),
    st.builds(TransferFailed, reason=st.just("x")),
    st.builds(HangUpFailed, reason=st.just("x"), gone=st.booleans()),
    st.just(Tick()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(EVENTS, st.integers(min_value=0, max_value=3000)), max_size=40))
def test_no_sequence_of_events_makes_the_controller_raise_or_overstate_what_was_heard(steps: list) -> None:
    clock = ManualClock()
    profile = CallProfile(greeting="Hi", transfer={"desk": "+15550009999"}, fallback_transfer="desk")
    controller = CallController(profile, clock)
    opens_pending = sum(isinstance(a, OpenRealtime) for a in controller.start())
    session_open = False
    updates_pending: list[type] = []
    generated_ms: dict[str, float] = {}
    for event, wait_ms in steps:
        clock.advance_ms(wait_ms)
        if isinstance(event, RealtimeConnected):
            if not opens_pending:
                continue  # the pump reports a session open only after an open it was asked for
            opens_pending, session_open = opens_pending - 1, True
        elif isinstance(event, RealtimeDisconnected):
            if opens_pending:
                opens_pending -= 1  # the open failed (the pump reports no loss of an old session meanwhile)
            elif session_open:
                session_open = False
            else:
                continue  # nor a loss with neither a session nor an open in flight
        elif isinstance(event, (SessionConfigured, ConfigurationRefused)) and not session_open:
            continue  # only an open session answers its configuration
        elif isinstance(event, (TransferEnded, TransferFailed)):
            if Transfer not in updates_pending:
                continue  # Twilio reports only on a transfer the bridge asked for
            updates_pending.remove(Transfer)
        elif isinstance(event, HangUpFailed):
            if HangUp not in updates_pending:
                continue
            updates_pending.remove(HangUp)
        if isinstance(event, ModelAudio):
            generated_ms[event.item_id] = generated_ms.get(event.item_id, 0.0) + len(event.pcm) / 48
        actions = controller.handle(event)
        opens_pending += sum(isinstance(a, OpenRealtime) for a in actions)
        updates_pending += [type(a) for a in actions if isinstance(a, (HangUp, Transfer))]
        session_open = session_open and not any(isinstance(a, ParkRealtime) for a in actions)
        for action in actions:
            if isinstance(action, TruncateItem):
                assert 0 <= action.audio_end_ms <= generated_ms[action.item_id]
