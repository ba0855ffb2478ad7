"""The model ends and transfers calls: the controller driven with plain events and a hand-moved clock."""

from __future__ import annotations

import json

from support import ManualClock
from telephony_bridge.call.controller import CallController
from telephony_bridge.call.events import (
    AddCallerText,
    AddNote,
    AnswerFunctionCall,
    ClearTwilio,
    CloseRealtime,
    CloseTwilio,
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
    OperatorEnded,
    ParkRealtime,
    RealtimeConnected,
    RealtimeDisconnected,
    ResponseDone,
    ResponseStarted,
    SendTwilioMark,
    SessionConfigured,
    SpeechStarted,
    StreamStarted,
    StreamStopped,
    TranscriptDone,
    Transfer,
    TransferEnded,
    TransferFailed,
    TwilioDisconnected,
)
from telephony_bridge.config import CallProfile

PCM_100MS = b"\x10\x00" * 2400
DESK = CallProfile(transfer={"front_desk": "+15550009999", "billing": "sip:billing@pbx.example.com"})

def live(profile: CallProfile = DESK) -> tuple[CallController, ManualClock]:
    clock = ManualClock()
    controller = CallController(profile, clock)
    controller.start()
    controller.handle(RealtimeConnected())
    controller.handle(SessionConfigured())
    controller.handle(StreamStarted(stream_sid="MZ1", call_sid="CA1"))
    return controller, clock


def speak(controller: CallController, response_id: str, chunks: int = 3) -> list[str]:
    """The model says `chunks` x 100 ms in `response_id`; returns the marks sent."""
    controller.handle(ResponseStarted(response_id))
    marks: list[str] = []
    for _ in range(chunks):
        marks += [a.name for a in controller.handle(ModelAudio(response_id, f"item-{response_id}", PCM_100MS))
                  if isinstance(a, SendTwilioMark)]
    marks += [a.name for a in controller.handle(ModelAudioDone(f"item-{response_id}")) if isinstance(a, SendTwilioMark)]
    return marks


def call(controller: CallController, response_id: str, name: str, arguments: dict | None = None) -> None:
    controller.handle(FunctionCallRequested(response_id, f"call-{name}", name, json.dumps(arguments or {})))


def types(actions: list) -> list[type]:
    return [type(a) for a in actions]


def test_a_goodbye_and_end_call_in_one_response_hang_up_once_the_goodbye_has_played() -> None:
    controller, clock = live()
    marks = speak(controller, "r1")
    call(controller, "r1", "end_call")
    done = controller.handle(ResponseDone("r1", "completed"))
    assert types(done) == [AnswerFunctionCall], "no response.create: the goodbye is said already"
    clock.now += 0.2
    assert controller.handle(MarkEchoed(marks[-2])) == []
    clock.now += 0.1
    assert controller.handle(MarkEchoed(marks[-1])) == [HangUp("the model ended the call")]
    controller.handle(StreamStopped())
    assert controller.outcome == "agent_ended"


def test_end_call_alone_asks_for_the_goodbye_then_hangs_up_after_it() -> None:
    controller, clock = live()
    controller.handle(ResponseStarted("r1"))
    call(controller, "r1", "end_call")
    done = controller.handle(ResponseDone("r1", "completed"))
    assert types(done) == [AnswerFunctionCall, CreateResponse]
    assert "goodbye" in json.loads(done[0].output)["status"]
    marks = speak(controller, "r2")
    assert types(controller.handle(ResponseDone("r2", "completed"))) == []
    assert controller.handle(MarkEchoed(marks[-1])) == [HangUp("the model ended the call")]


def test_a_caller_who_speaks_over_the_goodbye_keeps_the_line_and_the_model_is_told() -> None:
    controller, clock = live()
    marks = speak(controller, "r1")
    call(controller, "r1", "end_call")
    controller.handle(ResponseDone("r1", "completed"))
    clock.now += 0.1
    barge = controller.handle(SpeechStarted())
    assert ClearTwilio() in barge and any(isinstance(a, AddNote) and "not ended" in a.text for a in barge)
    for mark in marks:
        assert controller.handle(MarkEchoed(mark)) == []
    assert controller.outcome is None


