"""The `telephony-bridge` command: serve calls, run the demo and the Realtime simulator, export and replay call recordings,
and write out the example configuration."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import CallLogError, ConfigError, RecordingError
from .logs import configure_logging

log = logging.getLogger("telephony_bridge")


def _serve(args: argparse.Namespace) -> int:
    from . import server
    from .app import create_app
    from .config import load_config, settings_from_env
    from .realtime import PREVIEW_VOICES

    settings = settings_from_env(config_path=args.config)
    config = load_config(settings.config_path)
    if settings.twilio_auth_token is None:
        if not args.insecure:
            print(
                "telephony-bridge: TWILIO_AUTH_TOKEN is not set, so Twilio signatures cannot be checked.\n"
                "Set it, or pass --insecure for a local trial (anyone who finds the URL can then reach the model).",
                file=sys.stderr,
            )
            return 2
        log.warning("running with --insecure: Twilio signatures are NOT checked")
    if settings.realtime.dialect == "preview":
        for number, profile in {"defaults": config.defaults, **config.numbers}.items():
            if profile.voice not in PREVIEW_VOICES:
                log.warning("%s: %s: voice %r is not one the 2024-10-01 preview knows; its sessions may keep their defaults",
                            config.source, number, profile.voice)
    app = create_app(settings, config, insecure=args.insecure)
    server.run(app, args.host, args.port, config.limits.drain_seconds, args.log_level, config.http)
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
    from .config import load_config, settings_from_env

    config = load_config(settings_from_env(config_path=args.config).config_path)
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


def _demo(args: argparse.Namespace) -> int:
    from .demo import main as run_demo

    return run_demo(Path(args.out), live=args.live)


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
    calls.set_defaults(run=_calls, call_sid=None)
    calls_commands = calls.add_subparsers(dest="calls_command")
    show = calls_commands.add_parser("show", help="one call with its transcript")
    show.add_argument("call_sid", metavar="SID")

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
        print(f"telephony-bridge: configuration error: {error}", file=sys.stderr)
        code = 2
    raise SystemExit(code)
