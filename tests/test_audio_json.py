"""The hot messages' audio read straight from their JSON text, checked against a JSON parser on whatever Hypothesis builds.

The fast read's contract: `None` (the text is then parsed the general way), or exactly what a JSON
parser reads there whenever its base64 decodes (base64 that does not decode goes the general way
too). And through the parsers that use it, every text gives the event a JSON parser's reading
calls for. Texts are built from the services' own shapes, then reordered, respaced, given other
keys and values, keys twice, escapes, and cut or spliced anywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from telephony_bridge._audio_json import realtime_audio_delta, twilio_media_payload
from telephony_bridge._base64 import decode
from telephony_bridge.call.events import CallerAudio, ModelAudio
from telephony_bridge.realtime.session import RealtimeEventParser
from telephony_bridge.twilio.media_stream import parse_twilio_message

GA_DELTA = "response.output_audio.delta"
# Written into the text as they are: escapes, quotes and a raw newline included.
BASE64 = st.sampled_from(["AAAA", "gICA", "/+8=", "AA==", "AAE=", "", "AAA", "AA\\u0041A", 'A\\"AA', "AAAA\n", "QUJD\\/"])
PLAIN = st.text(alphabet="abcAZ09_-./ ", max_size=8)
STRINGS = st.one_of(PLAIN, st.text(alphabet='abc é\\"/\n', max_size=4))
SCALARS = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
JSON_VALUES = st.recursive(
    SCALARS | STRINGS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(STRINGS, inner, max_size=3), max_leaves=8,
)
PLAIN_VALUES = st.recursive(
    SCALARS | PLAIN, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(PLAIN, inner, max_size=3), max_leaves=4,
)


@dataclass(frozen=True)
class Raw:
    """JSON text to write as it is."""

    text: str


@st.composite
def documents(draw: st.DrawFn, wanted: dict[str, Any]) -> str:
    """`wanted`'s keys (most of them) and others, in any order and spacing; half of them also with keys twice,
    escapes, text other than ASCII, and cut or spliced."""
    noisy = draw(st.booleans())
    items = [(key, value) for key, value in wanted.items() if draw(st.integers(0, 7))]
    items += draw(st.lists(st.tuples(STRINGS, JSON_VALUES) if noisy else st.tuples(PLAIN, PLAIN_VALUES), max_size=2))
    if noisy and items and draw(st.booleans()):  # a key twice, with its value or another: a parser keeps the last
        key, value = draw(st.sampled_from(items))
        items.append((key, draw(st.sampled_from([value, Raw('"gICA"'), "media", "inbound", GA_DELTA, 7]))))
    items = draw(st.permutations(items))
    space = draw(st.sampled_from(["", " ", "\n  ", "\t"]))
    members = [
        json.dumps(key) + space + ":" + space + (value.text if isinstance(value, Raw) else json.dumps(value, ensure_ascii=False))
        for key, value in items
    ]
    text = draw(st.sampled_from(["", " "])) + "{" + space + ("," + space).join(members) + space + "}"
    if noisy:
        text += draw(st.sampled_from(["", "x", "}"]))
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["", ",", '"', "}", "{", "\\", "]", "0"])) + text[at + draw(st.integers(0, 2)):]
    return text


@st.composite
def twilio_messages(draw: st.DrawFn) -> str:
    media = draw(documents({
        "track": draw(st.sampled_from(["inbound", "inbound", "inbound", "outbound", 1])),
        "payload": Raw('"' + draw(BASE64) + '"'),
        "chunk": "2", "timestamp": "40",
    }))
    return draw(documents({"event": draw(st.sampled_from(["media", "media", "mark"])), "media": Raw(media), "streamSid": "MZ1"}))


@st.composite
def realtime_events(draw: st.DrawFn) -> str:
    return draw(documents({
        "type": draw(st.sampled_from([GA_DELTA, GA_DELTA, "response.audio.delta", "error"])),
        "response_id": draw(STRINGS), "item_id": draw(STRINGS), "delta": Raw('"' + draw(BASE64) + '"'),
        "output_index": 0, "content_index": 0, "event_id": "event_1",
    }))


def _read(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _decoded(base64: Any) -> bytes | None:
    if not isinstance(base64, str):
        return None
    try:
        return decode(base64)
    except ValueError:
        return None


def _caller_audio(message: Any) -> CallerAudio | None:
    """The caller audio a JSON parser's reading of a Twilio message holds, if any."""
    if not isinstance(message, dict) or message.get("event") != "media" or not isinstance(message.get("media"), dict):
        return None
    body = message["media"]
    ulaw = _decoded(body.get("payload"))
    return CallerAudio(ulaw) if ulaw is not None and body.get("track", "inbound") == "inbound" else None


