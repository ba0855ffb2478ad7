"""The `telephony-bridge` command: serve calls, run the demo, run the Realtime simulator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from .errors import ConfigError

log = logging.getLogger("telephony_bridge")


def _serve(args: argparse.Namespace) -> int:
    from . import server
    from .app import create_app
    from .config import load_config, settings_from_env

    settings = settings_from_env()
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
    app = create_app(settings, config, insecure=args.insecure)
    server.run(app, args.host, args.port, config.limits.drain_seconds, args.log_level)
    return 0


def _simulate_realtime(args: argparse.Namespace) -> int:
    from .testing.realtime_simulator import serve_forever

    try:
        asyncio.run(serve_forever(args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser = argparse.ArgumentParser(prog="telephony-bridge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", parents=[common], help="answer calls: the Voice webhook and the Media Stream")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--insecure", action="store_true", help="accept unsigned requests (local trials only)")
    serve.set_defaults(run=_serve)

    simulate = commands.add_parser("simulate-realtime", parents=[common], help="run the local Realtime API simulator")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8765)
    simulate.set_defaults(run=_simulate_realtime)

    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code = args.run(args)
    except ConfigError as error:
        print(f"telephony-bridge: configuration error: {error}", file=sys.stderr)
        code = 2
    raise SystemExit(code)
