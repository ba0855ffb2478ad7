"""Twilio's REST API, asynchronously: act on a live call, place calls, read and configure numbers.

Requests are form-encoded with HTTP Basic auth (the account SID and auth token, or an API key SID and
its secret) and answered in JSON; an error's body is ``{"code", "message", "more_info", "status"}``.
``Twiml=<Response>...</Response>`` on a live call ends its media stream and runs the new TwiML;
``Status=completed`` hangs it up; Twilio code 20404 means the call is gone already (docs/protocols.md section 7).

Why httpx and not the twilio library's client: its default client blocks the event loop, and its
async one needs aiohttp (not one of our dependencies) and reaches a stand-in only by overwriting each
domain's ``base_url`` by hand. Our retry rule depends on what was asked (a retried ``<Dial>`` may ring a
person twice), and the observer must see every try. The twilio library still writes the TwiML we send.

Retries, at most three tries within about 3 s (backoff 0.2 s, then 0.5 s; 5 s timeout per try):

* a connection that could not be made, and a 429, are retried always: Twilio did not act on the request;
* a 5xx, a timeout or a connection lost mid-request are retried only when doing the request twice is
  harmless (a hang-up, a read, a number's settings, TwiML without ``<Dial>``), never a ``<Dial>`` or a create;
* a 4xx is final.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Mapping
from typing import Any, Literal

import httpx

from telephony_bridge.config import Settings
from telephony_bridge.errors import ConfigError, TwilioCallGone, TwilioRestError

__all__ = ["API_VERSION", "Observer", "TwilioRest"]

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
TIMEOUT_S = 5.0
BACKOFF_S = (0.2, 0.5)
"""Pauses before the second and third try; three tries at most."""
RETRY_BUDGET_S = 3.0
"""No new try starts this long after the first one did: a caller on hold waits no longer for our retries."""
CALL_GONE = 20404

ObservedKind = Literal["request", "response", "error"]
Observer = Callable[[ObservedKind, dict[str, Any]], None]
"""Sees each try: ``("request", {"method", "path", "params"})``, then ``("response", {"status", "body"})``
or ``("error", {"error"})`` when no answer came. Never the credentials."""


class TwilioRest:
    """An async client of Twilio's REST API for one set of credentials.

    ``username``/``password`` are the account SID and auth token, or an API key SID and secret.
    ``observe`` (optional) is told about every try, for the call's recording. Close it with
    ``aclose()`` or use it as an async context manager.
    """

    def __init__(
        self,
        *,
        username: str,
        password: str,
        base_url: str = "https://api.twilio.com",
        observe: Observer | None = None,
        timeout_s: float = TIMEOUT_S,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._observe = observe
        self._http = httpx.AsyncClient(
            base_url=self.base_url, auth=httpx.BasicAuth(username, password), timeout=timeout_s,
            headers={"Accept": "application/json"}, verify=tls if tls is not None else True,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, account_sid_from_call: str | None, *, observe: Observer | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> TwilioRest:
        """A client with the configured credentials: the API key and secret if set, else the account SID
        (``TWILIO_ACCOUNT_SID``, else the one Twilio sent with the call) and ``TWILIO_AUTH_TOKEN``."""
        if settings.twilio_api_key and settings.twilio_api_secret:
            username, password = settings.twilio_api_key, settings.twilio_api_secret
        else:
            account_sid = settings.twilio_account_sid or account_sid_from_call
            if not settings.twilio_auth_token:
                reason = "required to act on calls (or TWILIO_API_KEY and TWILIO_API_SECRET)"
                raise ConfigError("environment", "TWILIO_AUTH_TOKEN", reason)
            if not account_sid:
                raise ConfigError("environment", "TWILIO_ACCOUNT_SID", "required when the call did not bring its AccountSid")
            username, password = account_sid, settings.twilio_auth_token
        return cls(username=username, password=password, base_url=settings.twilio_api_url, observe=observe, tls=tls)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> TwilioRest:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ---- the resources

    async def update_call(
        self, account_sid: str, call_sid: str, *, twiml: str | None = None, status: Literal["completed", "canceled"] | None = None
    ) -> dict[str, Any]:
        """Replace what a live call is doing with ``twiml``, or end it with ``status``.

        Raises `TwilioCallGone` when the call has ended already, `TwilioRestError` for any other failure.
        """
        if (twiml is None) == (status is None):
            raise ValueError("update_call takes twiml or status, one of them")
        params = {"Twiml": twiml} if twiml is not None else {"Status": str(status)}
        idempotent = twiml is None or "<Dial" not in twiml
        return await self._request("POST", self._account_path(account_sid, "Calls", call_sid), params, idempotent=idempotent)

    async def create_call(self, account_sid: str, **params: str) -> dict[str, Any]:
        """Place a call: Twilio's own parameter names (``To``, ``From``, ``Twiml`` or ``Url``, ``StatusCallback``...).

        Never retried after the request may have reached Twilio: a second try could ring someone twice.
        """
        return await self._request("POST", self._account_path(account_sid, "Calls"), params, idempotent=False)

    async def fetch_call(self, account_sid: str, call_sid: str) -> dict[str, Any]:
        """Twilio's record of a call (its status, direction, `answered_by`); `TwilioCallGone` when it has none."""
        return await self._request("GET", self._account_path(account_sid, "Calls", call_sid), {}, idempotent=True)

    async def list_numbers(self, account_sid: str, *, max_pages: int = 20, page_size: int = 50) -> list[dict[str, Any]]:
        """The account's incoming phone numbers, every page of them (up to ``max_pages`` of ``page_size``)."""
        numbers: list[dict[str, Any]] = []
        path: str | None = self._account_path(account_sid, "IncomingPhoneNumbers")
        params: dict[str, str] = {"PageSize": str(page_size)}
        for _ in range(max_pages):
            if path is None:
                break
            page = await self._request("GET", path, params, idempotent=True)
            numbers += page.get("incoming_phone_numbers") or []
            path, params = page.get("next_page_uri") or None, {}
        return numbers

    async def update_number(self, account_sid: str, number_sid: str, **params: str) -> dict[str, Any]:
        """Change a number's settings (``VoiceUrl``, ``StatusCallback``...); the same change twice is harmless."""
        path = self._account_path(account_sid, "IncomingPhoneNumbers", number_sid)
        return await self._request("POST", path, params, idempotent=True)

    # ---- one request, with its retries

    @staticmethod
    def _account_path(account_sid: str, collection: str, sid: str | None = None) -> str:
        path = f"/{API_VERSION}/Accounts/{account_sid}/{collection}"
        return f"{path}/{sid}.json" if sid is not None else f"{path}.json"

    def _tell(self, kind: ObservedKind, details: dict[str, Any]) -> None:
        if self._observe is None:
            return
        try:
            self._observe(kind, details)
        except Exception:  # a recorder's failure must not stop a hang-up
            log.exception("Twilio REST observer failed")

    async def _request(self, method: str, path: str, params: Mapping[str, str], *, idempotent: bool) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        tries = len(BACKOFF_S) + 1
        for attempt in range(1, tries + 1):
            try:
                return await self._try(method, path, params, idempotent=idempotent)
            except TwilioRestError as error:
                pause = BACKOFF_S[attempt - 1] if attempt < tries else None
                last = pause is None or not error.retryable or loop.time() + pause - started > RETRY_BUDGET_S
                log.warning("%s (try %d of at most %d)%s", error, attempt, tries, "" if last else f"; trying again in {pause} s")
                if last:
                    raise
                assert pause is not None
                await asyncio.sleep(pause)
        raise AssertionError("unreachable: the last try raises or returns")

    async def _try(self, method: str, path: str, params: Mapping[str, str], *, idempotent: bool) -> dict[str, Any]:
        """One try; a failure is a `TwilioRestError` whose ``retryable`` already applies the retry rule."""
        self._tell("request", {"method": method, "path": path, "params": dict(params)})
        where = f"Twilio REST {method} {path}"
        try:
            if method == "GET":
                response = await self._http.get(path, params=dict(params))
            else:
                response = await self._http.request(method, path, data=dict(params))
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            self._tell("error", {"error": type(error).__name__})
            text = f"{where}: could not connect ({type(error).__name__})"
            raise TwilioRestError(text, status=None, code=None, retryable=True) from None
        except httpx.TransportError as error:
            self._tell("error", {"error": type(error).__name__})
            # The request may have reached Twilio: only a request that is harmless twice is tried again.
            raise TwilioRestError(
                f"{where}: no answer ({type(error).__name__})", status=None, code=None, retryable=idempotent
            ) from None
        body = _json(response)
        self._tell("response", {"status": response.status_code, "body": body})
        if response.is_success:
            return body if isinstance(body, dict) else {}
        answer = body if isinstance(body, dict) else {}
        code = answer.get("code") if isinstance(answer.get("code"), int) else None
        message = answer.get("message") if isinstance(answer.get("message"), str) else response.reason_phrase
        text = f"{where}: HTTP {response.status_code}" + (f", Twilio error {code}" if code is not None else "") + f": {message}"
        status = response.status_code
        retryable = status == 429 or (status >= 500 and idempotent)
        if code == CALL_GONE:
            raise TwilioCallGone(text, status=status, code=code, retryable=False)
        raise TwilioRestError(text, status=status, code=code, retryable=retryable)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
