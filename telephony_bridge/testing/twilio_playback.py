"""Twilio's side of the audio a bridge sends down a Media Stream, as a plain object with no I/O.

Twilio buffers outbound ``media`` and plays it in order, in real time, from the moment it
arrives or from the end of what is queued before it. A ``mark`` comes back once all audio sent
before it has played; ``clear`` drops what has not played yet and sends back every pending mark
at once, so a mark echoed after a clear means "flushed", not "played".

Every input carries the time it happened (seconds on any monotonic clock) and returns the mark
echoes Twilio sends by then, in order; ``next_mark_at`` says when the next one falls due, so an
I/O layer knows when to call ``advance``. The simulated call, the load benchmark's Twilio leg and
the replay's scripted Twilio are adapters over this one model.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from telephony_bridge.wire import ULAW_RATE_HZ, ULAW_SILENCE, ulaw_ms

__all__ = ["MarkEcho", "Played", "TwilioPlayback"]


@dataclass(frozen=True)
class MarkEcho:
    """A mark Twilio sends back: at `at`, after its audio played, or flushed by a clear (`played` False)."""

    at: float
    name: str
    played: bool


@dataclass(frozen=True)
class Played:
    """A run of queued audio that started playing at `start`: `n_bytes` of mu-law, the whole run unless cut."""

    start: float
    n_bytes: int


class TwilioPlayback:
    """The outbound buffer of one stream: a playhead over queued mu-law audio, and the marks between it.

    ``media`` takes the audio, or only its length where the content does not matter (a load
    generator need not decode it). ``heard`` and ``played`` report what the caller heard by a
    given time; audio given as a length is heard as silence.
    """

    def __init__(self) -> None:
        self._runs: list[tuple[float, int, bytes | None]] = []
        self._end = float("-inf")
        self._pending: deque[tuple[float, str]] = deque()
        self._now = float("-inf")
        self.echoes: list[MarkEcho] = []
        """Every mark echoed so far, in order."""
        self.clears: list[tuple[float, int]] = []
        """``(t, bytes_dropped)`` for every clear."""

    def media(self, now: float, audio: bytes | int) -> list[MarkEcho]:
        """Queue audio behind what is still playing; returns the echoes due by `now`."""
        echoes = self.advance(now)
        n_bytes = audio if isinstance(audio, int) else len(audio)
        if n_bytes:
            start = max(self._now, self._end)
            self._runs.append((start, n_bytes, None if isinstance(audio, int) else bytes(audio)))
            self._end = start + n_bytes / ULAW_RATE_HZ
        return echoes

    def mark(self, now: float, name: str) -> list[MarkEcho]:
        """A mark behind the queued audio; it comes straight back when nothing is left to play."""
        echoes = self.advance(now)
        self._pending.append((max(self._end, self._now), name))
        return echoes + self.advance(now)

    def clear(self, now: float) -> list[MarkEcho]:
        """Drop the audio not yet played and flush every pending mark."""
        echoes = self.advance(now)
        dropped = 0
        while self._runs and self._runs[-1][0] + self._runs[-1][1] / ULAW_RATE_HZ > self._now:
            start, n_bytes, audio = self._runs.pop()
            kept = self._bytes_played(start, n_bytes, self._now)
            dropped += n_bytes - kept
            if kept:
                self._runs.append((start, kept, None if audio is None else audio[:kept]))
                break
        self._end = min(self._end, self._now)
        self.clears.append((self._now, dropped))
        while self._pending:
            echoes.append(self._echo(self._pending.popleft()[1], played=False))
        return echoes

    def advance(self, now: float) -> list[MarkEcho]:
        """Time passes: the marks whose audio has played by `now`, echoed at the moment it finished."""
        self._now = max(self._now, now)
        echoes = []
        while self._pending and self._pending[0][0] <= self._now:
            due, name = self._pending.popleft()
            echoes.append(self._echo(name, played=True, at=due))
        return echoes

    @property
    def queued_until(self) -> float:
        """When the audio queued so far will have played (minus infinity before any)."""
        return self._end

    def next_mark_at(self) -> float | None:
        """When the oldest pending mark's audio will have played, if one is pending."""
        return self._pending[0][0] if self._pending else None

    @property
    def pending_marks(self) -> list[str]:
        """Names of the marks not echoed yet, oldest first."""
        return [name for _, name in self._pending]

    def playing(self, at: float) -> bool:
        """Whether queued audio is playing at `at`."""
        return any(start <= at and self._bytes_played(start, n_bytes, at) < n_bytes for start, n_bytes, _ in self._runs)

    def played(self, at: float) -> list[Played]:
        """The runs of audio heard by `at`, in order, each as long as heard."""
        runs = []
        for start, n_bytes, _ in self._runs:
            heard = self._bytes_played(start, n_bytes, at)
            if heard:
                runs.append(Played(start, heard))
        return runs

    def heard(self, at: float) -> bytes:
        """The audio the caller heard by `at`."""
        pieces = []
        for start, n_bytes, audio in self._runs:
            heard = self._bytes_played(start, n_bytes, at)
            if heard:
                pieces.append(audio[:heard] if audio is not None else bytes([ULAW_SILENCE]) * heard)
        return b"".join(pieces)

    def heard_ms(self, at: float) -> float:
        """Milliseconds of audio the caller heard by `at`."""
        return ulaw_ms(sum(run.n_bytes for run in self.played(at)))

    def _echo(self, name: str, *, played: bool, at: float | None = None) -> MarkEcho:
        echo = MarkEcho(self._now if at is None else at, name, played)
        self.echoes.append(echo)
        return echo

    @staticmethod
    def _bytes_played(start: float, n_bytes: int, at: float) -> int:
        # A microsecond of slack so that a run's own end time counts it as played in full.
        return min(n_bytes, max(0, int((at - start) * ULAW_RATE_HZ + 1e-3)))
