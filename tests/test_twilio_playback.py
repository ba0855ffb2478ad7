"""Twilio's playback model, driven with plain calls and explicit times (no sockets, no clock)."""

from __future__ import annotations

import pytest

from telephony_bridge.testing.twilio_playback import MarkEcho, Played, TwilioPlayback

AUDIO = bytes(range(256)) * 10  # 2560 bytes: 320 ms of mu-law


def test_audio_plays_in_real_time_from_when_it_arrives() -> None:
    playback = TwilioPlayback()
    playback.media(10.0, AUDIO[:800])
    assert playback.heard_ms(10.05) == 50
    assert playback.heard(10.05) == AUDIO[:400]
    assert playback.heard_ms(11.0) == 100


def test_audio_sent_while_playing_queues_behind_it() -> None:
    playback = TwilioPlayback()
    playback.media(0.0, AUDIO[:800])
    playback.media(0.02, AUDIO[800:1600])
    assert playback.played(1.0) == [Played(0.0, 800), Played(0.1, 800)]
    assert playback.heard(1.0) == AUDIO[:1600]


def test_audio_after_a_pause_starts_when_it_arrives() -> None:
    playback = TwilioPlayback()
    playback.media(0.0, AUDIO[:80])
    playback.media(0.5, AUDIO[80:160])
    assert playback.played(1.0) == [Played(0.0, 80), Played(0.5, 80)]
    assert not playback.playing(0.2) and playback.playing(0.505)


def test_a_mark_is_echoed_when_the_audio_before_it_has_played() -> None:
    playback = TwilioPlayback()
    assert playback.media(0.0, AUDIO[:1600]) == []
    assert playback.mark(0.001, "turn-1") == []
    assert playback.next_mark_at() == pytest.approx(0.2)
    assert playback.advance(0.19) == []
    assert playback.advance(0.25) == [MarkEcho(pytest.approx(0.2), "turn-1", True)]
    assert playback.next_mark_at() is None


def test_a_mark_with_nothing_left_to_play_comes_straight_back() -> None:
    playback = TwilioPlayback()
    playback.media(0.0, AUDIO[:80])
    assert playback.mark(0.5, "idle") == [MarkEcho(0.5, "idle", True)]


def test_marks_come_back_in_order_each_when_its_own_audio_has_played() -> None:
    playback = TwilioPlayback()
    playback.media(0.0, AUDIO[:800])
    playback.mark(0.0, "a")
    playback.media(0.0, AUDIO[:800])
    playback.mark(0.0, "b")
    assert [(e.name, round(e.at, 3)) for e in playback.advance(0.15)] == [("a", 0.1)]
    assert [(e.name, round(e.at, 3)) for e in playback.advance(0.3)] == [("b", 0.2)]


def test_clear_drops_unplayed_audio_and_flushes_pending_marks_at_once() -> None:
    playback = TwilioPlayback()
    playback.media(0.0, AUDIO[:800])
    playback.mark(0.0, "played")
    playback.media(0.0, AUDIO[800:2400])
    playback.mark(0.0, "flushed")
    echoes = playback.clear(0.15)
    assert echoes == [MarkEcho(pytest.approx(0.1), "played", True), MarkEcho(0.15, "flushed", False)]
    assert playback.clears == [(0.15, 2400 - 1200)]
    assert playback.heard(10.0) == AUDIO[:1200]
    assert not playback.playing(0.15)
    assert playback.pending_marks == []


def test_audio_after_a_clear_plays_at_once() -> None:
    playback = TwilioPlayback()
    playback.media(0.0, AUDIO)
    playback.clear(0.1)
    playback.media(0.1, AUDIO[:80])
    assert playback.played(1.0) == [Played(0.0, 800), Played(0.1, 80)]


def test_audio_given_as_a_length_counts_as_silence_heard() -> None:
    playback = TwilioPlayback()
    playback.media(0.0, 160)
    playback.mark(0.0, "m")
    assert playback.heard(1.0) == b"\xff" * 160
    assert [e.name for e in playback.advance(0.02)] == ["m"]


def test_time_never_runs_backwards() -> None:
    playback = TwilioPlayback()
    playback.media(1.0, AUDIO[:160])
    playback.mark(0.5, "late-stamped")
    assert playback.next_mark_at() == pytest.approx(1.02)
