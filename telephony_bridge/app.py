"""The HTTP and websocket surface: the Voice webhook, the Media Stream socket, a health check and metrics.

Thin by design: each handler checks who is calling, then hands over to the switchboard and the
call. A request Twilio did not sign never reaches the model.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response, WebSocket
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from telephony_bridge.admin import admin_router
from telephony_bridge.admin.api import END_WAIT_S, end_live_call
from telephony_bridge.admin.campaigns import campaigns_router
from telephony_bridge.admin.console import console_router
from telephony_bridge.admin.live_feed import LiveFeed, fleet_change
from telephony_bridge.admin.sessions import ConsoleSessions
from telephony_bridge.call.events import StreamStarted
from telephony_bridge.call.summary import CallSummary
from telephony_bridge.call.switchboard import Switchboard
from telephony_bridge.call_log import CallLog
from telephony_bridge.config import BridgeConfig, Retention, Settings
from telephony_bridge.errors import CallLogError
from telephony_bridge.observe.metrics import BridgeMetrics
from telephony_bridge.observe.recording import CallRecordings
from telephony_bridge.outbound.campaigns import start_campaigns
from telephony_bridge.outbound.campaigns_fleet import start_fleet_campaigns
from telephony_bridge.outbound.do_not_call import DoNotCall
from telephony_bridge.outbound.placing import OutboundCalls
from telephony_bridge.policy.purge import purge_expired
from telephony_bridge.reload import ConfigReloader
from telephony_bridge.store import PostgresStore, Store, StoreUnavailable
from telephony_bridge.store import fleet as fleet_routes
from telephony_bridge.store.base import RequestHandler
from telephony_bridge.store.do_not_call import FleetDoNotCall
from telephony_bridge.twilio import callbacks
from telephony_bridge.twilio.call_updates import CallUpdates
from telephony_bridge.twilio.callback_routes import FLEET_REQUEST_TIMEOUT_S, callback_router
from telephony_bridge.twilio.media_socket import MEDIA_PATH, AsgiMediaSocket, MediaSocket
from telephony_bridge.twilio.media_stream import TwilioInbound
from telephony_bridge.twilio.security import (
    STREAM_TOKEN_LIFETIME_S,
    issue_stream_token,
    stream_id_of,
    stream_token_valid,
)
from telephony_bridge.twilio.signed_requests import SIGNED_URL_HINT, SignedRequests, twiml
from telephony_bridge.twilio.stream_errors import StreamError
from telephony_bridge.twilio.transfers import Transfers
from telephony_bridge.twilio.webhook import (
    CALLED_NUMBER_PARAMETER,
    OUTBOUND_PARAMETER,
    STREAM_ENDED_PATH,
    STREAM_STATUS_PATH,
    STREAM_TOKEN_PARAMETER,
    hangup_twiml,
    refusal_twiml,
    stream_twiml,
)

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
POLICY_VIOLATION = 1008


def create_app(settings: Settings, config: BridgeConfig, *, insecure: bool = False) -> FastAPI:
    """The bridge's ASGI app. `insecure` skips Twilio signature checks (only for local trials)."""
    if settings.twilio_auth_token is None and not insecure:
        raise ValueError("TWILIO_AUTH_TOKEN is not set; pass insecure=True only for local trials")

    metrics = BridgeMetrics()
    live_feed = LiveFeed()
    console_sessions = ConsoleSessions(settings.admin_token) if settings.admin_token else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        clock = asyncio.get_running_loop().time
        recordings = CallRecordings(
            Path(config.recording.folder), settings.realtime.dialect, clock,
            max_bytes=round(config.recording.max_megabytes * 1024 * 1024),
        )
        store = (
            PostgresStore(settings.database_url, settings.instance_id, on_failure=metrics.call_log_failed,
                          lost_after_s=settings.fleet_lost_after_s)
            if settings.database_url else None
        )
        call_log = (
            CallLog(Path(config.call_log.path), on_failure=metrics.call_log_failed)
            if config.call_log.path and store is None else None
        )
        if call_log is not None:
            call_log.start()
        if store is not None:
            await store.start()
        app.state.store = store
        app.state.database_url = settings.database_url

        def call_ended(summary: CallSummary) -> None:
            recordings.call_ended(summary)
            metrics.call_ended(summary)
            if call_log is not None:
                call_log.call_ended(summary)
            outbound.call_ended(summary)
            if store is not None:
                store.call_ended(summary)

        def live_changed(summary: CallSummary) -> None:
            live_feed.changed(summary)
            if store is not None:
                store.publish_live(fleet_change(summary))

        if store is not None:
            store.on_live(live_feed.fleet_changed)
        switchboard = Switchboard(
            config, settings.realtime, clock, tap_for=recordings.tap_for, on_call_end=call_ended,
            on_latency=metrics.latency_observer, call_updates=CallUpdates(settings, Transfers(clock)),
            on_change=live_changed if console_sessions is not None else None,
            on_call_start=store.call_started if store is not None else lambda call_sid, number, caller: None,
        )
        metrics.watch(switchboard)
        log_path = Path(config.call_log.path) if config.call_log.path else None
        if log_path is None and store is None:
            log.info("no call log file: the do-not-call list is kept in memory and lost at restart")
        do_not_call = DoNotCall(log_path, FleetDoNotCall(store) if store is not None else None)
        outbound = OutboundCalls(settings, switchboard, do_not_call, store)
        outbound.add_outcome_listener(metrics.outbound_outcome)
        app.state.outbound = outbound
        metrics.config_loaded(config.digest)
        app.state.reloader = ConfigReloader(
            settings.config_path, config, switchboard.reconfigure, metrics.config_reloaded, settings.realtime.dialect
        )
        app.state.call_log_path = Path(config.call_log.path) if config.call_log.path else None
        app.state.recordings_folder = recordings.folder
        app.state.switchboard = switchboard

        def stream_failed(error: StreamError) -> None:
            metrics.stream_error(error.code)
            if call_log is not None:
                call_log.stream_error(error)
            if store is not None:
                store.stream_error(error)

        app.state.stream_failed = stream_failed
        app.state.campaigns = (
            await start_fleet_campaigns(settings.database_url, settings.instance_id, settings.fleet_lost_after_s, outbound,
                                        switchboard, config.campaigns.reconcile_seconds)
            if settings.database_url else
            await start_campaigns(log_path, outbound, switchboard, config.campaigns.reconcile_seconds)
            if log_path is not None else None
        )
        purging = asyncio.create_task(
            _purge_on_schedule(switchboard, app.state.call_log_path, recordings.folder, settings.database_url)
        )
        if store is not None:
            store.on_request(fleet_requests(switchboard, outbound, settings.stream_token_secret))
        yield
        purging.cancel()
        if app.state.campaigns is not None:
            await app.state.campaigns.stop()
        await switchboard.end_all("bridge shutting down")
        await outbound.close()
        await asyncio.to_thread(recordings.close)
        if call_log is not None:
            await asyncio.to_thread(call_log.close)
        if store is not None:
            await store.close()
        if settings.realtime.token is not None:
            await settings.realtime.token.close()

    app = FastAPI(title="telephony-bridge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(admin_router(settings.admin_token, console_sessions, live_feed))
    app.include_router(campaigns_router(settings.admin_token, console_sessions))
    app.include_router(console_router(console_sessions))
    signed = SignedRequests(settings)
    public_url, signed_form, signed_by_twilio = signed.public_url, signed.signed_form, signed.signed_by_twilio
    app.include_router(callback_router(signed))


    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "live_calls": request.app.state.switchboard.live_calls})

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: 503 until the lifespan has set up the switchboard, and while draining (new calls go elsewhere)."""
        switchboard: Switchboard | None = getattr(request.app.state, "switchboard", None)
        if switchboard is None or switchboard.draining:
            return JSONResponse({"status": "starting" if switchboard is None else "draining"}, status_code=503)
        store: Store | None = request.app.state.store
        if store is not None and not store.available:
            return JSONResponse({"status": "database unavailable"}, status_code=503)
        return JSONResponse({"status": "ready", "config_hash": switchboard.config.digest})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/twilio/voice")
    async def voice(request: Request) -> Response:
        params = await signed_form(request)
        if isinstance(params, Response):
            return params
        call_sid, called_number = params.get("CallSid"), params.get("To")
        if not call_sid or not called_number:
            return Response("CallSid and To are required", status_code=400)
        switchboard = request.app.state.switchboard
        idempotency_token = request.headers.get("i-twilio-idempotency-token")
        if switchboard.answered(call_sid):
            again = switchboard.answer_again(call_sid, idempotency_token)
            if again is not None:
                log.info("call %s: Twilio retried its webhook; the first answer is sent again", call_sid)
                return Response(again, media_type="text/xml")
            log.warning("call %s: refused a second webhook for a call answered already (a replay?)", call_sid)
            metrics.webhook_refused("replayed")
            return Response(hangup_twiml(), media_type="text/xml")
        current = switchboard.config
        profile = current.profile_for(called_number)
        if switchboard.draining:
            log.info("call %s: refused, the bridge is shutting down", call_sid)
            metrics.call_refused(called_number, "drained")
            twiml = refusal_twiml(profile.fallback_message)
            switchboard.remember_answer(call_sid, twiml, idempotency_token, None)
            return Response(twiml, media_type="text/xml")
        store: Store | None = request.app.state.store
        if store is not None:
            return await answer_in_fleet(store, switchboard, params, idempotency_token, request.headers)
        call = switchboard.answer(call_sid, called_number, params.get("From", ""), params.get("AccountSid", ""))
        if call is None:
            log.warning("call %s: refused, the bridge is at max_calls=%d", call_sid, current.limits.max_calls)
            metrics.call_refused(called_number, "busy")
            twiml = refusal_twiml(current.limits.busy_message)
            switchboard.remember_answer(call_sid, twiml, idempotency_token, None)
            return Response(twiml, media_type="text/xml")
        token = issue_stream_token(settings.stream_token_secret, call_sid, called_number, time.time())
        log.debug("call %s to %s: answered", call_sid, called_number)
        stream_url = public_url(request.headers, websocket=True)
        stream_ended_url = public_url(request.headers, websocket=False, path=STREAM_ENDED_PATH)
        status_url = public_url(request.headers, websocket=False, path=STREAM_STATUS_PATH)
        notice = call.profile.recording_notice if call.profile.record else None
        twiml = stream_twiml(stream_url, called_number, token, stream_ended_url, status_url, notice)
        switchboard.remember_answer(call_sid, twiml, idempotency_token, stream_id_of(token))
        return Response(twiml, media_type="text/xml")

    async def answer_in_fleet(store: Store, switchboard: Switchboard, params: dict[str, str],
                              idempotency_token: str | None, headers: Mapping[str, str]) -> Response:
        """The webhook of a fleet: answered once across instances; the session opens where the stream lands."""
        call_sid, called_number = params["CallSid"], params["To"]
        current = switchboard.config
        profile = current.profile_for(called_number)
        if not store.available:
            log.warning("call %s: refused, the database is unavailable (once-only answers cannot be kept)", call_sid)
            metrics.call_refused(called_number, "database")
            return twiml(refusal_twiml(profile.fallback_message))
        if switchboard.live_calls >= current.limits.max_calls:
            log.warning("call %s: refused, the bridge is at max_calls=%d", call_sid, current.limits.max_calls)
            metrics.call_refused(called_number, "busy")
            return twiml(refusal_twiml(current.limits.busy_message))
        token = issue_stream_token(settings.stream_token_secret, call_sid, called_number, time.time())
        answer = stream_twiml(
            public_url(headers, websocket=True), called_number, token,
            public_url(headers, websocket=False, path=STREAM_ENDED_PATH),
            public_url(headers, websocket=False, path=STREAM_STATUS_PATH),
        )
        try:
            sent = await fleet_routes.answer_once(store, call_sid, answer, idempotency_token, stream_id_of(token),
                                                  caller=params.get("From", ""), account_sid=params.get("AccountSid", ""))
        except StoreUnavailable:
            log.warning("call %s: refused, the database did not answer (once-only answers cannot be kept)", call_sid)
            metrics.call_refused(called_number, "database")
            return twiml(refusal_twiml(profile.fallback_message))
        if sent is None:
            log.warning("call %s: refused a second webhook for a call answered already (a replay?)", call_sid)
            metrics.webhook_refused("replayed")
            return twiml(hangup_twiml())
        return twiml(sent)

    async def serve_media(websocket: MediaSocket) -> None:
        """A media stream: its signature, its `start` and stream token checked, then the call it belongs to."""
        stream_url = public_url(websocket.headers, websocket=True)
        if not signed_by_twilio(stream_url, {}, websocket.headers.get("x-twilio-signature")):
            log.warning("media socket with a missing or wrong Twilio signature from %s; checked against %s: %s",
                        websocket.client, stream_url, SIGNED_URL_HINT)
            await websocket.close(code=POLICY_VIOLATION)
            return
        await websocket.accept()
        inbound = TwilioInbound(asyncio.get_running_loop().time)
        start = await _wait_for_start(websocket, inbound)
        metrics.rejected_before_start(inbound.rejected)
        if start is None:
            return
        started, started_frame = start
        parameters = started.custom_parameters
        called_number = parameters.get(CALLED_NUMBER_PARAMETER, "")
        token = parameters.get(STREAM_TOKEN_PARAMETER, "")
        outbound_id = parameters.get(OUTBOUND_PARAMETER)
        bound_to = outbound_id or started.call_sid  # an outbound call's token is bound to its id: no CallSid existed yet
        if not stream_token_valid(settings.stream_token_secret, token, bound_to, called_number, time.time()):
            log.warning("media socket for call %s with a missing, forged or expired stream token", started.call_sid)
            await websocket.close(code=POLICY_VIOLATION)
            return
        store: Store | None = app.state.store
        caller, account_sid = "", ""
        if store is not None:
            try:
                first = await store.claim("stream", stream_id_of(token), started.call_sid, STREAM_TOKEN_LIFETIME_S)
                if first is None:
                    caller, account_sid = await fleet_routes.answered_call(store, started.call_sid)
            except StoreUnavailable:
                log.warning("media socket for call %s refused: the database is unavailable", started.call_sid)
                await websocket.close(code=POLICY_VIOLATION)
                return
            if first is not None:
                log.warning("media socket for call %s refused: its stream token was used already", started.call_sid)
                await websocket.close(code=POLICY_VIOLATION)
                return
            if not outbound_id and await _carried_elsewhere(store, app.state.switchboard, started.call_sid):
                await websocket.close(code=POLICY_VIOLATION)
                return
        if outbound_id:
            call = await app.state.outbound.connect_stream(outbound_id, started.call_sid, stream_id_of(token))
        else:
            call = app.state.switchboard.claim(
                started.call_sid, called_number, stream_id_of(token), caller, account_sid
            )
        if call is None:
            log.warning("media socket for call %s refused: its stream token was used already", started.call_sid)
            await websocket.close(code=POLICY_VIOLATION)
            return
        await call.run_media(websocket, started, started_frame, inbound)

    # uvicorn (server.uvicorn_config) serves the stream below ASGI with this (twilio/media_socket.py); the route, other servers.
    app.state.serve_media = serve_media

    @app.websocket(MEDIA_PATH)
    async def media(websocket: WebSocket) -> None:
        await serve_media(AsgiMediaSocket(websocket))

    return app


async def _purge_on_schedule(switchboard: Switchboard, call_log: Path | None, recordings: Path,
                             database_url: str | None) -> None:
    """Delete what the numbers' `retention_days` no longer allow, at start and every `[retention] purge_every_minutes`
    (of the configuration in force: a reload applies), off the event loop. In a fleet every instance purges the one
    log: deleting a transcript twice deletes nothing the second time."""
    while True:
        config = switchboard.config
        if any(profile.retention_days != Retention() for profile in (config.defaults, *config.numbers.values())):
            try:
                await asyncio.to_thread(purge_expired, config, call_log, recordings, database_url=database_url)
            except (OSError, sqlite3.Error, CallLogError) as error:
                log.warning("retention: the scheduled purge failed and is tried again later: %s", error)
        await asyncio.sleep(config.retention.purge_every_minutes * 60)


async def _carried_elsewhere(store: Store, switchboard: Switchboard, call_sid: str) -> bool:
    """Whether a stream's call lives on another instance: a caller back from a transfer nobody took, on a new stream
    the balancer sent here. That call's conversation cannot move (docs/scaling.md), so its owner ends it and this
    stream is refused: Twilio then asks `<Connect action>`, and the caller hears the number's fallback message."""
    if switchboard.live_call(call_sid) is not None:
        return False
    try:
        owner = await store.owner_of(call_sid)
        if owner is None or owner == store.instance:
            return False
        log.warning("call %s: the caller came back from a transfer on this instance, but %s carries the call; it ends "
                    "and the caller hears the fallback message", call_sid, owner, extra={"call_sid": call_sid})
        await store.ask(owner, "returned_elsewhere", {"call_sid": call_sid}, FLEET_REQUEST_TIMEOUT_S)
    except StoreUnavailable:
        log.warning("call %s: refused, the database did not say which instance carries it", call_sid)
    return True


