"""A stand-in for Twilio's REST API, over real HTTP on loopback, acting on simulated calls.

Point the bridge's ``TWILIO_API_URL`` at ``TwilioApiSimulator.url`` and ``register`` each
``SimulatedCall``; the REST requests then act on those calls as Twilio's would:

* ``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`` with ``Status=completed``: the call's
  media stream gets ``stop`` and closes, and the call is over; with ``Twiml=<Response>...``: the stream
  gets ``stop`` and the call runs the new TwiML (``<Dial>`` rings the ``callees`` configured here).
  The answer comes once the stream has been stopped. A call that is over, or unknown, is 404 code 20404.
* ``POST .../Calls.json`` places a call: recorded in ``created`` and answered with a new CallSid;
  ``on_create`` is called with it. Once ``place_calls_on(bridge_url, public_url)`` has been called, the
  call rings the ``Answerer`` configured in ``answerers`` for its ``To`` (a person by default): a person or
  a machine answers, the inline ``Twiml`` runs (its ``<Connect><Stream>`` reaches the bridge), a person
  says "hello?" and a voicemail plays its greeting then a beep, and the signed ``AsyncAmdStatusCallback``
  (``AnsweredBy``) and ``StatusCallback`` (``CallStatus``) are posted at the moments Twilio would; a busy,
  unanswered or failed callee gets the status callback only. ``placed`` keeps each such call's record.
* ``GET .../Calls/{CallSid}.json``: the record of a call (``status``, ``answered_by``, ``direction``).
* ``GET .../IncomingPhoneNumbers.json`` lists ``numbers``; ``GET``/``POST .../IncomingPhoneNumbers/{Sid}.json``
  reads or changes one (Twilio's parameter names, ``VoiceUrl``, become its JSON names, ``voice_url``).

Requests are form-encoded with HTTP Basic auth (the account SID and auth token, or an API key and secret);
wrong credentials earn 401 code 20003. Errors are JSON ``{"code", "message", "more_info", "status"}``.
Every request is recorded in ``requests``; ``fail_next`` and ``delay_s`` inject faults.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import re
import secrets
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from telephony_bridge.testing.changes import Changes
from telephony_bridge.testing.twilio_simulator import Callee, SimulatedCall, speech_like_ulaw

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = ["Answerer", "ApiRequest", "PlacedCall", "TwilioApiSimulator", "beep_ulaw"]

HELLO_MS = 600
"""A person's "hello?" when they pick up."""

_PREFIX = "/2010-04-01/Accounts/{account_sid}"
_DEFAULT_CODES = {401: 20003, 404: 20404, 429: 20429}
_SNAKE = re.compile(r"(?<!^)(?=[A-Z])")


@dataclass(frozen=True)
class ApiRequest:
    """One REST request as the stand-in received it; ``username`` is who authenticated (never the secret)."""

    at: float
    method: str
    path: str
    params: dict[str, str]
    username: str | None
    status: int


@dataclass(frozen=True)
class Answerer:
    """How whoever an outbound call rings behaves.

    ``person``: says "hello?" once the stream is up; AMD says ``amd_result`` (default ``human``) ``amd_delay_s``
    after the hello ended (message-end detection waits for the silence after a greeting). ``voicemail``: plays a
    ``greeting_ms`` greeting then a beep; AMD says ``machine_end_beep`` ``amd_delay_s`` after the beep. ``fax``:
    AMD says ``fax``. ``busy``, ``no-answer`` and ``failed`` never answer: after ``ring_s`` the status callback says so.
    """

    kind: Literal["person", "voicemail", "fax", "busy", "no-answer", "failed"] = "person"
    ring_s: float = 0.1
    amd_delay_s: float = 0.3
    amd_result: str | None = None
    greeting_ms: int = 1200


@dataclass
class PlacedCall:
    """What the stand-in did with one call placed through ``Calls.json``, with the moments that matter (loop time)."""

    call_sid: str
    to_number: str
    from_number: str
    answerer: Answerer
    status: str = "queued"
    answered_by: str | None = None
    call: SimulatedCall | None = None
    hello_at: float | None = None
    """When the person's "hello?" started to go out."""
    amd_sent_at: float | None = None
    callbacks: list[tuple[str, dict[str, str], int]] = field(default_factory=list)
    """Every AMD and status callback posted to the bridge: (URL, fields, HTTP status)."""


def beep_ulaw(ms: int = 400, hz: float = 1000.0) -> bytes:
    """An answering machine's beep: a loud sine tone, as 8 kHz mu-law."""
    samples = [round(12000 * math.sin(2 * math.pi * hz * n / 8000)) for n in range(ms * 8)]
    pcm = b"".join(sample.to_bytes(2, "little", signed=True) for sample in samples)
    return audioop.lin2ulaw(pcm, 2)


