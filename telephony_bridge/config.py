"""Configuration: the environment and the per-number TOML file, loaded and validated once at start-up.

Everything the bridge reads from outside lives here; nothing else reads ``os.environ``.
An invalid file stops start-up with one line naming the file, the key and the reason.
"""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

DEFAULT_CONFIG_PATH = Path("config/bridge.toml")
DEFAULT_TWILIO_API_URL = "https://api.twilio.com"
"""Where the configuration is read from when neither ``--config`` nor ``BRIDGE_CONFIG`` names a file."""

E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")

DEFAULT_FALLBACK = "Sorry, we cannot take your call right now. Please try again later."
DEFAULT_BUSY = "All our lines are busy right now. Please call again in a few minutes."
DEFAULT_SHUTDOWN = "Sorry, we have to end this call now. Please call us again."

MAX_INSTRUCTIONS_CHARS = 32 * 1024
"""The model's instructions go out in every `session.update` (at each call's start and each renewal), one
websocket message the service bounds; 32 KiB is pages of prompt, far more than a phone line needs, and keeps a
mistaken paste (a whole manual, 18 MB) from being accepted at start-up and refused by the service on every call."""
MAX_SPOKEN_CHARS = 4096
"""A greeting or a message said with TwiML `<Say>`: Twilio says at most 4,096 characters per `<Say>`."""
VOICE_NAME = r"^[a-z0-9_-]{1,32}$"
TRANSFER_NAME = r"^[a-z][a-z0-9_]{0,39}$"
TRANSFER_TARGET = r"^(\+[1-9][0-9]{6,14}|sip:[^\s<>\"]{3,200})$"
"""An E.164 number Twilio dials, or a SIP URI (sip:user@host)."""
"""Voice names are short lower-case tokens (`marin`, `cedar`, `alloy`); anything else is a typo."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TurnDetection(_Strict):
    """How the model decides the caller has finished speaking (server-side voice activity detection)."""

    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(default=None, ge=0, le=5000)
    silence_duration_ms: int | None = Field(default=None, ge=0, le=10000)
    eagerness: Literal["low", "medium", "high", "auto"] | None = None


class CallProfile(_Strict):
    """What a caller of one number gets: the effective settings after the number's table overrides the defaults."""

    instructions: str = Field(
        default="You are a helpful, concise assistant answering a phone call.", min_length=1, max_length=MAX_INSTRUCTIONS_CHARS
    )
    voice: str = Field(default="marin", pattern=VOICE_NAME)
    greeting: str | None = Field(default=None, max_length=MAX_SPOKEN_CHARS)
    turn_detection: TurnDetection = TurnDetection()
    transcription: str | None = Field(default=None, max_length=64)
    fallback_message: str = Field(default=DEFAULT_FALLBACK, min_length=1, max_length=MAX_SPOKEN_CHARS)
    record: bool = False
    """Write every frame of the call to a recording file; off by default, as recordings hold callers' voices."""
    redact: bool = False
    """With `record`: keep the timing and length of all audio but write it as silence."""
    end_call: bool = True
    """The model may hang up (its `end_call` function) once the conversation is over."""
    transfer: dict[str, str] = Field(default_factory=dict)
    """People or queues the model may hand the call to (`transfer_call`): name -> E.164 number or sip: URI."""
    fallback_transfer: str | None = None
    """Where the caller goes when the model cannot be reached: a `transfer` name, a number or a sip: URI."""

    @field_validator("transfer")
    @classmethod
    def _transfer_targets(cls, targets: dict[str, str]) -> dict[str, str]:
        for name, target in targets.items():
            if not re.match(TRANSFER_NAME, name):
                raise ValueError(f"{name!r} is not a transfer name (lower case letters, digits and _, from a letter)")
            if not re.match(TRANSFER_TARGET, target):
                raise ValueError(f"{name}: {target!r} is neither an E.164 number nor a sip: URI")
        return targets

    @model_validator(mode="after")
    def _fallback_transfer_target(self) -> CallProfile:
        target = self.fallback_transfer
        if target is not None and target not in self.transfer and not re.match(TRANSFER_TARGET, target):
            raise ValueError(f"fallback_transfer {target!r} is neither a transfer name, an E.164 number nor a sip: URI")
        return self

    def transfer_target(self, name_or_target: str) -> str:
        """The number or URI to dial for a transfer name (or a target given directly)."""
        return self.transfer.get(name_or_target, name_or_target)


