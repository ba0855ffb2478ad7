"""A transfer nobody takes, in a fleet: the caller comes back on a new stream, which the balancer may send to another
instance than the one carrying the call. That instance refuses the stream once the owner has ended the call, so the
caller hears the number's fallback message instead of a fresh model that knows nothing of the call (docs/scaling.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import psycopg
import pytest

from fleet_servers import PostgresServer
from support import API_KEY, AUTH_TOKEN, CLINIC, bridge_for, new_call
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator, ScriptedAnswer, ScriptedCall, speech_like_pcm16
from telephony_bridge.testing.twilio_api import TwilioApiSimulator
from telephony_bridge.testing.twilio_simulator import Callee, SimulatedCall, speech_like_ulaw

pytestmark = pytest.mark.xdist_group("fleet")

DESK = "+15550009999"
TRANSFERS = f'\n[numbers."{CLINIC}".transfer]\nfront_desk = "{DESK}"\n'
TRANSFER = ScriptedAnswer(speech_like_pcm16(900), "Connecting you now.",
                          calls=(ScriptedCall("transfer_call", {"target": "front_desk", "summary": "Ada wants Tuesday."}),))


@asynccontextmanager
async def two_instances(database: str, realtime: RealtimeSimulator, api: TwilioApiSimulator) -> AsyncIterator[list[str]]:
    async with AsyncExitStack() as stack:
        urls = []
        for name in ("owner", "other"):
            env = {"DATABASE_URL": database, "STREAM_TOKEN_SECRET": "one-fleet", "BRIDGE_INSTANCE_ID": name,
                   "TWILIO_API_URL": api.url, "TWILIO_ACCOUNT_SID": api.account_sid}
            urls.append(await stack.enter_async_context(bridge_for(realtime, env=env, extra_config=TRANSFERS)))
        yield urls


async def test_a_caller_back_from_a_transfer_on_another_instance_hears_the_fallback_and_the_call_is_logged(
    postgres: PostgresServer,
) -> None:
    database = postgres.database("transfer_return")
    realtime = RealtimeSimulator(require_key=API_KEY, answers=(TRANSFER,), dialect=None)
    await realtime.start()
    try:
        async with TwilioApiSimulator(auth_token=AUTH_TOKEN) as api, two_instances(database, realtime, api) as urls:
            owner, other = urls
            api.callees[DESK] = Callee("busy", ring_s=0.3)
            call: SimulatedCall = new_call(owner)
            api.register(call)
            await call.run()
            session = await realtime.wait_for_session(0)
            await session.wait_for("session.updated", sent=True)
            call.say(speech_like_ulaw(600))
            await call.wait_for_step("dialling", timeout=15)
            call.bridge_url = other  # the balancer sends the dial's outcome and the returning stream elsewhere
            await call.wait_over(timeout=20)
            assert any("Sorry, please call back later." in text for text in call.spoken), call.spoken
            assert len(realtime.sessions) == 1, "no context-less session was opened for the returning caller"
            with psycopg.connect(database) as connection:
                for _ in range(50):
                    row = connection.execute("SELECT outcome, end_reason, transfer_target, transfer_connected FROM calls "
                                             "WHERE call_sid = %s", (call.call_sid,)).fetchone()
                    if row is not None:
                        break
                    await asyncio.sleep(0.1)
            assert row is not None and row[0] == "bridge_error" and "another instance" in row[1]
            assert row[2:] == ("front_desk", False)
    finally:
        await realtime.stop()
