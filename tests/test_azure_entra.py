"""Azure OpenAI with Microsoft Entra ID instead of a key: a bearer token per session open, renewed before it expires."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import pytest

from support import bridge_for, place_call
from telephony_bridge.config import settings_from_env
from telephony_bridge.errors import RealtimeConnectError
from telephony_bridge.realtime.entra import AZURE_SCOPE, REFRESH_MARGIN_S, EntraToken
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator

AZURE_WITHOUT_KEY = {
    "OPENAI_API_KEY": "",
    "AZURE_OPENAI_ENDPOINT": "https://clinic.openai.azure.com",
    "AZURE_OPENAI_DEPLOYMENT": "gpt-realtime",
}


@dataclass(frozen=True)
class Token:
    token: str
    expires_on: int


@dataclass
class ControlledCredential:
    """A credential whose tokens the test decides: each `get_token` issues the next, living `lifetimes_s[i]` seconds."""

    lifetimes_s: list[float]
    scopes: list[tuple[str, ...]] = field(default_factory=list)
    issued: list[Token] = field(default_factory=list)
    closed: bool = False
    fail_with: Exception | None = None

    async def get_token(self, *scopes: str) -> Token:
        if self.fail_with is not None:
            raise self.fail_with
        self.scopes.append(scopes)
        lifetime = self.lifetimes_s[min(len(self.scopes) - 1, len(self.lifetimes_s) - 1)]
        self.issued.append(Token(f"entra-token-{len(self.scopes)}", int(time.time() + lifetime)))
        return self.issued[-1]

    async def close(self) -> None:
        self.closed = True


async def test_without_a_key_each_session_carries_a_bearer_token_and_one_opened_after_expiry_the_renewed_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The first token is good for the first session and a reconnect soon after, then falls within the renewal margin.
    credential = ControlledCredential([REFRESH_MARGIN_S + 3, 3600])
    caplog.set_level(logging.DEBUG)
    async with RealtimeSimulator() as realtime, bridge_for(
        realtime, env=AZURE_WITHOUT_KEY, credential_factory=lambda: credential
    ) as bridge:
        call, first = await place_call(bridge, realtime)
        assert first.headers["Authorization"] == "Bearer entra-token-1"
        assert "api-key" not in first.headers
        await first.drop(1011)
        second = await realtime.wait_for_session(1, timeout=5)
        assert second.headers["Authorization"] == "Bearer entra-token-1"
        renew_at = credential.issued[0].expires_on - REFRESH_MARGIN_S
        await asyncio.sleep(renew_at - time.time() + 0.05)
        await second.drop(1011)
        third = await realtime.wait_for_session(2, timeout=5)
        assert third.headers["Authorization"] == "Bearer entra-token-2"
        await third.wait_for("session.update")
        await call.hang_up()
    assert credential.scopes == [(AZURE_SCOPE,), (AZURE_SCOPE,)]
    assert credential.closed
    bridge_lines = [record.getMessage() for record in caplog.records if record.name != "websockets.server"]  # the simulator's
    assert bridge_lines and not any("entra-token" in line for line in bridge_lines)


async def test_sessions_opening_at_once_share_one_token_fetch() -> None:
    credential = ControlledCredential([3600])
    token = EntraToken(lambda: credential)
    headers = await asyncio.gather(*(token.authorization() for _ in range(20)))
    assert set(headers) == {"Bearer entra-token-1"}
    assert token.fetched == 1


async def test_a_token_is_renewed_the_margin_before_it_expires_on_the_injected_clock() -> None:
    now = [1000.0]
    credential = ControlledCredential([3600])
    token = EntraToken(lambda: credential, clock=lambda: now[0], margin_s=300)
    issued_expiry = int(time.time() + 3600)
    now[0] = issued_expiry - 301.0
    assert await token.authorization() == "Bearer entra-token-1"
    assert await token.authorization() == "Bearer entra-token-1"
    now[0] = issued_expiry - 299.0
    assert await token.authorization() == "Bearer entra-token-2"


async def test_a_credential_that_cannot_give_a_token_fails_the_open_retryably_with_its_reason() -> None:
    credential = ControlledCredential([3600], fail_with=RuntimeError("DefaultAzureCredential failed to retrieve a token\nmore"))
    settings = settings_from_env(AZURE_WITHOUT_KEY, credential_factory=lambda: credential)
    assert settings.realtime.token is not None
    with pytest.raises(RealtimeConnectError) as raised:
        await settings.realtime.token.authorization()
    assert str(raised.value) == "no Microsoft Entra ID token: RuntimeError: DefaultAzureCredential failed to retrieve a token"
    assert raised.value.retryable


def test_azure_with_a_key_sends_the_key_and_asks_for_no_token() -> None:
    settings = settings_from_env({**AZURE_WITHOUT_KEY, "AZURE_OPENAI_API_KEY": "azure-key"},
                                 credential_factory=lambda: pytest.fail("no credential with a key"))
    assert settings.realtime.token is None
    assert dict(settings.realtime.headers) == {"api-key": "azure-key"}
