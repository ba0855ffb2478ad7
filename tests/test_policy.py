"""Call policy without sockets: hours, holidays, the limits' decisions, usage and cost, retention, and the controller
acting on them with plain events and a manual clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from support import ManualClock
from telephony_bridge.call.controller import CallController
from telephony_bridge.call.events import (
    AddNote,
    CloseRealtime,
    CreateResponse,
    DigitPressed,
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
    SpeechStopped,
    StreamStarted,
    StreamStopped,
    Tick,
    TokenUsage,
)
from telephony_bridge.call.supervision import CallTimings
from telephony_bridge.config import CallProfile, ModelPrices, Retention, parse_config
from telephony_bridge.errors import ConfigError, ConfigErrors
from telephony_bridge.policy import (
    GOODBYES,
    PRESENCE_CHECK,
    WRAP_UP_NOTE,
    CallLimits,
    Decision,
    Stage,
    cost_of,
    expired,
    is_open,
    profile_in_force,
)
from telephony_bridge.preflight import check
from telephony_bridge.realtime.session import RealtimeEventParser, token_usage

NUMBER = "+14155550100"
HOURS = f"""
[numbers."{NUMBER}"]
instructions = "You are the receptionist."
greeting = "Bright Smile Dental."

[numbers."{NUMBER}".hours]
time_zone = "America/Los_Angeles"
open = {{ mon = "09:00-17:00", tue = "09:00-12:30, 13:30-17:00", sat = "10:00-24:00" }}
holidays = [2026-12-25, "2027-01-01"]

[numbers."{NUMBER}".after_hours]
instructions = "We are closed. Take a message."
greeting = "Bright Smile Dental, we are closed right now."
"""


def la(text: str) -> datetime:
    """A moment given in Los Angeles' wall-clock time, as an aware datetime in UTC."""
    from zoneinfo import ZoneInfo

    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("America/Los_Angeles")).astimezone(UTC)


def problems(text: str) -> list[ConfigError]:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "bridge.toml", env={})
    error = raised.value
    return list(error.problems) if isinstance(error, ConfigErrors) else [error]


# Hours and holidays.
def test_a_number_is_open_inside_its_spans_in_its_own_time_zone() -> None:
    profile = parse_config(HOURS, "bridge.toml", env={}).numbers[NUMBER]
    assert profile.hours is not None
    assert is_open(profile.hours, la("2026-11-30T09:00"))  # a Monday
    assert not is_open(profile.hours, la("2026-11-30T08:59"))
    assert not is_open(profile.hours, la("2026-11-30T17:00")), "a span's end is closed"
    assert not is_open(profile.hours, la("2026-12-01T13:00")), "Tuesday's lunch break"
    assert is_open(profile.hours, la("2026-12-01T13:30"))
    assert is_open(profile.hours, la("2026-12-05T23:59")), "24:00 is the end of the day"
    assert not is_open(profile.hours, la("2026-12-06T12:00")), "a day not listed is closed"


def test_a_holiday_is_closed_all_day_whatever_its_weekday() -> None:
    hours = parse_config(HOURS, "bridge.toml", env={}).numbers[NUMBER].hours
    assert hours is not None
    assert not is_open(hours, la("2026-12-25T10:00"))  # a Friday: Christmas, a TOML date
    assert not is_open(hours, la("2027-01-01T10:00"))  # given as a string
    assert is_open(hours, la("2026-12-28T10:00"))


def test_daylight_saving_is_the_zones_business() -> None:
    hours = parse_config(HOURS, "bridge.toml", env={}).numbers[NUMBER].hours
    assert hours is not None
    # 17:30 UTC is 09:30 in Los Angeles in winter (PST) and 10:30 in summer (PDT): open on a Monday either way.
    assert is_open(hours, datetime(2026, 1, 5, 17, 30, tzinfo=UTC))
    assert not is_open(hours, datetime(2026, 1, 5, 16, 30, tzinfo=UTC))  # 08:30 PST
    assert is_open(hours, datetime(2026, 7, 6, 16, 30, tzinfo=UTC))  # 09:30 PDT