class _NumberTable(_Strict):
    """A `[defaults]` or `[numbers."+E164"]` table as written: every key optional."""

    instructions: str | None = None
    voice: str | None = None
    greeting: str | None = None
    turn_detection: dict[str, Any] | None = None
    transcription: str | None = None
    fallback_message: str | None = None
    record: bool | None = None
    redact: bool | None = None
    end_call: bool | None = None
    transfer: dict[str, str] | None = None
    fallback_transfer: str | None = None


class Limits(_Strict):
    """How much one bridge process takes on, and how long it waits for whom."""

    max_calls: int = Field(default=500, ge=1)
    busy_message: str = Field(default=DEFAULT_BUSY, min_length=1, max_length=MAX_SPOKEN_CHARS)
    drain_seconds: float = Field(default=30.0, ge=0)
    """On SIGTERM, how long live calls may run on before the rest are ended."""
    media_timeout_seconds: float = Field(default=10.0, gt=0)
    shutdown_message: str = Field(default=DEFAULT_SHUTDOWN, min_length=1, max_length=MAX_SPOKEN_CHARS)
    """What a caller hears when the bridge has to end their conversation (its drain ran out)."""
    session_renew_minutes: float = Field(default=25.0, gt=0)


class HttpLimits(_Strict):
    """How long the HTTP edge waits for a client, and how many connections it holds at once.

    uvicorn alone waits forever for a request that never completes: 300 idle, slow-header or slow-body
    connections were held for 40 s and more, until the process ran out of descriptors and a real webhook
    failed. Twilio sends a whole webhook in milliseconds, so these bounds only ever cut off stragglers.
    """

    header_timeout_seconds: float = Field(default=10.0, gt=0)
    """From a connection's start (or a kept-alive connection's next request's first byte) to the end of its headers."""
    body_timeout_seconds: float = Field(default=10.0, gt=0)
    """From the end of a request's headers to the end of its body."""
    keep_alive_seconds: float = Field(default=5.0, gt=0)
    """How long a connection may sit idle between requests."""
    max_connections: int | None = Field(default=None, ge=1)
    """Connections held at once, media sockets included; over it, requests are answered 503. Default: 4 per
    `[limits] max_calls` plus 64 (each call holds one media socket; webhooks, status callbacks and scrapes come and go)."""


def default_max_connections(max_calls: int) -> int:
    return max_calls * 4 + 64


class Recording(_Strict):
    """Where calls of numbers with `record = true` are written (a relative folder is taken from the working directory)."""

    folder: str = Field(default="recordings", min_length=1)
    max_megabytes: float = Field(default=50, gt=0)
    """A recording is cut (and says so in its last line) when it reaches this size: a flooding call must not fill the disk."""


class LogSettings(_Strict):
    """What the bridge's log lines may say about callers."""

    mask_caller_numbers: bool = True
    """Log callers' numbers with the last four digits hidden (+1415555****): logs travel further than the call log."""


class CallLogSettings(_Strict):
    """The SQLite call log: one row per call and its transcript (a relative path is taken from the working directory)."""

    path: str = "calls.sqlite3"
    """Empty: no call log."""


class _ConfigFile(_Strict):
    defaults: _NumberTable = _NumberTable()
    numbers: dict[str, _NumberTable] = {}
    limits: Limits = Limits()
    http: HttpLimits = HttpLimits()
    recording: Recording = Recording()
    logging: LogSettings = LogSettings()
    call_log: CallLogSettings = CallLogSettings()


@dataclass(frozen=True)
class BridgeConfig:
    """The per-number configuration: the defaults and one profile per called number."""

    defaults: CallProfile = CallProfile()
    numbers: Mapping[str, CallProfile] = field(default_factory=dict)
    limits: Limits = Limits()
    http: HttpLimits = HttpLimits(max_connections=default_max_connections(Limits().max_calls))
    """`max_connections` is always set here: `parse_config` fills in its default from `max_calls`."""
    recording: Recording = Recording()
    logging: LogSettings = LogSettings()
    call_log: CallLogSettings = CallLogSettings()
    source: str = "<built-in defaults>"

    def profile_for(self, called_number: str) -> CallProfile:
        """The profile of the number the caller dialled; an unlisted number gets the defaults."""
        return self.numbers.get(called_number, self.defaults)


