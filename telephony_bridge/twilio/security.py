"""Who may reach the model: Twilio's request signatures and our per-call stream tokens.

Twilio signs the webhook POST over the URL it called plus the sorted form fields, and the
Media Stream upgrade over the wss:// URL with no fields (docs/protocols.md section 1). Both are checked
against the configured public URL, never the URL uvicorn saw behind a proxy.

A stream token binds a media socket to the call the webhook accepted: an HMAC, keyed by a
server secret, over the CallSid, the called number, a stream id and an expiry. It travels as a
`<Parameter>` and comes back in `start.customParameters`, so a stranger who finds the websocket
URL (or another call's token) cannot open a Realtime session on our customer's account.

The stream id is random and new in every token: the switchboard lets each id claim one stream,
so a stream the bridge admits is one it issued a token for, never one named by a CallSid alone
(a CallSid is in every webhook, and a signed webhook can be replayed).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping

from twilio.request_validator import RequestValidator

STREAM_TOKEN_LIFETIME_S = 300
"""Twilio opens the stream within a second or two of the webhook answer; five minutes leaves room for slow networks."""
MAX_EXPIRY_DIGITS = 12
"""Unix seconds have 10 digits until the year 2286; more is a forgery, and `int()` of thousands of digits raises."""


def twilio_signature_valid(auth_token: str, url: str, params: Mapping[str, str], signature: str | None) -> bool:
    """Whether `signature` is Twilio's signature of `url` and `params` under `auth_token`."""
    if not signature:
        return False
    return RequestValidator(auth_token).validate(url, dict(params), signature)


def _mac(secret: bytes, call_sid: str, called_number: str, stream_id: str, expires_at: int) -> str:
    message = f"{call_sid}\n{called_number}\n{stream_id}\n{expires_at}".encode("utf-8", "surrogatepass")
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def issue_stream_token(secret: bytes, call_sid: str, called_number: str, now_s: float) -> str:
    """A token for one Media Stream of a call, with a fresh stream id, valid for `STREAM_TOKEN_LIFETIME_S`."""
    expires_at = int(now_s) + STREAM_TOKEN_LIFETIME_S
    stream_id = secrets.token_urlsafe(12)
    return f"{expires_at}.{stream_id}.{_mac(secret, call_sid, called_number, stream_id, expires_at)}"


def stream_id_of(token: str) -> str:
    """The stream id a token carries (meaningful once `stream_token_valid` has said the token is ours)."""
    return token.split(".")[1] if token.count(".") == 2 else ""


def stream_token_valid(secret: bytes, token: str, call_sid: str, called_number: str, now_s: float) -> bool:
    """Whether `token` was issued by us for this call and number and has not expired."""
    expiry, _, rest = token.partition(".")
    stream_id, _, mac = rest.partition(".")
    # str.isdigit() also accepts "²" and "٣", which int() refuses or reads as another number.
    if not (expiry.isascii() and expiry.isdigit() and len(expiry) <= MAX_EXPIRY_DIGITS) or int(expiry) < now_s or not stream_id:
        return False
    # compare_digest raises TypeError on a str with non-ASCII characters: compare bytes.
    expected = _mac(secret, call_sid, called_number, stream_id, int(expiry)).encode("ascii")
    return hmac.compare_digest(mac.encode("utf-8", errors="replace"), expected)
