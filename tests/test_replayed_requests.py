"""A captured, signed webhook replayed to the bridge: a CallSid is answered once.

Twilio's signatures carry no nonce, so a replayed webhook verifies. The bridge remembers each
CallSid it answered (until a stream token issued for it would have expired) and hangs up on a
second webhook for it, unless that is Twilio's own retry of a webhook whose answer was lost: the
same `I-Twilio-Idempotency-Token`, before the stream was claimed, gets the same TwiML, token and all.
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

import httpx
from test_operations import scrape, value
from twilio.request_validator import RequestValidator

from support import AUTH_TOKEN, PUBLIC_URL, TEST_CONFIG, new_call, place_call
from telephony_bridge.call.switchboard import Switchboard
from telephony_bridge.config import parse_config, settings_from_env
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator
from telephony_bridge.testing.twilio_simulator import SimulatedCall
from telephony_bridge.twilio.security import STREAM_TOKEN_LIFETIME_S, issue_stream_token, stream_id_of, stream_token_valid


async def replay_webhook(call: SimulatedCall, idempotency_token: str | None = None) -> str:
    """POST `call`'s webhook again, signed as Twilio signed it, with or without Twilio's idempotency header."""
    params = call.webhook_params
    headers = {"X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + "/twilio/voice", params)}
    if idempotency_token is not None:
        headers["I-Twilio-Idempotency-Token"] = idempotency_token
    async with httpx.AsyncClient() as client:
        response = await client.post(call.bridge_url + "/twilio/voice", data=params, headers=headers)
    assert response.status_code == 200
    return response.text


def verbs(twiml: str) -> list[str]:
    return [child.tag for child in ET.fromstring(twiml)]


async def refused(bridge: str) -> float:
    return value(await scrape(bridge), "telephony_bridge_webhooks_refused_total", reason="replayed")


async def test_a_webhook_replayed_after_the_call_ended_is_hung_up_without_a_session(
    bridge: str, realtime: RealtimeSimulator
) -> None:
    call, session = await place_call(bridge, realtime)
    await session.wait_for("session.update")
    await call.hang_up()
    await session.wait_closed()
    assert verbs(await replay_webhook(call)) == ["Hangup"]
    assert verbs(await replay_webhook(call, "another-idempotency-token")) == ["Hangup"]
    await asyncio.sleep(0.3)
    assert len(realtime.sessions) == 1
    assert await refused(bridge) == 2


async def test_a_webhook_replayed_before_the_stream_is_claimed_is_hung_up(bridge: str, realtime: RealtimeSimulator) -> None:
    call = new_call(bridge)
    first = await replay_webhook(call, "twilio-idempotency-1")
    assert verbs(await replay_webhook(call)) == ["Hangup"]
    assert verbs(await replay_webhook(call, "twilio-idempotency-2")) == ["Hangup"]
    await asyncio.sleep(0.3)
    assert len(realtime.sessions) == 1
    assert await refused(bridge) == 2
    assert verbs(first) == ["Connect"]


async def test_twilios_retry_gets_the_same_answer_and_still_one_session(bridge: str, realtime: RealtimeSimulator) -> None:
    call = new_call(bridge)
    first = await replay_webhook(call, "twilio-idempotency-1")
    retried = await replay_webhook(call, "twilio-idempotency-1")
    assert retried == first
    stream = ET.fromstring(retried).find("./Connect/Stream")
    assert stream is not None
    await call.connect(parameters={p.get("name", ""): p.get("value", "") for p in stream}, stream_url=stream.get("url"))
    session = await realtime.wait_for_session(0)
    await session.wait_for("session.update")
    assert verbs(await replay_webhook(call, "twilio-idempotency-1")) == ["Hangup"]
    await asyncio.sleep(0.3)
    assert len(realtime.sessions) == 1
    assert call.closed_at is None
    await call.hang_up()


async def test_the_token_of_an_answer_claims_one_stream_only(bridge: str, realtime: RealtimeSimulator) -> None:
    call, session = await place_call(bridge, realtime)
    await session.wait_for("session.update")
    copy = new_call(bridge)
    copy.call_sid = call.call_sid
    await copy.connect(parameters=call.parameters, stream_url=call.stream_url)
    assert await copy.wait_closed_by_bridge(timeout=2) is not None
    assert call.closed_at is None and len(realtime.sessions) == 1
    await call.hang_up()


def test_every_token_carries_a_fresh_stream_id_bound_into_its_mac() -> None:
    secret = b"s" * 32
    first, second = (issue_stream_token(secret, "CA1", "+1", now_s=1000) for _ in range(2))
    assert stream_id_of(first) and stream_id_of(first) != stream_id_of(second)
    expiry, _, mac = first.split(".")
    swapped = f"{expiry}.{stream_id_of(second)}.{mac}"
    assert stream_token_valid(secret, first, "CA1", "+1", now_s=1001)
    assert not stream_token_valid(secret, swapped, "CA1", "+1", now_s=1001)


def test_a_refusal_is_sent_again_to_twilios_retry_and_forgotten_after_a_token_lifetime() -> None:
    now = [0.0]
    settings = settings_from_env({"PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "OPENAI_API_KEY": "k"})
    switchboard = Switchboard(parse_config(TEST_CONFIG, "test.toml"), settings.realtime, lambda: now[0])
    switchboard.remember_answer("CA1", "<Response><Say>Busy</Say><Hangup/></Response>", "idem-1", None)
    assert switchboard.answered("CA1")
    assert switchboard.answer_again("CA1", "idem-1") == "<Response><Say>Busy</Say><Hangup/></Response>"
    assert switchboard.answer_again("CA1", None) is None
    assert switchboard.answer_again("CA1", "idem-2") is None
    now[0] = STREAM_TOKEN_LIFETIME_S - 1
    assert switchboard.answered("CA1")
    now[0] = STREAM_TOKEN_LIFETIME_S
    assert not switchboard.answered("CA1")
