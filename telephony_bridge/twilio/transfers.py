"""Transfers in flight: single-use ids the bridge issues when Twilio starts dialling for a call.

The `<Dial>` that transfers a caller names two of our routes by the transfer's id: the whisper,
which the person who answers hears (the model's summary), and the dial's `action`, which Twilio
requests once when the dialled leg ends. The id is redeemed by that one callback: a replayed
callback, signed or not, finds nothing. Ids are random (128 bits) and forgotten after
`TRANSFER_LIFETIME_S` if Twilio never calls back.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

TRANSFER_LIFETIME_S = 6 * 3600.0
"""A connected transfer calls back when the person hangs up: hours later, at the most."""

CallT = TypeVar("CallT")


@dataclass(frozen=True)
class PendingTransfer(Generic[CallT]):
    call: CallT
    target_name: str
    summary: str
    fallback: bool
    """A transfer made because the model could not be reached: a failed one ends the call, not back to the agent."""
    issued_at: float


class Transfers(Generic[CallT]):
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._pending: dict[str, PendingTransfer[CallT]] = {}

    def issue(self, call: CallT, target_name: str, summary: str, *, fallback: bool) -> str:
        self._forget_old()
        transfer_id = secrets.token_urlsafe(16)
        self._pending[transfer_id] = PendingTransfer(call, target_name, summary, fallback, self._clock())
        return transfer_id

    def whisper(self, transfer_id: str) -> str | None:
        """The summary for whoever answers; the transfer stays pending (the dial's outcome is still to come)."""
        pending = self._pending.get(transfer_id)
        return pending.summary if pending is not None else None

    def redeem(self, transfer_id: str) -> PendingTransfer[CallT] | None:
        """The transfer a dial callback reports on, once; `None` for an id unknown, redeemed or expired."""
        self._forget_old()
        return self._pending.pop(transfer_id, None)

    def cancel(self, transfer_id: str) -> None:
        self._pending.pop(transfer_id, None)

    def _forget_old(self) -> None:
        cutoff = self._clock() - TRANSFER_LIFETIME_S
        for transfer_id in [t for t, pending in self._pending.items() if pending.issued_at < cutoff]:
            del self._pending[transfer_id]