def _merge(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(defaults)
    for key, value in overrides.items():
        if key == "turn_detection" and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _first_error(source: str, prefix: str, error: ValidationError) -> ConfigError:
    first = error.errors()[0]
    key = ".".join(str(part) for part in (prefix, *first["loc"]) if part != "")
    reason = first["msg"]
    if first["type"] == "extra_forbidden":
        reason = "unknown key"
    return ConfigError(source, key or "<file>", reason)


def _profile(source: str, key: str, table: dict[str, Any]) -> CallProfile:
    try:
        return CallProfile.model_validate(table)
    except ValidationError as error:
        raise _first_error(source, key, error) from None


def parse_config(text: str, source: str) -> BridgeConfig:
    """Validate a TOML configuration; raise `ConfigError` naming the key and the reason."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(source, "<file>", f"not valid TOML: {error}") from None
    try:
        parsed = _ConfigFile.model_validate(raw)
    except ValidationError as error:
        raise _first_error(source, "", error) from None
    default_table = parsed.defaults.model_dump(exclude_none=True)
    defaults = _profile(source, "defaults", default_table)
    numbers = {}
    for number, table in parsed.numbers.items():
        if not E164.match(number):
            raise ConfigError(source, f'numbers."{number}"', "not an E.164 number such as +14155550100")
        numbers[number] = _profile(
            source, f'numbers."{number}"', _merge(default_table, table.model_dump(exclude_none=True))
        )
    http = parsed.http
    if http.max_connections is None:
        http = http.model_copy(update={"max_connections": default_max_connections(parsed.limits.max_calls)})
    return BridgeConfig(
        defaults=defaults, numbers=numbers, limits=parsed.limits, http=http, recording=parsed.recording,
        logging=parsed.logging, call_log=parsed.call_log, source=source,
    )


def load_config(path: Path) -> BridgeConfig:
    """Read and validate the configuration file at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        hint = f"; `telephony-bridge init-config {path}` writes a commented example there"
        raise ConfigError(str(path), "<file>", f"cannot be read: {error.strerror}{hint}") from None
    except OSError as error:
        raise ConfigError(str(path), "<file>", f"cannot be read: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(str(path), "<file>", f"not UTF-8 text (byte {error.start} cannot be decoded)") from None
    return parse_config(text, str(path))


def example_config() -> str:
    """The commented example configuration shipped inside the package, so an installed bridge can write one out.

    ``config/bridge.toml`` in the repository is this text, written by ``telephony-bridge init-config``.
    """
    return resources.files("telephony_bridge").joinpath("bridge.example.toml").read_text(encoding="utf-8")


Dialect = Literal["ga", "preview"]


@dataclass(frozen=True)
class RealtimeEndpoint:
    """Where and how to open a Realtime session. `headers` hold the key: never log them."""

    url: str
    headers: Mapping[str, str] = field(repr=False)
    dialect: Dialect

    @property
    def model(self) -> str:
        """The model (OpenAI) or deployment (Azure) the URL asks for; empty when it names neither."""
        query = dict(parse_qsl(urlsplit(self.url).query))
        return query.get("model") or query.get("deployment") or ""


@dataclass(frozen=True)
class Settings:
    """The environment the bridge runs in; secrets are kept out of `repr`."""

    public_url: str
    realtime: RealtimeEndpoint
    config_path: Path
    twilio_auth_token: str | None = field(default=None, repr=False)
    trust_forwarded_headers: bool = False
    """Take the signed URL's scheme and host from X-Forwarded-Proto/-Host: only behind a proxy you run."""
    stream_token_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    twilio_api_url: str = DEFAULT_TWILIO_API_URL
    """Where Twilio's REST API is: another URL points the bridge at a stand-in (tests, the demo, staging)."""
    twilio_account_sid: str | None = None
    """The account whose calls the bridge acts on; unset, each call's own `AccountSid` is used."""
    twilio_api_key: str | None = field(default=None, repr=False)
    """An API key SID (SK...) and its secret authenticate REST requests instead of the account SID and auth token."""
    twilio_api_secret: str | None = field(default=None, repr=False)

    @property
    def media_stream_url(self) -> str:
        """The wss:// URL Twilio connects to, and signs, for the Media Stream."""
        parts = urlsplit(self.public_url)
        return f"wss://{parts.netloc}{parts.path.rstrip('/')}/twilio/media"

    @property
    def voice_webhook_url(self) -> str:
        return f"{self.public_url.rstrip('/')}/twilio/voice"


def _realtime_endpoint(env: Mapping[str, str]) -> RealtimeEndpoint:
    forced = env.get("REALTIME_API")
    if forced not in (None, "", "ga", "preview"):
        raise ConfigError("environment", "REALTIME_API", f"must be 'ga' or 'preview', not {forced!r}")
    model = env.get("REALTIME_MODEL") or "gpt-realtime"
    azure_endpoint = env.get("AZURE_OPENAI_ENDPOINT")
    if azure_endpoint:
        key = env.get("AZURE_OPENAI_API_KEY")
        deployment = env.get("AZURE_OPENAI_DEPLOYMENT")
        if not key:
            raise ConfigError("environment", "AZURE_OPENAI_API_KEY", "required with AZURE_OPENAI_ENDPOINT")
        if not deployment:
            raise ConfigError("environment", "AZURE_OPENAI_DEPLOYMENT", "required with AZURE_OPENAI_ENDPOINT")
        host = urlsplit(azure_endpoint if "://" in azure_endpoint else f"https://{azure_endpoint}").netloc
        api_version = env.get("AZURE_OPENAI_API_VERSION")
        if api_version:
            url = (
                f"wss://{host}/openai/realtime?api-version={quote(api_version)}&deployment={quote(deployment)}"
            )
            dialect: Dialect = "preview"
        else:
            url = f"wss://{host}/openai/v1/realtime?model={quote(deployment)}"
            dialect = "ga"
        headers = {"api-key": key}
    else:
        url = f"wss://api.openai.com/v1/realtime?model={quote(model)}"
        dialect = "ga"
        key = env.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = env.get("REALTIME_URL") or url
    return RealtimeEndpoint(url=url, headers=headers, dialect=forced or dialect)  # type: ignore[arg-type]


def settings_from_env(env: Mapping[str, str] | None = None, config_path: Path | None = None) -> Settings:
    """Read the bridge's environment variables (see README) into `Settings`.

    `config_path` is the command line's ``--config``: it wins over ``BRIDGE_CONFIG``.
    """
    env = os.environ if env is None else env
    public_url = env.get("PUBLIC_URL") or "http://127.0.0.1:8080"
    scheme = urlsplit(public_url).scheme
    if scheme not in ("http", "https") or not urlsplit(public_url).netloc:
        raise ConfigError(
            "environment", "PUBLIC_URL", f"must be an http(s) URL such as https://bridge.example.com, not {public_url!r}"
        )
    secret = env.get("STREAM_TOKEN_SECRET")
    api_url = (env.get("TWILIO_API_URL") or DEFAULT_TWILIO_API_URL).rstrip("/")
    if urlsplit(api_url).scheme not in ("http", "https") or not urlsplit(api_url).netloc:
        reason = f"must be an http(s) URL such as {DEFAULT_TWILIO_API_URL}, not {api_url!r}"
        raise ConfigError("environment", "TWILIO_API_URL", reason)
    api_key, api_secret = env.get("TWILIO_API_KEY") or None, env.get("TWILIO_API_SECRET") or None
    if (api_key is None) != (api_secret is None):
        missing = "TWILIO_API_SECRET" if api_secret is None else "TWILIO_API_KEY"
        raise ConfigError("environment", missing, "TWILIO_API_KEY and TWILIO_API_SECRET go together")
    return Settings(
        public_url=public_url.rstrip("/"),
        realtime=_realtime_endpoint(env),
        config_path=config_path or Path(env.get("BRIDGE_CONFIG") or DEFAULT_CONFIG_PATH),
        twilio_auth_token=env.get("TWILIO_AUTH_TOKEN") or None,
        trust_forwarded_headers=(env.get("TRUST_FORWARDED_HEADERS") or "").lower() in ("1", "true", "yes"),
        stream_token_secret=secret.encode() if secret else secrets.token_bytes(32),
        twilio_api_url=api_url,
        twilio_account_sid=env.get("TWILIO_ACCOUNT_SID") or None,
        twilio_api_key=api_key,
        twilio_api_secret=api_secret,
    )
