"""The `telephony-bridge` command: serve calls, run the demo and the Realtime simulator, export and replay call recordings,
point Twilio numbers at the bridge, and write out the example configuration."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .errors import CallLogError, ConfigError, RecordingError
from .logs import configure_logging

if TYPE_CHECKING:
    import httpx

    from .config import BridgeConfig, Settings

log = logging.getLogger("telephony_bridge")

DEFAULT_ADMIN_URL = "http://127.0.0.1:8080"


def _serve(args: argparse.Namespace) -> int:
    from . import server
    from .app import create_app
    from .config import environment
    from .preflight import check

    env = environment(args.env_file)
    # The auth token is serve's own question (--insecure), asked below in its own words.
    report = check(env, args.config, insecure=True)
    token_missing = not env.get("TWILIO_AUTH_TOKEN") and not args.insecure
    if token_missing:
        print(
            "telephony-bridge: TWILIO_AUTH_TOKEN is not set, so Twilio signatures cannot be checked.\n"
            "Set it, or pass --insecure for a local trial (anyone who finds the URL can then reach the model).",
            file=sys.stderr,
        )
    for problem in report.errors:
        print(f"telephony-bridge: {problem}", file=sys.stderr)
    if report.errors or token_missing or report.settings is None or report.config is None:
        return 2
    for problem in report.problems:
        if problem.warning:
            log.warning("%s", problem)
    settings, config = report.settings, report.config
    if settings.twilio_auth_token is None:
        log.warning("running with --insecure: Twilio signatures are NOT checked")
    app = create_app(settings, config, insecure=args.insecure)
    print(_serving_line(args.host, args.port, settings, config), flush=True)
    server.run(app, args.host, args.port, config.limits.drain_seconds, args.log_level, config.http)
    return 0


def _serving_line(host: str, port: int, settings: Settings, config: BridgeConfig) -> str:
    """The one line `serve` prints at start: what an operator checks first when calls do not arrive."""
    endpoint = settings.realtime
    provider = "azure" if "api-key" in endpoint.headers or ".azure.com" in endpoint.url else "openai"
    numbers = ", ".join(config.numbers) or "none listed (every number gets the defaults)"
    recorded = [number for number, profile in config.numbers.items() if profile.record]
    recording = "on for every number" if config.defaults.record else f"on for {', '.join(recorded)}" if recorded else "off"
    return (
        f"telephony-bridge: listening on {host}:{port}; public URL {settings.public_url}; "
        f"{provider} {endpoint.model or '(model in REALTIME_URL)'} ({endpoint.dialect}); "
        f"numbers: {numbers}; recording {recording}; configuration {config.source} ({config.digest[:12]})"
    )


def _check(args: argparse.Namespace) -> int:
    """Every problem of the configuration and the environment at once; exit 2 if any is an error."""
    from .config import environment
    from .preflight import check, check_online

    report = check(environment(args.env_file), args.config)
    for problem in report.problems:
        print(problem)
    code = 2 if report.errors else 0
    if args.online:
        if report.settings is None:
            print("online: not checked: the environment above must be fixed first")
            code = 2
        else:
            for result in asyncio.run(check_online(report.settings)):
                print(result)
                if result.ok is False:
                    code = 2
    if code == 0 and report.config is not None:
        print(f"{report.config.source}: ok ({len(report.config.numbers)} numbers, hash {report.config.digest[:12]})")
    return code


def _admin_request(
    args: argparse.Namespace, method: str, path: str, body: dict[str, str] | None = None
) -> httpx.Response | None:
    """A request to a running bridge's admin API; `None` (and a line on stderr) when it cannot be made or is refused.

    A 404 of a route that names a call (`no live call ...`) is the route's answer, returned; a bare 404 means the API is off.
    """
    import httpx

    from .config import environment

    token = environment(args.env_file).get("BRIDGE_ADMIN_TOKEN")
    if not token:
        print("telephony-bridge: BRIDGE_ADMIN_TOKEN is not set: the admin API needs it", file=sys.stderr)
        return None
    try:
        response = httpx.request(method, args.url.rstrip("/") + path, headers={"Authorization": f"Bearer {token}"},
                                 json=body, timeout=30)
    except httpx.HTTPError as error:
        print(f"telephony-bridge: cannot reach {args.url}: {type(error).__name__}", file=sys.stderr)
        return None
    if response.status_code == 401 or response.status_code == 404 and _detail(response) == "Not Found":
        reason = "the admin API is off (BRIDGE_ADMIN_TOKEN is not set there)" if response.status_code == 404 else "wrong token"
        print(f"telephony-bridge: {args.url} refused: {reason}", file=sys.stderr)
        return None
    return response


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return ""
    return detail if isinstance(detail, str) else ""


def _end_call(args: argparse.Namespace) -> int:
    """End a live call through the admin API: the caller hears the goodbye, then Twilio hangs up."""
    response = _admin_request(args, "POST", f"/admin/calls/{args.call_sid}/end",
                              {"goodbye": args.goodbye} if args.goodbye else None)
    if response is None:
        return 1
    if response.status_code == 202:
        print(f"asked Twilio to end call {args.call_sid}; it has not ended yet: `calls --live` shows when it has")
        return 0
    if response.status_code != 200:
        print(f"telephony-bridge: {_detail(response) or f'HTTP {response.status_code}'}", file=sys.stderr)
        return 1
    body = response.json()
    print(f"ended call {body['call_sid']} after {body['duration_s']:.0f} s: {body['outcome']} ({body['end_reason']})")
    return 0


def _reload(args: argparse.Namespace) -> int:
    """Make a running bridge re-read its configuration: through the admin API, or with SIGHUP to --pid."""
    if args.pid is not None:
        try:
            os.kill(args.pid, signal.SIGHUP)
        except OSError as error:
            print(f"telephony-bridge: cannot signal process {args.pid}: {error.strerror}", file=sys.stderr)
            return 1
        print(f"sent SIGHUP to {args.pid}: its log says whether the configuration was reloaded")
        return 0
    response = _admin_request(args, "POST", "/admin/reload")
    if response is None:
        return 1
    body = response.json()
    if response.status_code == 422:
        for line in body.get("errors", []):
            print(f"telephony-bridge: {line}", file=sys.stderr)
        print(f"telephony-bridge: reload refused; the bridge keeps configuration {body.get('config_hash', '')[:12]}",
              file=sys.stderr)
        return 2
    if response.status_code != 200:
        print(f"telephony-bridge: reload failed: HTTP {response.status_code}", file=sys.stderr)
        return 1
    print(f"reloaded: configuration {body['config_hash'][:12]} for new calls; live calls keep theirs")
    for section in body.get("restart_needed", []):
        print(f"note: [{section}] changed, and takes effect only at the next start")
    return 0


def _live_calls(args: argparse.Namespace) -> int:
    response = _admin_request(args, "GET", "/admin/calls/live")
    if response is None:
        return 1
    if response.status_code != 200:
        print(f"telephony-bridge: HTTP {response.status_code} from {args.url}", file=sys.stderr)
        return 1
    calls = response.json()["calls"]
    if not calls:
        print("no live calls")
        return 0
    rows = [("CALL SID", "TO", "FROM", "DURATION", "STATE", "LAST SAID")] + [
        (call["call_sid"], call["number"], call["caller"] or "-", f"{call['duration_s']:.0f}s", call["state"],
         f"{call['transcript'][-1]['speaker']}: {call['transcript'][-1]['text'][:60]}" if call["transcript"] else "-")
        for call in calls
    ]
    if all("instance" in call for call in calls):
        # A fleet (DATABASE_URL): which instance carries each call.
        rows = [(row[0], instance, *row[1:]) for row, instance in zip(rows, ["INSTANCE"] + [c["instance"] for c in calls],
                                                                     strict=True)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _twilio(args: argparse.Namespace) -> int:
    """The account's numbers through Twilio's REST API: list them, or point one at this bridge."""
    from .config import environment, load_config, settings_from_env
    from .errors import TwilioRestError
    from .numbers import configure, list_numbers, points_here

    settings = settings_from_env(environment(args.env_file), config_path=args.config)
    try:
        if args.twilio_command == "numbers":
            numbers = asyncio.run(list_numbers(settings))
            if not numbers:
                print("the account has no phone numbers")
                return 0
            rows = [("NUMBER", "SID", "POINTS HERE", "VOICE URL")] + [
                (str(n.get("phone_number")), str(n.get("sid")), "yes" if points_here(n, settings) else "no",
                 str(n.get("voice_url") or "-"))
                for n in numbers
            ]
            widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
            for row in rows:
                print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
            return 0
        config = load_config(settings.config_path)
        done = asyncio.run(configure(settings, config, args.number, fallback_url=args.fallback_url, dry_run=args.dry_run))
    except TwilioRestError as error:
        print(f"telephony-bridge: {error}", file=sys.stderr)
        return 1
    if args.number not in config.numbers:
        print(f"note: {args.number} is not in [numbers] of {config.source}: its calls get the [defaults]")
    if not done.changes:
        print(f"{done.phone_number} ({done.sid}) points at this bridge already; nothing changed")
    else:
        print(f"{done.phone_number} ({done.sid}): {'would change' if args.dry_run else 'changed'}:")
        for change in done.changes:
            print(change)
    print(f"  StatusCallback: left as it is ({done.status_callback or 'empty'}): the bridge has no call status route")
    if args.fallback_url is None:
        print("the fallback URL is Twilio's echo Twimlet with this TwiML; to host it yourself (a TwiML Bin), "
              "pass --fallback-url:")
    else:
        print(f"{args.fallback_url} must answer a GET with this TwiML:")
    print(f"  {done.fallback_twiml}")
    return 0


def _simulate_realtime(args: argparse.Namespace) -> int:
    from .testing.realtime_simulator import serve_forever

    try:
        asyncio.run(serve_forever(args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


def _export_wav(args: argparse.Namespace) -> int:
    from .recording import export_wav, read_recording

    try:
        call = read_recording(args.file)
    except RecordingError as error:
        print(f"telephony-bridge: {error}", file=sys.stderr)
        return 2
    out = Path(f"{args.out}.wav") if args.out else args.file.with_suffix(".wav")
    seconds = export_wav(call, out)
    print(f"wrote {out}: {seconds:.1f} s, stereo 8 kHz (left: the caller; right: what the caller heard)")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from .recording import read_recording
    from .replay import replay

    try:
        result = asyncio.run(replay(read_recording(args.file)))
    except RecordingError as error:
        print(f"telephony-bridge: {error}", file=sys.stderr)
        return 2
    print(result.report())
    return 0 if result.same else 1


def _calls(args: argparse.Namespace) -> int:
    """List recent calls, or show one with its transcript, from the call log the configuration names."""
    from .call_log import call_details, calls_table, find_call, recent_calls
    from .config import environment, load_config, settings_from_env

    if args.calls_command == "end":
        return _end_call(args)
    if args.live:
        return _live_calls(args)
    env = environment(args.env_file)
    if env.get("DATABASE_URL"):
        # Reading the fleet's log needs only the database (serving needs the rest, STREAM_TOKEN_SECRET among it).
        return _fleet_calls(env["DATABASE_URL"], args)
    config = load_config(settings_from_env(env, config_path=args.config).config_path)
    if not config.call_log.path:
        print(f"telephony-bridge: the call log is off ([call_log] path is empty in {config.source})", file=sys.stderr)
        return 2
    path = Path(config.call_log.path)
    try:
        if args.call_sid is None:
            records = recent_calls(path, args.limit)
            print(calls_table(records) if records else f"no calls in {path} yet")
            return 0
        record = find_call(path, args.call_sid)
    except CallLogError as error:
        print(f"telephony-bridge: {error}", file=sys.stderr)
        return 1
    if record is None:
        print(f"telephony-bridge: no call {args.call_sid} in {path}", file=sys.stderr)
        return 1
    print(call_details(record))
    return 0


def _fleet_calls(url: str, args: argparse.Namespace) -> int:
    """`calls` and `calls show` from the fleet's PostgreSQL (`DATABASE_URL`): the same output as from SQLite."""
    from .call_log import CallQuery, call_details, calls_table
    from .store.postgres import find_call, search_calls

    try:
        if args.call_sid is None:
            records, _ = search_calls(url, CallQuery(limit=args.limit))
            print(calls_table(records) if records else "no calls in the fleet's call log yet")
            return 0
        record = find_call(url, args.call_sid)
    except CallLogError as error:
        print(f"telephony-bridge: {error}", file=sys.stderr)
        return 1
    if record is None:
        print(f"telephony-bridge: no call {args.call_sid} in the fleet's call log", file=sys.stderr)
        return 1
    print(call_details(record))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import main as run_demo

    if args.transfer and args.live:
        raise SystemExit("telephony-bridge demo: --transfer runs with the simulators only (the model is scripted to transfer)")
    return run_demo(Path(args.out), live=args.live, transfer=args.transfer)


