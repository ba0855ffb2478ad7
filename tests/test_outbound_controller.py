"""An outbound call's controller, driven with plain events: silent until AMD, then a greeting, a voicemail or a hang-up."""

from __future__ import annotations

import json

from support import ManualClock
from telephony_bridge.call.call_control import Dialled
from telephony_bridge.call.controller import CallController
from telephony_bridge.call.events import (
    AnsweredBy,
    AnswerFunctionCall,
    ClearTwilio,
    ConfigureSession,
    CreateResponse,
    FunctionCallRequested,
    HangUp,
    MarkEchoed,
    ModelAudio,
    ModelAudioDone,
    RealtimeConnected,
    ResponseDone,
    ResponseStarted,
    SendTwilioMark,
    SessionConfigured,
    SpeechStarted,
    StreamStarted,
    StreamStopped,
)
from telephony_bridge.config import CallProfile

PCM_100MS = b"\x10\x00" * 2400
REMINDER = CallProfile(instructions="You are the reminder line.", greeting="Hello Ada!", opt_out=True)
DIALLED = Dialled("You are the reminder line.\n\nYou reached a voicemail. Leave exactly this message: see you Tuesday.")


def dialled(profile: CallProfile = REMINDER) -> tuple[CallController, ManualClock, list]:
    clock = ManualClock()
    controller = CallController(profile, clock, dialled=DIALLED)
    first = controller.start()
    configure = controller.handle(RealtimeConnected())
    controller.handle(SessionConfigured())
    controller.handle(StreamStarted(stream_sid="MZ1", call_sid="CA1"))
    return controller, clock, first + configure


def speak(controller: CallController, response_id: str, chunks: int = 3) -> list[str]:
    controller.handle(ResponseStarted(response_id))
    marks: list[str] = []
    for _ in range(chunks):
        marks += [a.name for a in controller.handle(ModelAudio(response_id, f"item-{response_id}", PCM_100MS))
                  if isinstance(a, SendTwilioMark)]
    marks += [a.name for a in controller.handle(ModelAudioDone(f"item-{response_id}")) if isinstance(a, SendTwilioMark)]
    return marks


def test_an_outbound_call_starts_silent_with_automatic_responses_off() -> None:
    controller, clock, actions = dialled()
    assert not any(isinstance(a, CreateResponse) for a in actions), "no greeting before AMD"
    assert [a.auto_respond for a in actions if isinstance(a, ConfigureSession)] == [False]


def test_a_person_turns_automatic_responses_on_and_is_greeted_in_the_persona() -> None:
    controller, clock, _ = dialled()
    actions = controller.handle(AnsweredBy("human"))
    assert [type(a) for a in actions] == [ConfigureSession, CreateResponse]
    assert actions[0].auto_respond is True
    assert actions[1].instructions.startswith("You are the reminder line.") and "Hello Ada!" in actions[1].instructions
    assert controller.handle(AnsweredBy("machine_end_beep")) == [], "a second result changes nothing"
    assert controller.summarise(call_sid="CA1", called_number="+1", caller_number="+2", model="m", dialect="ga",
                                duration_s=1.0).amd_result == "human"


def test_unknown_counts_as_a_person() -> None:
    controller, clock, _ = dialled()
    assert CreateResponse in [type(a) for a in controller.handle(AnsweredBy("unknown"))]


def test_a_machine_gets_the_message_unbroken_then_the_line_drops_once_it_has_played() -> None:
    controller, clock, _ = dialled()
    actions = controller.handle(AnsweredBy("machine_end_beep"))
    assert actions == [CreateResponse(DIALLED.voicemail_instructions)]
    marks = speak(controller, "r1")
    assert ClearTwilio() not in controller.handle(SpeechStarted()), "the machine's noise never cuts the message"
    assert controller.handle(ResponseDone("r1", "completed")) == []
    for mark in marks[:-1]:
        assert controller.handle(MarkEchoed(mark)) == []
    assert controller.handle(MarkEchoed(marks[-1])) == [HangUp("the voicemail message was left")]
    controller.handle(StreamStopped())
    assert controller.outcome == "agent_ended"


def test_a_fax_is_hung_up_on_at_once() -> None:
    controller, clock, _ = dialled()
    assert controller.handle(AnsweredBy("fax")) == [HangUp("a fax machine answered")]


def test_opt_out_records_the_wish_and_ends_the_call_after_the_goodbye() -> None:
    controller, clock, _ = dialled()
    controller.handle(AnsweredBy("human"))
    marks = speak(controller, "r1")
    controller.handle(FunctionCallRequested("r1", "call-1", "opt_out", "{}"))
    done = controller.handle(ResponseDone("r1", "completed"))
    assert [type(a) for a in done] == [AnswerFunctionCall]
    assert "recorded" in json.loads(done[0].output)["status"]
    assert controller.handle(MarkEchoed(marks[-1])) == [HangUp("the model ended the call")]
    summary = controller.summarise(call_sid="CA1", called_number="+1", caller_number="+2", model="m", dialect="ga",
                                   duration_s=1.0)
    assert (summary.opted_out, summary.direction) == (True, "outbound")


def test_an_inbound_call_has_no_opt_out_and_ignores_amd() -> None:
    clock = ManualClock()
    controller = CallController(CallProfile(), clock)
    controller.start()
    controller.handle(RealtimeConnected())
    controller.handle(SessionConfigured())
    assert controller.handle(AnsweredBy("human")) == []
    controller.handle(ResponseStarted("r1"))
    controller.handle(FunctionCallRequested("r1", "call-1", "opt_out", "{}"))
    done = controller.handle(ResponseDone("r1", "completed"))
    assert "error" in json.loads(done[0].output)


def test_the_session_update_turns_automatic_responses_off_in_either_dialect() -> None:
    from telephony_bridge.realtime.session import session_update

    ga = session_update(REMINDER, "ga", auto_respond=False)["session"]["audio"]["input"]["turn_detection"]
    assert (ga["create_response"], ga["interrupt_response"]) == (False, False)
    assert session_update(REMINDER, "preview", auto_respond=False)["session"]["turn_detection"] is None
    assert session_update(REMINDER, "preview")["session"]["turn_detection"]["type"] == "server_vad"
    tools = [tool["name"] for tool in session_update(REMINDER, "ga")["session"]["tools"]]
    assert "opt_out" in tools