def fleet_requests(switchboard: Switchboard, outbound: OutboundCalls, secret: bytes) -> RequestHandler:
    """What this instance does for another one: end a call it carries, say what follows a transfer's dial, or take
    the stream or a callback of an outbound call it placed (or carries)."""

    async def handle(op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op.startswith("outbound_"):
            return await outbound.fleet_request(op, args)
        if op == "end":
            status, body = await end_live_call(switchboard, str(args["call_sid"]), str(args["goodbye"]))
            return {"status": status, "body": body}
        if op == "returned_elsewhere":
            call = switchboard.live_call(str(args["call_sid"]))
            if call is None:
                return {"ended": False}
            call.end("the caller came back from a transfer on another instance of the fleet", "bridge_error")
            await asyncio.wait_for(call.ended.wait(), END_WAIT_S)
            return {"ended": True}
        if op == "dial_ended":
            # The new stream's token is checked with the secret every instance of a fleet shares (STREAM_TOKEN_SECRET).
            return {"twiml": callbacks.dial_ended(switchboard, str(args["transfer"]), str(args["status"]), secret=secret,
                                                  stream_url=str(args["stream_url"]),
                                                  stream_ended_url=str(args["stream_ended_url"]),
                                                  status_url=str(args["status_url"]))}
        return {"error": f"no such request {op!r}"}

    return handle


async def _wait_for_start(websocket: MediaSocket, inbound: TwilioInbound) -> tuple[StreamStarted, str | bytes] | None:
    """Read until Twilio's `start` (after `connected`): the event and its frame.

    `None` once the socket is closed: by us with 1008 if no start comes in time or the socket
    floods, or already by the client or by the websocket protocol itself (1009 for a frame over
    `MAX_MESSAGE_BYTES`), which must not be closed a second time.
    """
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:
                frame = await websocket.receive()
                if frame is None:
                    log.warning("media socket from %s closed before its start (code %s)", websocket.client, websocket.close_code)
                    return None
                event = inbound.parse(frame)
                if isinstance(event, StreamStarted):
                    return event, frame
                if inbound.flooding:
                    log.warning("media socket closed: it flooded the bridge before its start")
                    await websocket.close(code=POLICY_VIOLATION)
                    return None
    except TimeoutError:
        log.warning("media socket sent no start within %g s", START_TIMEOUT_S)
        await websocket.close(code=POLICY_VIOLATION)
        return None
