"""Playback: what the caller heard, from marks sent and echoed, driven by a hand-moved clock."""

from __future__ import annotations

import pytest

from support import ManualClock
from telephony_bridge.call.playback import PLAYHEAD_ERROR_MS, Playback


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def streaming(clock: ManualClock) -> Playback:
    playback = Playback(clock)
    playback.stream_started()
    return playback


def send(playback: Playback, item_id: str, chunks: int, chunk_ms: float = 100.0) -> list[str | None]:
    names = []
    for _ in range(chunks):
        playback.generated(item_id, chunk_ms)
        names.append(playback.sent(item_id, chunk_ms))
    return names


def test_the_playhead_runs_on_from_the_last_echo_in_real_time(clock: ManualClock) -> None:
    playback = streaming(clock)
    names = send(playback, "i1", 10)
    clock.advance_ms(300)
    playback.echoed(names[2])
    clock.advance_ms(40)
    assert playback.heard_ms() == pytest.approx(340)


def test_the_playhead_waits_at_the_audio_sent_when_the_model_falls_behind(clock: ManualClock) -> None:
    playback = streaming(clock)
    names = send(playback, "i1", 2)
    clock.advance_ms(150)
    playback.echoed(names[0])
    clock.advance_ms(5000)
    assert playback.heard_ms() == 200


def test_the_round_trip_of_the_first_chunk_corrects_the_playhead(clock: ManualClock) -> None:
    playback = streaming(clock)
    names = send(playback, "i1", 5)
    clock.advance_ms(100 + 60)  # the chunk's own 100 ms plus a 60 ms round trip
    playback.echoed(names[0])
    clock.advance_ms(50)
    assert playback.heard_ms() == pytest.approx(100 + 50 + 15), (
        "the echo left 15 ms after the playhead passed (half the round trip, smoothed)"
    )


def test_an_echo_that_is_not_pending_is_stale_and_moves_nothing(clock: ManualClock) -> None:
    playback = streaming(clock)
    send(playback, "i1", 3)
    clock.advance_ms(120)
    before = playback.heard_ms()
    playback.echoed("a999")
    assert playback.stale_marks == 1
    assert playback.heard_ms() == before


def test_a_cut_names_the_playing_item_and_every_item_still_queued(clock: ManualClock) -> None:
    playback = streaming(clock)
    first = send(playback, "i1", 3)
    send(playback, "i2", 3)
    clock.advance_ms(300)
    playback.echoed(first[-1])
    clock.advance_ms(50)
    cut, dropped = playback.cut()
    assert cut is not None and cut.item_id == "i2" and abs(cut.audio_end_ms - 50) <= 1
    assert dropped == {"i2"}
    assert not playback.playing
    assert playback.cut() == (None, set())


def test_marks_echoed_after_a_cut_are_stale(clock: ManualClock) -> None:
    playback = streaming(clock)
    names = send(playback, "i1", 3)
    playback.cut()
    for name in names:
        playback.echoed(name)
    assert playback.stale_marks == 3


def test_an_item_is_forgotten_once_it_is_complete_and_has_played(clock: ManualClock) -> None:
    playback = streaming(clock)
    for answer in range(200):
        names = send(playback, f"i{answer}", 3)
        playback.complete(f"i{answer}")
        clock.advance_ms(300)
        playback.echoed(names[-1])
    assert playback.tracked_items == 0


def test_an_item_still_streaming_is_kept_after_its_audio_has_played(clock: ManualClock) -> None:
    playback = streaming(clock)
    names = send(playback, "i1", 2)
    clock.advance_ms(200)
    playback.echoed(names[-1])
    assert playback.tracked_items == 1
    later = send(playback, "i1", 1)
    clock.advance_ms(50)
    assert playback.heard_ms() == pytest.approx(250), "a later chunk continues the item where it was"
    assert later == ["a3"]


def test_audio_queued_before_the_stream_starts_plays_from_the_start(clock: ManualClock) -> None:
    playback = Playback(clock)
    send(playback, "i1", 5)
    clock.advance_ms(2000)
    playback.stream_started()
    clock.advance_ms(120)
    assert playback.heard_ms() == pytest.approx(120)


