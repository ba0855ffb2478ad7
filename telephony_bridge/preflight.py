"""What `telephony-bridge check` (and `serve`, at start-up) verifies before a call comes in.

Every problem is reported at once, one `file: key: reason` line each, so an operator fixes a set-up in
one round instead of one start per mistake. It checks what start-up refuses (the file's validation,
whatever `config.py` validates, so new rules there are checked here too) and what start-up used to
let through only for calls to fail later: a public URL Twilio cannot reach, no key for the Realtime
service, a recording folder or call log the bridge cannot write (each call's record was dropped, with
a warning per call), a voice or setting the environment's Realtime dialect does not take (the session
would be refused on every call). `check_online` also opens one Realtime session with the configured key
and makes one authenticated request to Twilio's REST API with the configured credentials.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import ValidationError

from telephony_bridge.config import (
    DEFAULT_CONFIG_PATH,
    BridgeConfig,
    CallLogSettings,
    Recording,
    Settings,
    load_config,
    settings_from_env,
)
from telephony_bridge.errors import ConfigError, ConfigErrors, RealtimeConnectError, TwilioRestError
from telephony_bridge.policy import unpriced_caps
from telephony_bridge.realtime.entra import MISSING_EXTRA, azure_identity_installed
from telephony_bridge.realtime.session import open_realtime
from telephony_bridge.tools.http_tools import dialect_problems
from telephony_bridge.twilio.rest import TwilioRest

ENVIRONMENT = "environment"
ONLINE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Problem:
    """One finding; a warning does not stop start-up (a loopback URL for a trial)."""

    error: ConfigError
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.error.source}: {self.error.key}: warning: {self.error.reason}" if self.warning else str(self.error)


@dataclass(frozen=True)
class Report:
    problems: tuple[Problem, ...]
    settings: Settings | None
    """`None` when the environment is too wrong to build them."""
    config: BridgeConfig | None

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(problem for problem in self.problems if not problem.warning)


def _problem(key: str, reason: str, *, warning: bool = False, source: str = ENVIRONMENT) -> Problem:
    return Problem(ConfigError(source, key, reason), warning)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def environment_problems(env: Mapping[str, str], *, insecure: bool = False) -> list[Problem]:
    """The environment's problems, each variable checked on its own."""
    problems: list[Problem] = []
    public_url = env.get("PUBLIC_URL")
    parts = urlsplit(public_url or "")
    if not public_url:
        problems.append(_problem("PUBLIC_URL", "not set: the bridge uses http://127.0.0.1:8080, which Twilio cannot reach",
                                 warning=True))
    elif parts.scheme not in ("http", "https") or not parts.netloc:
        problems.append(_problem("PUBLIC_URL", f"must be an https URL such as https://bridge.example.com, not {public_url!r}"))
    elif parts.scheme == "http":
        loopback = _loopback(parts.hostname or "")
        problems.append(_problem(
            "PUBLIC_URL",
            "http on loopback: fine for a local trial, but Twilio calls only a public https URL" if loopback
            else "must be https: Twilio signs and calls the https URL, and media must travel as wss",
            warning=loopback,
        ))
    forced = env.get("REALTIME_API")
    if forced not in (None, "", "ga", "preview"):
        problems.append(_problem("REALTIME_API", f"must be 'ga' or 'preview', not {forced!r}"))
    if env.get("AZURE_OPENAI_ENDPOINT"):
        if not env.get("AZURE_OPENAI_API_KEY") and not azure_identity_installed():
            problems.append(_problem("AZURE_OPENAI_API_KEY", MISSING_EXTRA))
        if not env.get("AZURE_OPENAI_DEPLOYMENT"):
            problems.append(_problem("AZURE_OPENAI_DEPLOYMENT", "required with AZURE_OPENAI_ENDPOINT"))
    elif not env.get("OPENAI_API_KEY"):
        problems.append(_problem(
            "OPENAI_API_KEY", "not set: no key for the Realtime API (or set AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_API_KEY)"
        ))
    if not env.get("TWILIO_AUTH_TOKEN") and not insecure:
        problems.append(_problem("TWILIO_AUTH_TOKEN", "not set: Twilio's signatures cannot be checked (serve needs --insecure)"))
    return problems


def _unwritable(path: Path, *, folder: bool) -> str | None:
    """Why the bridge cannot write `path` (a folder, or a file it creates), or `None` when it can."""
    if path.exists():
        if folder != path.is_dir():
            return f"{path} is not a {'folder' if folder else 'file'}"
        return None if os.access(path, os.W_OK | (os.X_OK if folder else 0)) else f"{path} is not writable"
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"cannot be created: {ancestor} is not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot be created: {ancestor} is not writable"
    return None


@dataclass(frozen=True)
class _Paths:
    """What the bridge writes to disk, as a file names it: checked even when other keys of the file are wrong."""

    source: str
    recording_folder: str | None
    """`None` when no number records."""
    call_log: str


def _paths_of(config: BridgeConfig) -> _Paths:
    recording = any(profile.record for profile in (config.defaults, *config.numbers.values()))
    return _Paths(config.source, config.recording.folder if recording else None, config.call_log.path)