def test_a_call_from_a_cancelled_response_is_never_acted_on() -> None:
    controller, clock = live()
    speak(controller, "r1")
    call(controller, "r1", "end_call")
    assert controller.handle(ResponseDone("r1", "cancelled")) == []
    assert controller.control.step.value == "talking"


def test_two_calls_in_one_response_get_two_outputs_and_one_response_create() -> None:
    controller, clock = live()
    controller.handle(ResponseStarted("r1"))
    call(controller, "r1", "transfer_call", {"target": "nobody", "summary": "x"})
    call(controller, "r1", "look_up_order", {"id": 7})
    done = controller.handle(ResponseDone("r1", "completed"))
    assert types(done) == [AnswerFunctionCall, AnswerFunctionCall, CreateResponse]
    assert "unknown target 'nobody'" in done[0].output and "billing, front_desk" in done[0].output
    assert "no function 'look_up_order'" in done[1].output


def test_a_transfer_dials_once_the_hand_over_has_played_and_a_connected_one_ends_the_call() -> None:
    controller, clock = live()
    marks = speak(controller, "r1")
    call(controller, "r1", "transfer_call", {"target": "front_desk", "summary": "Ada wants to move her appointment."})
    assert types(controller.handle(ResponseDone("r1", "completed"))) == [AnswerFunctionCall]
    transfer = controller.handle(MarkEchoed(marks[-1]))
    assert transfer == [Transfer("front_desk", "+15550009999", "Ada wants to move her appointment.")]
    assert controller.handle(StreamStopped()) == [ParkRealtime()]
    assert controller.outcome is None, "the stream ends for the transfer, not the call"
    assert types(controller.handle(TransferEnded("completed"))) == [CloseRealtime]
    assert controller.outcome == "transferred"
    assert controller.end_reason == "transferred to front_desk (connected)"


def test_a_busy_transfer_brings_the_caller_back_and_a_new_session_hears_why() -> None:
    controller, clock = live()
    controller.handle(TranscriptDone("caller", "u1", "Can I talk to someone at the front desk?"))
    marks = speak(controller, "r1")
    call(controller, "r1", "transfer_call", {"target": "front_desk", "summary": "Wants the front desk."})
    controller.handle(ResponseDone("r1", "completed"))
    controller.handle(MarkEchoed(marks[-1]))
    controller.handle(StreamStopped())
    assert controller.handle(TransferEnded("busy")) == []
    back = controller.handle(StreamStarted(stream_sid="MZ2", call_sid="CA1"))
    assert types(back) == [OpenRealtime]
    connected = controller.handle(RealtimeConnected())
    assert types(connected)[0] is ConfigureSession and "front desk" in connected[1].text
    configured = controller.handle(SessionConfigured())
    assert types(configured) == [AddNote, CreateResponse]
    assert "busy" in configured[0].text


def test_a_transfer_the_rest_api_refuses_leaves_the_caller_with_the_model_who_is_told() -> None:
    controller, clock = live()
    marks = speak(controller, "r1")
    call(controller, "r1", "transfer_call", {"target": "billing", "summary": "Billing question."})
    controller.handle(ResponseDone("r1", "completed"))
    controller.handle(MarkEchoed(marks[-1]))
    told = controller.handle(TransferFailed("HTTP 500 from Twilio"))
    assert types(told) == [AddNote, CreateResponse] and "billing" in told[0].text
    assert controller.outcome is None


def test_without_a_model_the_caller_is_transferred_to_the_fallback_target() -> None:
    profile = CallProfile(transfer={"front_desk": "+15550009999"}, fallback_transfer="front_desk")
    clock = ManualClock()
    controller = CallController(profile, clock)
    controller.start()
    actions = controller.handle(RealtimeDisconnected("HTTP 401", retryable=False))
    assert types(actions) == [ParkRealtime, Transfer] and actions[1].target == "+15550009999"
    controller.handle(StreamStarted(stream_sid="MZ1", call_sid="CA1"))
    controller.handle(StreamStopped())
    controller.handle(TransferEnded("no-answer"))
    assert controller.outcome == "realtime_unavailable"


