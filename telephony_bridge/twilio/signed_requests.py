"""Requests from Twilio: the public URL it called (and signed), and a form's fields once its signature checks out.

Twilio signs a webhook over the URL it called plus the sorted form fields, and a media stream's upgrade over
its wss:// URL (docs/protocols.md section 1); both are checked against PUBLIC_URL (or a trusted proxy's forwarded
headers), never the URL uvicorn saw behind a proxy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from urllib.parse import parse_qsl

from fastapi import Request, Response
from starlette.requests import ClientDisconnect

from telephony_bridge.config import Settings
from telephony_bridge.twilio.security import twilio_signature_valid

log = logging.getLogger(__name__)

MAX_WEBHOOK_BODY_BYTES = 16 * 1024
SIGNED_URL_HINT = (
    "PUBLIC_URL (or, behind a proxy, TRUST_FORWARDED_HEADERS with its X-Forwarded-Proto/-Host) must match the URL Twilio calls"
)
"""Said with every signature refused: nearly always the URL, not the token, is what differs."""


class SignedRequests:
    """One server's view of Twilio's requests: the URLs it is reached at, and the signature check."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def public_url(self, headers: Mapping[str, str], *, websocket: bool, path: str | None = None) -> str:
        """The URL Twilio called (and signed): from PUBLIC_URL, or from a trusted proxy's forwarded headers."""
        host = headers.get("x-forwarded-host") if self.settings.trust_forwarded_headers else None
        if not host:
            if path is not None:
                return self.settings.public_url.rstrip("/") + path
            return self.settings.media_stream_url if websocket else self.settings.voice_webhook_url
        proto = headers.get("x-forwarded-proto", "https").split(",")[0].strip()
        if websocket:
            return f"{'ws' if proto == 'http' else 'wss'}://{host.split(',')[0].strip()}/twilio/media"
        return f"{proto}://{host.split(',')[0].strip()}{path or '/twilio/voice'}"

    async def signed_form(self, request: Request) -> dict[str, str] | Response:
        """A webhook's or callback's form fields, once Twilio's signature over its public URL and fields checks out;
        else the answer to send (413 too big, 400 cut off, 403 not signed by Twilio)."""
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_WEBHOOK_BODY_BYTES:
                    return Response("request body too large", status_code=413)
        except ClientDisconnect:
            # Gone mid-body (or cut off at the body deadline): nobody is left to answer.
            log.info("request to %s from %s: the client left before sending its whole body", request.url.path, request.client)
            return Response(status_code=400)
        params = dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
        query = f"?{request.url.query}" if request.url.query else ""
        url = self.public_url(request.headers, websocket=False, path=request.url.path) + query
        if not self.signed_by_twilio(url, params, request.headers.get("x-twilio-signature")):
            log.warning("request to %s with a missing or wrong Twilio signature from %s; checked against %s: %s",
                        request.url.path, request.client, _without_query(url), SIGNED_URL_HINT)
            return Response("invalid Twilio signature", status_code=403)
        return params

    def signed_by_twilio(self, url: str, params: dict[str, str], signature: str | None) -> bool:
        if self.settings.twilio_auth_token is None:
            log.warning("accepting an unsigned request to %s: the bridge runs with --insecure", url)
            return True
        return twilio_signature_valid(self.settings.twilio_auth_token, url, params, signature)


def _without_query(url: str) -> str:
    """The URL a signature was checked against, for a log line: its query string may carry what only Twilio should see."""
    base, question, _ = url.partition("?")
    return f"{base}?<query hidden>" if question else base


def twiml(text: str) -> Response:
    return Response(text, media_type="text/xml")