def _paths_of_invalid(path: Path) -> _Paths | None:
    """The paths of a file that did not validate, from the sections that did; `None` if it is not even TOML."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    tables = [raw.get("defaults"), *(raw.get("numbers") or {}).values()] if isinstance(raw.get("numbers", {}), dict) else []
    recording = any(isinstance(table, dict) and table.get("record") is True for table in tables)
    try:
        folder = Recording.model_validate(raw.get("recording", {})).folder
    except ValidationError:
        folder = None
    try:
        call_log = CallLogSettings.model_validate(raw.get("call_log", {})).path
    except ValidationError:
        call_log = ""
    return _Paths(str(path), folder if recording else None, call_log)


def path_problems(paths: _Paths) -> list[Problem]:
    """A recording folder or call log the bridge could not write: each call's record would be lost, with a warning."""
    problems: list[Problem] = []
    if paths.recording_folder is not None:
        reason = _unwritable(Path(paths.recording_folder), folder=True)
        if reason:
            problems.append(_problem("recording.folder", reason, source=paths.source))
    if paths.call_log:
        reason = _unwritable(Path(paths.call_log), folder=False)
        if reason:
            problems.append(_problem("call_log.path", reason, source=paths.source))
    return problems


def mcp_problems(config: BridgeConfig, settings: Settings | None) -> list[Problem]:
    """MCP servers on the preview dialect, which has no `mcp` tool: an error, not a warning."""
    if settings is None:
        return []
    profiles = {"defaults": config.defaults, **{f'numbers."{number}"': profile for number, profile in config.numbers.items()}}
    return [_problem(key, reason, source=config.source) for key, reason in dialect_problems(profiles, settings.realtime.dialect)]


def check(env: Mapping[str, str], config_path: Path | None = None, *, insecure: bool = False) -> Report:
    """Every problem of the environment and the configuration file, without serving."""
    problems = environment_problems(env, insecure=insecure)
    settings: Settings | None = None
    try:
        settings = settings_from_env(env, config_path)
    except ConfigError as error:
        if not any(problem.error.key == error.key for problem in problems):
            problems.append(Problem(error))
    path = config_path or Path(env.get("BRIDGE_CONFIG") or DEFAULT_CONFIG_PATH)
    config: BridgeConfig | None = None
    try:
        config = load_config(path, env, dialect=settings.realtime.dialect if settings is not None else None)
    except ConfigError as error:
        problems += [Problem(found) for found in (error.problems if isinstance(error, ConfigErrors) else (error,))]
        paths = _paths_of_invalid(path)
        if paths is not None:
            problems += path_problems(paths)
    if config is not None:
        problems += path_problems(_paths_of(config)) + mcp_problems(config, settings)
        if settings is not None:
            problems += [_problem(key, reason, source=config.source)
                         for key, reason in unpriced_caps(config, settings.realtime.model)]
    return Report(tuple(problems), settings, config)


@dataclass(frozen=True)
class OnlineResult:
    """What one online check found: `ok` and a line saying what was done or what failed (never a key)."""

    name: str
    ok: bool | None
    """`None`: not checked."""
    detail: str

    def __str__(self) -> str:
        status = "ok" if self.ok else "not checked" if self.ok is None else "FAILED"
        return f"online: {self.name}: {status}: {self.detail}"


async def realtime_reachable(settings: Settings, timeout_s: float = ONLINE_TIMEOUT_S) -> OnlineResult:
    """Open one Realtime session with the configured key, wait for the service's first event, and close it."""
    endpoint = settings.realtime
    where = f"{urlsplit(endpoint.url).netloc} ({endpoint.model or 'no model named'}, {endpoint.dialect} dialect)"
    try:
        connection = await open_realtime(endpoint, timeout_s)
    except RealtimeConnectError as error:
        return OnlineResult("Realtime API", False, f"{where}: {error}")
    received: asyncio.Future[str | bytes] = asyncio.get_running_loop().create_future()
    connection.listen(lambda message: None if received.done() else received.set_result(message))
    closed = asyncio.ensure_future(connection.wait_closed())
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.wait((received, closed), return_when=asyncio.FIRST_COMPLETED)
        if not received.done():
            return OnlineResult(
                "Realtime API", False, f"{where}: the service closed the session: {connection.protocol.close_exc}"
            )
        first = json.loads(received.result())
    except (TimeoutError, ValueError, OSError) as error:
        return OnlineResult("Realtime API", False, f"{where}: no session.created: {type(error).__name__}")
    finally:
        closed.cancel()
        await connection.close()
    kind = first.get("type") if isinstance(first, dict) else None
    if kind == "error":
        message = (first.get("error") or {}).get("message", "")
        return OnlineResult("Realtime API", False, f"{where}: the service answered an error: {message[:200]}")
    return OnlineResult("Realtime API", True, f"{where}: opened a session ({kind}) and closed it")


async def twilio_credentials(settings: Settings) -> OnlineResult:
    """One authenticated GET with the REST credentials (the account's first number): hang-ups, transfers and
    `twilio configure` use the same ones. Twilio answers 401 (code 20003) to a wrong SID, token, key or secret."""
    name = "Twilio credentials"
    account_sid = settings.twilio_account_sid
    if not account_sid:
        return OnlineResult(name, None, "TWILIO_ACCOUNT_SID is not set (each call's REST requests use the call's AccountSid)")
    try:
        rest = TwilioRest.from_settings(settings, account_sid)
    except ConfigError as error:
        return OnlineResult(name, None, f"{error.key}: {error.reason}")
    who = "API key" if settings.twilio_api_key else "auth token"
    where = f"{urlsplit(settings.twilio_api_url).netloc} (account {account_sid}, {who})"
    try:
        async with rest:
            numbers = await rest.list_numbers(account_sid, max_pages=1, page_size=1)
    except TwilioRestError as error:
        refused = " (the credentials were refused)" if error.code == 20003 or error.status == 401 else ""
        return OnlineResult(name, False, f"{where}: {error}{refused}")
    return OnlineResult(name, True, f"{where}: authenticated ({'has' if numbers else 'no'} phone numbers)")


async def check_online(settings: Settings, timeout_s: float = ONLINE_TIMEOUT_S) -> list[OnlineResult]:
    return list(await asyncio.gather(realtime_reachable(settings, timeout_s), twilio_credentials(settings)))
