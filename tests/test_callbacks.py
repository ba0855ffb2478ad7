"""What Twilio is told to play after a call's stream, by why the stream ended."""

from __future__ import annotations

import pytest

from telephony_bridge.call.events import Outcome
from telephony_bridge.config import CallProfile
from telephony_bridge.twilio import callbacks

PROFILE = CallProfile(fallback_message="The model is away.")


class Endings:
    """A switchboard's record of how its calls ended, for the one question `after_stream` asks."""

    def __init__(self, endings: dict[str, tuple[Outcome | None, CallProfile]]) -> None:
        self.endings = endings

    def ending(self, call_sid: str) -> tuple[Outcome | None, CallProfile] | None:
        return self.endings.get(call_sid)


@pytest.mark.parametrize(
    ("outcome", "said"),
    [
        ("agent_ended", None),
        ("caller_hung_up", None),
        ("media_timeout", None),
        ("transferred", None),
        ("realtime_unavailable", "The model is away."),
        ("bridge_error", "The model is away."),
        ("shut_down", "We have to close the line."),
    ],
)
def test_what_follows_the_stream_matches_why_it_ended(outcome: Outcome, said: str | None) -> None:
    twiml = callbacks.after_stream(Endings({"CA1": (outcome, PROFILE)}), "CA1", "We have to close the line.", "Sorry.")  # type: ignore[arg-type]
    if said is None:
        assert "<Hangup" in twiml and "<Say" not in twiml
    else:
        assert f"<Say>{said}</Say>" in twiml


def test_a_call_this_process_does_not_know_gets_the_fallback_message() -> None:
    twiml = callbacks.after_stream(Endings({}), "CA9", "Closing.", "Sorry, call back later.")  # type: ignore[arg-type]
    assert "<Say>Sorry, call back later.</Say>" in twiml