def _init_config(args: argparse.Namespace) -> int:
    """Write the packaged example configuration, so an installed bridge has a file to start from."""
    from .config import example_config

    path: Path = args.path
    if path.exists() and not args.force:
        print(f"telephony-bridge: {path} exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(example_config(), encoding="utf-8")
    except OSError as error:
        print(f"telephony-bridge: cannot write {path}: {error.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {path}: edit it, then start the bridge with --config {path} (or BRIDGE_CONFIG={path})")
    return 0


def _config_option() -> argparse.ArgumentParser:
    """`--config` for the commands that read the configuration file; it wins over BRIDGE_CONFIG."""
    option = argparse.ArgumentParser(add_help=False)
    option.add_argument(
        "--config", type=Path, metavar="PATH", help="the configuration file (default: $BRIDGE_CONFIG, else config/bridge.toml)"
    )
    option.add_argument(
        "--env-file", type=Path, metavar="PATH",
        help="settings as KEY=VALUE lines, under the real environment (default: .env here, if there is one)",
    )
    return option


def _common_options() -> argparse.ArgumentParser:
    """Options every command takes; made afresh for each, as a shared parent's actions would share one default."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    common.add_argument(
        "--log-format", choices=["json", "text"],
        help="log lines on stderr: JSON objects (default unless stderr is a terminal) or text",
    )
    return common


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="telephony-bridge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", parents=[_common_options(), _config_option()], help="answer calls: the Voice webhook and the Media Stream"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--insecure", action="store_true", help="accept unsigned requests (local trials only)")
    serve.set_defaults(run=_serve)

    demo = commands.add_parser("demo", parents=[_common_options()], help="place a whole simulated call through the real bridge")
    demo.add_argument("--out", default="demo-out", help="folder for call.wav, timeline.svg and the recording")
    demo.add_argument("--live", action="store_true", help="talk to the real OpenAI or Azure Realtime API (needs a key)")
    demo.add_argument(
        "--transfer", action="store_true", help="a call the model transfers to a person (Twilio's REST API simulated)"
    )
    demo.set_defaults(run=_demo, log_level="warning", log_format="text")

    simulate = commands.add_parser("simulate-realtime", parents=[_common_options()], help="run the local Realtime API simulator")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8765)
    simulate.set_defaults(run=_simulate_realtime)

    export = commands.add_parser("export-wav", parents=[_common_options()], help="write a call recording's audio as a stereo WAV")
    export.add_argument("file", type=Path, help="a recording (.jsonl)")
    export.add_argument("--out", metavar="PREFIX", help="write PREFIX.wav (default: the recording's name, .wav)")
    export.set_defaults(run=_export_wav)

    replay = commands.add_parser(
        "replay", parents=[_common_options()],
        help="replay a call recording through this bridge; exit 1 if it behaves differently",
    )
    replay.add_argument("file", type=Path, help="a recording (.jsonl)")
    replay.set_defaults(run=_replay, log_level="error")

    calls = commands.add_parser(
        "calls", parents=[_common_options(), _config_option()],
        help="list recent calls from the call log ([call_log] in the configuration)",
    )
    calls.add_argument("--limit", type=int, default=20, help="how many calls, newest first (default: 20)")
    calls.add_argument("--live", action="store_true", help="the calls in progress on a running bridge (its admin API)")
    calls.add_argument("--url", default=DEFAULT_ADMIN_URL, help=f"the running bridge, with --live (default: {DEFAULT_ADMIN_URL})")
    calls.set_defaults(run=_calls, call_sid=None)
    calls_commands = calls.add_subparsers(dest="calls_command")
    show = calls_commands.add_parser("show", help="one call with its transcript")
    show.add_argument("call_sid", metavar="SID")
    end = calls_commands.add_parser(
        "end", help="end a live call on a running bridge: the caller hears a goodbye, then Twilio hangs up"
    )
    end.add_argument("call_sid", metavar="SID")
    end.add_argument("--goodbye", metavar="TEXT", help="what the caller hears (default: the bridge's own goodbye sentence)")
    end.add_argument("--url", default=argparse.SUPPRESS, help=f"the bridge's admin API (default: {DEFAULT_ADMIN_URL})")

    check = commands.add_parser(
        "check", parents=[_common_options(), _config_option()],
        help="check the configuration and the environment without serving; exit 2 on any error",
    )
    check.add_argument("--online", action="store_true", help="also open one Realtime session with the configured key")
    check.set_defaults(run=_check, log_level="warning")

    reload = commands.add_parser(
        "reload", parents=[_common_options(), _config_option()],
        help="make a running bridge re-read its configuration file (live calls keep theirs)",
    )
    reload.add_argument("--url", default=DEFAULT_ADMIN_URL, help=f"the bridge's admin API (default: {DEFAULT_ADMIN_URL})")
    reload.add_argument("--pid", type=int, help="send SIGHUP to this process instead of using the admin API")
    reload.set_defaults(run=_reload)

    twilio = commands.add_parser(
        "twilio", parents=[_common_options(), _config_option()],
        help="the account's phone numbers through Twilio's REST API: list them, point one at this bridge",
    )
    twilio_commands = twilio.add_subparsers(dest="twilio_command", required=True)
    twilio_commands.add_parser("numbers", help="list the account's numbers and whether each points at this bridge")
    configure = twilio_commands.add_parser(
        "configure", help="point a number's Voice URL at PUBLIC_URL and set its fallback; prints what it changed"
    )
    configure.add_argument("number", metavar="NUMBER", help="the number, E.164 (+15550001111)")
    configure.add_argument("--fallback-url", metavar="URL",
                           help="a TwiML Bin (or any URL) for when the bridge is down (default: Twilio's echo Twimlet)")
    configure.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    twilio.set_defaults(run=_twilio, log_level="warning")

    init_config = commands.add_parser(
        "init-config", parents=[_common_options()], help="write the commented example configuration to PATH"
    )
    init_config.add_argument("path", type=Path, metavar="PATH", help="where to write it, e.g. config/bridge.toml")
    init_config.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    init_config.set_defaults(run=_init_config)

    args = parser.parse_args(argv)
    configure_logging(args.log_format, args.log_level)
    try:
        code = args.run(args)
    except ConfigError as error:
        for line in str(error).splitlines():
            print(f"telephony-bridge: configuration error: {line}", file=sys.stderr)
        code = 2
    raise SystemExit(code)
