"""Configuration: the environment and the per-number TOML file, loaded and validated once at start-up.

Everything the bridge reads from outside lives here; nothing else reads ``os.environ``.
An invalid file stops start-up with one line naming the file, the key and the reason.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import tomllib
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, time
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from telephony_bridge.errors import ConfigError, ConfigErrors
from telephony_bridge.realtime.entra import CredentialFactory, EntraToken, default_credential_factory

Dialect = Literal["ga", "preview"]
AudioFormat = Literal["pcm16", "pcmu"]
"""What the model hears and speaks: PCM16 at 24 kHz (converted from and to the caller's mu-law), or the mu-law itself."""
"""The Realtime API's two shapes: GA, and Azure's `api-version=2024-10-01-preview` (and later previews)."""

DEFAULT_CONFIG_PATH = Path("config/bridge.toml")
DEFAULT_TWILIO_API_URL = "https://api.twilio.com"
"""Where the configuration is read from when neither ``--config`` nor ``BRIDGE_CONFIG`` names a file."""

E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")

DEFAULT_FALLBACK = "Sorry, we cannot take your call right now. Please try again later."
DEFAULT_BUSY = "All our lines are busy right now. Please call again in a few minutes."
DEFAULT_SHUTDOWN = "Sorry, we have to end this call now. Please call us again."
DEFAULT_RECORDING_NOTICE = "This call is recorded."
"""What a caller of a number with `record = true` hears before the conversation, unless it sets `recording_notice`."""

MAX_INSTRUCTIONS_CHARS = 32 * 1024
"""The model's instructions go out in every `session.update` (at each call's start and each renewal), one
websocket message the service bounds; 32 KiB is pages of prompt, far more than a phone line needs, and keeps a
mistaken paste (a whole manual, 18 MB) from being accepted at start-up and refused by the service on every call."""
MAX_SPOKEN_CHARS = 4096
"""A greeting or a message said with TwiML `<Say>`: Twilio says at most 4,096 characters per `<Say>`."""
VOICE_NAME = r"^[a-z0-9_-]{1,32}$"
"""Voice names are short lower-case tokens (`marin`, `cedar`, `alloy`); anything else is a typo."""
TRANSFER_NAME = r"^[a-z][a-z0-9_]{0,39}$"
TRANSFER_TARGET = r"^(\+[1-9][0-9]{6,14}|sip:[^\s<>\"]{3,200})$"
"""An E.164 number Twilio dials, or a SIP URI (sip:user@host)."""

DEFAULT_MODEL = "gpt-realtime-1.5"
"""OpenAI's model when `REALTIME_MODEL` does not name one. `gpt-realtime` and `gpt-realtime-mini` have an announced
shutdown (2027-01-20); of the models without one, the `gpt-realtime-2` family reasons before it speaks, which adds
to the time to first audio a caller waits after every turn, so the non-reasoning `gpt-realtime-1.5` answers a phone
line best. Pin another with `REALTIME_MODEL`."""

PREVIEW_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse"})
"""The voices the 2024-10-01 preview accepts: any other fails the whole `session.update`."""
GA_VOICES = PREVIEW_VOICES | {"marin", "cedar"}
"""The GA API's built-in voices: the preview's and the two it added."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TurnDetection(_Strict):
    """How the model decides the caller has finished speaking (server-side voice activity detection)."""

    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(default=None, ge=0, le=5000)
    silence_duration_ms: int | None = Field(default=None, ge=0, le=10000)
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    idle_timeout_ms: int | None = Field(default=None, gt=0)
    """GA server VAD only: after this long of silence once the model's audio has played, the model prompts the caller."""

    @model_validator(mode="after")
    def _fields_of_the_type(self) -> TurnDetection:
        """A field the chosen VAD does not take is an error: the service would silently ignore or refuse it."""
        given = self.model_dump(exclude_none=True, exclude={"type"})
        own = SEMANTIC_VAD_FIELDS if self.type == "semantic_vad" else SERVER_VAD_FIELDS
        stray = sorted(set(given) - own)
        if stray:
            other = "server_vad" if self.type == "semantic_vad" else "semantic_vad"
            raise ValueError(f"{', '.join(stray)}: a {other} setting, not taken by type = {self.type!r}")
        return self


SERVER_VAD_FIELDS = frozenset({"threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms"})
SEMANTIC_VAD_FIELDS = frozenset({"eagerness"})

TOOL_NAME = r"^[a-zA-Z][a-zA-Z0-9_-]{0,63}$"
"""A function name the Realtime API accepts: letters, digits, `_` and `-`, at most 64."""
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
RESERVED_TOOL_NAMES = frozenset({"end_call", "transfer_call", "opt_out"})
"""The built-in functions (`call_control`): an operator's tool may not take their names."""
JSON_SCHEMA_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object", "null"})


def _resolve_env(info: ValidationInfo, name: str | None) -> SecretStr | None:
    """The value of the environment variable `name`, when the profile is validated with an environment (at start-up).

    Validated without one (a profile read back from a recording), nothing is resolved and nothing is signed.
    """
    env = info.context.get("env") if isinstance(info.context, dict) else None
    if name is None or env is None:
        return None
    value = env.get(name)
    if not value:
        raise ValueError(f"the environment variable {name} is not set")
    return SecretStr(value)


def _with_secret(data: Any, info: ValidationInfo) -> Any:
    """A tool's or after-call's table with its `secret` resolved from `secret_env`; a secret in the file is refused."""
    if not isinstance(data, dict):
        return data
    if "secret" in data:
        if isinstance(data["secret"], SecretStr):
            return data
        raise ValueError("a secret does not go in the file: put it in the environment and name it with secret_env")
    secret = _resolve_env(info, data.get("secret_env"))
    return {**data, "secret": secret} if secret is not None else data


def _loopback(host: str | None) -> bool:
    return host in ("localhost", "127.0.0.1", "::1") or (host or "").startswith("127.")


def _tool_url(url: str) -> str:
    """https, or http to this machine only: a tool's request carries the caller's words and the call's numbers."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname or parts.scheme == "http" and _loopback(parts.hostname):
        return url
    raise ValueError(f"{url!r} is not an https URL (http is allowed only for localhost)")


def _check_schema(schema: Any, where: str) -> None:
    """The JSON Schema subset function parameters use: typed properties, `required` naming them.

    Checked by hand rather than with the `jsonschema` package: what the Realtime API and the model
    need is this shape, and a typo in it (`"type": "str"`, a required key never declared) should
    stop start-up with the key named, which a meta-schema error does less plainly.
    """
    if not isinstance(schema, dict):
        raise ValueError(f"{where} is not a JSON Schema object")
    kind = schema.get("type")
    if kind is not None and kind not in JSON_SCHEMA_TYPES:
        raise ValueError(f"{where}: type {kind!r} is not a JSON Schema type")
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        raise ValueError(f"{where}: properties is not a table")
    for name, inner in properties.items():
        _check_schema(inner, f"{where}.properties.{name}")
    required = schema.get("required", [])
    if not isinstance(required, list) or any(not isinstance(key, str) or key not in properties for key in required):
        raise ValueError(f"{where}: required must list names of its properties")
    if "items" in schema:
        _check_schema(schema["items"], f"{where}.items")


class _SignedEndpoint(_Strict):
    """An operator's URL the bridge POSTs to, signed with the secret `secret_env` names (tools, the after-call report)."""

    url: str
    secret_env: str | None = Field(default=None, pattern=ENV_NAME)
    """The environment variable that holds the signing secret; unset, requests go unsigned."""
    secret: SecretStr | None = Field(default=None, exclude=True, repr=False)
    """Resolved from `secret_env` at start-up; never dumped, logged or recorded."""

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return _tool_url(url)

    @model_validator(mode="before")
    @classmethod
    def _secret_from_env(cls, data: Any, info: ValidationInfo) -> Any:
        return _with_secret(data, info)


class HttpTool(_SignedEndpoint):
    """An operator's function: the model calls it, the bridge POSTs the call to `url` and hands the answer back."""

    name: str = Field(pattern=TOOL_NAME)
    description: str = Field(min_length=1, max_length=1024)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, parameters: dict[str, Any]) -> dict[str, Any]:
        if parameters.get("type") != "object":
            raise ValueError('parameters must be a JSON Schema of type "object"')
        _check_schema(parameters, "parameters")
        return parameters


