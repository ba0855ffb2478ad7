"""The console's sign-in: the admin token exchanged for a signed session cookie, and the CSRF token that goes with it.

A session is a random id and an expiry, signed with a key derived from `BRIDGE_ADMIN_TOKEN`
(HMAC-SHA256), so any instance that shares the token accepts it and rotating the token signs every
operator out. Signing out revokes the id in this process until it would have expired anyway.

A browser sends the cookie with every request to the bridge, so a cookie alone must never authorise
a change: each state-changing request it authorises carries the session's CSRF token in a header
(`X-CSRF-Token`) or, for the sign-out form, a field. The token is an HMAC of the session id, which
another site can neither read (the cookie is `HttpOnly`, `SameSite=Strict`) nor compute.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
from collections import deque
from dataclasses import dataclass

COOKIE = "bridge_console"
CSRF_HEADER = "x-csrf-token"
SESSION_S = 8 * 3600
"""A working day: an operator signs in once per shift."""
FAILED_SIGN_INS = 5
SIGN_IN_WINDOW_S = 60.0
"""Five wrong tokens a minute from one address, then it waits: an operator mistypes once or twice, a guesser keeps
going. Even at the loosest, a minute's five guesses against a 32-byte token never end."""
TRACKED_ADDRESSES = 10_000
"""Addresses with recent failures kept at most: a flood from many addresses costs bounded memory."""


@dataclass(frozen=True)
class ConsoleSession:
    id: str
    expires_at: float
    csrf_token: str


class ConsoleSessions:
    """Issues and checks the console's session cookies; sans I/O (the caller passes the time)."""

    def __init__(self, admin_token: str) -> None:
        self._token = admin_token.encode("utf-8")
        self._key = hmac.new(self._token, b"telephony-bridge console session", hashlib.sha256).digest()
        self._revoked: dict[str, float] = {}

    def token_valid(self, presented: str) -> bool:
        """Whether `presented` is the admin token (in constant time)."""
        return hmac.compare_digest(presented.strip().encode("utf-8"), self._token)

    def issue(self, now: float) -> tuple[str, ConsoleSession]:
        """A new session: the cookie's value and the session it stands for."""
        session_id = secrets.token_urlsafe(18)
        expires_at = int(now + SESSION_S)
        payload = f"{session_id}.{expires_at}"
        return f"{payload}.{self._sign(payload)}", ConsoleSession(session_id, expires_at, self._csrf(session_id))

    def session(self, cookie: str | None, now: float) -> ConsoleSession | None:
        """The session a cookie stands for; `None` when it is missing, forged, expired or signed out."""
        if not cookie:
            return None
        session_id, _, rest = cookie.partition(".")
        expires, _, signature = rest.partition(".")
        if not expires.isdigit() or not hmac.compare_digest(signature, self._sign(f"{session_id}.{expires}")):
            return None
        if int(expires) <= now or session_id in self._revoked:
            return None
        return ConsoleSession(session_id, int(expires), self._csrf(session_id))

    def csrf_valid(self, session: ConsoleSession, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode("utf-8"), session.csrf_token.encode("utf-8"))

    def revoke(self, session: ConsoleSession, now: float) -> None:
        """Sign a session out; ids past their expiry are forgotten on the way (they are refused anyway)."""
        self._revoked = {sid: until for sid, until in self._revoked.items() if until > now}
        self._revoked[session.id] = session.expires_at

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self._key, payload.encode("utf-8"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")

    def _csrf(self, session_id: str) -> str:
        digest = hmac.new(self._key, f"csrf:{session_id}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


class SignInThrottle:
    """Counts failed sign-ins per client address; past `limit` in `window_s`, the next are refused until the oldest ages out.

    Sans I/O: the caller passes the time. Once throttled, even the right token waits: the throttle does not look at
    what is presented, so it tells a guesser nothing.
    """

    def __init__(self, limit: int = FAILED_SIGN_INS, window_s: float = SIGN_IN_WINDOW_S) -> None:
        self.limit = limit
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, address: str, now: float) -> int | None:
        """Whole seconds until `address` may try again; `None` when it may now."""
        failures = self._recent(address, now)
        if failures is None or len(failures) < self.limit:
            return None
        return max(1, math.ceil(failures[0] + self.window_s - now))

    def failed(self, address: str, now: float) -> int:
        """Count a failed sign-in; how many `address` has made in the window, this one included."""
        failures = self._recent(address, now)
        if failures is None:
            if len(self._failures) >= TRACKED_ADDRESSES:
                self._forget_stale(now)
            failures = self._failures[address] = deque(maxlen=self.limit)
        failures.append(now)
        return len(failures)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    def _recent(self, address: str, now: float) -> deque[float] | None:
        failures = self._failures.get(address)
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        return failures

    def _forget_stale(self, now: float) -> None:
        """Drop addresses with no failure in the window; if all are recent, the oldest-tracked half."""
        self._failures = {a: f for a, f in self._failures.items() if f and f[-1] > now - self.window_s}
        if len(self._failures) >= TRACKED_ADDRESSES:
            self._failures = dict(list(self._failures.items())[TRACKED_ADDRESSES // 2 :])
