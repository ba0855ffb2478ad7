"""The Twilio REST client against the REST stand-in, and the simulated call following the TwiML it is given.

Everything runs over real loopback sockets: the client speaks HTTP to `TwilioApiSimulator`, which acts on a
`SimulatedCall` whose media stream and signed callbacks go to a tiny Starlette app playing the bridge.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Dial, VoiceResponse

from telephony_bridge.config import settings_from_env
from telephony_bridge.errors import TwilioCallGone, TwilioRestError
from telephony_bridge.testing.twilio_api import TwilioApiSimulator
from telephony_bridge.testing.twilio_simulator import Callee, SimulatedCall
from telephony_bridge.twilio.rest import TwilioRest

TOKEN = "twilio-auth-token-never-to-be-logged"
API_KEY, API_SECRET = "SK" + "1" * 32, "api-secret-never-to-be-logged"
PUBLIC_URL = "https://bridge.example.com"
STREAM_URL = "wss://bridge.example.com/twilio/media"
AGENT = "+14155550199"
FALLBACK = "Sorry, please call again."
VALIDATOR = RequestValidator(TOKEN)


@dataclass
class BridgeSide:
    """Plays the bridge: serves the webhooks Twilio calls and the media stream, and records what came in."""

    connect_action: bool = False
    close_after_start: bool = False
    media: list[dict[str, Any]] = field(default_factory=list)
    posts: list[tuple[str, dict[str, str], bool]] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=lambda: {
        "/twilio/whisper": "<Response><Say>A caller from the assistant.</Say></Response>",
        "/twilio/dial-action": "<Response><Say>The agent has left.</Say><Hangup/></Response>",
        "/twilio/connect-action": "<Response><Say>Goodbye from the action.</Say></Response>",
    })

    def posted(self, path: str) -> list[tuple[dict[str, str], bool]]:
        """The form and whether its signature was valid, for each POST to `path`."""
        return [(params, valid) for p, params, valid in self.posts if p == path]

    async def voice(self, request: Request) -> Response:
        action = ' action="/twilio/connect-action"' if self.connect_action else ""
        twiml = (f'<Response><Connect{action}><Stream url="{STREAM_URL}"><Parameter name="token" value="t0k3n"/></Stream>'
                 f"</Connect><Say>{FALLBACK}</Say></Response>")
        return Response(twiml, media_type="text/xml")

    async def callback(self, request: Request) -> Response:
        params = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        signature = request.headers.get("x-twilio-signature", "")
        self.posts.append((request.url.path, params, VALIDATOR.validate(PUBLIC_URL + request.url.path, params, signature)))
        return Response(self.answers.get(request.url.path, "<Response/>"), media_type="text/xml")

    async def stream(self, ws: WebSocket) -> None:
        await ws.accept()
        try:
            while True:
                message = json.loads(await ws.receive_text())
                self.media.append(message)
                if message["event"] == "start" and self.close_after_start:
                    await ws.close()
                    return
                if message["event"] == "stop":
                    return
        except WebSocketDisconnect:
            pass

    def events(self) -> list[str]:
        return [m["event"] for m in self.media if m["event"] != "media"]


@asynccontextmanager
async def serve(side: BridgeSide) -> AsyncIterator[str]:
    routes = [Route("/twilio/voice", side.voice, methods=["POST"]), WebSocketRoute("/twilio/media", side.stream)]
    routes += [Route(path, side.callback, methods=["POST"]) for path in side.answers]
    config = uvicorn.Config(Starlette(routes=routes), host="127.0.0.1", port=0, lifespan="off", log_level="warning",
                            ws="websockets-sansio")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


@dataclass
class World:
    side: BridgeSide
    api: TwilioApiSimulator
    call: SimulatedCall
    rest: TwilioRest
    observed: list[tuple[str, dict[str, Any]]]


@asynccontextmanager
async def world(side: BridgeSide | None = None, *, token: str = TOKEN, **api_args: Any) -> AsyncIterator[World]:
    """A bridge side, the REST stand-in, a registered call placed on the bridge side, and a client for it."""
    side = side or BridgeSide()
    observed: list[tuple[str, dict[str, Any]]] = []
    async with serve(side) as bridge_url, TwilioApiSimulator(auth_token=TOKEN, **api_args) as api:
        call = SimulatedCall(bridge_url=bridge_url, public_url=PUBLIC_URL, auth_token=TOKEN)
        api.register(call)
        rest = TwilioRest(username=api.account_sid, password=token, base_url=api.url,
                          observe=lambda kind, details: observed.append((kind, details)))
        try:
            yield World(side, api, call, rest, observed)
        finally:
            await rest.aclose()
            await call.close()


async def streaming(w: World) -> None:
    """Follow the webhook's TwiML until the media stream is open."""
    await w.call.run()
    await w.call.wait_for_step("stream-opened")
    await asyncio.sleep(0.05)