class McpServer(_Strict):
    """An MCP server the Realtime service calls itself (GA only); header values come from the environment."""

    server_label: str = Field(pattern=TOOL_NAME)
    server_url: str
    allowed_tools: list[str] | None = None
    headers_env: dict[str, str] = Field(default_factory=dict)
    """Header name -> the environment variable holding its value (`Authorization = "MCP_TOKEN"`)."""
    headers: dict[str, SecretStr] = Field(default_factory=dict, exclude=True, repr=False)

    @field_validator("server_url")
    @classmethod
    def _url(cls, url: str) -> str:
        return _tool_url(url)

    @model_validator(mode="before")
    @classmethod
    def _headers_from_env(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and "headers" not in data and isinstance(data.get("headers_env"), dict):
            headers = {header: _resolve_env(info, name) for header, name in data["headers_env"].items()}
            data = {**data, "headers": {header: value for header, value in headers.items() if value is not None}}
        return data


class AfterCall(_SignedEndpoint):
    """Where the summary of each ended call is POSTed, signed like a tool request."""

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""The keys of `hours.open`, in `date.weekday()` order."""
_SPAN = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])$")


def _spans(text: str) -> tuple[tuple[time, time | None], ...]:
    """`"09:00-12:30, 13:30-17:00"` as (start, end) pairs; an end of 24:00 is `None`, the end of the day."""
    spans: list[tuple[time, time | None]] = []
    for part in text.split(","):
        match = _SPAN.match(part.strip())
        if match is None:
            raise ValueError(f"{part.strip()!r} is not a span such as 09:00-17:30")
        start = time(int(match[1]), int(match[2]))
        end = None if match[3] == "24" else time(int(match[3]), int(match[4]))
        if match[3] == "24" and match[4] != "00":
            raise ValueError(f"{part.strip()!r}: a span ends at 24:00 at the latest")
        if end is not None and end <= start:
            raise ValueError(f"{part.strip()!r} ends before it starts (a span past midnight is two days' spans)")
        spans.append((start, end))
    return tuple(spans)


class Hours(_Strict):
    """When a number is open: spans per weekday in a named time zone, closed on `holidays`; see `policy.is_open`."""

    time_zone: str
    """An IANA name such as Europe/London: daylight saving is the zone's, not the operator's, to get right."""
    open: dict[str, str]
    """Weekday (mon ... sun) -> `"09:00-17:30"`, or several spans separated by commas; a day not listed is closed."""
    holidays: list[str] = Field(default_factory=list)
    """Dates (YYYY-MM-DD, in the number's time zone) the number is closed all day."""

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, name: str) -> str:
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{name!r} is not a time zone name such as Europe/London") from None
        return name

    @field_validator("open")
    @classmethod
    def _open(cls, days: dict[str, str]) -> dict[str, str]:
        for day, text in days.items():
            if day not in DAYS:
                raise ValueError(f"{day!r} is not a day: one of {', '.join(DAYS)}")
            try:
                _spans(text)
            except ValueError as error:
                raise ValueError(f"{day}: {error}") from None
        return days

    @field_validator("holidays", mode="before")
    @classmethod
    def _holidays(cls, holidays: Any) -> Any:
        if not isinstance(holidays, list):
            return holidays
        days = [day.isoformat() if isinstance(day, date) else day for day in holidays]
        for day in days:
            try:
                date.fromisoformat(day)
            except (TypeError, ValueError):
                raise ValueError(f"{day!r} is not a date such as 2026-12-25") from None
        return days

    def spans(self, weekday: int) -> tuple[tuple[time, time | None], ...]:
        return _spans(self.open[DAYS[weekday]]) if DAYS[weekday] in self.open else ()


class Retention(_Strict):
    """How long a number's calls are kept, in days, apart for recordings and for transcripts; unset keeps them."""

    recordings: float | None = Field(default=None, gt=0)
    transcripts: float | None = Field(default=None, gt=0)


class ModelPrices(_Strict):
    """What a model's tokens cost, per million, in the operator's currency; the bridge has no prices of its own."""

    audio_in: float = Field(ge=0)
    audio_out: float = Field(ge=0)
    text_in: float = Field(ge=0)
    text_out: float = Field(ge=0)
    cached_in: float | None = Field(default=None, ge=0)
    """Input tokens (audio or text) the service served from its cache; unset, they cost what other input tokens do."""


POLICY_KEYS = frozenset({"hours", "after_hours", "retention_days"})
"""A number's keys an `after_hours` table may not set: they are the number's, whichever profile a call keeps."""


class CallProfile(_Strict):
    """What a caller of one number gets: the effective settings after the number's table overrides the defaults."""

    instructions: str = Field(
        default="You are a helpful, concise assistant answering a phone call.", min_length=1, max_length=MAX_INSTRUCTIONS_CHARS
    )
    voice: str = Field(default="marin", pattern=VOICE_NAME)
    greeting: str | None = Field(default=None, max_length=MAX_SPOKEN_CHARS)
    turn_detection: TurnDetection = TurnDetection()
    noise_reduction: Literal["near_field", "far_field"] | None = None
    """GA only: the service's input noise reduction; `far_field` for speakerphones and hands-free cars."""
    audio_format: AudioFormat = "pcm16"
    """GA only: `pcmu` gives the model the caller's mu-law as it is, both ways, and skips the conversion."""
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
    voicemail_message: str | None = Field(default=None, max_length=MAX_SPOKEN_CHARS)
    """Outbound calls: what the model leaves on an answering machine (`{name}` placeholders filled from the context);
    unset, the model composes a short message from the call's context."""
    opt_out: bool = False
    """The model may put the person on the do-not-call list (its `opt_out` function); on for every outbound call."""
    tools: list[HttpTool] = Field(default_factory=list)
    """The operator's functions (see `tools`): a number's replace the defaults' unless it says `inherit_tools`."""
    mcp: list[McpServer] = Field(default_factory=list)
    after_call: AfterCall | None = None
    hours: Hours | None = None
    """When the number is open; outside them (and on holidays) a call starts with `after_hours`, kept to its end."""
    after_hours: CallProfile | None = None
    """The number's settings outside `hours`: its table overrides this profile's keys (instructions, tools, ...)."""
    max_call_minutes: float | None = Field(default=None, gt=0)
    """The model is asked to wrap up a minute before; then it says goodbye and the line drops once that has played."""
    silence_hangup_seconds: float | None = Field(default=None, gt=0)
    """With neither side speaking this long, the model asks once whether the caller is there; as long again, it ends."""
    max_cost_per_call: float | None = Field(default=None, gt=0)
    """With `[prices]` for the model: once a call's estimated cost reaches this, the model says goodbye and it ends."""
    recording_notice: str = Field(default=DEFAULT_RECORDING_NOTICE, max_length=MAX_SPOKEN_CHARS)
    """Said (TwiML `<Say>`) before the stream connects when the number records: heard before the model's first word.
    Empty: no notice, unless `recording_notice_required`."""
    recording_notice_required: bool = False
    """The number may not record without a notice (e.g. a jurisdiction that requires it): `check` refuses it."""
    retention_days: Retention = Retention()

    @field_validator("after_hours")
    @classmethod
    def _after_hours(cls, after_hours: CallProfile | None, info: ValidationInfo) -> CallProfile | None:
        if after_hours is not None and info.data.get("hours") is None:
            raise ValueError("needs hours: without them the number is always open")
        if after_hours is not None and (after_hours.hours is not None or after_hours.after_hours is not None
                                        or after_hours.retention_days != Retention()):
            raise ValueError("may not set hours, after_hours or retention_days: they are the number's")
        return after_hours

    @field_validator("recording_notice_required")
    @classmethod
    def _notice_required(cls, required: bool, info: ValidationInfo) -> bool:
        if required and info.data.get("record") and not str(info.data.get("recording_notice", "x")).strip():
            raise ValueError("this number records, so its recording_notice may not be empty")
        return required

    @field_validator("tools")
    @classmethod
    def _tool_names(cls, tools: list[HttpTool]) -> list[HttpTool]:
        seen: set[str] = set()
        for tool in tools:
            if tool.name in RESERVED_TOOL_NAMES:
                raise ValueError(f"{tool.name!r} is a built-in function's name")
            if tool.name in seen:
                raise ValueError(f"two tools are named {tool.name!r}")
            seen.add(tool.name)
        return tools

    @field_validator("mcp")
    @classmethod
    def _mcp_labels(cls, servers: list[McpServer]) -> list[McpServer]:
        labels = [server.server_label for server in servers]
        if len(set(labels)) != len(labels):
            raise ValueError("two MCP servers have the same server_label")
        return servers

    def tool(self, name: str) -> HttpTool | None:
        return next((tool for tool in self.tools if tool.name == name), None)

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
    noise_reduction: str | None = None
    audio_format: str | None = None
    transcription: str | None = None
    fallback_message: str | None = None
    record: bool | None = None
    redact: bool | None = None
    end_call: bool | None = None
    transfer: dict[str, str] | None = None
    fallback_transfer: str | None = None
    voicemail_message: str | None = None
    opt_out: bool | None = None
    tools: list[dict[str, Any]] | None = None
    mcp: list[dict[str, Any]] | None = None
    inherit_tools: bool | None = None
    """A number's `tools` and `mcp` add to the defaults' instead of replacing them."""
    after_call: dict[str, Any] | None = None
    hours: Any = None
    """The policy keys are checked once, by `CallProfile` (here they would be reported twice, under another key)."""
    after_hours: Any = None
    max_call_minutes: Any = None
    silence_hangup_seconds: Any = None
    max_cost_per_call: Any = None
    recording_notice: Any = None
    recording_notice_required: Any = None
    retention_days: Any = None


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


class RetentionSchedule(_Strict):
    """How often the server deletes what its numbers' `retention_days` say has expired."""

    purge_every_minutes: float = Field(default=60.0, gt=0)


class Campaigns(_Strict):
    """Call lists run by the server (`telephony-bridge campaign`), in the call log's database."""

    reconcile_seconds: float = Field(default=30.0, gt=0)
    """How often a call left dialling by a stopped bridge is looked up in Twilio's record until it is over."""


class _ConfigFile(_Strict):
    defaults: _NumberTable = _NumberTable()
    numbers: dict[str, _NumberTable] = {}
    limits: Limits = Limits()
    http: HttpLimits = HttpLimits()
    recording: Recording = Recording()
    logging: LogSettings = LogSettings()
    call_log: CallLogSettings = CallLogSettings()
    prices: dict[str, ModelPrices] = {}
    """Model (or Azure deployment) name -> its prices: a call's estimated cost, and `max_cost_per_call`."""
    retention: RetentionSchedule = RetentionSchedule()
    campaigns: Campaigns = Campaigns()


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
    prices: Mapping[str, ModelPrices] = field(default_factory=dict)
    retention: RetentionSchedule = RetentionSchedule()
    campaigns: Campaigns = Campaigns()
    source: str = "<built-in defaults>"
    digest: str = hashlib.sha256(b"").hexdigest()
    """sha256 of the file's bytes (`config_digest`): shown in `/metrics` and the admin API, and after each reload."""

    def profile_for(self, called_number: str) -> CallProfile:
        """The profile of the number the caller dialled; an unlisted number gets the defaults."""
        return self.numbers.get(called_number, self.defaults)


def _with_after_hours(table: dict[str, Any]) -> dict[str, Any]:
    """A profile's `after_hours` table as written, merged over the profile's own keys (less `hours`)."""
    after_hours = table.get("after_hours")
    if not isinstance(after_hours, dict):
        return table
    base = {key: value for key, value in table.items() if key not in POLICY_KEYS}
    return {**table, "after_hours": _merge(base, after_hours)}


def _merge(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A number's table over the defaults; its `turn_detection` is merged key by key, unless it names another
    VAD type: then it is taken whole, as the defaults' fields of the other type would not apply."""
    merged = dict(defaults)
    inherit = overrides.get("inherit_tools") is True
    merged.pop("inherit_tools", None)
    for key, value in overrides.items():
        if key == "inherit_tools":
            continue
        inherited = merged.get(key)
        if key in ("tools", "mcp") and inherit and isinstance(value, list) and isinstance(inherited, list):
            merged[key] = [*inherited, *value]
        elif (key == "turn_detection" and isinstance(value, dict) and isinstance(inherited, dict)
                and value.get("type", inherited.get("type", "server_vad")) == inherited.get("type", "server_vad")):
            merged[key] = {**inherited, **value}
        else:
            merged[key] = value
    return merged


def _problems(source: str, prefix: str, error: ValidationError) -> list[ConfigError]:
    """Every error pydantic found, one `ConfigError` each: `check` reports them all at once."""
    problems = []
    for found in error.errors():
        key = ".".join(str(part) for part in (prefix, *found["loc"]) if part != "")
        reason = "unknown key" if found["type"] == "extra_forbidden" else found["msg"]
        problems.append(ConfigError(source, key or "<file>", reason))
    return problems


def _table(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    return dict(value) if isinstance(value, dict) else {}


def _dialect_problems(
    source: str, key: str, profile: CallProfile, own: dict[str, Any] | None, dialect: Dialect
) -> list[ConfigError]:
    """What a profile asks that the dialect cannot do; for a number, only what it sets itself (not what it inherits)."""
    def set_here(name: str, table: Mapping[str, Any] | None = own) -> bool:
        return own is None or isinstance(table, dict) and name in table

    problems = []
    voices = PREVIEW_VOICES if dialect == "preview" else GA_VOICES
    if profile.voice not in voices and set_here("voice"):
        name = "the 2024-10-01 preview" if dialect == "preview" else "the GA Realtime API"
        reason = f"{profile.voice!r} is not a voice of {name}: one of {', '.join(sorted(voices))}"
        problems.append(ConfigError(source, f"{key}.voice", reason))
    if dialect == "preview":
        if profile.noise_reduction is not None and set_here("noise_reduction"):
            problems.append(ConfigError(source, f"{key}.noise_reduction", "GA only: the preview dialect has no noise reduction"))
        vad = own.get("turn_detection") if own is not None else None
        if profile.turn_detection.idle_timeout_ms is not None and set_here("idle_timeout_ms", vad):
            reason = "GA only: the preview dialect has no idle timeout"
            problems.append(ConfigError(source, f"{key}.turn_detection.idle_timeout_ms", reason))
        if profile.audio_format == "pcmu" and set_here("audio_format"):
            reason = "GA only: the bridge speaks mu-law to the model on the GA API only; use 'pcm16'"
            problems.append(ConfigError(source, f"{key}.audio_format", reason))
    return problems


def parse_config(
    text: str, source: str, env: Mapping[str, str] | None = None, *, dialect: Dialect | None = None
) -> BridgeConfig:
    """Validate a TOML configuration; raise `ConfigError` naming the key and the reason of each problem.

    `env` (default: the process environment) holds the secrets the tools name (`secret_env`, `headers_env`):
    each must be set.

    Every problem is found before raising (`ConfigErrors` when there are several), so an operator fixes a
    file in one round rather than one error per start. With the environment's `dialect`, what that dialect
    cannot do is an error too: a voice it does not know, GA-only settings on the preview.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(source, "<file>", f"not valid TOML: {error}") from None
    found: dict[str, ConfigError] = {}

    def note(problems: list[ConfigError]) -> None:
        # The file's shape and each profile are validated apart; a key wrong in both is reported once.
        for problem in problems:
            found.setdefault(problem.key, problem)

    parsed: _ConfigFile | None = None
    try:
        parsed = _ConfigFile.model_validate(raw)
    except ValidationError as error:
        note(_problems(source, "", error))
    default_table = _table(raw, "defaults")
    profiles: dict[str, CallProfile] = {}
    tables: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {"defaults": (default_table, None)} | {
        f'numbers."{number}"': (_merge(default_table, table), table) for number, table in _table(raw, "numbers").items()
        if isinstance(table, dict)
    }
    for key, (table, own) in tables.items():
        try:
            context = {"env": os.environ if env is None else env}
            profiles[key] = CallProfile.model_validate(_with_after_hours(table), context=context)
        except ValidationError as error:
            # A wrong default is reported once, under [defaults], not again under every number inheriting it.
            note([problem for problem in _problems(source, key, error)
                  if own is None or problem.key.removeprefix(f"{key}.").split(".")[0] in own])
        else:
            if dialect is not None:
                note(_dialect_problems(source, key, profiles[key], own, dialect))
    for number in _table(raw, "numbers"):
        if not E164.match(number):
            note([ConfigError(source, f'numbers."{number}"', "not an E.164 number such as +14155550100")])
    if found or parsed is None:
        raise ConfigErrors(list(found.values()))
    http = parsed.http
    if http.max_connections is None:
        http = http.model_copy(update={"max_connections": default_max_connections(parsed.limits.max_calls)})
    return BridgeConfig(
        defaults=profiles["defaults"],
        numbers={number: profiles[f'numbers."{number}"'] for number in parsed.numbers},
        limits=parsed.limits, http=http, recording=parsed.recording, logging=parsed.logging, call_log=parsed.call_log,
        prices=parsed.prices, retention=parsed.retention, campaigns=parsed.campaigns,
        source=source, digest=config_digest(text.encode("utf-8")),
    )


def config_digest(data: bytes) -> str:
    """The configuration's hash: sha256 of the file's bytes, so two bridges (or a bridge before and after a
    reload) can be seen to run the same file; the environment, which holds the secrets, is not part of it."""
    return hashlib.sha256(data).hexdigest()


def load_config(path: Path, env: Mapping[str, str] | None = None, *, dialect: Dialect | None = None) -> BridgeConfig:
    """Read and validate the configuration file at `path` (for `dialect`, when given: see `parse_config`)."""
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except FileNotFoundError as error:
        hint = f"; `telephony-bridge init-config {path}` writes a commented example there"
        raise ConfigError(str(path), "<file>", f"cannot be read: {error.strerror}{hint}") from None
    except OSError as error:
        raise ConfigError(str(path), "<file>", f"cannot be read: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(str(path), "<file>", f"not UTF-8 text (byte {error.start} cannot be decoded)") from None
    return parse_config(text, str(path), env, dialect=dialect)


def example_config() -> str:
    """The commented example configuration shipped inside the package, so an installed bridge can write one out.

    ``config/bridge.toml`` in the repository is this text, written by ``telephony-bridge init-config``.
    """
    return resources.files("telephony_bridge").joinpath("bridge.example.toml").read_text(encoding="utf-8")


@dataclass(frozen=True)
class RealtimeEndpoint:
    """Where and how to open a Realtime session. `headers` hold the key: never log them.

    `token`, for Azure with Microsoft Entra ID, gives the `Authorization` header at each open instead.
    """

    url: str
    headers: Mapping[str, str] = field(repr=False)
    dialect: Dialect
    token: EntraToken | None = field(default=None, repr=False, compare=False)

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
    admin_token: str | None = field(default=None, repr=False)
    """`BRIDGE_ADMIN_TOKEN`: the bearer token of the admin API; unset, the API is off."""
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
    database_url: str | None = field(default=None, repr=False)
    """`DATABASE_URL=postgresql://...`: instances sharing it are one fleet (store/); unset, one process on SQLite."""
    instance_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    """`BRIDGE_INSTANCE_ID`: this instance's name in the fleet's live-call registry (default: host and pid)."""
    fleet_lost_after_s: float = 30.0
    """`FLEET_LOST_AFTER_SECONDS`: an instance silent this long is dead, and its calls are marked lost."""

    @property
    def media_stream_url(self) -> str:
        """The wss:// URL Twilio connects to, and signs, for the Media Stream."""
        parts = urlsplit(self.public_url)
        return f"wss://{parts.netloc}{parts.path.rstrip('/')}/twilio/media"

    @property
    def voice_webhook_url(self) -> str:
        return f"{self.public_url.rstrip('/')}/twilio/voice"


def _realtime_endpoint(env: Mapping[str, str], credential_factory: CredentialFactory | None) -> RealtimeEndpoint:
    forced = env.get("REALTIME_API")
    if forced not in (None, "", "ga", "preview"):
        raise ConfigError("environment", "REALTIME_API", f"must be 'ga' or 'preview', not {forced!r}")
    model = env.get("REALTIME_MODEL") or DEFAULT_MODEL
    azure_endpoint = env.get("AZURE_OPENAI_ENDPOINT")
    token: EntraToken | None = None
    if azure_endpoint:
        key = env.get("AZURE_OPENAI_API_KEY")
        deployment = env.get("AZURE_OPENAI_DEPLOYMENT")
        if not key:
            token = EntraToken(credential_factory or default_credential_factory())
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
        headers = {"api-key": key} if key else {}
    else:
        url = f"wss://api.openai.com/v1/realtime?model={quote(model)}"
        dialect = "ga"
        key = env.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = env.get("REALTIME_URL") or url
    return RealtimeEndpoint(url=url, headers=headers, dialect=forced or dialect, token=token)  # type: ignore[arg-type]


def settings_from_env(
    env: Mapping[str, str] | None = None, config_path: Path | None = None, *, credential_factory: CredentialFactory | None = None
) -> Settings:
    """Read the bridge's environment variables (see README) into `Settings`.

    `config_path` is the command line's ``--config``: it wins over ``BRIDGE_CONFIG``. `credential_factory`
    makes the Microsoft Entra ID credential used when Azure is given no key (default: `DefaultAzureCredential`).
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
    database_url = env.get("DATABASE_URL") or None
    if database_url is not None and not database_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("environment", "DATABASE_URL", "must be a postgresql:// URL (unset, the bridge uses SQLite)")
    if database_url is not None and not secret:
        # Each instance would make up its own, and a stream token issued by one would be refused by the others.
        raise ConfigError("environment", "STREAM_TOKEN_SECRET", "required with DATABASE_URL: the same for every instance")
    lost_after = env.get("FLEET_LOST_AFTER_SECONDS") or "30"
    try:
        fleet_lost_after_s = float(lost_after)
    except ValueError:
        raise ConfigError("environment", "FLEET_LOST_AFTER_SECONDS", f"must be a number of seconds, not {lost_after!r}") from None
    return Settings(
        database_url=database_url,
        instance_id=env.get("BRIDGE_INSTANCE_ID") or f"{socket.gethostname()}-{os.getpid()}",
        fleet_lost_after_s=fleet_lost_after_s,
        public_url=public_url.rstrip("/"),
        realtime=_realtime_endpoint(env, credential_factory),
        config_path=config_path or Path(env.get("BRIDGE_CONFIG") or DEFAULT_CONFIG_PATH),
        twilio_auth_token=env.get("TWILIO_AUTH_TOKEN") or None,
        admin_token=env.get("BRIDGE_ADMIN_TOKEN") or None,
        trust_forwarded_headers=(env.get("TRUST_FORWARDED_HEADERS") or "").lower() in ("1", "true", "yes"),
        stream_token_secret=secret.encode() if secret else secrets.token_bytes(32),
        twilio_api_url=api_url,
        twilio_account_sid=env.get("TWILIO_ACCOUNT_SID") or None,
        twilio_api_key=api_key,
        twilio_api_secret=api_secret,
    )


DEFAULT_ENV_FILE = Path(".env")
"""Read, when it exists, by every command that reads the configuration (or `--env-file PATH`)."""
_ENV_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
_DOUBLE_QUOTED_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "$": "$"}


def parse_env_file(text: str, source: str) -> dict[str, str]:
    """`KEY=VALUE` lines as in a shell or docker's `--env-file`: `#` comments, `export `, single or double quotes.

    A value is taken as written: nothing is expanded (`$HOME` stays `$HOME`), so a secret with a `$` in it
    means what it says. A line that is none of these is an error naming it, never skipped: a typo in a key's
    line would otherwise start the bridge without that key.
    """
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _ENV_LINE.match(stripped)
        if match is None:
            raise ConfigError(source, f"line {number}", "not KEY=VALUE")
        key, value = match.groups()
        if value[:1] in ("'", '"'):
            quote_mark = value[0]
            end = _closing_quote(value, quote_mark)
            if end is None:
                raise ConfigError(source, f"line {number}", f"{key}: the value's {quote_mark} is never closed")
            rest = value[end + 1 :].strip()
            if rest and not rest.startswith("#"):
                raise ConfigError(source, f"line {number}", f"{key}: text after the closing quote")
            value = value[1:end]
            if quote_mark == '"':
                value = re.sub(r"\\(.)", lambda escape: _DOUBLE_QUOTED_ESCAPES.get(escape[1], escape[0]), value)
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].strip()
        values[key] = value
    return values


def _closing_quote(value: str, quote_mark: str) -> int | None:
    position = 1
    while position < len(value):
        if value[position] == "\\" and quote_mark == '"':
            position += 2
            continue
        if value[position] == quote_mark:
            return position
        position += 1
    return None


def environment(env_file: Path | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment over the settings of a `.env` file: what is really set always wins.

    `env_file` must exist when named; the default `.env` in the working directory is read only if it is there.
    """
    base = os.environ if base is None else base
    path = env_file or DEFAULT_ENV_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if env_file is not None:
            raise ConfigError(str(path), "<file>", "cannot be read: no such file") from None
        return dict(base)
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(str(path), "<file>", f"cannot be read: {error}") from None
    return {**parse_env_file(text, str(path)), **base}
