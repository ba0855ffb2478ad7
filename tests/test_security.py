"""Stream tokens: bound to one call and one number, and they expire."""

from __future__ import annotations

from telephony_bridge.twilio.security import STREAM_TOKEN_LIFETIME_S, issue_stream_token, stream_token_valid

SECRET = b"s" * 32


def test_a_token_is_valid_for_its_call_and_number() -> None:
    token = issue_stream_token(SECRET, "CA1", "+14155550100", now_s=1000)
    assert stream_token_valid(SECRET, token, "CA1", "+14155550100", now_s=1001)


def test_a_token_is_not_valid_for_another_call_or_number() -> None:
    token = issue_stream_token(SECRET, "CA1", "+14155550100", now_s=1000)
    assert not stream_token_valid(SECRET, token, "CA2", "+14155550100", now_s=1001)
    assert not stream_token_valid(SECRET, token, "CA1", "+14155550199", now_s=1001)


def test_a_token_expires() -> None:
    token = issue_stream_token(SECRET, "CA1", "+1", now_s=1000)
    assert not stream_token_valid(SECRET, token, "CA1", "+1", now_s=1001 + STREAM_TOKEN_LIFETIME_S)


def test_a_token_from_another_secret_or_a_forged_expiry_is_refused() -> None:
    token = issue_stream_token(b"x" * 32, "CA1", "+1", now_s=1000)
    assert not stream_token_valid(SECRET, token, "CA1", "+1", now_s=1001)
    mine = issue_stream_token(SECRET, "CA1", "+1", now_s=1000)
    forged = str(int(mine.split(".")[0]) + 10_000) + "." + mine.split(".")[1]
    assert not stream_token_valid(SECRET, forged, "CA1", "+1", now_s=1001)
    for junk in ["", ".", "abc", "1.2.3", "99999999999."]:
        assert not stream_token_valid(SECRET, junk, "CA1", "+1", now_s=1001)


def test_a_crafted_expiry_or_mac_is_refused_without_raising() -> None:
    mac = issue_stream_token(SECRET, "CA1", "+1", now_s=1000).split(".")[1]
    crafted_tokens = [
        "²." + mac, "1²." + mac, "9" * 5000 + "." + mac, "٣٣٣." + mac, "99999999999.é", "99999999999.\udcff", "99999999999.\ud800"
    ]
    for crafted in crafted_tokens:
        assert not stream_token_valid(SECRET, crafted, "CA1", "+1", now_s=1001)
