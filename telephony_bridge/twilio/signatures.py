"""The signature on the bridge's requests to operators' servers (tool calls and after-call summaries).

`X-Bridge-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`. The time is
signed with the body so a receiver can refuse a stale request (a replay) as well as a forged one;
the README shows the check in a few lines.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Bridge-Signature"
MAX_AGE_S = 300
"""How old a signed request a receiver should accept, by default."""


def signature(secret: bytes, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: bytes, body: bytes, header: str, now: float, max_age_s: float = MAX_AGE_S) -> bool:
    """Whether `header` signs `body` with `secret`, no more than `max_age_s` before `now`."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > max_age_s:
        return False
    return hmac.compare_digest(signature(secret, body, timestamp), f"t={timestamp},v1={parts.get('v1', '')}")
