"""The log throttle: the first occurrences of a flood are logged, then one in a hundred."""

from __future__ import annotations

from telephony_bridge.logs import LogThrottle


def test_the_first_ten_are_logged_then_every_hundredth() -> None:
    throttle = LogThrottle()
    logged = [n for n in range(1, 3001) if throttle()]
    assert logged == [*range(1, 11), *range(100, 3001, 100)]
    assert throttle.seen == 3000


def test_the_limits_are_the_callers_to_choose() -> None:
    throttle = LogThrottle(first=2, every=5)
    assert [throttle() for _ in range(10)] == [True, True, False, False, True, False, False, False, False, True]