def test_key_0_asks_the_model_for_a_person() -> None:
    controller, clock = live()
    pressed = controller.handle(DigitPressed("0"))
    assert isinstance(pressed[0], AddCallerText) and "transfer_call" in pressed[0].text
    alone, _ = live(CallProfile())
    assert "nobody can take the call" in alone.handle(DigitPressed("0"))[0].text


def test_a_hang_up_on_a_call_already_gone_ends_it_quietly_and_a_failed_one_closes_the_stream() -> None:
    controller, clock = live()
    marks = speak(controller, "r1")
    call(controller, "r1", "end_call")
    controller.handle(ResponseDone("r1", "completed"))
    controller.handle(MarkEchoed(marks[-1]))
    assert types(controller.handle(HangUpFailed("20404", gone=True))) == [CloseRealtime]
    assert controller.outcome == "agent_ended"
    other, _ = live()
    marks = speak(other, "r1")
    call(other, "r1", "end_call")
    other.handle(ResponseDone("r1", "completed"))
    other.handle(MarkEchoed(marks[-1]))
    assert types(other.handle(HangUpFailed("HTTP 500"))) == [CloseTwilio]
    assert other.outcome == "agent_ended"


def test_end_call_is_no_function_of_a_number_that_does_not_allow_it() -> None:
    controller, clock = live(CallProfile(end_call=False))
    controller.handle(ResponseStarted("r1"))
    call(controller, "r1", "end_call")
    done = controller.handle(ResponseDone("r1", "completed"))
    assert types(done) == [AnswerFunctionCall, CreateResponse] and "error" in done[0].output


def test_an_operator_ending_asks_twilio_for_the_goodbye_once_and_the_stop_that_follows_is_theirs() -> None:
    controller, _ = live()
    actions = controller.handle(OperatorEnded("We have to end this call now. Goodbye."))
    assert actions == [HangUp("ended by the operator", goodbye="We have to end this call now. Goodbye.")]
    assert controller.handle(OperatorEnded("Goodbye again.")) == []
    assert not controller.ended
    assert types(controller.handle(StreamStopped())) == [CloseRealtime]
    assert (controller.outcome, controller.end_reason) == ("operator_ended", "ended by the operator")


def test_a_stream_that_drops_after_the_operator_ended_the_call_is_still_theirs() -> None:
    controller, _ = live()
    controller.handle(OperatorEnded("Goodbye."))
    controller.handle(TwilioDisconnected())
    assert controller.outcome == "operator_ended"


def test_a_failed_operator_goodbye_still_ends_the_call_by_closing_the_stream() -> None:
    controller, _ = live()
    controller.handle(OperatorEnded("Goodbye."))
    assert types(controller.handle(HangUpFailed("Twilio REST POST …: HTTP 503"))) == [CloseTwilio]
    assert controller.outcome == "operator_ended" and "the REST goodbye failed" in controller.end_reason
    gone, _ = live()
    gone.handle(OperatorEnded("Goodbye."))
    assert types(gone.handle(HangUpFailed("20404", gone=True))) == [CloseRealtime]
    assert gone.outcome == "operator_ended"


def test_an_operator_ending_a_call_that_is_being_transferred_ends_it_when_the_dial_ends() -> None:
    controller, _ = live()
    marks = speak(controller, "r1")
    call(controller, "r1", "transfer_call", {"target": "front_desk", "summary": "Wants the front desk."})
    controller.handle(ResponseDone("r1", "completed"))
    controller.handle(MarkEchoed(marks[-1]))
    assert controller.handle(StreamStopped()) == [ParkRealtime()]
    assert types(controller.handle(OperatorEnded("Goodbye."))) == [HangUp]
    controller.handle(TransferEnded("canceled"))
    assert controller.outcome == "operator_ended"