def transfer(action: str = "/twilio/dial-action", timeout: int = 20) -> str:
    response = VoiceResponse()
    dial = Dial(action=PUBLIC_URL + action, timeout=timeout, caller_id="+14155550100")
    dial.number(AGENT, url=PUBLIC_URL + "/twilio/whisper")
    response.append(dial)
    return str(response)


# ---- the client


async def test_a_hang_up_stops_the_stream_and_ends_the_call() -> None:
    async with world() as w:
        await streaming(w)
        answer = await w.rest.update_call(w.api.account_sid, w.call.call_sid, status="completed")
        assert answer["status"] == "completed"
        assert w.side.events()[-1] == "stop"
        assert w.call.over
        assert w.call.steps("stream-ended") == [("stream-ended", "twilio")]
        assert w.call.steps("hung-up") == [("hung-up", "twilio")]
        assert FALLBACK not in w.call.spoken
        (request,) = w.api.requests
        assert (request.method, request.params, request.username) == ("POST", {"Status": "completed"}, w.api.account_sid)
        assert request.path == f"/2010-04-01/Accounts/{w.api.account_sid}/Calls/{w.call.call_sid}.json"


async def test_a_dial_update_stops_the_stream_whispers_to_the_agent_and_bridges() -> None:
    async with world() as w:
        await streaming(w)
        await w.rest.update_call(w.api.account_sid, w.call.call_sid, twiml=transfer())
        assert w.side.events()[-1] == "stop"
        await w.call.wait_for_step("bridged")
        assert w.call.bridged_to == AGENT
        assert w.call.whispers == [(AGENT, "A caller from the assistant.")]
        ((whisper, signed),) = w.side.posted("/twilio/whisper")
        assert signed
        assert (whisper["ParentCallSid"], whisper["To"], whisper["Direction"]) == (w.call.call_sid, AGENT, "outbound-dial")
        assert w.side.posted("/twilio/dial-action") == []

        w.call.callee_hangs_up()
        await w.call.wait_over()
        ((action, signed),) = w.side.posted("/twilio/dial-action")
        assert signed
        assert action["DialCallStatus"] == "completed"
        assert (action["CallSid"], action["AccountSid"]) == (w.call.call_sid, w.api.account_sid)
        assert w.call.spoken == ["The agent has left."]  # the old TwiML's fallback never ran
        assert [event for event, _ in w.call.steps()] == [
            "stream-opened", "redirected", "stream-ended", "dialling", "whisper", "bridged", "unbridged", "dial-ended",
            "say", "hung-up",
        ]


async def test_a_dial_that_fails_with_a_5xx_is_not_sent_again() -> None:
    async with world() as w:
        await streaming(w)
        w.api.fail_next(503)
        with pytest.raises(TwilioRestError) as failure:
            await w.rest.update_call(w.api.account_sid, w.call.call_sid, twiml=transfer())
        assert (failure.value.status, failure.value.code, failure.value.retryable) == (503, 20500, False)
        assert len(w.api.requests) == 1
        assert w.call.bridged_to is None and w.call.closed_at is None


