"""The store's interface and its values, shared by the back ends and by the routes that use them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

ClaimKind = str
"""What a once-only key names: "answer" (a CallSid the webhook answered), "stream" (a stream token's id),
"transfer" (a transfer's id redeemed by its dial callback)."""

Request = dict[str, Any]
RequestHandler = Callable[[str, Request], Awaitable[Request]]
"""Runs one request another instance sent to this one (`op`, its arguments) and returns the reply."""


class StoreUnavailable(Exception):
    """The database did not answer: the request cannot keep its once-only promise and is refused."""


@dataclass(frozen=True)
class LiveCall:
    """A call in progress somewhere in the fleet, as the registry holds it."""

    call_sid: str
    instance: str
    number: str
    caller: str
    duration_s: float


class Store(Protocol):
    """What the routes need from the fleet's shared state; every method stays off the audio path."""

    instance: str

    @property
    def available(self) -> bool:
        """Whether the database answered its last probe: while it does not, new calls are refused."""
        ...

    async def claim(self, kind: ClaimKind, key: str, value: str, ttl_s: float) -> str | None:
        """Take `key` once for `ttl_s`: `None` when this call took it, else the value of the claim that did."""
        ...

    async def owner_of(self, call_sid: str) -> str | None:
        """The instance that carries a live call, `None` if no instance does."""
        ...

    async def live_calls(self) -> list[LiveCall]: ...

    async def ask(self, instance: str, op: str, args: Request, timeout_s: float) -> Request | None:
        """Send a request to `instance` and wait for its reply; `None` if none came in `timeout_s`."""
        ...
