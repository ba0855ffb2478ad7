"""The `telephony-bridge` command: serve calls, run the demo and the Realtime simulator, export and replay call recordings,
point Twilio numbers at the bridge, and write out the example configuration."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from telephony_bridge import __version__
from telephony_bridge.errors import CallLogError, ConfigError, RecordingError
from telephony_bridge.logs import configure_logging

if TYPE_CHECKING:
    import httpx

    from telephony_bridge.call_log import CallRecord
    from telephony_bridge.config import BridgeConfig, Settings

log = logging.getLogger("telephony_bridge")

DEFAULT_ADMIN_URL = "http://127.0.0.1:8080"


def _serve(args: argparse.Namespace) -> int:
    from telephony_bridge import server
    from telephony_bridge.app import create_app
    from telephony_bridge.config import environment
    from telephony_bridge.preflight import check

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
    from telephony_bridge.config import environment
    from telephony_bridge.preflight import check, check_online

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
    args: argparse.Namespace, method: str, path: str, body: Mapping[str, object] | None = None
) -> httpx.Response | None:
    """A request to a running bridge's admin API; `None` (and a line on stderr) when it cannot be made or is refused.

    A 404 of a route that names a call (`no live call ...`) is the route's answer, returned; a bare 404 means the API is off.
    """
    import httpx

    from telephony_bridge.config import environment

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


def _place_call(args: argparse.Namespace) -> int:
    """Place one outbound call through a running bridge's admin API: the bridge dials, so its media stream reaches it."""
    context: dict[str, str] = {}
    for pair in args.context:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            print(f"telephony-bridge: --context takes name=value, not {pair!r}", file=sys.stderr)
            return 2
        context[name] = value
    response = _admin_request(args, "POST", "/admin/calls", {"from": args.from_number, "to": args.to_number, "context": context})
    if response is None:
        return 1
    if response.status_code == 409:
        print(f"telephony-bridge: the call was not placed: {response.json().get('refused')}", file=sys.stderr)
        return 1
    if response.status_code != 201:
        print(f"telephony-bridge: {_detail(response) or f'HTTP {response.status_code}'}", file=sys.stderr)
        return 1
    body = response.json()
    print(f"placed call {body['call_sid']} (outbound id {body['outbound_id']}) from {args.from_number} to {args.to_number}; "
          "`calls` shows it once it has ended")
    return 0