async def test_a_hang_up_that_meets_5xx_is_retried_with_backoff() -> None:
    async with world() as w:
        await streaming(w)
        w.api.fail_next(503, times=2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await w.rest.update_call(w.api.account_sid, w.call.call_sid, status="completed")
        assert 0.7 <= loop.time() - started < 3.0
        assert [r.status for r in w.api.requests] == [503, 503, 200]
        assert w.call.over


async def test_429_is_retried_even_for_a_dial() -> None:
    async with world() as w:
        await streaming(w)
        w.api.fail_next(429)
        await w.rest.update_call(w.api.account_sid, w.call.call_sid, twiml=transfer())
        assert [r.status for r in w.api.requests] == [429, 200]
        await w.call.wait_for_step("bridged")


async def test_a_call_already_gone_is_20404_and_final() -> None:
    async with world() as w:
        await streaming(w)
        await w.call.hang_up()
        with pytest.raises(TwilioCallGone) as gone:
            await w.rest.update_call(w.api.account_sid, w.call.call_sid, status="completed")
        assert (gone.value.status, gone.value.code, gone.value.retryable) == (404, 20404, False)
        assert len(w.api.requests) == 1


async def test_wrong_credentials_are_401_and_final() -> None:
    async with world(token="not-the-token") as w:
        await streaming(w)
        with pytest.raises(TwilioRestError) as refused:
            await w.rest.update_call(w.api.account_sid, w.call.call_sid, status="completed")
        assert (refused.value.status, refused.value.code) == (401, 20003)
        assert [r.status for r in w.api.requests] == [401]
        assert not w.call.over


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_refused_connection_is_retried_then_given_up_within_the_bound() -> None:
    observed: list[tuple[str, dict[str, Any]]] = []
    rest = TwilioRest(username="AC" + "0" * 32, password=TOKEN, base_url=f"http://127.0.0.1:{closed_port()}",
                      observe=lambda kind, details: observed.append((kind, details)))
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with rest:
        with pytest.raises(TwilioRestError) as failure:
            await rest.update_call("AC" + "0" * 32, "CA" + "0" * 32, twiml=transfer())
    assert 0.7 <= loop.time() - started < 3.0
    assert (failure.value.status, failure.value.retryable) == (None, True)
    assert [kind for kind, _ in observed] == ["request", "error"] * 3


async def test_a_slow_answer_times_out_a_dial_is_not_sent_again_a_hang_up_is() -> None:
    async with world(delay_s=0.4) as w:
        await streaming(w)
        observed: list[str] = []
        rest = TwilioRest(username=w.api.account_sid, password=TOKEN, base_url=w.api.url, timeout_s=0.1,
                          observe=lambda kind, details: observed.append(kind))
        async with rest:
            with pytest.raises(TwilioRestError) as failure:
                await rest.update_call(w.api.account_sid, w.call.call_sid, twiml=transfer())
            assert (failure.value.status, failure.value.retryable) == (None, False)
            assert observed == ["request", "error"]
            await w.api.wait_for_requests(1)  # the Dial that timed out still arrived, as it may at Twilio
            observed.clear()
            with pytest.raises(TwilioRestError) as failure:
                await rest.update_call(w.api.account_sid, w.call.call_sid, status="completed")
            assert (failure.value.status, failure.value.retryable) == (None, True)
            assert observed == ["request", "error"] * 3


async def test_credentials_never_appear_in_logs_errors_or_observations(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    basic = base64.b64encode(f"x:{TOKEN}".encode()).decode()
    async with world() as w:
        await streaming(w)
        w.api.fail_next(500, times=3)
        with pytest.raises(TwilioRestError) as failure:
            await w.rest.update_call(w.api.account_sid, w.call.call_sid, status="completed")
        bad = TwilioRest(username=w.api.account_sid, password=TOKEN + "-wrong", base_url=w.api.url)
        async with bad:
            with pytest.raises(TwilioRestError) as refused:
                await bad.update_call(w.api.account_sid, w.call.call_sid, status="completed")
        observations = json.dumps(w.observed)
    assert "HTTP 500" in caplog.text and "try 3 of at most 3" in caplog.text
    for text in (caplog.text, str(failure.value), str(refused.value), observations, repr(w.rest.__dict__)):
        assert TOKEN not in text and basic[4:20] not in text
    settings = settings_from_env({"TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_API_KEY": API_KEY, "TWILIO_API_SECRET": API_SECRET})
    assert TOKEN not in repr(settings) and API_SECRET not in repr(settings)


async def test_an_api_key_and_secret_authenticate_with_the_calls_account() -> None:
    async with world(api_key=API_KEY, api_secret=API_SECRET) as w:
        await streaming(w)
        settings = settings_from_env({"TWILIO_API_URL": w.api.url, "TWILIO_API_KEY": API_KEY, "TWILIO_API_SECRET": API_SECRET})
        async with TwilioRest.from_settings(settings, w.call.account_sid) as rest:
            await rest.update_call(w.call.account_sid, w.call.call_sid, status="completed")
        assert w.api.requests[-1].username == API_KEY
        assert w.call.over


async def test_from_settings_takes_the_account_from_the_environment_before_the_call() -> None:
    async with world() as w:
        settings = settings_from_env({"TWILIO_API_URL": w.api.url, "TWILIO_AUTH_TOKEN": TOKEN,
                                      "TWILIO_ACCOUNT_SID": w.api.account_sid})
        async with TwilioRest.from_settings(settings, "AC-of-another-account") as rest:
            assert await rest.list_numbers(w.api.account_sid) == []
        assert w.api.requests[-1].username == w.api.account_sid


async def test_numbers_are_listed_and_updated_and_a_call_is_placed_once() -> None:
    async with world() as w:
        w.api.numbers = [{"sid": "PN1", "phone_number": "+14155550100", "voice_url": ""}]
        assert await w.rest.list_numbers(w.api.account_sid) == w.api.numbers
        updated = await w.rest.update_number(w.api.account_sid, "PN1", VoiceUrl=PUBLIC_URL + "/twilio/voice")
        assert updated["voice_url"] == w.api.numbers[0]["voice_url"] == PUBLIC_URL + "/twilio/voice"
        w.api.fail_next(502)
        with pytest.raises(TwilioRestError):
            await w.rest.create_call(w.api.account_sid, To=AGENT, From="+14155550100", Twiml="<Response/>")
        created = await w.rest.create_call(w.api.account_sid, To=AGENT, From="+14155550100", Twiml="<Response/>")
        assert created["sid"].startswith("CA") and created["status"] == "queued"
        assert [c["To"] for c in w.api.created] == [AGENT]
        assert [r.status for r in w.api.requests_to("/Calls.json")] == [502, 201]


# ---- the simulated call following TwiML


@pytest.mark.parametrize(("callee", "status"), [
    (Callee("busy"), "busy"),
    (Callee("no-answer", ring_s=0.3), "no-answer"),
    (Callee("failed"), "failed"),
])
async def test_a_dial_nobody_answers_posts_the_signed_action_with_its_status(callee: Callee, status: str) -> None:
    async with world() as w:
        w.api.callees[AGENT] = callee
        await streaming(w)
        await w.rest.update_call(w.api.account_sid, w.call.call_sid, twiml=transfer())
        await w.call.wait_over()
        ((action, signed),) = w.side.posted("/twilio/dial-action")
        assert signed
        assert (action["DialCallStatus"], action["DialCallDuration"]) == (status, "0")
        assert w.side.posted("/twilio/whisper") == []
        assert w.call.steps("bridged") == []
        assert w.call.spoken == ["The agent has left."]


async def test_a_dial_that_rings_past_its_timeout_is_no_answer() -> None:
    async with world() as w:
        w.api.callees[AGENT] = Callee("answer", ring_s=5)
        await streaming(w)
        await w.rest.update_call(w.api.account_sid, w.call.call_sid, twiml=transfer(timeout=1))
        step = await w.call.wait_for_step("dial-ended", timeout=3)
        assert step.detail == "no-answer"


async def test_a_callee_who_hangs_up_after_a_while_ends_the_bridge_with_its_duration() -> None:
    async with world() as w:
        w.api.callees[AGENT] = Callee("answer", hang_up_after_s=1.2)
        await streaming(w)
        await w.rest.update_call(w.api.account_sid, w.call.call_sid, twiml=transfer())
        await w.call.wait_over(timeout=5)
        ((action, _),) = w.side.posted("/twilio/dial-action")
        assert (action["DialCallStatus"], action["DialCallDuration"]) == ("completed", "1")


async def test_connect_action_is_posted_signed_when_the_bridge_ends_the_stream() -> None:
    async with world(BridgeSide(connect_action=True, close_after_start=True)) as w:
        await w.call.run()
        await w.call.wait_over()
        ((action, signed),) = w.side.posted("/twilio/connect-action")
        assert signed
        assert (action["CallSid"], action["AccountSid"]) == (w.call.call_sid, w.api.account_sid)
        assert w.call.steps("stream-ended") == [("stream-ended", "bridge")]
        assert w.call.spoken == ["Goodbye from the action."]


async def test_without_an_action_the_fallback_after_connect_is_said_when_the_bridge_ends_the_stream() -> None:
    async with world(BridgeSide(close_after_start=True)) as w:
        await w.call.run()
        await w.call.wait_over()
        assert w.call.spoken == [FALLBACK]
        assert w.call.steps("hung-up") == [("hung-up", "twilio")]
