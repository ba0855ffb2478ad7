"""What the integration tests share: the test configuration, the bridge on loopback, a new simulated call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from telephony_bridge.config import BridgeConfig, parse_config, settings_from_env
from telephony_bridge.realtime.entra import CredentialFactory
from telephony_bridge.testing.bridge_server import serve_bridge
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator, SimulatedSession
from telephony_bridge.testing.twilio_simulator import SimulatedCall

AUTH_TOKEN = "twilio-auth-token-for-tests"
API_KEY = "sk-test-key-for-tests"
PUBLIC_URL = "https://bridge.example.com"
CLINIC = "+14155550100"
SHOP = "+442071838750"

TEST_CONFIG = f"""
[defaults]
instructions = "You answer the phone."
voice = "marin"
fallback_message = "Sorry, please call back later."

[defaults.turn_detection]
silence_duration_ms = 300

[numbers."{CLINIC}"]
instructions = "You are the receptionist of Bright Smile Dental."
voice = "sage"

[numbers."{SHOP}"]
instructions = "You are the support line of Corner Hardware."
voice = "cedar"
greeting = "Corner Hardware, how can I help?"

[call_log]
path = ""
"""

FIXTURES = Path(__file__).parent.parent / "telephony_bridge" / "fixtures"


@asynccontextmanager
async def bridge_for(
    realtime: RealtimeSimulator | None,
    *,
    url: str | None = None,
    dialect: str = "ga",
    config: BridgeConfig | None = None,
    extra_config: str = "",
    env: dict[str, str] | None = None,
    credential_factory: CredentialFactory | None = None,
) -> AsyncIterator[str]:
    """The real bridge on loopback, talking to `realtime` (or to `url`), with the test configuration.

    `credential_factory` stands in for Azure's `DefaultAzureCredential` when `env` names Azure without a key.
    """
    settings = settings_from_env(
        {
            "PUBLIC_URL": PUBLIC_URL,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "OPENAI_API_KEY": API_KEY,
            "REALTIME_URL": url or realtime.url,
            "REALTIME_API": dialect,
            **(env or {}),
        },
        credential_factory=credential_factory,
    )
    config = config or parse_config(TEST_CONFIG + extra_config, "test.toml")
    async with serve_bridge(settings, config) as base_url:
        yield base_url


def new_call(bridge_url: str, to_number: str = CLINIC, auth_token: str | None = AUTH_TOKEN) -> SimulatedCall:
    return SimulatedCall(bridge_url=bridge_url, public_url=PUBLIC_URL, auth_token=auth_token, to_number=to_number)


async def place_call(
    bridge_url: str, realtime: RealtimeSimulator, to_number: str = CLINIC, session_index: int = 0
) -> tuple[SimulatedCall, SimulatedSession]:
    """Dial, open the media stream, and return the call with its Realtime session (the simulator's `session_index`-th)."""
    call = new_call(bridge_url, to_number)
    await call.dial()
    await call.connect()
    return call, await realtime.wait_for_session(session_index)


class ManualClock:
    """The injected clock of the sans-I/O tests: time moves only when a test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance_ms(self, ms: float) -> None:
        self.now += ms / 1000.0
