"""What the routes do differently in a fleet: answer a CallSid once across instances, and reach a call's owner.

The webhook answers without opening the Realtime session early: behind a balancer without affinity the
stream lands on another instance most of the time (two times in three with three instances), where that
early session would be wasted (docs/scaling.md has the measurement). The instance the stream reaches
opens the session and owns the call.

Twilio's retry of a webhook it got no answer to carries the first one's `I-Twilio-Idempotency-Token`; it
gets the first answer again, whichever instance it reaches, until that answer's stream is claimed. The
answer is kept in the claim's value for that.
"""

from __future__ import annotations

import asyncio

import orjson

from telephony_bridge.store.base import Store

ANSWER_LIFETIME_S = 24 * 3600.0
"""How long a CallSid stays answered: longer than any call, so a replay of its webhook finds the claim."""
ENDING_WAIT_S = 1.5
"""How long `<Connect action>` on another instance waits for the owner's record of how the call ended."""


async def answer_once(store: Store, call_sid: str, twiml: str, idempotency_token: str | None,
                      stream_id: str | None, *, caller: str = "", account_sid: str = "") -> str | None:
    """The TwiML to send for this webhook: `twiml` if it is the CallSid's first, the first answer again to
    Twilio's retry of it, `None` (refuse it) for any other second webhook. Raises `StoreUnavailable`."""
    value = orjson.dumps({"twiml": twiml, "idempotency_token": idempotency_token, "stream_id": stream_id,
                          "from": caller, "account_sid": account_sid}).decode()
    first = await store.claim("answer", call_sid, value, ANSWER_LIFETIME_S)
    if first is None:
        return twiml
    try:
        answered = orjson.loads(first)
    except orjson.JSONDecodeError:
        return None
    if idempotency_token is None or answered.get("idempotency_token") != idempotency_token:
        return None
    first_stream = answered.get("stream_id")
    if first_stream is not None and await store.claimed("stream", first_stream):
        return None
    return str(answered.get("twiml", "")) or None


async def answered_call(store: Store, call_sid: str) -> tuple[str, str]:
    """The caller's number and the AccountSid the webhook of a call brought (the stream's `start` carries neither)."""
    value = await store.claim_value("answer", call_sid)
    try:
        answered = orjson.loads(value) if value else {}
    except orjson.JSONDecodeError:
        answered = {}
    return str(answered.get("from") or ""), str(answered.get("account_sid") or "")


async def ending(store: Store, call_sid: str) -> str | None:
    """How a call carried by another instance ended (`None` if its record has not come in time)."""
    deadline = asyncio.get_running_loop().time() + ENDING_WAIT_S
    while True:
        outcome = await store.ended_outcome(call_sid)
        if outcome is not None or asyncio.get_running_loop().time() >= deadline:
            return outcome
        await asyncio.sleep(0.1)
