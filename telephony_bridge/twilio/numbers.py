"""Point the account's Twilio numbers at this bridge: `telephony-bridge twilio numbers` and `twilio configure`.

A number's voice settings (Twilio's names): `VoiceUrl` is the bridge's webhook (`PUBLIC_URL` + `/twilio/voice`,
`VoiceMethod=POST`, as Twilio signs the POST's fields). `VoiceFallbackUrl` is what Twilio fetches when the
webhook fails (an error, a timeout, the bridge down), so it must be served by someone else. By default it is
Twilio's own echo Twimlet (`https://twimlets.com/echo?Twiml=...`), which returns the TwiML in its query: the
number's `fallback_message`, after dialling its `fallback_transfer` if it has one. `--fallback-url` takes a TwiML
Bin or any static file instead; the same TwiML is printed to paste there. The fallback is fetched with GET,
which a static file host serves too.

`StatusCallback` is left as it is: the bridge has no route for call status callbacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from twilio.twiml.voice_response import Dial, VoiceResponse

from telephony_bridge.config import BridgeConfig, CallProfile, Settings
from telephony_bridge.errors import ConfigError
from telephony_bridge.twilio.rest import TwilioRest
from telephony_bridge.twilio.webhook import DIAL_TIMEOUT_S

ECHO_TWIMLET = "https://twimlets.com/echo"
MAX_URL_CHARS = 4000
"""A longer fallback URL (a very long fallback message) should be a TwiML Bin: `--fallback-url`."""
FIELDS = {"VoiceUrl": "voice_url", "VoiceMethod": "voice_method", "VoiceFallbackUrl": "voice_fallback_url",
          "VoiceFallbackMethod": "voice_fallback_method"}
"""The settings `configure` sets: Twilio's parameter name, and its name in the number's JSON."""


@dataclass(frozen=True)
class Change:
    field: str
    before: str
    after: str

    def __str__(self) -> str:
        return f"  {self.field}: {self.before or '(empty)'} -> {self.after}"


@dataclass(frozen=True)
class Configured:
    """What `configure` found and did to one number."""

    phone_number: str
    sid: str
    changes: tuple[Change, ...]
    fallback_twiml: str
    status_callback: str


def fallback_twiml(profile: CallProfile) -> str:
    """What a caller hears when the bridge is down: the fallback target rung first if there is one, then the message."""
    response = VoiceResponse()
    if profile.fallback_transfer:
        response.append(Dial(profile.transfer_target(profile.fallback_transfer), timeout=DIAL_TIMEOUT_S))
    response.say(profile.fallback_message)
    return str(response)


def echo_url(twiml: str) -> str:
    return f"{ECHO_TWIMLET}?Twiml={quote(twiml, safe='')}"


def wanted(settings: Settings, twiml: str, fallback_url: str | None) -> dict[str, str]:
    """The number's voice settings that point it here, in Twilio's names."""
    fallback = fallback_url or echo_url(twiml)
    if len(fallback) > MAX_URL_CHARS:
        raise ConfigError("twilio configure", "VoiceFallbackUrl",
                          f"the fallback message makes a {len(fallback)}-character URL: host the TwiML below and pass "
                          "--fallback-url")
    return {"VoiceUrl": settings.voice_webhook_url, "VoiceMethod": "POST", "VoiceFallbackUrl": fallback,
            "VoiceFallbackMethod": "GET"}


def points_here(number: Mapping[str, Any], settings: Settings) -> bool:
    return number.get("voice_url") == settings.voice_webhook_url and (number.get("voice_method") or "POST").upper() == "POST"


def _account(settings: Settings) -> str:
    if not settings.twilio_account_sid:
        raise ConfigError("environment", "TWILIO_ACCOUNT_SID", "required to read and configure the account's numbers")
    return settings.twilio_account_sid


async def list_numbers(settings: Settings) -> list[dict[str, Any]]:
    account_sid = _account(settings)
    async with TwilioRest.from_settings(settings, account_sid) as rest:
        return await rest.list_numbers(account_sid)


async def configure(
    settings: Settings, config: BridgeConfig, phone_number: str, *, fallback_url: str | None = None, dry_run: bool = False
) -> Configured:
    """Point `phone_number` at this bridge, changing only what differs; raises `ConfigError` for what the operator must fix.

    `TwilioRestError` when Twilio refuses (wrong credentials, a number not of this account).
    """
    if urlsplit(settings.public_url).scheme != "https":
        raise ConfigError("environment", "PUBLIC_URL", f"must be the https URL Twilio reaches, not {settings.public_url}")
    if fallback_url is not None and urlsplit(fallback_url).scheme not in ("http", "https"):
        raise ConfigError("twilio configure", "--fallback-url", f"must be an http(s) URL, not {fallback_url!r}")
    account_sid = _account(settings)
    twiml = fallback_twiml(config.profile_for(phone_number))
    target = wanted(settings, twiml, fallback_url)
    async with TwilioRest.from_settings(settings, account_sid) as rest:
        numbers = await rest.list_numbers(account_sid)
        number = next((n for n in numbers if n.get("phone_number") == phone_number), None)
        if number is None:
            held = ", ".join(str(n.get("phone_number")) for n in numbers) or "none"
            raise ConfigError("twilio configure", phone_number, f"not a number of account {account_sid} (it has: {held})")
        current = {field: str(number.get(FIELDS[field]) or "") for field in target}
        changes = tuple(Change(field, current[field], value) for field, value in target.items() if current[field] != value)
        if changes and not dry_run:
            await rest.update_number(account_sid, str(number["sid"]), **{change.field: change.after for change in changes})
    return Configured(phone_number, str(number["sid"]), changes, twiml, str(number.get("status_callback") or ""))
