"""A stand-in for Twilio's REST API, over real HTTP on loopback, acting on simulated calls.

Point the bridge's ``TWILIO_API_URL`` at ``TwilioApiSimulator.url`` and ``register`` each
``SimulatedCall``; the REST requests then act on those calls as Twilio's would:

* ``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`` with ``Status=completed``: the call's
  media stream gets ``stop`` and closes, and the call is over; with ``Twiml=<Response>...``: the stream
  gets ``stop`` and the call runs the new TwiML (``<Dial>`` rings the ``callees`` configured here).
  The answer comes once the stream has been stopped. A call that is over, or unknown, is 404 code 20404.
* ``POST .../Calls.json`` places a call: recorded in ``created`` and answered with a new CallSid;
  ``on_create`` is the hook where a simulated callee's call will be placed.
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
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .changes import Changes
from .twilio_simulator import Callee, SimulatedCall

__all__ = ["ApiRequest", "TwilioApiSimulator"]

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
        """Called with the new CallSid and the parameters of each call placed: where the callee's call will be simulated."""
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

    def fail_next(self, status: int, code: int | None = None, *, times: int = 1) -> None:
        """Answer the next ``times`` requests with this error (default code: 20003, 20404, 20429 or 20500),
        recording them but not acting on them."""
        default = _DEFAULT_CODES.get(status, 20500 if status >= 500 else 20001)
        self._failures += [(status, code if code is not None else default)] * times

    async def start(self, port: int = 0) -> None:
        """Serve on `port` (0: a free one); a fixed port lets processes started earlier reach a new simulator."""
        routes = [
            Route(_PREFIX + "/Calls.json", self._gated(self._create_call), methods=["POST"]),
            Route(_PREFIX + "/Calls/{call_sid}.json", self._gated(self._update_call), methods=["POST"]),
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

