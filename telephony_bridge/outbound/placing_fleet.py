"""Outbound calls in a fleet: the stream of a call, and its callbacks, may reach any instance behind the balancer.

The instance that places a call records, before the create request, who placed it and what was asked (a claim of
kind "outbound" on the call's outbound id). The instance the stream reaches reads it, builds the call's profile
from the same request and carries the call; it tells the placer, which forwards the AMD and status callbacks
that reach it (or reach a third instance, which asks the placer) to the carrier. The outcome is reported where
the call was carried, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from telephony_bridge.store.base import Store

SHARE_LIFETIME_S = 24 * 3600.0
"""Longer than any call: a late status callback still finds the placer."""
REQUEST_TIMEOUT_S = 3.0
"""How long an instance waits for another's answer (a NOTIFY round trip is a few milliseconds)."""


@dataclass(frozen=True)
class Shared:
    """What the placer recorded: itself, and the request's fields (the carrier builds the same profile from them)."""

    instance: str
    from_number: str
    to_number: str
    context: Mapping[str, str]
    campaign_row: str | None


async def share(store: Store, outbound_id: str, shared: Shared) -> None:
    """Record who placed `outbound_id` and what was asked; raises `StoreUnavailable`."""
    value = orjson.dumps({"instance": shared.instance, "from": shared.from_number, "to": shared.to_number,
                          "context": dict(shared.context), "campaign_row": shared.campaign_row}).decode()
    await store.claim("outbound", outbound_id, value, SHARE_LIFETIME_S)


async def placer_of(store: Store, outbound_id: str) -> Shared | None:
    """The instance that placed `outbound_id` and its request; `None` if no instance of the fleet did."""
    value = await store.claim_value("outbound", outbound_id)
    if not value:
        return None
    try:
        shared = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return Shared(str(shared["instance"]), str(shared["from"]), str(shared["to"]),
                  {str(key): str(text) for key, text in shared["context"].items()}, shared.get("campaign_row"))