def _dnc(args: argparse.Namespace) -> int:
    """The do-not-call list in the call log's database (the fleet's PostgreSQL with DATABASE_URL): add, remove or list."""
    from telephony_bridge.config import environment, load_config, settings_from_env
    from telephony_bridge.outbound import do_not_call
    from telephony_bridge.store import do_not_call as fleet_do_not_call

    env = environment(args.env_file)
    where: Any
    lists: ModuleType
    if env.get("DATABASE_URL"):
        lists, where, shown = fleet_do_not_call, env["DATABASE_URL"], "DATABASE_URL"
    else:
        config = load_config(settings_from_env(env, config_path=args.config).config_path)
        if not config.call_log.path:
            print(f"telephony-bridge: the do-not-call list lives in the call log, which is off ([call_log] path is empty "
                  f"in {config.source})", file=sys.stderr)
            return 2
        lists, where = do_not_call, Path(config.call_log.path)
        shown = str(where)
    try:
        if args.dnc_command == "add":
            new = lists.add_number(where, args.number, "command line")
            print(f"{args.number} {'added to' if new else 'is already on'} the do-not-call list")
        elif args.dnc_command == "remove":
            if not lists.remove_number(where, args.number):
                print(f"telephony-bridge: {args.number} is not on the do-not-call list", file=sys.stderr)
                return 1
            print(f"{args.number} removed from the do-not-call list")
        else:
            entries = lists.list_numbers(where)
            for entry in entries:
                print(f"{entry['number']}  {entry['added_at'][:19]}  {entry['source']}")
            if not entries:
                print("the do-not-call list is empty")
    except (sqlite3.Error, CallLogError) as error:
        print(f"telephony-bridge: {shown}: {error}", file=sys.stderr)
        return 1
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
    from telephony_bridge.config import environment, load_config, settings_from_env
    from telephony_bridge.errors import TwilioRestError
    from telephony_bridge.twilio.numbers import configure, list_numbers, points_here

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
    from telephony_bridge.testing.realtime_simulator import serve_forever

    try:
        asyncio.run(serve_forever(args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


def _export_wav(args: argparse.Namespace) -> int:
    from telephony_bridge.observe.recording import export_wav, read_recording

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
    from telephony_bridge.observe.recording import read_recording
    from telephony_bridge.observe.replay import replay

    try:
        result = asyncio.run(replay(read_recording(args.file)))
    except RecordingError as error:
        print(f"telephony-bridge: {error}", file=sys.stderr)
        return 2
    print(result.report())
    return 0 if result.same else 1


def _calls(args: argparse.Namespace) -> int:
    """List recent calls, or show one with its transcript, from the call log the configuration names."""
    from telephony_bridge.call_log import find_call, recent_calls
    from telephony_bridge.config import environment, load_config, settings_from_env

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
    return _print_calls(args, lambda limit: recent_calls(path, limit), lambda call_sid: find_call(path, call_sid), str(path))


def _print_calls(
    args: argparse.Namespace,
    recent: Callable[[int], list[CallRecord]],
    find: Callable[[str], CallRecord | None],
    where: str,
) -> int:
    """`calls` (the most recent) or `calls show SID`, from the call log `recent` and `find` read; `where` names it."""
    from telephony_bridge.call_log import call_details, calls_table

    try:
        if args.call_sid is None:
            records = recent(args.limit)
            print(calls_table(records) if records else f"no calls in {where} yet")
            return 0
        record = find(args.call_sid)
    except CallLogError as error:
        print(f"telephony-bridge: {error}", file=sys.stderr)
        return 1
    if record is None:
        print(f"telephony-bridge: no call {args.call_sid} in {where}", file=sys.stderr)
        return 1
    print(call_details(record))
    return 0


def _purge(args: argparse.Namespace) -> int:
    """Delete what the numbers' `retention_days` no longer allow, or (`--call SID`) everything kept of one call."""
    from telephony_bridge.config import environment, load_config, settings_from_env
    from telephony_bridge.policy.purge import erase, purge_expired

    env = environment(args.env_file)
    database_url = env.get("DATABASE_URL") or None
    config = load_config(settings_from_env({**env, "DATABASE_URL": ""}, config_path=args.config).config_path)
    call_log = Path(config.call_log.path) if config.call_log.path else None
    recordings = Path(config.recording.folder)
    try:
        if args.call is not None:
            purged = erase(args.call, call_log, recordings, database_url=database_url)
            if not purged.calls:
                print(f"nothing kept of call {args.call}")
                return 0
            print(f"call {args.call}: deleted {', '.join(purged.calls[args.call])}")
            return 0
        purged = purge_expired(config, call_log, recordings, database_url=database_url)
    except (CallLogError, sqlite3.Error) as error:
        print(f"telephony-bridge: {error}", file=sys.stderr)
        return 1
    print(f"deleted {purged.transcripts} transcripts ({purged.transcript_lines} lines) and {purged.recordings} recordings")
    return 0


CAMPAIGN_POLL_S = 1.0
OUTCOME_COLUMNS = ("to", "outcome", "call_sid", "attempts")


def _local_zone(env: Mapping[str, str]) -> str:
    """The operator's IANA time zone: TZ, else where /etc/localtime points, else UTC."""
    if env.get("TZ", "").strip(":"):
        return env["TZ"].strip(":")
    target = str(Path("/etc/localtime").resolve())
    return target.split("zoneinfo/", 1)[1] if "zoneinfo/" in target else "UTC"


def _campaign(args: argparse.Namespace) -> int:
    """Submit a call list to a running bridge (or act on one it runs), then follow it, writing each final outcome."""
    import csv

    from telephony_bridge.config import environment

    env = environment(args.env_file)
    args.url = args.url or env.get("BRIDGE_URL") or DEFAULT_ADMIN_URL
    if args.settle:
        return _settle_row(args)
    if args.pause or args.resume:
        campaign_id = args.pause or args.resume
        response = _admin_request(args, "POST", f"/admin/campaigns/{campaign_id}/{'pause' if args.pause else 'resume'}")
        if response is None:
            return 1
        if response.status_code != 200:
            print(f"telephony-bridge: {_detail(response) or f'HTTP {response.status_code}'}", file=sys.stderr)
            return 1
        print(f"campaign {campaign_id}: {response.json()['state']}")
        return 0
    if args.follow:
        campaign_id = args.follow
    else:
        if args.file is None or args.from_number is None:
            print("telephony-bridge: campaign needs a CSV file and --from (or --follow/--pause/--resume ID)", file=sys.stderr)
            return 2
        try:
            with args.file.open(newline="", encoding="utf-8-sig") as source:
                rows = [{key.strip(): (value or "").strip() for key, value in row.items() if key}
                        for row in csv.DictReader(source)]
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            print(f"telephony-bridge: cannot read {args.file}: {error}", file=sys.stderr)
            return 2
        if not rows or "to" not in rows[0]:
            print(f"telephony-bridge: {args.file}: needs a header line with a `to` column, and at least one row",
                  file=sys.stderr)
            return 2
        body = {
            "from": args.from_number, "rows": rows, "concurrency": args.concurrency, "retries": args.retries,
            "retry_delay_s": args.retry_delay, "between": args.between, "timezone": args.timezone or _local_zone(env),
        }
        response = _admin_request(args, "POST", "/admin/campaigns", body)
        if response is None:
            return 1
        if response.status_code != 201:
            print(f"telephony-bridge: campaign refused: {_detail(response) or f'HTTP {response.status_code}'}",
                  file=sys.stderr)
            return 2
        campaign_id = response.json()["id"]
        print(f"campaign {campaign_id}: {len(rows)} rows from {args.from_number}, {args.concurrency} at once; "
              f"it runs in the bridge: Ctrl-C stops only this follow (`campaign --follow {campaign_id}` takes it up)",
              flush=True)
    output: Path = args.output or (args.file.with_name(f"{args.file.stem}-outcomes.csv") if args.file
                                   else Path(f"{campaign_id}-outcomes.csv"))
    try:
        return _follow(args, campaign_id, output)
    except KeyboardInterrupt:
        print(f"\nstopped following; campaign {campaign_id} runs on in the bridge", file=sys.stderr)
        return 0


def _admin_answer(
    args: argparse.Namespace, method: str, path: str, body: Mapping[str, object] | None = None
) -> dict[str, Any] | None:
    """The admin API's JSON answer (200); `None` after saying on stderr why there is none."""
    response = _admin_request(args, method, path, body)
    if response is None:
        return None
    if response.status_code != 200:
        print(f"telephony-bridge: {_detail(response) or f'HTTP {response.status_code}'}", file=sys.stderr)
        return None
    answer: dict[str, Any] = response.json()
    return answer


def _settle_row(args: argparse.Namespace) -> int:
    """`campaign --settle ID --row N (--outcome OUTCOME | --redial)`: an operator's word on a row left unknown."""
    if args.row is None or args.row < 1 or (args.outcome is None) == (not args.redial):
        print("telephony-bridge: --settle needs --row N (from 1) and either --outcome OUTCOME or --redial", file=sys.stderr)
        return 2
    body: dict[str, Any] = {"redial": True} if args.redial else {"outcome": args.outcome}
    campaign = _admin_answer(args, "POST", f"/admin/campaigns/{args.settle}/rows/{args.row - 1}", body)
    if campaign is None:
        return 1
    row = campaign["rows"][args.row - 1]
    now = row["outcome"] if row["state"] == "done" else row["state"]
    print(f"campaign {args.settle}: row {args.row} ({row['to']}) is {now}; the campaign is {campaign['state']}")
    return 0


def _follow(args: argparse.Namespace, campaign_id: str, output: Path) -> int:
    """Poll the campaign's progress, print it when it changes, and append each row to `output` once it is final."""
    import csv
    import time

    written: set[int] = set()
    last_line = ""
    with output.open("w", newline="", encoding="utf-8") as sink:
        writer = csv.writer(sink)
        writer.writerow(OUTCOME_COLUMNS)
        while True:
            response = _admin_request(args, "GET", f"/admin/campaigns/{campaign_id}")
            if response is None:
                return 1
            if response.status_code != 200:
                print(f"telephony-bridge: {_detail(response) or f'HTTP {response.status_code}'}", file=sys.stderr)
                return 1
            campaign = response.json()
            for row in campaign["rows"]:
                if row["state"] in ("done", "unknown") and row["position"] not in written:
                    written.add(row["position"])
                    outcome = row["outcome"] if row["state"] == "done" else "unknown"
                    writer.writerow((row["to"], outcome, row["call_sid"] or "", row["attempts"]))
            sink.flush()
            line = _progress_line(campaign)
            if line != last_line:
                print(line, flush=True)
                last_line = line
            if campaign["state"] == "finished":
                print(f"campaign {campaign_id} finished; outcomes in {output}")
                return 0
            time.sleep(CAMPAIGN_POLL_S)


def _progress_line(campaign: Mapping[str, Any]) -> str:
    counts: Mapping[str, int] = campaign["counts"]
    states = ("pending", "dialling", "done", "unknown")
    outcomes = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()) if name not in states and n)
    final = counts.get("done", 0) + counts.get("unknown", 0)
    unknown = f", {counts['unknown']} unknown (see the admin API)" if counts.get("unknown") else ""
    return (f"{campaign['state']}: {final}/{len(campaign['rows'])} final ({outcomes or 'none yet'}{unknown}); "
            f"{counts.get('dialling', 0)} dialling, {counts.get('pending', 0)} pending")