async def _said_or_over(call: SimulatedCall) -> None:
    """Until the callee has said what was queued, or hung up first."""
    while call.saying and not call.over:
        await asyncio.sleep(0.02)


def _error(status: int, code: int, message: str) -> JSONResponse:
    body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status}
    return JSONResponse(body, status_code=status)


def _snake(name: str) -> str:
    return _SNAKE.sub("_", name).lower()


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        username, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (username, password) if sep else None


class TwilioApiSimulator:
    """Twilio's REST API for one account, on a free loopback port.

    ``auth_token`` authenticates the account SID; ``api_key``/``api_secret`` (optional) authenticate too.
    ``callees`` maps a dialled number or SIP URI to how that person behaves (anyone else answers).
    ``delay_s`` holds every answer back that long. Use ``async with TwilioApiSimulator(...) as api:``.
    """

    def __init__(
        self,
        *,
        auth_token: str,
        account_sid: str | None = None,
        api_key: str | None = None,
        api_secret: str | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.account_sid = account_sid or "AC" + secrets.token_hex(16)
        self._credentials = {self.account_sid: auth_token}
        if api_key is not None and api_secret is not None:
            self._credentials[api_key] = api_secret
        self.delay_s = delay_s
        self.calls: dict[str, SimulatedCall] = {}
        self.callees: dict[str, Callee] = {}
        self.requests: list[ApiRequest] = []
        self.created: list[dict[str, str]] = []
        self.numbers: list[dict[str, Any]] = []
        self.on_create: Callable[[str, dict[str, str]], Awaitable[None]] | None = None
        """Called with the new CallSid and the parameters of each call placed."""
        self.answerers: dict[str, Answerer] = {}
        self.placed: dict[str, PlacedCall] = {}
        self._bridge: tuple[str, str] | None = None
        self._callbacks_url = ""
        self._ringing: set[asyncio.Task[None]] = set()
        self._failures: list[tuple[int, int]] = []
        self._changes = Changes()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """What ``TWILIO_API_URL`` should be."""
        return f"http://127.0.0.1:{self.port}"

    # ---- set-up

    def register(self, call: SimulatedCall) -> None:
        """Let the REST API act on ``call``; a call that has not dialled yet takes this account's SID."""
        if call.dial_response is None and call.connected_at is None:
            call.account_sid = self.account_sid
        elif call.account_sid != self.account_sid:
            raise ValueError(f"call {call.call_sid} belongs to account {call.account_sid}, not {self.account_sid}")
        call.callees = self.callees
        self.calls[call.call_sid] = call

    def place_calls_on(self, bridge_url: str, public_url: str, callbacks_url: str | None = None) -> None:
        """A placed call rings its ``Answerer`` and streams to the bridge at ``bridge_url`` (public: ``public_url``);
        its callbacks go to ``callbacks_url`` if given (another instance of a fleet), else there too."""
        self._bridge = (bridge_url.rstrip("/"), public_url.rstrip("/"))
        self._callbacks_url = (callbacks_url or bridge_url).rstrip("/")

    def fail_next(self, status: int, code: int | None = None, *, times: int = 1) -> None:
        """Answer the next ``times`` requests with this error (default code: 20003, 20404, 20429 or 20500),
        recording them but not acting on them."""
        default = _DEFAULT_CODES.get(status, 20500 if status >= 500 else 20001)
        self._failures += [(status, code if code is not None else default)] * times

    async def start(self, port: int = 0) -> None:
        """Serve on `port` (0: a free one); a fixed port lets processes started earlier reach a new simulator."""
        routes = [
            Route(_PREFIX + "/Calls.json", self._gated(self._create_call), methods=["POST"]),
            Route(_PREFIX + "/Calls/{call_sid}.json", self._gated(self._update_call), methods=["POST", "GET"]),
            Route(_PREFIX + "/IncomingPhoneNumbers.json", self._gated(self._list_numbers), methods=["GET"]),
            Route(_PREFIX + "/IncomingPhoneNumbers/{number_sid}.json", self._gated(self._number), methods=["GET", "POST"]),
        ]
        app = Starlette(routes=routes)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(), name="twilio-api-simulator")
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for task in self._ringing:
            task.cancel()
        await asyncio.gather(*self._ringing, return_exceptions=True)
        for placed in self.placed.values():
            if placed.call is not None:
                await placed.call.close()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = None

    async def __aenter__(self) -> TwilioApiSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ---- what happened

    def requests_to(self, path_suffix: str) -> list[ApiRequest]:
        return [r for r in self.requests if r.path.endswith(path_suffix)]

    async def wait_for_requests(self, n: int = 1, timeout: float = 5.0) -> list[ApiRequest]:
        """Until at least ``n`` requests have been answered."""
        return await self._changes.wait_until(
            lambda: self.requests[:n] if len(self.requests) >= n else None, timeout, f"{n} requests"
        )

    # ---- the gate every request passes: record, authenticate, delay, injected faults

    def _gated(self, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await self._gate(request, handler)
        return endpoint

    def _authorized(self, request: Request, credentials: tuple[str, str] | None) -> bool:
        expected = self._credentials.get(credentials[0]) if credentials else None
        if credentials is None or expected is None:
            return False
        return secrets.compare_digest(credentials[1].encode(), expected.encode()) and (
            request.path_params["account_sid"] == self.account_sid
        )

    async def _gate(self, request: Request, handler: Callable[[Request], Awaitable[Response]]) -> Response:
        at = asyncio.get_running_loop().time()
        body = await request.body()
        params = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)) if request.method == "POST" else {}
        params |= dict(request.query_params)
        credentials = _basic_auth(request.headers.get("authorization"))
        username = credentials[0] if credentials else None
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if not self._authorized(request, credentials):
            response: Response = _error(401, 20003, "Authenticate")
        elif self._failures:
            status, code = self._failures.pop(0)
            response = _error(status, code, "Injected failure (simulator)")
        else:
            response = await handler(request)
        self.requests.append(ApiRequest(at, request.method, request.url.path, params, username, response.status_code))
        self._changes.fire()
        return response

    # ---- the resources

    async def _update_call(self, request: Request) -> Response:
        call_sid = request.path_params["call_sid"]
        call = self.calls.get(call_sid)
        if request.method == "GET":
            return self._call_record(request, call_sid)
        if call is None or call.over:
            return _error(404, 20404, f"The requested resource {request.url.path} was not found")
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        if "Twiml" in form:
            twiml = form["Twiml"]
            if not twiml.lstrip().startswith("<"):
                return _error(400, 12100, "Document parse failure")
            await call.redirect(twiml)
        elif form.get("Status") in ("completed", "canceled"):
            await call.complete()
        else:
            return _error(400, 20001, "Twiml, Url or Status is required")
        return JSONResponse(self._call_json(call))

    def _call_record(self, request: Request, call_sid: str) -> Response:
        placed = self.placed.get(call_sid)
        if placed is not None:
            return JSONResponse({
                "sid": call_sid, "account_sid": self.account_sid, "status": placed.status, "from": placed.from_number,
                "to": placed.to_number, "direction": "outbound-api", "answered_by": placed.answered_by,
                "api_version": "2010-04-01", "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{call_sid}.json",
            })
        call = self.calls.get(call_sid)
        if call is None:
            return _error(404, 20404, f"The requested resource {request.url.path} was not found")
        return JSONResponse(self._call_json(call))

    def _call_json(self, call: SimulatedCall) -> dict[str, Any]:
        return {
            "sid": call.call_sid, "account_sid": call.account_sid, "status": call.status, "from": call.from_number,
            "to": call.to_number, "direction": "inbound", "api_version": "2010-04-01",
            "uri": f"/2010-04-01/Accounts/{call.account_sid}/Calls/{call.call_sid}.json",
        }

    async def _create_call(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        missing = [name for name in ("To", "From") if not form.get(name)]
        if missing or not (form.get("Twiml") or form.get("Url")):
            code = 21201 if "To" in missing else 21213 if missing else 21205
            return _error(400, code, "To, From and Twiml or Url are required")
        call_sid = "CA" + secrets.token_hex(16)
        self.created.append({"CallSid": call_sid, **form})
        if self.on_create is not None:
            await self.on_create(call_sid, form)
        if self._bridge is not None:
            placed = PlacedCall(call_sid, form["To"], form["From"], self.answerers.get(form["To"], Answerer()))
            self.placed[call_sid] = placed
            task = asyncio.get_running_loop().create_task(self._ring(placed, form), name=f"twilio-api-ring-{call_sid}")
            self._ringing.add(task)
            task.add_done_callback(self._ringing.discard)
        body = {
            "sid": call_sid, "account_sid": self.account_sid, "status": "queued", "to": form["To"], "from": form["From"],
            "direction": "outbound-api", "api_version": "2010-04-01",
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{call_sid}.json",
        }
        return JSONResponse(body, status_code=201)

    async def _list_numbers(self, request: Request) -> Response:
        wanted = request.query_params.get("PhoneNumber")
        numbers = [n for n in self.numbers if wanted is None or n.get("phone_number") == wanted]
        uri = f"/2010-04-01/Accounts/{self.account_sid}/IncomingPhoneNumbers.json"
        return JSONResponse({
            "incoming_phone_numbers": numbers, "page": 0, "page_size": len(numbers), "start": 0,
            "end": max(len(numbers) - 1, 0), "first_page_uri": uri, "next_page_uri": None, "previous_page_uri": None, "uri": uri,
        })

    async def _number(self, request: Request) -> Response:
        sid = request.path_params["number_sid"]
        number = next((n for n in self.numbers if n.get("sid") == sid), None)
        if number is None:
            return _error(404, 20404, f"The requested resource {request.url.path} was not found")
        if request.method == "POST":
            form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
            number.update({_snake(name): value for name, value in form.items()})
        return JSONResponse(number)


    # ---- an outbound call, from the ring to its last callback

    async def _ring(self, placed: PlacedCall, form: dict[str, str]) -> None:
        assert self._bridge is not None
        answerer = placed.answerer
        placed.status = "ringing"
        await asyncio.sleep(answerer.ring_s)
        if answerer.kind in ("busy", "no-answer", "failed"):
            placed.status = answerer.kind
            await self._status(placed, form, answerer.kind)
            return
        bridge_url, public_url = self._bridge
        call = SimulatedCall(
            bridge_url=bridge_url, public_url=public_url, auth_token=self._credentials[self.account_sid],
            call_sid=placed.call_sid, from_number=placed.from_number, to_number=placed.to_number,
        )
        self.register(call)
        placed.call = call
        placed.status = "in-progress"
        if form.get("Twiml"):
            call.follow(form["Twiml"])
        await call.wait_for_step("stream-opened", timeout=10.0)
        if answerer.kind == "person":
            call.say(speech_like_ulaw(HELLO_MS))
            placed.hello_at = call.said[-1][0]
            await _said_or_over(call)
            amd = answerer.amd_result or "human"
        elif answerer.kind == "voicemail":
            call.say(speech_like_ulaw(answerer.greeting_ms))
            call.say(beep_ulaw())
            await _said_or_over(call)
            amd = answerer.amd_result or "machine_end_beep"
        else:
            amd = answerer.amd_result or "fax"
        await asyncio.sleep(answerer.amd_delay_s)
        if form.get("AsyncAmdStatusCallback") and not call.over:
            placed.answered_by = amd
            placed.amd_sent_at = asyncio.get_running_loop().time()
            await self._post(placed, form["AsyncAmdStatusCallback"], {
                "AccountSid": self.account_sid, "CallSid": placed.call_sid, "AnsweredBy": amd,
                "MachineDetectionDuration": str(round(answerer.amd_delay_s * 1000)),
            })
        await call.wait_over(timeout=24 * 3600.0)
        placed.status = "completed"
        await self._status(placed, form, "completed")

    async def _status(self, placed: PlacedCall, form: dict[str, str], status: str) -> None:
        if not form.get("StatusCallback"):
            return
        fields = {
            "AccountSid": self.account_sid, "CallSid": placed.call_sid, "CallStatus": status, "Direction": "outbound-api",
            "From": placed.from_number, "To": placed.to_number, "ApiVersion": "2010-04-01",
        }
        if placed.answered_by is not None:
            fields["AnsweredBy"] = placed.answered_by
        await self._post(placed, form["StatusCallback"], fields)

    async def _post(self, placed: PlacedCall, url: str, fields: dict[str, str]) -> None:
        """A signed callback to the bridge: signed over the public URL, sent to the bridge on loopback."""
        assert self._bridge is not None
        public_url = self._bridge[1]
        parts, public = urlsplit(url), urlsplit(public_url)
        target = url
        if (parts.scheme, parts.netloc) == (public.scheme, public.netloc):
            target = self._callbacks_url + parts.path + (f"?{parts.query}" if parts.query else "")
        signature = RequestValidator(self._credentials[self.account_sid]).compute_signature(url, fields)
        try:
            async with httpx.AsyncClient() as client:
                status = (await client.post(target, data=fields, headers={"X-Twilio-Signature": signature})).status_code
        except httpx.HTTPError:
            status = 0  # the bridge is down (a restart): Twilio notes a failed callback (11200), the call goes on
        placed.callbacks.append((url, fields, status))
        self._changes.fire()

    async def wait_placed(self, n: int = 1, status: str | None = None, timeout: float = 10.0) -> list[PlacedCall]:
        """Until ``n`` placed calls exist (in ``status``, if given, e.g. a final one)."""
        def ready() -> list[PlacedCall] | None:
            calls = [p for p in self.placed.values() if status is None or p.status == status]
            return calls if len(calls) >= n else None
        return await self._changes.wait_until(ready, timeout, f"{n} placed calls")
