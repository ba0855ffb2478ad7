"""A media socket that floods the bridge, before its start or during a call, over real sockets."""

from __future__ import annotations

import asyncio
import time

import httpx
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from support import AUTH_TOKEN, PUBLIC_URL, place_call
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator
from telephony_bridge.twilio.media_stream import FLOOD_SECONDS, TwilioInbound


def test_a_burst_is_capped_but_a_sustained_flood_is_flooding() -> None:
    now = [0.0]
    inbound = TwilioInbound(lambda: now[0])
    for _ in range(1500):
        inbound.parse('{"event":"junk"}')
    assert not inbound.flooding, "a burst of 1500 in one second is capped, not closed"
    for second in range(1, 3):
        now[0] = float(second)
        for _ in range(500):
            inbound.parse('{"event":"junk"}')
    assert inbound.flooding, "three seconds running over the cap"
    assert inbound.rejected == 2500, "every junk message is counted, capped or not"


async def flood(url: str, signature: str, seconds: float) -> tuple[int, float | None]:
    """Send junk as fast as the socket takes it; the count sent and when the bridge closed the socket."""
    sent, started = 0, time.monotonic()
    async with connect(url, additional_headers={"X-Twilio-Signature": signature}) as socket:
        try:
            while time.monotonic() - started < seconds:
                await socket.send('{"event":"junk"}')
                sent += 1
                if sent % 50 == 0:
                    await asyncio.sleep(0)
            await asyncio.wait_for(socket.recv(), 1.0)
        except (ConnectionClosed, TimeoutError):
            return sent, time.monotonic() - started if socket.close_code is not None else None
    return sent, None


async def test_a_flood_before_start_is_closed_and_a_live_call_beside_it_goes_on(
    bridge: str, realtime: RealtimeSimulator
) -> None:
    call, session = await place_call(bridge, realtime)
    media_url = bridge.replace("http://", "ws://") + "/twilio/media"
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL.replace("https://", "wss://") + "/twilio/media", {})
    before = session.input_audio_ms
    sent, closed_after = await flood(media_url, signature, seconds=4.0)
    # Closed within a second at over FLOOD_MESSAGES_PER_S; a loaded machine may flood slower, and over the cap for
    # FLOOD_SECONDS running is the rule that closes it then.
    assert closed_after is not None and closed_after < FLOOD_SECONDS + 0.5, f"the flooding socket was read on ({sent} messages)"
    await asyncio.sleep(0.5)
    assert session.input_audio_ms > before and call.closed_at is None, "the neighbouring call stalled or ended"
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(bridge + "/metrics")).text
    rejected = next(line for line in metrics.splitlines() if line.startswith("telephony_bridge_rejected_before_start_total"))
    assert float(rejected.split()[-1]) > 400
    await call.hang_up()


async def test_a_sustained_flood_inside_a_call_ends_that_call(bridge: str, realtime: RealtimeSimulator) -> None:
    call, session = await place_call(bridge, realtime)
    started = time.monotonic()
    while call.closed_at is None and time.monotonic() - started < 6:
        for _ in range(100):
            await call.send_raw('{"event":"junk"}')
        await asyncio.sleep(0.01)
    assert call.closed_at is not None, "a flood of 10,000 messages a second went on being read"
    assert time.monotonic() - started < 5
