"""A Realtime service that fails in hostile ways, over real sockets: what the caller gets, and how many sessions it costs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from websockets.asyncio.server import ServerConnection, serve

from support import bridge_for, new_call, place_call
from telephony_bridge.realtime.session import RealtimeEventParser
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator
from telephony_bridge.testing.twilio_simulator import speech_like_ulaw

Behaviour = Callable[[ServerConnection], Awaitable[None]]


async def close_1011(ws: ServerConnection) -> None:
    await ws.close(1011, "internal error")


async def quota_then_close(ws: ServerConnection) -> None:
    await ws.send(json.dumps({"type": "error", "error": {"type": "insufficient_quota", "code": "insufficient_quota",
                                                         "message": "You exceeded your current quota."}}))
    await ws.close(1000)


async def too_big_after_update(ws: ServerConnection) -> None:
    await ws.send(json.dumps({"type": "session.created", "session": {}}))
    await ws.recv()
    await ws.close(1009, "message too big")


class FlappingService:
    """Accepts every handshake, then fails as `behaviour` says; counts the sessions it was asked for."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.opened = 0
        self.url = ""

    async def __aenter__(self) -> FlappingService:
        async def handle(ws: ServerConnection) -> None:
            self.opened += 1
            await self.behaviour(ws)

        self._server = await serve(handle, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1/realtime"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture(params=[close_1011, quota_then_close, too_big_after_update], ids=["1011", "quota", "1009"])
async def flapping(request: pytest.FixtureRequest) -> AsyncIterator[FlappingService]:
    async with FlappingService(request.param) as service:
        yield service


async def test_a_service_that_drops_every_session_costs_a_few_tries_then_the_caller_hears_the_fallback(
    flapping: FlappingService,
) -> None:
    async with bridge_for(None, url=flapping.url) as bridge:
        call = new_call(bridge)
        dialled_at = asyncio.get_running_loop().time()
        await call.dial()
        await call.connect()
        closed_at = await call.wait_closed_by_bridge(timeout=6)
        assert closed_at is not None, "the caller was left in silence"
        assert closed_at - dialled_at < 3.5
        opened_by_then = flapping.opened
        await asyncio.sleep(1.0)
    assert 1 <= opened_by_then <= 5
    assert flapping.opened == opened_by_then, "sessions were opened after the call fell back"


async def test_a_refused_voice_is_left_out_and_the_persona_still_reaches_the_model(realtime: RealtimeSimulator) -> None:
    """The 2024-10-01 preview knows no `marin`: the service refuses the whole update, instructions and all."""
    extra = '\n[numbers."+15005550111"]\ninstructions = "You are the night desk of Hotel Aurora."\nvoice = "marin"\n'
    async with bridge_for(realtime, url=realtime.preview_url, dialect="preview", extra_config=extra) as bridge:
        call, session = await place_call(bridge, realtime, to_number="+15005550111")
        refused = await session.wait_for("error", sent=True)
        assert "voice" in (refused["error"].get("param") or "")
        updated = await session.wait_for("session.updated", sent=True)
        assert updated["session"]["instructions"] == "You are the night desk of Hotel Aurora."
        assert updated["session"]["voice"] != "marin"
        first_append = await session.wait_for("input_audio_buffer.append")
        assert session.received.index(first_append) > next(
            i for i, e in enumerate(session.received) if e["type"] == "session.update" and "voice" not in json.dumps(e)
        ), "caller audio reached the model before its configuration was confirmed"
        await call.hang_up()


async def test_a_bridge_failure_inside_a_call_ends_it_loudly_with_the_fallback(
    realtime: RealtimeSimulator, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever kills a call's reader (here a parser with a bug) ends that call visibly, never silently."""

    def broken(self: RealtimeEventParser, frame: str | bytes) -> None:
        raise RuntimeError("a bug")

    async with bridge_for(realtime) as bridge:
        call, session = await place_call(bridge, realtime)
        monkeypatch.setattr(RealtimeEventParser, "read", broken)
        call.say(speech_like_ulaw(700))
        closed_at = await call.wait_closed_by_bridge(timeout=8)
    assert closed_at is not None, "the call hung on in silence"
    assert any(r.levelname == "ERROR" and "failed; ending the call" in r.getMessage() for r in caplog.records)


async def test_an_oversized_event_ends_only_that_session_and_the_call_goes_on_with_a_new_one(
    realtime: RealtimeSimulator,
) -> None:
    async with bridge_for(realtime) as bridge:
        call, session = await place_call(bridge, realtime)
        await session.send_raw(json.dumps({"type": "response.output_audio.delta", "response_id": "r", "item_id": "i",
                                           "delta": "A" * (10 * 1024 * 1024)}))
        replacement = await realtime.wait_for_session(1, timeout=5)
        await replacement.wait_for("session.update")
        assert call.closed_at is None
        await call.hang_up()
