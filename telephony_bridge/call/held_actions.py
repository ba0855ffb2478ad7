"""Messages decided before their socket is ready, held and released in order when it is.

Twilio's stream attaches a moment after the webhook answers, and a Realtime session may be opening
or replacing a lost one: what the controller decides meanwhile must reach each socket in the order
it was decided. Caller audio held for the service is bounded; the oldest goes first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from telephony_bridge.call.events import Action, AppendAudio, TruncateItem
from telephony_bridge.wire import pcm24k_ms

MAX_HELD_CALLER_AUDIO_MS = 5000
"""Caller audio that arrives before the Realtime socket opens is held, up to this much, then the oldest is dropped."""


class HeldActions:
    def __init__(self, audio_ms: Callable[[int], float] = pcm24k_ms) -> None:
        """`audio_ms`: milliseconds in n bytes of the audio sent to the service (PCM16 24 kHz, or mu-law)."""
        self._audio_ms = audio_ms
        self._for_twilio: list[Action] = []
        self._for_realtime: deque[Action] = deque()
        self._caller_ms = 0.0

    def hold_for_twilio(self, action: Action) -> None:
        self._for_twilio.append(action)

    def hold_for_realtime(self, action: Action) -> None:
        self._for_realtime.append(action)
        if isinstance(action, AppendAudio):
            self._caller_ms += self._audio_ms(len(action.pcm))
            while self._caller_ms > MAX_HELD_CALLER_AUDIO_MS:
                oldest = next(a for a in self._for_realtime if isinstance(a, AppendAudio))
                self._for_realtime.remove(oldest)
                self._caller_ms -= self._audio_ms(len(oldest.pcm))

    def release_for_twilio(self) -> list[Action]:
        released, self._for_twilio = self._for_twilio, []
        return released

    def release_for_realtime(self) -> list[Action]:
        """Everything held for the service but truncates: a held truncate names an item of a session now gone."""
        released = [a for a in self._for_realtime if not isinstance(a, TruncateItem)]
        self._for_realtime.clear()
        self._caller_ms = 0.0
        return released