def test_the_after_hours_profile_is_the_numbers_settings_under_its_own() -> None:
    profile = parse_config(HOURS, "bridge.toml", env={}).numbers[NUMBER]
    assert profile_in_force(profile, la("2026-11-30T10:00")) == ("business_hours", profile)
    in_force, after = profile_in_force(profile, la("2026-11-30T20:00"))
    assert in_force == "after_hours"
    assert after.instructions == "We are closed. Take a message."
    assert after.greeting == "Bright Smile Dental, we are closed right now."
    assert after.voice == profile.voice, "what after_hours does not set is the number's"
    assert profile_in_force(CallProfile(), la("2026-11-30T20:00")) == ("always", CallProfile())


# Configuration: every new key checked, one line each, with the key named.
@pytest.mark.parametrize(("table", "key", "reason"), [
    ('[numbers."+14155550100".hours]\ntime_zone = "Mars/Olympus"\nopen = {}\n',
     'numbers."+14155550100".hours.time_zone', "not a time zone name"),
    ('[numbers."+14155550100".hours]\ntime_zone = "UTC"\nopen = { mon = "9-5" }\n',
     'numbers."+14155550100".hours.open', "mon: '9-5' is not a span"),
    ('[numbers."+14155550100".hours]\ntime_zone = "UTC"\nopen = { funday = "09:00-17:00" }\n',
     'numbers."+14155550100".hours.open', "'funday' is not a day"),
    ('[numbers."+14155550100".hours]\ntime_zone = "UTC"\nopen = { mon = "17:00-09:00" }\n',
     'numbers."+14155550100".hours.open', "ends before it starts"),
    ('[numbers."+14155550100".hours]\ntime_zone = "UTC"\nopen = {}\nholidays = ["25/12/2026"]\n',
     'numbers."+14155550100".hours.holidays', "not a date"),
    ('[numbers."+14155550100".after_hours]\ninstructions = "Closed."\n',
     'numbers."+14155550100".after_hours', "needs hours"),
    ('[numbers."+14155550100"]\nhours = { time_zone = "UTC", open = {} }\n'
     'after_hours = { retention_days = { transcripts = 1 } }\n',
     'numbers."+14155550100".after_hours', "may not set hours, after_hours or retention_days"),
    ('[numbers."+14155550100"]\nmax_call_minutes = 0\n', 'numbers."+14155550100".max_call_minutes', "greater than 0"),
    ('[numbers."+14155550100"]\nsilence_hangup_seconds = -1\n', 'numbers."+14155550100".silence_hangup_seconds',
     "greater than 0"),
    ('[numbers."+14155550100"]\nmax_cost_per_call = "1 dollar"\n', 'numbers."+14155550100".max_cost_per_call', "number"),
    ('[numbers."+14155550100"]\nrecord = true\nrecording_notice = ""\nrecording_notice_required = true\n',
     'numbers."+14155550100".recording_notice_required', "may not be empty"),
    ('[numbers."+14155550100"]\nretention_days = { recordings = 0 }\n',
     'numbers."+14155550100".retention_days.recordings', "greater than 0"),
    ('[numbers."+14155550100"]\nretention_days = { audio = 3 }\n', 'numbers."+14155550100".retention_days.audio',
     "unknown key"),
    ('[prices."gpt-realtime"]\naudio_in = 32\ntext_in = 4\ntext_out = 16\n', "prices.gpt-realtime.audio_out", "required"),
    ("[retention]\npurge_every_minutes = 0\n", "retention.purge_every_minutes", "greater than 0"),
])
def test_check_names_the_file_the_key_and_the_reason(table: str, key: str, reason: str) -> None:
    found = problems(table)
    assert [problem.key for problem in found] == [key], found
    assert reason in found[0].reason
    assert str(found[0]).startswith("bridge.toml: ") and "\n" not in str(found[0])


def test_prices_and_limits_are_read() -> None:
    config = parse_config(
        '[prices."gpt-realtime"]\naudio_in = 32\naudio_out = 64\ntext_in = 4\ntext_out = 16\ncached_in = 0.4\n'
        '[defaults]\nmax_call_minutes = 0.5\nsilence_hangup_seconds = 20\nmax_cost_per_call = 2.5\n'
        'retention_days = { recordings = 30, transcripts = 365 }\n', "bridge.toml", env={},
    )
    assert config.prices["gpt-realtime"].cached_in == 0.4
    assert config.defaults.max_call_minutes == 0.5 and config.defaults.max_cost_per_call == 2.5
    assert config.defaults.retention_days == Retention(recordings=30, transcripts=365)


