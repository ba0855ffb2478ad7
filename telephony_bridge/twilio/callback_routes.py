"""The routes Twilio calls back about a call: its stream's events and end, a transfer's whisper and dial, and a
placed call's answering-machine and status callbacks. Each checks Twilio's signature first."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response

from telephony_bridge.call.switchboard import Switchboard
from telephony_bridge.store import Store, StoreUnavailable
from telephony_bridge.store import fleet as fleet_routes
from telephony_bridge.twilio import callbacks
from telephony_bridge.twilio.signed_requests import SignedRequests, twiml
from telephony_bridge.twilio.stream_errors import stream_error_of
from telephony_bridge.twilio.webhook import (
    DIAL_ENDED_PATH,
    OUTBOUND_AMD_PATH,
    OUTBOUND_STATUS_PATH,
    STREAM_ENDED_PATH,
    STREAM_STATUS_PATH,
    WHISPER_PATH,
    hangup_twiml,
)

log = logging.getLogger(__name__)

FLEET_REQUEST_TIMEOUT_S = 12.0
"""How long a request to another instance waits for its reply: ending a call waits up to `END_WAIT_S` there."""


def callback_router(signed: SignedRequests) -> APIRouter:
    router = APIRouter()
    public_url, signed_form, settings = signed.public_url, signed.signed_form, signed.settings

    @router.post(STREAM_STATUS_PATH)
    async def stream_status(request: Request) -> Response:
        """`<Stream statusCallback>`: a stream error is logged, counted and kept in the call log; other events are not."""
        params = await signed_form(request)
        if isinstance(params, Response):
            return params
        error = stream_error_of(params)
        if error is not None:
            log.warning("call %s: Twilio reports a media stream error %s: %s", error.call_sid, error.code, error.detail,
                        extra={"call_sid": error.call_sid})
            request.app.state.stream_failed(error)
        return Response(status_code=204)

    @router.post(STREAM_ENDED_PATH)
    async def stream_ended(request: Request) -> Response:
        params = await signed_form(request)
        if isinstance(params, Response):
            return params
        switchboard = request.app.state.switchboard
        limits, defaults = switchboard.config.limits, switchboard.config.defaults
        call_sid = params.get("CallSid", "")
        store: Store | None = request.app.state.store
        if store is not None and switchboard.ending(call_sid) is None:
            try:
                outcome = await fleet_routes.ending(store, call_sid)
            except StoreUnavailable:
                outcome = None
            fallback = switchboard.config.profile_for(params.get("To", "")).fallback_message
            return twiml(callbacks.after_stream_elsewhere(outcome, limits.shutdown_message, fallback))
        return twiml(callbacks.after_stream(switchboard, call_sid, limits.shutdown_message, defaults.fallback_message))

    @router.post(WHISPER_PATH)
    async def whisper(request: Request) -> Response:
        params = await signed_form(request)
        if isinstance(params, Response):
            return params
        return twiml(callbacks.whisper(request.app.state.switchboard, request.query_params.get("transfer", "")))

    @router.post(DIAL_ENDED_PATH)
    async def dial_ended(request: Request) -> Response:
        params = await signed_form(request)
        if isinstance(params, Response):
            return params
        switchboard: Switchboard = request.app.state.switchboard
        transfer_id, status = request.query_params.get("transfer", ""), params.get("DialCallStatus", "")
        urls = {"stream_url": public_url(request.headers, websocket=True),
                "stream_ended_url": public_url(request.headers, websocket=False, path=STREAM_ENDED_PATH),
                "status_url": public_url(request.headers, websocket=False, path=STREAM_STATUS_PATH)}
        store: Store | None = request.app.state.store
        if store is not None and switchboard.transfers.whisper(transfer_id) is None:
            # The transfer is another instance's: its call's owner redeems it and says what comes next.
            try:
                owner = await store.owner_of(params.get("CallSid", ""))
                reply = await store.ask(owner, "dial_ended", {"transfer": transfer_id, "status": status, **urls},
                                        FLEET_REQUEST_TIMEOUT_S) if owner else None
            except StoreUnavailable:
                reply = None
            return twiml(str(reply["twiml"]) if reply and "twiml" in reply else hangup_twiml())
        return twiml(callbacks.dial_ended(switchboard, transfer_id, status, secret=settings.stream_token_secret, **urls))

    @router.post(OUTBOUND_AMD_PATH)
    async def outbound_amd(request: Request) -> Response:
        """`AsyncAmdStatusCallback` of a call the bridge placed: who answered reaches the live call."""
        params = await signed_form(request)
        if isinstance(params, Response):
            return params
        await request.app.state.outbound.amd_callback(request.query_params.get("outbound", ""), params.get("AnsweredBy", ""))
        return Response(status_code=204)

    @router.post(OUTBOUND_STATUS_PATH)
    async def outbound_status(request: Request) -> Response:
        """`StatusCallback` of a call the bridge placed: a final status makes its outcome."""
        params = await signed_form(request)
        if isinstance(params, Response):
            return params
        await request.app.state.outbound.status_callback(request.query_params.get("outbound", ""), params.get("CallStatus", ""))
        return Response(status_code=204)

    return router
