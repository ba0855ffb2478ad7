"""The hot path's base64, checked against the standard library's on every input Hypothesis finds."""

from __future__ import annotations

import base64
import binascii

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telephony_bridge._base64 import decode, encode

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@given(st.binary(max_size=4000))
def test_encoding_is_the_standard_librarys_and_decodes_back(data: bytes) -> None:
    text = encode(data)
    assert text == base64.b64encode(data).decode("ascii")
    assert decode(text) == data


@given(st.text(alphabet=ALPHABET + "=\n -_é", max_size=40))
def test_text_the_standard_library_refuses_is_refused_and_what_is_accepted_reads_the_same(text: str) -> None:
    try:
        expected: bytes | None = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        expected = None
    try:
        decoded: bytes | None = decode(text)
    except ValueError:
        decoded = None
    if expected is None:
        assert decoded is None
    elif decoded is None:
        data = text.rstrip("=")
        assert len(data) % 4 == 0 and data != text, "only padding after whole quads is refused where binascii takes it"
    else:
        assert decoded == expected


@pytest.mark.parametrize(
    "text", ["ABC", "A===", "====", "=ABC", "AB=A", "AB\nCD", "ABCD====", "AB CD", "ABé=", "AB-_"],
)
def test_anything_but_the_padded_alphabet_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        decode(text)


def test_only_text_is_decoded() -> None:
    with pytest.raises(TypeError):
        decode(b"QUJD")  # type: ignore[arg-type]
