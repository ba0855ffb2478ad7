"""Both Realtime dialects translate to one vocabulary; every client event the bridge sends is valid GA."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types.realtime import RealtimeClientEvent
from pydantic import TypeAdapter
from test_operations import scrape, value

from support import place_call
from telephony_bridge.call.events import (
    AddCallerText,
    AppendAudio,
    ConfigureSession,
    CreateResponse,
    ModelAudio,
    ModelAudioDone,
    RealtimeErrorReported,
    RealtimeMessageRejected,
    ResponseDone,
    ResponseStarted,
    SpeechStarted,
    TranscriptDone,
    TruncateItem,
)
from telephony_bridge.config import CallProfile, TurnDetection
from telephony_bridge.realtime.session import RealtimeEventParser, encode_for_realtime
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator
from telephony_bridge.testing.twilio_simulator import speech_like_ulaw

GA_CLIENT_EVENT = TypeAdapter(RealtimeClientEvent)

ACTIONS = [
    ConfigureSession(CallProfile(instructions="Be brief.", voice="sage", transcription="gpt-4o-mini-transcribe")),
    ConfigureSession(CallProfile(turn_detection=TurnDetection(type="semantic_vad", eagerness="low"))),
    AppendAudio(b"\x01\x00" * 480),
    TruncateItem("item_1", 1234),
    AddCallerText("The caller pressed 5 on the keypad."),
    CreateResponse(),
    CreateResponse("Greet the caller."),
]


@pytest.mark.parametrize("action", ACTIONS, ids=lambda a: type(a).__name__)
def test_every_ga_client_event_validates_against_the_openai_types(action: object) -> None:
    event = json.loads(encode_for_realtime(action, "ga"))
    GA_CLIENT_EVENT.validate_python(event)


def test_ga_session_update_nests_audio_settings() -> None:
    profile = CallProfile(instructions="Be brief.", voice="sage")
    session = json.loads(encode_for_realtime(ConfigureSession(profile), "ga"))["session"]
    assert session["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "sage"}
    assert session["audio"]["input"]["turn_detection"]["interrupt_response"] is True


def test_preview_session_update_is_flat() -> None:
    session = json.loads(encode_for_realtime(ConfigureSession(CallProfile(voice="alloy")), "preview"))["session"]
    assert (session["voice"], session["input_audio_format"], session["output_audio_format"]) == ("alloy", "pcm16", "pcm16")
    assert "audio" not in session


@pytest.mark.parametrize(
    ("dialect", "delta", "done", "transcript"),
    [
        ("ga", "response.output_audio.delta", "response.output_audio.done", "response.output_audio_transcript.done"),
        ("preview", "response.audio.delta", "response.audio.done", "response.audio_transcript.done"),
    ],
)
def test_both_dialects_parse_to_the_same_events(dialect: str, delta: str, done: str, transcript: str) -> None:
    parser = RealtimeEventParser(dialect)
    audio = base64.b64encode(b"\x02\x00" * 10).decode()
    frames = {
        json.dumps({"type": delta, "response_id": "r", "item_id": "i", "output_index": 0, "content_index": 0, "delta": audio}):
            ModelAudio("r", "i", b"\x02\x00" * 10),
        json.dumps({"type": done, "item_id": "i", "response_id": "r"}): ModelAudioDone("i"),
        json.dumps({"type": transcript, "item_id": "i", "transcript": "Hello."}): TranscriptDone("model", "i", "Hello."),
        '{"type":"input_audio_buffer.speech_started","audio_start_ms":10,"item_id":"u"}': SpeechStarted(),
        '{"type":"response.created","response":{"id":"r","status":"in_progress"}}': ResponseStarted("r"),
        '{"type":"response.done","response":{"id":"r","status":"cancelled"}}': ResponseDone("r", "cancelled"),
        '{"type":"error","error":{"type":"invalid_request_error","code":"invalid_value","message":"no"}}':
            RealtimeErrorReported("invalid_value", "no"),
    }
    for frame, expected in frames.items():
        assert parser.parse(frame) == expected
    assert parser.parse('{"type":"rate_limits.updated","rate_limits":[]}') is None


def test_a_delta_of_the_other_dialect_is_not_mistaken_for_audio() -> None:
    frame = '{"type":"response.audio.delta","response_id":"r","item_id":"i","delta":"AAA="}'
    assert RealtimeEventParser("ga").parse(frame) is None


def test_malformed_server_events_are_rejected_not_raised() -> None:
    parser = RealtimeEventParser("ga")
    for frame in ["nope", "[]", '{"type":"response.output_audio.delta","item_id":"i"}',
                  '{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"###"}',
                  '{"type":"response.created","response":"r"}', b"\x00"]:
        assert isinstance(parser.parse(frame), RealtimeMessageRejected)


@given(st.dictionaries(st.sampled_from(["type", "response", "item_id", "delta", "response_id", "error", "transcript"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=8), st.sampled_from(
                           ["response.output_audio.delta", "response.done", "error", "response.created",
                            "response.output_audio_transcript.done", "input_audio_buffer.speech_started"]),
                                 st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2)), max_size=5))
def test_no_server_event_makes_the_parser_raise(event: dict) -> None:
    RealtimeEventParser("ga").parse(json.dumps(event))


def test_the_preview_session_sends_only_the_turn_detection_fields_that_preview_knows() -> None:
    turn_detection = json.loads(encode_for_realtime(ConfigureSession(CallProfile()), "preview"))["session"]["turn_detection"]
    assert set(turn_detection) <= {"type", "threshold", "prefix_padding_ms", "silence_duration_ms"}


def test_deep_nesting_is_rejected_not_raised() -> None:
    parser = RealtimeEventParser("ga")
    deep = "[" * 1000 + "]" * 1000
    assert isinstance(parser.parse("[" * 5000), RealtimeMessageRejected)
    assert isinstance(parser.parse('{"type":"response.created","response":' + "{" * 5000), RealtimeMessageRejected)
    nested_error = '{"type":"error","error":{"code":' + deep + ',"message":' + deep + "}}"
    assert parser.parse(nested_error) == RealtimeErrorReported("unknown", "")


async def test_deeply_nested_json_from_the_service_is_counted_and_the_next_answer_reaches_the_caller(
    bridge: str, realtime: RealtimeSimulator
) -> None:
    call, session = await place_call(bridge, realtime)
    await session.wait_for("session.update")
    await session.send_raw("[" * 5000)
    call.say(speech_like_ulaw(600))
    await session.wait_for("response.done", timeout=10, sent=True)
    await call.wait_heard(realtime.answer_ms, timeout=10)
    assert call.closed_at is None
    assert value(await scrape(bridge), "telephony_bridge_malformed_messages_total", source="realtime") == 1
    await call.hang_up()


async def test_error_codes_the_bridge_does_not_know_share_one_metric_label(bridge: str, realtime: RealtimeSimulator) -> None:
    call, session = await place_call(bridge, realtime)
    await session.wait_for("session.update")
    await session.send_error("rate_limit_exceeded", "Slow down.")
    for n in range(200):
        await session.send_error(f"made_up_code_{n}", "Junk.")
    await session.send_raw('{"type":"error","error":{"message":"no code"}}')
    await call.hang_up()
    await session.wait_closed()
    samples = await scrape(bridge)
    codes = {dict(labels).get("code"): count for (name, labels), count in samples.items()
             if name == "telephony_bridge_realtime_errors_total"}
    assert codes == {"rate_limit_exceeded": 1, "other": 200, "unknown": 1}