def _fleet_calls(url: str, args: argparse.Namespace) -> int:
    """`calls` and `calls show` from the fleet's PostgreSQL (`DATABASE_URL`): the same output as from SQLite."""
    from telephony_bridge.call_log import CallQuery
    from telephony_bridge.store.postgres import find_call, search_calls

    return _print_calls(args, lambda limit: search_calls(url, CallQuery(limit=limit))[0],
                        lambda call_sid: find_call(url, call_sid), "the fleet's call log")


def _demo(args: argparse.Namespace) -> int:
    from telephony_bridge.demo import main as run_demo

    if args.transfer and args.live:
        raise SystemExit("telephony-bridge demo: --transfer runs with the simulators only (the model is scripted to transfer)")
    if args.outbound and (args.live or args.transfer):
        raise SystemExit("telephony-bridge demo: --outbound runs alone, with the simulators only")
    return run_demo(Path(args.out), live=args.live, transfer=args.transfer, outbound=args.outbound)


def _init_config(args: argparse.Namespace) -> int:
    """Write the packaged example configuration, so an installed bridge has a file to start from."""
    from telephony_bridge.config import example_config

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
    demo.add_argument("--outbound", action="store_true",
                      help="the bridge places a reminder call to a simulated person, then one to a simulated voicemail")
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

    purge = commands.add_parser(
        "purge", parents=[_common_options(), _config_option()],
        help="delete transcripts and recordings past their number's retention_days; --call SID erases one call",
    )
    purge.add_argument("--call", metavar="SID", help="delete everything kept of this call: log row, transcript, recordings")
    purge.set_defaults(run=_purge)
    call = commands.add_parser(
        "call", parents=[_common_options(), _config_option()],
        help="place one outbound call through a running bridge (its admin API); the From number's table is the profile",
    )
    call.add_argument("--from", dest="from_number", required=True, metavar="NUMBER", help="one of the bridge's numbers")
    call.add_argument("--to", dest="to_number", required=True, metavar="NUMBER", help="who to call, E.164")
    call.add_argument("--context", action="append", default=[], metavar="NAME=VALUE",
                      help="fills {NAME} in the instructions, greeting and voicemail message; repeat it")
    call.add_argument("--url", default=DEFAULT_ADMIN_URL, help=f"the bridge's admin API (default: {DEFAULT_ADMIN_URL})")
    call.set_defaults(run=_place_call, log_level="warning")

    dnc = commands.add_parser(
        "dnc", parents=[_common_options(), _config_option()], help="the do-not-call list (in the call log's database)"
    )
    dnc_commands = dnc.add_subparsers(dest="dnc_command", required=True)
    dnc_commands.add_parser("add", help="never call NUMBER").add_argument("number", metavar="NUMBER")
    dnc_commands.add_parser("remove", help="take NUMBER off the list").add_argument("number", metavar="NUMBER")
    dnc_commands.add_parser("list", help="every number on the list, with when and why it was added")
    dnc.set_defaults(run=_dnc, log_level="warning")

    campaign = commands.add_parser(
        "campaign", parents=[_common_options(), _config_option()],
        help="run a call list (CSV with a `to` column) on a running bridge and follow it, writing each outcome",
    )
    campaign.add_argument("file", type=Path, nargs="?", metavar="CSV",
                          help="`to` plus any context columns (and `timezone`, the callee's IANA zone)")
    campaign.add_argument("--from", dest="from_number", metavar="NUMBER", help="the bridge's number to call from (E.164)")
    campaign.add_argument("--concurrency", type=int, default=1, help="calls at once (default: 1)")
    campaign.add_argument("--between", metavar="HH:MM-HH:MM", help="the calling window, in the callee's time zone")
    campaign.add_argument("--timezone", metavar="ZONE", help="the window's zone for rows without one (default: this machine's)")
    campaign.add_argument("--retries", type=int, default=0, help="more attempts after busy or no-answer (default: 0)")
    campaign.add_argument("--retry-delay", type=float, default=600.0, metavar="SECONDS", help="between attempts (default: 600)")
    campaign.add_argument("--output", type=Path, metavar="CSV", help="outcomes (default: CSV's name with -outcomes)")
    campaign.add_argument("--url", help=f"the bridge's admin API (default: $BRIDGE_URL, else {DEFAULT_ADMIN_URL})")
    campaign.add_argument("--follow", metavar="ID", help="follow a campaign already running instead of submitting one")
    campaign.add_argument("--pause", metavar="ID", help="pause a campaign: no new dials, calls in progress finish")
    campaign.add_argument("--resume", metavar="ID", help="resume a paused campaign")
    campaign.add_argument("--settle", metavar="ID", help="settle a row of campaign ID left unknown: with --row and --outcome "
                          "(what Twilio's call log shows) or --redial")
    campaign.add_argument("--row", type=int, metavar="N", help="with --settle: the row's number in the list, from 1")
    campaign.add_argument("--outcome", help="with --settle: human, voicemail, no-answer, busy, failed, ...")
    campaign.add_argument("--redial", action="store_true", help="with --settle: no call was placed; dial the row again")
    campaign.set_defaults(run=_campaign, log_level="warning")

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
