"""The hot path's hand-made websocket frames, checked against websockets' own sans-I/O protocol."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from telephony_bridge.websocket_frames import (
    OVERSIZED,
    MaskKeys,
    client_text_frame,
    next_frame,
    server_text_frame,
)

MAX_SIZE = 64 * 1024


def open_server() -> ServerProtocol:
    server = ServerProtocol(max_size=MAX_SIZE)
    server.state = State.OPEN
    server.parser = server.parse()
    next(server.parser)
    return server


def open_client() -> ClientProtocol:
    client = ClientProtocol(parse_uri("ws://bridge.test/"))
    client.state = State.OPEN
    client.parser = client.parse()
    next(client.parser)
    return client


def client_bytes(frame: Frame) -> bytes:
    """`frame` as websockets' client would put it on the wire (masked)."""
    return frame.serialize(mask=True)


@given(st.text(max_size=70_000))
def test_a_client_text_frame_is_what_a_websockets_server_reads(text: str) -> None:
    server = open_server()
    server.receive_data(client_text_frame(text, MaskKeys().take()))
    events = server.events_received()
    if len(text.encode()) > MAX_SIZE:
        assert server.close_sent is not None and server.close_sent.code == 1009
    else:
        assert [(event.opcode, event.data.decode(), event.fin) for event in events] == [(Opcode.TEXT, text, True)]


@given(st.text(max_size=70_000))
def test_a_server_text_frame_is_what_a_websockets_client_reads(text: str) -> None:
    client = open_client()
    client.receive_data(server_text_frame(text))
    events = client.events_received()
    assert [(event.opcode, event.data.decode(), event.fin) for event in events] == [(Opcode.TEXT, text, True)]


@pytest.mark.parametrize("size", [0, 125, 126, 65_535, 65_536])
def test_every_length_encoding_reads_back(size: int) -> None:
    payload = os.urandom(size)
    wire = client_bytes(Frame(Opcode.TEXT, payload))
    frame = next_frame(wire, 0, 1 << 20, True)
    assert frame == (len(wire), payload)


def test_a_frame_is_read_only_once_it_has_arrived_in_full() -> None:
    wire = client_bytes(Frame(Opcode.TEXT, b'{"event":"media"}'))
    assert all(next_frame(wire[:cut], 0, MAX_SIZE, True) is None for cut in range(len(wire)))


def test_frames_follow_each_other_in_one_buffer() -> None:
    wire = b"".join(client_bytes(Frame(Opcode.TEXT, f"message {n}".encode())) for n in range(3))
    start, texts = 0, []
    while (frame := next_frame(wire, start, MAX_SIZE, True)) is not None:
        end, text = frame
        assert end is not None
        texts.append(text)
        start = end
    assert texts == [b"message 0", b"message 1", b"message 2"] and start == len(wire)


@pytest.mark.parametrize(
    "frame",
    [
        Frame(Opcode.PING, b"ping"),
        Frame(Opcode.CLOSE, b"\x03\xe8"),
        Frame(Opcode.BINARY, b"\x00\x01"),
        Frame(Opcode.TEXT, b"first half", fin=False),
        Frame(Opcode.CONT, b"second half"),
    ],
    ids=["ping", "close", "binary", "fragment", "continuation"],
)
def test_any_other_frame_is_located_but_left_to_the_protocol(frame: Frame) -> None:
    wire = client_bytes(frame)
    found = next_frame(wire, 0, MAX_SIZE, True)
    assert found == (len(wire), None)


def test_a_text_frame_with_an_extension_bit_is_left_to_the_protocol() -> None:
    wire = bytearray(client_bytes(Frame(Opcode.TEXT, b"compressed")))
    wire[0] |= 0x40
    found = next_frame(bytes(wire), 0, MAX_SIZE, True)
    assert found == (len(wire), None)


def test_an_unmasked_text_frame_from_a_client_is_left_to_the_protocol() -> None:
    wire = server_text_frame('{"event":"media"}')
    found = next_frame(wire, 0, MAX_SIZE, True)
    assert found == (len(wire), None)


def test_a_masked_text_frame_from_a_server_is_left_to_the_protocol() -> None:
    wire = client_bytes(Frame(Opcode.TEXT, b'{"type":"response.output_audio.delta"}'))
    found = next_frame(wire, 0, MAX_SIZE, False)
    assert found == (len(wire), None)


@given(st.binary(max_size=70_000), st.integers(min_value=0, max_value=20))
def test_a_server_text_frame_reads_back_after_whatever_came_before(payload: bytes, offset: int) -> None:
    wire = b"x" * offset + Frame(Opcode.TEXT, payload).serialize(mask=False)
    found = next_frame(wire, offset, 1 << 20, False)
    assert found == (len(wire), payload)
    cuts = range(offset, min(len(wire), offset + 12))
    assert all(next_frame(wire[:cut], offset, 1 << 20, False) is None for cut in cuts)


def test_a_frame_over_the_limit_is_refused_from_its_header_alone() -> None:
    header_only = client_bytes(Frame(Opcode.TEXT, b"x" * (MAX_SIZE + 1)))[:10]
    assert next_frame(header_only, 0, MAX_SIZE, True) is OVERSIZED


def test_masking_keys_differ_and_are_four_bytes() -> None:
    keys = MaskKeys()
    taken = [keys.take() for _ in range(3000)]
    assert {len(key) for key in taken} == {4}
    assert len(set(taken)) > 2990


@given(st.binary(max_size=70_000), st.integers(min_value=0, max_value=20))
def test_a_client_text_frame_is_unmasked_wherever_it_starts(payload: bytes, offset: int) -> None:
    wire = b"x" * offset + client_bytes(Frame(Opcode.TEXT, payload))
    assert next_frame(wire, offset, 1 << 20, True) == (len(wire), payload)