def _model_audio(event: Any) -> ModelAudio | None:
    """The model audio a JSON parser's reading of a Realtime event holds, if any."""
    if not isinstance(event, dict) or event.get("type") != GA_DELTA:
        return None
    response_id, item_id, pcm = event.get("response_id"), event.get("item_id"), _decoded(event.get("delta"))
    if not isinstance(response_id, str) or not isinstance(item_id, str) or pcm is None or len(pcm) % 2:
        return None
    return ModelAudio(response_id, item_id, pcm)


@settings(max_examples=500)
@given(twilio_messages())
def test_a_twilio_payload_read_fast_is_the_one_a_json_parser_reads(text: str) -> None:
    payload = twilio_media_payload(text)
    if payload is not None and _decoded(payload) is not None:
        assert _caller_audio(_read(text)) == CallerAudio(decode(payload)), text


@settings(max_examples=500)
@given(twilio_messages())
def test_every_twilio_message_gives_the_caller_audio_a_json_parser_reads_in_it(text: str) -> None:
    expected = _caller_audio(_read(text))
    event = parse_twilio_message(text)
    if expected is None:
        assert not isinstance(event, CallerAudio), text
    else:
        assert event == expected, text


@settings(max_examples=500)
@given(realtime_events())
def test_a_delta_read_fast_is_the_one_a_json_parser_reads(text: str) -> None:
    found = realtime_audio_delta(text, GA_DELTA)
    if found is not None and _decoded(found[2]) is not None:
        event = _read(text)
        assert isinstance(event, dict) and event["type"] == GA_DELTA, text
        assert (event["response_id"], event["item_id"], event["delta"]) == found, text


@settings(max_examples=500)
@given(realtime_events())
def test_every_realtime_event_gives_the_model_audio_a_json_parser_reads_in_it(text: str) -> None:
    expected = _model_audio(_read(text))
    event = RealtimeEventParser("ga").parse(text)
    if expected is None:
        assert not isinstance(event, ModelAudio), text
    else:
        assert event == expected, text


def test_the_services_own_shapes_are_read_fast() -> None:
    twilio = ('{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"2","timestamp":"40",'
              '"payload":"f39/fw=="},"streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0"}')
    delta = ('{"type":"response.output_audio.delta","event_id":"event_DoZ","response_id":"resp_1","item_id":"item_1",'
             '"output_index":0,"content_index":0,"delta":"AAABAA=="}')
    assert twilio_media_payload(twilio) == "f39/fw=="
    assert realtime_audio_delta(delta, GA_DELTA) == ("resp_1", "item_1", "AAABAA==")
    assert realtime_audio_delta(delta, "response.audio.delta") is None
    assert twilio_media_payload(twilio.replace('"timestamp":"40"', '"timestamp":' + "[" * 40 + "]" * 40)) is None
    assert parse_twilio_message(twilio.replace('"timestamp":"40"', '"timestamp":' + "[" * 40 + "]" * 40)) == \
        CallerAudio(b"\x7f\x7f\x7f\x7f")
