"""An operator ends a live call (`POST /admin/calls/{sid}/end`, `telephony-bridge calls end`): a goodbye, not the fallback.

The real bridge on loopback, its REST requests going to the Twilio REST stand-in, which acts on the simulated call
as Twilio would: the call's TwiML is replaced, its stream gets `stop`, and the new TwiML is followed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from support import AUTH_TOKEN, bridge_for, new_call
from telephony_bridge.admin.api import OPERATOR_GOODBYE
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator
from telephony_bridge.testing.twilio_api import TwilioApiSimulator
from telephony_bridge.testing.twilio_simulator import SimulatedCall

ADMIN_TOKEN = "admin-token-for-tests"


@dataclass
class Line:
    bridge: str
    api: TwilioApiSimulator
    admin: httpx.AsyncClient


@asynccontextmanager
async def line(realtime: RealtimeSimulator) -> AsyncIterator[Line]:
    async with TwilioApiSimulator(auth_token=AUTH_TOKEN) as api:
        env = {"TWILIO_API_URL": api.url, "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN}
        async with bridge_for(realtime, env=env) as bridge:
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with httpx.AsyncClient(base_url=bridge, headers=headers, timeout=30) as admin:
                yield Line(bridge, api, admin)


async def a_live_call(line: Line, realtime: RealtimeSimulator) -> SimulatedCall:
    """A call following the webhook's TwiML, as Twilio would, with its stream open and its session configured."""
    call = new_call(line.bridge)
    line.api.register(call)
    await call.run()
    await call.wait_for_step("stream-opened")
    await realtime.wait_for_session(0)
    return call


async def test_ending_a_call_says_the_goodbye_hangs_up_and_counts_as_ended_by_the_operator(
    realtime: RealtimeSimulator,
) -> None:
    async with line(realtime) as ln:
        call = await a_live_call(ln, realtime)
        response = await ln.admin.post(f"/admin/calls/{call.call_sid}/end")
        assert response.status_code == 200, response.text
        assert response.json()["outcome"] == "operator_ended" and response.json()["ended"] is True
        await call.wait_over()
        assert call.spoken == [OPERATOR_GOODBYE], "the caller hears the goodbye, not the fallback message"
        [request] = ln.api.requests_to(f"/Calls/{call.call_sid}.json")
        assert request.params["Twiml"].endswith(f"<Say>{OPERATOR_GOODBYE}</Say><Hangup /></Response>")
        assert (await ln.admin.get("/admin/calls/live")).json()["calls"] == []


async def test_an_unknown_or_finished_call_is_404(realtime: RealtimeSimulator) -> None:
    async with line(realtime) as ln:
        assert (await ln.admin.post("/admin/calls/CA0000/end")).status_code == 404
        call = await a_live_call(ln, realtime)
        await call.hang_up()
        await asyncio.sleep(0.2)
        response = await ln.admin.post(f"/admin/calls/{call.call_sid}/end")
        assert response.status_code == 404 and "no live call" in response.json()["detail"]
        assert ln.api.requests == []


@pytest.mark.parametrize("body", ['{"goodbye": ""}', '{"goodbye": 3}', "not json", '["a list"]'])
async def test_a_goodbye_that_is_not_a_sentence_is_refused_before_anything_is_done(
    realtime: RealtimeSimulator, body: str
) -> None:
    async with line(realtime) as ln:
        call = await a_live_call(ln, realtime)
        response = await ln.admin.post(f"/admin/calls/{call.call_sid}/end", content=body)
        assert response.status_code == 422
        assert ln.api.requests == [] and not call.over
        await call.hang_up()


async def test_when_twilio_refuses_the_goodbye_the_call_still_ends_without_the_fallback_message(
    realtime: RealtimeSimulator,
) -> None:
    async with line(realtime) as ln:
        call = await a_live_call(ln, realtime)
        ln.api.fail_next(400, 21220)
        response = await ln.admin.post(f"/admin/calls/{call.call_sid}/end")
        assert response.status_code == 200
        body = response.json()
        assert body["outcome"] == "operator_ended" and "the REST goodbye failed" in body["end_reason"]
        await call.wait_over()
        assert call.spoken == [], "the stream's <Connect action> hangs up: the operator ended the call"


async def test_calls_end_command_ends_the_call_with_its_own_goodbye(realtime: RealtimeSimulator, tmp_path: Path) -> None:
    async with line(realtime) as ln:
        call = await a_live_call(ln, realtime)
        # The bridge runs on this event loop: the command must run beside it, not block it.
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "telephony_bridge", "calls", "end", call.call_sid, "--url", ln.bridge,
            "--goodbye", "Our office is closing now. Goodbye!",
            env={**os.environ, "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN}, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, err.decode()
        assert f"ended call {call.call_sid}" in out.decode() and "operator_ended" in out.decode()
        await call.wait_over()
        assert call.spoken == ["Our office is closing now. Goodbye!"]
        assert ADMIN_TOKEN not in out.decode() + err.decode()


async def test_calls_end_command_says_when_there_is_no_such_call(realtime: RealtimeSimulator, tmp_path: Path) -> None:
    async with line(realtime) as ln:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "telephony_bridge", "calls", "end", "CA404", "--url", ln.bridge,
            env={**os.environ, "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN}, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 1
        assert "no live call CA404 on this bridge" in err.decode()
