"""Twilio Media Stream messages: parsed into events, malformed ones rejected with a reason, never raised."""

from __future__ import annotations

import asyncio
import base64
import json

from hypothesis import given
from hypothesis import strategies as st
from test_operations import scrape, value

from support import place_call
from telephony_bridge.call.events import (
    CallerAudio,
    ClearTwilio,
    DigitPressed,
    MarkEchoed,
    SendTwilioMark,
    SendTwilioMedia,
    StreamStarted,
    StreamStopped,
    TwilioMessageRejected,
)
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator
from telephony_bridge.twilio.media_stream import MAX_MESSAGE_BYTES, encode_for_twilio, parse_twilio_message


def media(payload: str) -> str:
    return json.dumps({"event": "media", "sequenceNumber": "2", "streamSid": "MZ1",
                       "media": {"track": "inbound", "chunk": "1", "timestamp": "52", "payload": payload}})


def test_media_becomes_caller_audio() -> None:
    assert parse_twilio_message(media(base64.b64encode(b"\x7f" * 160).decode())) == CallerAudio(b"\x7f" * 160)


def test_start_carries_the_call_and_its_parameters() -> None:
    frame = json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
                        "start": {"callSid": "CA1", "streamSid": "MZ1", "customParameters": {"to": "+1", "token": "t"},
                                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
    assert parse_twilio_message(frame) == StreamStarted("MZ1", "CA1", {"to": "+1", "token": "t"})


def test_mark_dtmf_stop_and_connected() -> None:
    assert parse_twilio_message('{"event":"mark","streamSid":"MZ1","mark":{"name":"a1"}}') == MarkEchoed("a1")
    assert parse_twilio_message('{"event":"dtmf","dtmf":{"track":"inbound_track","digit":"5"}}') == DigitPressed("5")
    assert parse_twilio_message('{"event":"stop","stop":{"callSid":"CA1"}}') == StreamStopped()
    assert parse_twilio_message('{"event":"connected","protocol":"Call","version":"1.0.0"}') is None


def test_each_kind_of_malformed_message_is_rejected_with_its_reason() -> None:
    cases = {
        b"\x00binary": "binary",
        "not json": "not JSON",
        "[1, 2]": "not a JSON object",
        media("!!!not base64!!!"): "not base64",
        '{"event":"media","media":{}}': "without a payload",
        '{"event":"dtmf","dtmf":{"digit":"55"}}': "digit",
        '{"event":"start","start":{}}': "callSid",
        '{"event":"hello"}': "unknown event",
        media("A" * MAX_MESSAGE_BYTES): "oversized",
    }
    for frame, reason in cases.items():
        event = parse_twilio_message(frame)
        assert isinstance(event, TwilioMessageRejected) and reason in event.reason, frame[:40]


TWILIO_KEYS = ["event", "media", "payload", "start", "mark", "name", "dtmf", "digit", "callSid", "streamSid", "customParameters"]
"""Keys a Twilio message uses, so random objects often look almost right."""


@given(st.one_of(st.text(max_size=300), st.binary(max_size=300),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                              lambda inner: st.lists(inner, max_size=3)
                              | st.dictionaries(st.sampled_from(TWILIO_KEYS) | st.text(max_size=5), inner, max_size=4),
                              max_leaves=12).map(json.dumps)))
def test_no_frame_makes_the_parser_raise(frame: str | bytes) -> None:
    parse_twilio_message(frame)


def test_outgoing_messages_have_twilios_shape() -> None:
    sent = json.loads(encode_for_twilio(SendTwilioMedia(b"\xff" * 160), "MZ1"))
    assert sent == {"event": "media", "streamSid": "MZ1", "media": {"payload": base64.b64encode(b"\xff" * 160).decode()}}
    mark = {"event": "mark", "streamSid": "MZ1", "mark": {"name": "a1"}}
    assert json.loads(encode_for_twilio(SendTwilioMark("a1"), "MZ1")) == mark
    assert json.loads(encode_for_twilio(ClearTwilio(), "MZ1")) == {"event": "clear", "streamSid": "MZ1"}


def test_deep_nesting_is_rejected_not_raised() -> None:
    nested_event = '{"event":' + "[" * 1000 + "]" * 1000 + "}"
    for frame in ["[" * 5000, '{"event":"mark","mark":' + "{" * 5000, nested_event]:
        assert isinstance(parse_twilio_message(frame), TwilioMessageRejected), frame[:30]


async def test_deeply_nested_json_from_twilio_is_counted_and_the_call_goes_on(bridge: str, realtime: RealtimeSimulator) -> None:
    call, session = await place_call(bridge, realtime)
    await session.wait_for("session.update")
    await call.send_raw("[" * 5000)
    await call.send_raw('{"event":' + "[" * 1000 + "]" * 1000 + "}")
    received_before = session.input_audio_ms
    async with asyncio.timeout(5):  # the caller's audio keeps reaching the session (0.3 s was tight on a loaded machine)
        while session.input_audio_ms <= received_before:
            await asyncio.sleep(0.02)
    assert call.closed_at is None
    assert value(await scrape(bridge), "telephony_bridge_malformed_messages_total", source="twilio") == 2
    await call.hang_up()