# Usage and cost.
def test_usage_is_read_from_response_done_and_bad_counts_count_nothing() -> None:
    usage = {"input_token_details": {"text_tokens": 120, "audio_tokens": 40, "cached_tokens": 64},
             "output_token_details": {"text_tokens": 9, "audio_tokens": "many"}}
    assert token_usage(usage) == TokenUsage(audio_in=40, text_in=120, cached_in=64, audio_out=0, text_out=9)
    assert token_usage(None) is None
    detailed = {"input_token_details": {"text_tokens": 100, "audio_tokens": 900, "cached_tokens": 512,
                                        "cached_tokens_details": {"text_tokens": 100, "audio_tokens": 412}}}
    assert token_usage(detailed) == TokenUsage(audio_in=900, text_in=100, cached_in=512, cached_audio_in=412)
    frame = '{"type":"response.done","response":{"id":"r1","status":"completed","usage":' + \
        '{"input_token_details":{"audio_tokens":5},"output_token_details":{"audio_tokens":7}}}}'
    assert RealtimeEventParser("ga").parse(frame) == ResponseDone("r1", "completed", TokenUsage(audio_in=5, audio_out=7))


def test_cost_is_per_million_tokens_with_cached_input_at_its_own_price() -> None:
    prices = ModelPrices(audio_in=32, audio_out=64, text_in=4, text_out=16, cached_in=0.4)
    usage = TokenUsage(audio_in=1_000_000, text_in=500_000, cached_in=250_000, audio_out=100_000, text_out=10_000)
    assert cost_of(usage, prices) == pytest.approx(32 + 0.25 * 4 + 0.25 * 0.4 + 6.4 + 0.16)
    assert cost_of(usage, None) is None
    no_cache_price = ModelPrices(audio_in=0, audio_out=0, text_in=4, text_out=0)
    assert cost_of(usage, no_cache_price) == pytest.approx(2.0), "without cached_in, cached tokens cost as text_in"
    cached_audio = TokenUsage(audio_in=1_000_000, cached_in=500_000, cached_audio_in=500_000)
    assert cost_of(cached_audio, prices) == pytest.approx(16 + 0.2), "cached audio at cached_in, the rest at audio_in"
    assert cost_of(cached_audio, ModelPrices(audio_in=32, audio_out=0, text_in=4, text_out=0)) == pytest.approx(32)


# The limits' decisions.
def test_the_model_is_asked_to_wrap_up_a_minute_before_the_limit_and_the_goodbye_waits_for_a_quiet_line() -> None:
    limits = CallLimits(CallProfile(max_call_minutes=5), started_at=0.0)
    assert limits.check(239.0, quiet=True, cost=None) is None
    assert limits.check(240.0, quiet=False, cost=None).decision is Decision.WRAP_UP  # type: ignore[union-attr]
    assert limits.check(250.0, quiet=True, cost=None) is None, "asked once"
    assert limits.check(300.0, quiet=False, cost=None) is None, "never mid-sentence"
    verdict = limits.check(301.0, quiet=True, cost=None)
    assert verdict is not None and (verdict.decision, verdict.limit) == (Decision.END, "max_call_minutes")
    assert limits.check(400.0, quiet=True, cost=None) is None, "ended once"


def test_a_short_limit_asks_to_wrap_up_half_way() -> None:
    assert CallLimits(CallProfile(max_call_minutes=0.05), 0.0).wrap_up_at_s == pytest.approx(1.5)


def test_silence_brings_one_presence_check_then_the_end_unless_the_caller_answers() -> None:
    limits = CallLimits(CallProfile(silence_hangup_seconds=10), started_at=0.0)
    assert limits.check(9.9, quiet=True, cost=None) is None
    assert limits.check(10.0, quiet=True, cost=None).decision is Decision.CHECK_PRESENCE  # type: ignore[union-attr]
    limits.active(12.0)  # the question plays
    assert limits.check(21.9, quiet=True, cost=None) is None
    limits.caller_spoke(21.95)
    assert limits.check(25.0, quiet=True, cost=None) is None, "the caller answered: talking again"
    assert limits.check(31.95, quiet=True, cost=None).decision is Decision.CHECK_PRESENCE  # type: ignore[union-attr]
    verdict = limits.check(41.95, quiet=True, cost=None)
    assert verdict is not None and (verdict.decision, verdict.limit) == (Decision.END, "silence_hangup_seconds")


