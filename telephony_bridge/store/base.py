"""The store's interface and its values, shared by the back ends and by the routes that use them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from telephony_bridge.call.summary import CallSummary
    from telephony_bridge.twilio.stream_errors import StreamError

ClaimKind = str
"""What a once-only key names: "answer" (a CallSid the webhook answered), "stream" (a stream token's id),
"transfer" (a transfer's id redeemed by its dial callback)."""

Request = dict[str, Any]
RequestHandler = Callable[[str, Request], Awaitable[Request]]
"""Runs one request another instance sent to this one (`op`, its arguments) and returns the reply."""
LiveHandler = Callable[[Request], None]
"""Takes a live call's change another instance published (`admin.live_feed.fleet_change` makes one)."""


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
    """What the routes need from the fleet's shared state (`PostgresStore`); every method stays off the audio path.

    On one machine (no `DATABASE_URL`) there is no store: the switchboard's own sets are the claims and
    `call_log.CallLog` the log, as before the fleet.
    """

    instance: str

    @property
    def available(self) -> bool:
        """Whether the database answered its last probe: while it does not, new calls are refused."""
        ...

    async def claim(self, kind: ClaimKind, key: str, value: str, ttl_s: float) -> str | None:
        """Take `key` once for `ttl_s`: `None` when this call took it, else the value of the claim that did."""
        ...

    async def claimed(self, kind: ClaimKind, key: str) -> bool: ...

    async def claim_value(self, kind: ClaimKind, key: str) -> str | None: ...

    def call_started(self, call_sid: str, number: str, caller: str) -> None:
        """Queue the call's entry in the live-call registry; never blocks."""
        ...

    def call_ended(self, summary: CallSummary) -> None:
        """Queue the call's record for the log (and its exit from the registry); never blocks."""
        ...

    def stream_error(self, error: StreamError) -> None: ...

    async def owner_of(self, call_sid: str) -> str | None:
        """The instance that carries a live call, `None` if no instance does."""
        ...

    async def live_calls(self) -> list[LiveCall]: ...

    async def ended_outcome(self, call_sid: str) -> str | None: ...

    def on_request(self, handler: RequestHandler) -> None:
        """Run `handler` for each request another instance sends this one."""
        ...

    def on_live(self, handler: LiveHandler) -> None:
        """Run `handler` for each live call's change another instance publishes."""
        ...

    def publish_live(self, change: Request) -> None:
        """Tell the other instances a live call's change; never blocks."""
        ...

    async def ask(self, instance: str, op: str, args: Request, timeout_s: float) -> Request | None:
        """Send a request to `instance` and wait for its reply; `None` if none came in `timeout_s`."""
        ...
