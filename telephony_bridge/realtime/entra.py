"""Microsoft Entra ID tokens for Azure OpenAI, for tenants that forbid API keys.

Azure accepts `Authorization: Bearer <token>` for scope `https://cognitiveservices.azure.com/.default` in place
of an `api-key`; the identity needs the "Cognitive Services OpenAI User" role on the resource. Tokens live about
an hour (60-90 minutes), while a call's sessions are renewed every 25 minutes and reopened after a drop, so the
token is asked for at every open and renewed `REFRESH_MARGIN_S` before it expires: an open an hour into a call
still carries a valid one. `azure-identity` is an optional extra (`telephony-bridge[azure]`); its async
`DefaultAzureCredential` tries managed identity, workload identity, the environment and a developer login.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Callable
from typing import Protocol

from telephony_bridge.errors import ConfigError, RealtimeConnectError

AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"
REFRESH_MARGIN_S = 300.0
"""Renew a token five minutes before it expires: a session open takes seconds, and clocks drift."""
MISSING_EXTRA = "not set, and Microsoft Entra ID needs azure-identity: pip install 'telephony-bridge[azure]'"


class AccessToken(Protocol):
    """What `azure.core.credentials.AccessToken` carries: the token and its expiry in seconds since the epoch."""

    @property
    def token(self) -> str: ...

    @property
    def expires_on(self) -> int: ...


class AsyncTokenCredential(Protocol):
    """The async credential interface of `azure-identity` (`azure.identity.aio`)."""

    async def get_token(self, *scopes: str) -> AccessToken: ...

    async def close(self) -> None: ...


CredentialFactory = Callable[[], AsyncTokenCredential]


def azure_identity_installed() -> bool:
    try:
        return importlib.util.find_spec("azure.identity") is not None
    except ModuleNotFoundError:
        return False


def default_credential_factory() -> CredentialFactory:
    """`DefaultAzureCredential` (async); a `ConfigError` naming the extra when `azure-identity` is not installed."""
    if not azure_identity_installed():
        raise ConfigError("environment", "AZURE_OPENAI_API_KEY", MISSING_EXTRA)

    def create() -> AsyncTokenCredential:
        from azure.identity.aio import DefaultAzureCredential  # type: ignore[import-not-found,unused-ignore]

        credential: AsyncTokenCredential = DefaultAzureCredential()
        return credential

    return create


class EntraToken:
    """A bearer token for the Realtime endpoint, fetched on first use and renewed before it expires.

    The credential is created on first use (inside the event loop its async transport needs). Calls opening
    sessions at once share one fetch. Errors name the credential's failure, never a token.
    """

    def __init__(
        self, factory: CredentialFactory, *, clock: Callable[[], float] = time.time, margin_s: float = REFRESH_MARGIN_S
    ) -> None:
        self._factory = factory
        self._clock = clock
        self._margin_s = margin_s
        self._credential: AsyncTokenCredential | None = None
        self._token: AccessToken | None = None
        self._lock: asyncio.Lock | None = None
        self.fetched = 0
        """How many tokens were fetched: one per hour or so, not one per session."""

    async def authorization(self) -> str:
        """The `Authorization` header's value for one session open."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._token is None or self._clock() >= self._token.expires_on - self._margin_s:
                self._token = await self._fetch()
            return f"Bearer {self._token.token}"

    async def _fetch(self) -> AccessToken:
        try:
            if self._credential is None:
                self._credential = self._factory()
            token = await self._credential.get_token(AZURE_SCOPE)
        except Exception as error:  # noqa: BLE001 -- any credential failure is a failed open, retried like one
            first_line = (str(error).splitlines() or [""])[0][:200]
            raise RealtimeConnectError(f"no Microsoft Entra ID token: {type(error).__name__}: {first_line}") from None
        self.fetched += 1
        return token

    async def close(self) -> None:
        """Close the credential's HTTP transport (managed identity, the CLI): at shutdown."""
        credential, self._credential = self._credential, None
        if credential is not None:
            await credential.close()