def test_the_cost_cap_ends_the_call_once_reached() -> None:
    limits = CallLimits(CallProfile(max_cost_per_call=1.0), started_at=0.0)
    assert limits.check(5.0, quiet=True, cost=0.99) is None
    assert limits.check(6.0, quiet=True, cost=None) is None, "without prices there is no cost to cap"
    verdict = limits.check(7.0, quiet=True, cost=1.0)
    assert verdict is not None and verdict.limit == "max_cost_per_call"


# Retention.
def test_recordings_and_transcripts_expire_apart() -> None:
    ended = datetime(2026, 1, 1, tzinfo=UTC)
    retention = Retention(recordings=7, transcripts=30)
    assert expired(retention, ended, ended + timedelta(days=6)) == frozenset()
    assert expired(retention, ended, ended + timedelta(days=7)) == {"recording"}
    assert expired(retention, ended, ended + timedelta(days=30)) == {"recording", "transcript"}
    assert expired(Retention(), ended, ended + timedelta(days=10_000)) == frozenset(), "unset keeps everything"


# The controller acting on the limits.
PCM_100MS = b"\x10\x00" * 2400


QUIET_MEDIA_IS_FINE = CallTimings(media_timeout_s=1e9)
"""These tests send no caller audio: the media stream's own timeout is not what they pin down."""


def live(clock: ManualClock, profile: CallProfile) -> CallController:
    controller = CallController(profile, clock, QUIET_MEDIA_IS_FINE)
    controller.start()
    controller.handle(RealtimeConnected())
    controller.handle(SessionConfigured())
    controller.handle(StreamStarted(stream_sid="MZ1", call_sid="CA1"))
    return controller


def say(controller: CallController, response_id: str, usage: TokenUsage | None = None) -> list[str]:
    """The model says 500 ms in `response_id`; the mark names sent."""
    controller.handle(ResponseStarted(response_id))
    names = []
    for _ in range(5):
        names += [a.name for a in controller.handle(ModelAudio(response_id, f"item-{response_id}", PCM_100MS))
                  if isinstance(a, SendTwilioMark)]
    names += [a.name for a in controller.handle(ModelAudioDone(f"item-{response_id}")) if isinstance(a, SendTwilioMark)]
    controller.handle(ResponseDone(response_id, "completed", usage))
    return names


def test_the_time_limit_asks_for_a_goodbye_and_hangs_up_only_once_it_has_played() -> None:
    clock = ManualClock(0.0)
    controller = live(clock, CallProfile(max_call_minutes=2))
    clock.now = 60.0
    assert AddNote(WRAP_UP_NOTE) in controller.handle(Tick())
    clock.now = 120.0
    [goodbye] = controller.handle(Tick())
    assert isinstance(goodbye, CreateResponse) and goodbye.instructions is not None
    assert goodbye.instructions.endswith(GOODBYES["max_call_minutes"])
    assert goodbye.instructions.startswith(CallProfile().instructions), "the persona says it"
    names = say(controller, "bye")
    assert controller.handle(Tick()) == [], "the goodbye has not played yet"
    for name in names[:-1]:
        assert controller.handle(MarkEchoed(name)) == []
    assert controller.handle(MarkEchoed(names[-1])) == [HangUp("max_call_minutes reached")]
    assert controller.handle(StreamStopped()) == [CloseRealtime("max_call_minutes reached")]
    assert (controller.outcome, controller.end_reason) == ("policy_ended", "max_call_minutes reached")


def test_a_caller_who_speaks_over_a_limits_goodbye_hears_the_answer_in_full_then_the_line_drops() -> None:
    clock = ManualClock(0.0)
    controller = live(clock, CallProfile(max_call_minutes=1))
    clock.now = 60.0
    controller.handle(Tick())
    controller.handle(ResponseStarted("bye"))
    controller.handle(ModelAudio("bye", "item-bye", PCM_100MS))
    controller.handle(SpeechStarted())
    controller.handle(ResponseDone("bye", "cancelled"))
    controller.handle(SpeechStopped())
    assert controller.handle(Tick()) == [], "not hung up on a cut goodbye"
    names = say(controller, "answer")
    actions = [action for name in names for action in controller.handle(MarkEchoed(name))]
    assert actions == [HangUp("max_call_minutes reached")]


