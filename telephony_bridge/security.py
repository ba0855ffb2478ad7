"""Who may reach the model: Twilio's request signatures and our per-call stream tokens.

Twilio signs the webhook POST over the URL it called plus the sorted form fields, and the
Media Stream upgrade over the wss:// URL with no fields (docs/protocols.md section 1). Both are checked
against the configured public URL, never the URL uvicorn saw behind a proxy.

A stream token binds a media socket to the call the webhook accepted: an HMAC, keyed by a
server secret, over the CallSid, the called number and an expiry. It travels as a `<Parameter>`
and comes back in `start.customParameters`, so a stranger who finds the websocket URL (or
another call's token) cannot open a Realtime session on our customer's account.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

from twilio.request_validator import RequestValidator

STREAM_TOKEN_LIFETIME_S = 300
"""Twilio opens the stream within a second or two of the webhook answer; five minutes leaves room for slow networks."""


def twilio_signature_valid(auth_token: str, url: str, params: Mapping[str, str], signature: str | None) -> bool:
    """Whether `signature` is Twilio's signature of `url` and `params` under `auth_token`."""
    if not signature:
        return False
    return RequestValidator(auth_token).validate(url, dict(params), signature)


def _mac(secret: bytes, call_sid: str, called_number: str, expires_at: int) -> str:
    message = f"{call_sid}\n{called_number}\n{expires_at}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def issue_stream_token(secret: bytes, call_sid: str, called_number: str, now_s: float) -> str:
    """A token for one call's Media Stream, valid for `STREAM_TOKEN_LIFETIME_S`."""
    expires_at = int(now_s) + STREAM_TOKEN_LIFETIME_S
    return f"{expires_at}.{_mac(secret, call_sid, called_number, expires_at)}"


def stream_token_valid(secret: bytes, token: str, call_sid: str, called_number: str, now_s: float) -> bool:
    """Whether `token` was issued by us for this call and number and has not expired."""
    expiry, _, mac = token.partition(".")
    if not expiry.isdigit() or int(expiry) < now_s:
        return False
    return hmac.compare_digest(mac, _mac(secret, call_sid, called_number, int(expiry)))