def echo_delayed(playback: Playback, clock: ManualClock, names: list[str], until_ms: float, delay_ms: float = 40.0) -> None:
    """Twilio plays 100 ms chunks from now on; each echo reaches us `delay_ms` after its audio played, up to `until_ms`."""
    start = clock.now
    for index, name in enumerate(names):
        due_ms = (index + 1) * 100.0 + delay_ms
        if due_ms > until_ms:
            break
        clock.now = start + due_ms / 1000.0
        playback.echoed(name)
    clock.now = start + until_ms / 1000.0


def test_a_caller_speaking_just_after_a_finished_answer_played_cut_nothing(clock: ManualClock) -> None:
    playback = Playback(clock)
    names = send(playback, "i1", 6)  # queued before the stream started: no round trip measured, the estimate runs short
    playback.stream_started()
    playback.complete("i1")
    echo_delayed(playback, clock, names, until_ms=630)  # the last audio played at 600 ms; its echo is due at 640
    cut, dropped = playback.cut()
    assert cut is not None and cut.item_id == "i1" and dropped == {"i1"}
    assert cut.played_through
    assert 600 - PLAYHEAD_ERROR_MS <= cut.audio_end_ms < 600


def test_a_caller_speaking_300_ms_before_the_end_cuts_the_answer_where_they_were(clock: ManualClock) -> None:
    playback = streaming(clock)
    names = send(playback, "i1", 6)
    playback.complete("i1")
    echo_delayed(playback, clock, names, until_ms=300)
    cut, _ = playback.cut()
    assert cut is not None and not cut.played_through
    assert abs(cut.audio_end_ms - 300) <= 40


def test_an_answer_still_streaming_is_cut_even_when_all_its_audio_so_far_has_played(clock: ManualClock) -> None:
    playback = streaming(clock)
    names = send(playback, "i1", 3)
    echo_delayed(playback, clock, names, until_ms=330)
    cut, _ = playback.cut()
    assert cut is not None and not cut.played_through and abs(cut.audio_end_ms - 300) <= 1


def test_20_ms_chunks_get_a_mark_on_the_first_and_then_every_100_ms(clock: ManualClock) -> None:
    playback = streaming(clock)
    names = send(playback, "i1", 16, chunk_ms=20.0)
    assert [index for index, name in enumerate(names) if name is not None] == [0, 5, 10, 15]
    assert playback.complete("i1") is None, "the last chunk carried a mark: nothing is left unmarked"


def test_completing_an_item_marks_the_audio_sent_after_its_last_mark(clock: ManualClock) -> None:
    playback = streaming(clock)
    names = send(playback, "i1", 3, chunk_ms=20.0)
    assert names[1:] == [None, None]
    last = playback.complete("i1")
    assert last is not None
    clock.advance_ms(60)
    playback.echoed(names[0])
    assert playback.playing, "40 ms of the item follow the echoed mark"
    playback.echoed(last)
    assert not playback.playing and playback.tracked_items == 0


def test_a_barge_in_during_unmarked_audio_cuts_where_the_playhead_runs(clock: ManualClock) -> None:
    playback = streaming(clock)
    names = send(playback, "i1", 4, chunk_ms=20.0)  # marked after the first chunk only
    clock.advance_ms(20)
    playback.echoed(names[0])
    clock.advance_ms(30)
    assert playback.playing
    cut, dropped = playback.cut()
    assert cut is not None and cut.item_id == "i1" and not cut.played_through and abs(cut.audio_end_ms - 50) <= 1
    assert dropped == {"i1"}
    assert not playback.playing


def test_at_real_time_pace_a_drained_buffer_does_not_bring_a_mark_per_chunk(clock: ManualClock) -> None:
    playback = streaming(clock)
    marked = []
    for index in range(15):
        playback.generated("i1", 20.0)
        name = playback.sent("i1", 20.0)
        clock.advance_ms(20)
        if name is not None:
            marked.append(index)
            playback.echoed(name)  # played out just as the next delta arrives
    assert marked == [0, 5, 10]