def test_silence_gets_one_presence_check_then_a_goodbye() -> None:
    clock = ManualClock(0.0)
    controller = live(clock, CallProfile(silence_hangup_seconds=5))
    clock.now = 5.0
    [check] = controller.handle(Tick())
    assert isinstance(check, CreateResponse) and check.instructions is not None
    assert check.instructions.endswith(PRESENCE_CHECK)
    for name in say(controller, "check"):
        controller.handle(MarkEchoed(name))
    clock.now = 9.9
    assert controller.handle(Tick()) == []
    clock.now = 10.6
    [goodbye] = controller.handle(Tick())
    assert isinstance(goodbye, CreateResponse) and goodbye.instructions is not None
    assert goodbye.instructions.endswith(GOODBYES["silence_hangup_seconds"])


def test_a_key_pressed_counts_as_the_caller_answering_a_presence_check() -> None:
    clock = ManualClock(0.0)
    controller = live(clock, CallProfile(silence_hangup_seconds=5))
    clock.now = 5.0
    controller.handle(Tick())
    for name in say(controller, "check"):
        controller.handle(MarkEchoed(name))
    clock.now = 8.0
    controller.handle(DigitPressed("1"))
    clock.now = 10.6
    assert controller.handle(Tick()) == [], "the caller is there: no goodbye"
    assert controller.limits.stage is Stage.TALKING


def test_usage_adds_up_over_responses_and_the_cost_cap_asks_for_a_goodbye() -> None:
    clock = ManualClock(0.0)
    prices = ModelPrices(audio_in=100_000, audio_out=100_000, text_in=0, text_out=0)
    controller = CallController(CallProfile(max_cost_per_call=1.0), clock, QUIET_MEDIA_IS_FINE, prices=prices)
    controller.start()
    controller.handle(RealtimeConnected())
    controller.handle(SessionConfigured())
    controller.handle(StreamStarted(stream_sid="MZ1", call_sid="CA1"))
    for name in say(controller, "r1", TokenUsage(audio_in=4, audio_out=4)):
        controller.handle(MarkEchoed(name))
    assert controller.cost == pytest.approx(0.8)
    assert controller.handle(Tick()) == []
    for name in say(controller, "r2", TokenUsage(audio_in=1, audio_out=1)):
        controller.handle(MarkEchoed(name))
    assert controller.usage == TokenUsage(audio_in=5, audio_out=5)
    [goodbye] = controller.handle(Tick())
    assert isinstance(goodbye, CreateResponse) and goodbye.instructions is not None
    assert goodbye.instructions.endswith(GOODBYES["max_cost_per_call"])
    summary = controller.summarise(call_sid="CA1", called_number="+1", caller_number="", model="m", dialect="ga",
                                   duration_s=1.0)
    assert summary.usage == TokenUsage(audio_in=5, audio_out=5) and summary.cost == pytest.approx(1.0)


def test_check_refuses_a_cost_cap_without_prices_for_the_model(tmp_path: Path) -> None:
    env = {"PUBLIC_URL": "https://bridge.example.com", "TWILIO_AUTH_TOKEN": "t", "OPENAI_API_KEY": "k",
           "REALTIME_MODEL": "gpt-realtime"}
    path = tmp_path / "bridge.toml"
    path.write_text(f'[numbers."{NUMBER}"]\nmax_cost_per_call = 1.5\n')
    [problem] = check(env, path).errors
    assert str(problem) == (f'{path}: numbers."{NUMBER}".max_cost_per_call: needs [prices."gpt-realtime"] (the model calls '
                            "use): without prices a call's cost is unknown, so the cap would never end a call")
    path.write_text(f'[numbers."{NUMBER}"]\nmax_cost_per_call = 1.5\n'
                    '[prices."gpt-realtime"]\naudio_in = 32\naudio_out = 64\ntext_in = 4\ntext_out = 16\n')
    assert check(env, path).errors == ()
