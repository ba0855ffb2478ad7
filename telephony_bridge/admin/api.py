"""The admin API's routes: live calls, the call history, a call's detail and audio, the numbers, reload, ending a call.

Every route needs `Authorization: Bearer <BRIDGE_ADMIN_TOKEN>`, compared in constant time, or the
console's session cookie (admin/sessions.py), with its CSRF token on every request that changes
something; with no token configured every route answers 404, as if the API were not there. The token
travels only in that header, which no log line of the bridge or uvicorn writes. A console session sees
callers' numbers masked: revealing one is a request of its own, and is logged. Live calls are read as
each call's `summary()` value (pushed to watchers by `LiveFeed`), the call history from the call log
file (read-only, off the event loop), recordings from their folder.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import re
import tempfile
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from telephony_bridge.admin.live_feed import LiveFeed, live_call_json
from telephony_bridge.admin.ranges import Unsatisfiable, byte_range
from telephony_bridge.admin.sessions import COOKIE, CSRF_HEADER, ConsoleSessions
from telephony_bridge.admin.timeline import timeline_of, timeline_svg
from telephony_bridge.call.pump import Call
from telephony_bridge.call.switchboard import Switchboard
from telephony_bridge.call_log import CallQuery, CallRecord, find_call, search_calls, usage_totals
from telephony_bridge.config import MAX_SPOKEN_CHARS, CallProfile
from telephony_bridge.errors import CallLogError, RecordingError
from telephony_bridge.logs import mask_number
from telephony_bridge.observe.recording import export_wav, read_recording
from telephony_bridge.outbound.placing import OutboundCalls, OutboundRefused, OutboundRequest
from telephony_bridge.policy import is_open, profile_in_force
from telephony_bridge.reload import ConfigReloader
from telephony_bridge.store import Store, StoreUnavailable
from telephony_bridge.store import postgres as fleet_log

log = logging.getLogger(__name__)

LIVE_TRANSCRIPT_LINES = 6
"""The last lines of each live call's transcript: what an operator glances at, not the whole call."""
MAX_PAGE = 200
CALL_SID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""A CallSid as a path segment; anything else (a `..`, a glob) names no call and no file."""
CACHED_WAVS = 4
"""Recent WAVs kept in memory: an audio element asks for one recording in many ranges, each a request."""
OPERATOR_GOODBYE = "This call is being ended now. Thank you for calling, goodbye."
"""What the caller hears when an operator ends the call and the request names no goodbye of its own."""
END_WAIT_S = 10.0
"""How long ending a call waits for it to end: Twilio's answer (its retries take at most about 3 s) and the stream's stop."""
EVENTS_HEARTBEAT_S = 5.0
"""A comment line this often on an idle event stream: proxies keep it open, and a draining bridge ends it."""
EVENTS_MAX_S = 120.0
"""An event stream ends after this (the browser reconnects at once and gets a fresh snapshot): none outlives a shutdown long."""
SAFE_METHODS = frozenset({"GET", "HEAD"})


def bearer_guard(token: str | None, sessions: ConsoleSessions | None = None) -> Callable[[Request], Awaitable[None]]:
    """The dependency every admin route has: `Authorization: Bearer <token>`, or 401 (404 when `token` is `None`).

    `sessions` lets the console's cookie stand in for the token; a change it authorises needs the CSRF token too.
    """
    expected = token.encode("utf-8") if token else None

    async def require_token(request: Request) -> None:
        if expected is None:
            raise HTTPException(404, "Not Found")
        request.state.console = False
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode("utf-8"), expected):
            return
        session = sessions.session(request.cookies.get(COOKIE), time.time()) if sessions and not presented else None
        if session is None or sessions is None:
            raise HTTPException(401, "a valid admin token is required", headers={"WWW-Authenticate": "Bearer"})
        if request.method not in SAFE_METHODS and not sessions.csrf_valid(session, request.headers.get(CSRF_HEADER)):
            raise HTTPException(403, "the console's CSRF token is missing or wrong: reload the page")
        request.state.console = True

    return require_token


def admin_router(token: str | None, sessions: ConsoleSessions | None = None, feed: LiveFeed | None = None) -> APIRouter:
    """The routes under `/admin`, guarded by `token` (`None`: the API is off and every route answers 404).

    `feed` serves the live calls' event stream.
    """
    router = APIRouter(prefix="/admin", dependencies=[Depends(bearer_guard(token, sessions))])
    wavs: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
    timelines: OrderedDict[tuple[str, int, int], Any] = OrderedDict()

    @router.get("/calls/live")
    async def live_calls(request: Request) -> JSONResponse:
        switchboard: Switchboard = request.app.state.switchboard
        store: Store | None = request.app.state.store
        if store is not None:
            return JSONResponse({"calls": await _fleet_calls(store, switchboard), "draining": switchboard.draining})
        calls = []
        for call in switchboard.calls_in_progress():
            summary = call.summary()
            calls.append(live_call_json(summary, lines_from=max(0, len(summary.transcript) - LIVE_TRANSCRIPT_LINES)))
        return JSONResponse({"calls": calls, "draining": switchboard.draining})

    @router.get("/calls/live/events")
    async def live_events(request: Request) -> StreamingResponse:
        """Server-sent events: `call` (a live call, new or changed: only its new transcript lines) and `ended`; in a
        fleet, of every instance's calls (another instance's carry its `instance`)."""
        if feed is None:
            raise HTTPException(404, "no live event stream on this bridge")
        switchboard: Switchboard = request.app.state.switchboard
        store: Store | None = request.app.state.store
        if store is not None:
            try:
                feed.seed(await store.live_calls(), store.instance)
            except StoreUnavailable as error:
                raise HTTPException(503, f"the database is unavailable: {error}") from None
        return StreamingResponse(
            _event_stream(feed, switchboard), media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @router.post("/calls/{call_sid}/caller")
    async def reveal_caller(request: Request, call_sid: str) -> JSONResponse:
        """The caller's number in full, for a live or logged call; each reveal is logged (not the number)."""
        switchboard: Switchboard = request.app.state.switchboard
        live = next((call for call in switchboard.calls_in_progress() if call.call_sid == call_sid), None)
        number = live.caller_number if live is not None else None
        store: Store | None = request.app.state.store
        if number is None and store is not None and CALL_SID.match(call_sid):
            # Another instance's live call (the registry keeps its caller), else the fleet's call log.
            try:
                number = next((call.caller for call in await store.live_calls() if call.call_sid == call_sid), None)
                record = None if number else await asyncio.to_thread(fleet_log.find_call, request.app.state.database_url,
                                                                     call_sid)
            except (StoreUnavailable, CallLogError) as error:
                raise HTTPException(503, str(error)) from None
            number = number or (record.from_number if record is not None else None)
        elif number is None and CALL_SID.match(call_sid) and request.app.state.call_log_path is not None:
            try:
                record = await asyncio.to_thread(find_call, _call_log(request), call_sid)
            except CallLogError as error:
                raise HTTPException(503, str(error)) from None
            number = record.from_number if record is not None else None
        if number is None:
            raise HTTPException(404, f"no call {call_sid}, live or in the call log")
        log.info("call %s: an operator revealed the caller's number (%s)", call_sid,
                 "console" if request.state.console else "admin token",
                 extra={"event": "caller_revealed", "call_sid": call_sid, "by": "console" if request.state.console else "token"})
        return JSONResponse({"call_sid": call_sid, "caller": number})

    @router.get("/calls")
    async def call_history(
        request: Request,
        number: str | None = None,
        since: str | None = Query(None, alias="from"),
        until: str | None = Query(None, alias="to"),
        outcome: str | None = None,
        direction: str | None = None,
        q: str | None = None,
        limit: int = Query(50, ge=1, le=MAX_PAGE),
        cursor: str | None = None,
    ) -> JSONResponse:
        query = CallQuery(
            number=number, since=_when(since, "from"), until=_when(until, "to", end_of_day=True), outcome=outcome,
            direction=direction, text=q or None, limit=limit, after=_cursor(cursor),
        )
        try:
            url = request.app.state.store and request.app.state.database_url
            records, after = await (
                asyncio.to_thread(fleet_log.search_calls, url, query) if url
                else asyncio.to_thread(search_calls, _call_log(request), query)
            )
        except CallLogError as error:
            raise HTTPException(503, str(error)) from None
        return JSONResponse({
            "calls": [_call_json(record, masked=request.state.console) for record in records],
            "next_cursor": _encode_cursor(after) if after else None,
        })

    @router.get("/calls/{call_sid}")
    async def call_detail(request: Request, call_sid: str) -> JSONResponse:
        try:
            url = request.app.state.store and request.app.state.database_url
            record = (
                None if not CALL_SID.match(call_sid)
                else await asyncio.to_thread(fleet_log.find_call, url, call_sid) if url
                else await asyncio.to_thread(find_call, _call_log(request), call_sid)
            )
        except CallLogError as error:
            raise HTTPException(503, str(error)) from None
        if record is None:
            raise HTTPException(404, f"no call {call_sid} in the call log")
        detail = _call_json(record, masked=request.state.console)
        detail["transfer"] = (
            {"target": record.transfer_target, "connected": record.transfer_connected}
            if record.transfer_target is not None else None
        )
        detail["transcript"] = [asdict(line) for line in record.transcript]
        recorded = _recording_of(request, call_sid) is not None
        detail["recording"] = f"/admin/calls/{call_sid}/recording.wav" if recorded else None
        detail["timeline"] = f"/admin/calls/{call_sid}/timeline" if recorded else None
        return JSONResponse(detail)

    async def timeline(request: Request, call_sid: str) -> Any:
        path = _recording_of(request, call_sid) if CALL_SID.match(call_sid) else None
        if path is None:
            raise HTTPException(404, f"no recording of call {call_sid}")
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if key not in timelines:
            try:
                timelines[key] = await asyncio.to_thread(lambda: timeline_of(read_recording(path)))
            except RecordingError as error:
                raise HTTPException(409, f"the recording cannot be read: {error.reason}") from None
            while len(timelines) > CACHED_WAVS:
                timelines.popitem(last=False)
        return timelines[key]

    @router.get("/calls/{call_sid}/timeline")
    async def timeline_json(request: Request, call_sid: str) -> JSONResponse:
        """When each side spoke, barge-ins and tool calls, on the recording's WAV timeline (seconds)."""
        return JSONResponse((await timeline(request, call_sid)).as_json())

    @router.get("/calls/{call_sid}/timeline.svg")
    async def timeline_picture(request: Request, call_sid: str) -> Response:
        return Response(timeline_svg(await timeline(request, call_sid)), media_type="image/svg+xml")

    @router.get("/calls/{call_sid}/recording.wav")
    async def recording(request: Request, call_sid: str) -> Response:
        path = _recording_of(request, call_sid) if CALL_SID.match(call_sid) else None
        if path is None:
            raise HTTPException(404, f"no recording of call {call_sid}")
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        wav = wavs.get(key)
        if wav is None:
            try:
                wav = await asyncio.to_thread(_wav_of, path)
            except RecordingError as error:
                raise HTTPException(409, f"the recording cannot be read: {error.reason}") from None
            wavs[key] = wav
            while len(wavs) > CACHED_WAVS:
                wavs.popitem(last=False)
        headers = {"Accept-Ranges": "bytes"}
        try:
            wanted = byte_range(request.headers.get("range"), len(wav))
        except Unsatisfiable:
            return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{len(wav)}"})
        if wanted is None:
            return Response(wav, media_type="audio/wav", headers=headers)
        return Response(
            wav[wanted.start : wanted.end + 1], status_code=206, media_type="audio/wav",
            headers={**headers, "Content-Range": wanted.content_range(len(wav))},
        )

    @router.post("/calls/{call_sid}/end")
    async def end_call(request: Request, call_sid: str) -> JSONResponse:
        """Twilio says the goodbye and hangs up (REST: the call's TwiML is replaced), so the caller never hears the fallback."""
        goodbye = await _goodbye(request)
        switchboard: Switchboard = request.app.state.switchboard
        store: Store | None = request.app.state.store
        if store is not None and not any(live.call_sid == call_sid for live in switchboard.calls_in_progress()):
            # Another instance's call: its owner ends it, asked through the database (LISTEN/NOTIFY).
            try:
                owner = await store.owner_of(call_sid)
            except StoreUnavailable as error:
                raise HTTPException(503, f"the database is unavailable: {error}") from None
            if owner is None:
                raise HTTPException(404, f"no live call {call_sid} in the fleet")
            reply = await store.ask(owner, "end", {"call_sid": call_sid, "goodbye": goodbye}, END_WAIT_S + 2)
            if reply is None or "status" not in reply:
                raise HTTPException(504, f"the instance {owner} carrying call {call_sid} did not answer")
            if reply["status"] == 404:
                raise HTTPException(404, f"no live call {call_sid} in the fleet")
            return JSONResponse(reply["body"], status_code=int(reply["status"]))
        status, body = await end_live_call(switchboard, call_sid, goodbye)
        if status == 404:
            raise HTTPException(404, f"no live call {call_sid} on this bridge")
        return JSONResponse(body, status_code=status)

    @router.post("/calls")
    async def place_call(request: Request) -> JSONResponse:
        """Place one outbound call: JSON `{"from", "to", "context"}`; 201 with its ids, 409 when refused (do-not-call...)."""
        body = await _json_body(request)
        context = body.get("context") or {}
        if not isinstance(body.get("from"), str) or not isinstance(body.get("to"), str) or not isinstance(context, dict) \
                or not all(isinstance(value, str) for value in context.values()):
            raise HTTPException(400, 'the body must be JSON {"from": "+E164", "to": "+E164", "context": {"name": "text"}}')
        outbound: OutboundCalls = request.app.state.outbound
        try:
            placed = await outbound.place(OutboundRequest(body["from"], body["to"], context))
        except OutboundRefused as refused:
            return JSONResponse({"refused": refused.reason}, status_code=409)
        return JSONResponse({"outbound_id": placed.outbound_id, "call_sid": placed.call_sid}, status_code=201)

    @router.get("/dnc")
    async def dnc_list(request: Request) -> JSONResponse:
        return JSONResponse({"numbers": await request.app.state.outbound.do_not_call.numbers()})

    @router.post("/dnc")
    async def dnc_add(request: Request) -> JSONResponse:
        number = (await _json_body(request)).get("number")
        if not isinstance(number, str) or not number:
            raise HTTPException(400, 'the body must be JSON {"number": "+E164"}')
        added = await request.app.state.outbound.do_not_call.add(number, "admin API")
        return JSONResponse({"number": number, "added": added}, status_code=201 if added else 200)

    @router.delete("/dnc")
    async def dnc_remove(request: Request) -> JSONResponse:
        number = (await _json_body(request)).get("number")
        if not isinstance(number, str) or not number:
            raise HTTPException(400, 'the body must be JSON {"number": "+E164"}')
        if not await request.app.state.outbound.do_not_call.remove(number):
            raise HTTPException(404, f"{number} is not on the do-not-call list")
        return JSONResponse({"number": number, "removed": True})

    @router.get("/numbers")
    async def numbers(request: Request) -> JSONResponse:
        config = request.app.state.switchboard.config
        return JSONResponse({
            "config_hash": config.digest,
            "source": config.source,
            "defaults": config.defaults.model_dump(mode="json"),
            "numbers": {number: profile.model_dump(mode="json") for number, profile in config.numbers.items()},
        })

    @router.get("/policy")
    async def policy(request: Request) -> JSONResponse:
        """Each number's hours, limits, recording notice and retention, and its usage so far from the call log."""
        config = request.app.state.switchboard.config
        now = datetime.now(UTC)
        path: Path | None = request.app.state.call_log_path
        url = request.app.state.store and request.app.state.database_url
        try:
            totals = (
                await asyncio.to_thread(fleet_log.usage_totals, url) if url
                else await asyncio.to_thread(usage_totals, path) if path is not None and path.is_file() else []
            )
        except CallLogError as error:
            raise HTTPException(503, str(error)) from None
        return JSONResponse({
            "config_hash": config.digest,
            "prices": {model: prices.model_dump() for model, prices in config.prices.items()},
            "defaults": _policy_json(config.defaults, now),
            "numbers": {number: _policy_json(profile, now) for number, profile in config.numbers.items()},
            "usage": [{"number": total.number, "model": total.model, "calls": total.calls,
                       "line_seconds": round(total.line_seconds, 1), "tokens": asdict(total.usage), "cost": total.cost}
                      for total in totals],
        })

    @router.post("/reload")
    async def reload(request: Request) -> JSONResponse:
        reloader: ConfigReloader = request.app.state.reloader
        outcome = await reloader.reload()
        if not outcome.ok:
            return JSONResponse({"ok": False, "config_hash": outcome.digest, "errors": list(outcome.problems)}, status_code=422)
        return JSONResponse({"ok": True, "config_hash": outcome.digest, "restart_needed": list(outcome.restart_needed)})

    return router


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise HTTPException(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return body
async def _event_stream(feed: LiveFeed, switchboard: Switchboard) -> AsyncIterator[str]:
    """Every live call at once, then each change as it happens; ends when the bridge drains or after `EVENTS_MAX_S`."""
    watcher = feed.watch()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVENTS_MAX_S
    try:
        yield "retry: 1000\n\n"
        while not switchboard.draining and loop.time() < deadline:
            for name, data in watcher.updates():
                yield f"event: {name}\ndata: {json.dumps(data)}\n\n"
            try:
                await asyncio.wait_for(watcher.wake.wait(), EVENTS_HEARTBEAT_S)
            except TimeoutError:
                yield ": idle\n\n"
    finally:
        feed.unwatch(watcher)


async def _goodbye(request: Request) -> str:
    """The request's own `goodbye` (JSON `{"goodbye": "..."}`, for a line in another language), else `OPERATOR_GOODBYE`."""
    body = await request.body()
    if not body.strip():
        return OPERATOR_GOODBYE
    try:
        goodbye = json.loads(body).get("goodbye", OPERATOR_GOODBYE)
    except (ValueError, AttributeError):
        raise HTTPException(422, 'the body must be JSON such as {"goodbye": "Goodbye."}, or empty') from None
    if not isinstance(goodbye, str) or not goodbye.strip() or len(goodbye) > MAX_SPOKEN_CHARS:
        raise HTTPException(422, f"goodbye: a sentence of 1 to {MAX_SPOKEN_CHARS} characters")
    return goodbye.strip()


async def end_live_call(switchboard: Switchboard, call_sid: str, goodbye: str) -> tuple[int, dict[str, Any]]:
    """End a call this instance carries: 200 with how it ended, 202 if it has not ended in `END_WAIT_S`, 404 if not here."""
    call = next((live for live in switchboard.calls_in_progress() if live.call_sid == call_sid), None)
    if call is None:
        return 404, {}
    call.end_by_operator(goodbye)
    try:
        await asyncio.wait_for(call.ended.wait(), END_WAIT_S)
    except TimeoutError:
        return 202, {"call_sid": call_sid, "ended": False}
    return 200, _ended_json(call)


async def _fleet_calls(store: Store, switchboard: Switchboard) -> list[dict[str, Any]]:
    """Every live call of the fleet, from the registry; this instance's own with their last transcript lines."""
    try:
        registered = await store.live_calls()
    except StoreUnavailable as error:
        raise HTTPException(503, f"the database is unavailable: {error}") from None
    here = {call.call_sid: call.summary() for call in switchboard.calls_in_progress()}
    calls = []
    for live in registered:
        summary = here.get(live.call_sid)
        calls.append({
            "call_sid": live.call_sid, "instance": live.instance, "number": live.number,
            "caller": mask_number(live.caller) if live.caller else "", "duration_s": round(live.duration_s, 1),
            "state": ("in_progress" if summary.counters.frames_in else "connecting") if summary else "in_progress",
            "transcript": [{"speaker": turn.speaker, "text": turn.text}
                           for turn in summary.transcript[-LIVE_TRANSCRIPT_LINES:]] if summary else [],
        })
    return calls


def _ended_json(call: Call) -> dict[str, Any]:
    summary = call.summary()
    return {"call_sid": call.call_sid, "ended": True, "outcome": summary.outcome, "end_reason": summary.end_reason,
            "duration_s": round(summary.duration_s, 1)}


def _call_log(request: Request) -> Path:
    path: Path | None = request.app.state.call_log_path
    if path is None:
        raise HTTPException(404, "the call log is off ([call_log] path is empty)")
    if not path.is_file():
        raise HTTPException(503, "the call log has not been created yet")
    return path


def _call_json(record: CallRecord, *, masked: bool = False) -> dict[str, Any]:
    caller = mask_number(record.from_number) if masked and record.from_number else record.from_number
    return {
        "call_sid": record.call_sid, "from": caller, "to": record.to_number, "direction": record.direction,
        "started_at": record.started_at.isoformat(), "ended_at": record.ended_at.isoformat(),
        "duration_s": round(record.duration_s, 3), "outcome": record.outcome, "end_reason": record.end_reason,
        "barge_ins": record.barge_ins, "reconnects": record.reconnects, "model": record.model, "dialect": record.dialect,
        "profile_in_force": record.profile_in_force, "usage": asdict(record.usage), "cost": record.cost,
        "transcript_purged": record.transcript_purged, "amd_result": record.amd_result,
    }


def _policy_json(profile: CallProfile, now: datetime) -> dict[str, Any]:
    """A profile's policy as the console shows it: hours (and whether they are open now), limits, consent, retention."""
    hours = profile.hours
    return {
        "hours": None if hours is None else {**hours.model_dump(), "open_now": is_open(hours, now)},
        "in_force_now": profile_in_force(profile, now)[0],
        "after_hours": None if profile.after_hours is None else {
            "instructions": profile.after_hours.instructions, "greeting": profile.after_hours.greeting,
            "voice": profile.after_hours.voice, "transfer": sorted(profile.after_hours.transfer),
            "tools": [tool.name for tool in profile.after_hours.tools],
        },
        "limits": {"max_call_minutes": profile.max_call_minutes, "silence_hangup_seconds": profile.silence_hangup_seconds,
                   "max_cost_per_call": profile.max_cost_per_call},
        "recording": {"record": profile.record, "notice": profile.recording_notice if profile.record else None,
                      "notice_required": profile.recording_notice_required},
        "retention_days": profile.retention_days.model_dump(),
    }


def _when(value: str | None, name: str, *, end_of_day: bool = False) -> datetime | None:
    """An ISO date or date-time (UTC unless it says otherwise); a date alone as `to` takes in that whole day."""
    if not value:
        return None
    try:
        if len(value) == 10:
            day = datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
            return day + timedelta(days=1) if end_of_day else day
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise HTTPException(422, f"{name}: not an ISO date or date-time such as 2026-01-31 or 2026-01-31T09:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _encode_cursor(after: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(after).encode()).decode().rstrip("=")


def _cursor(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    try:
        started_at, call_sid = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        if isinstance(started_at, str) and isinstance(call_sid, str):
            return started_at, call_sid
    except (binascii.Error, ValueError, TypeError):
        pass
    raise HTTPException(422, "cursor: not one this API gave out")


def _recording_of(request: Request, call_sid: str) -> Path | None:
    """The call's latest recording file (a restarted stream's second one is numbered: `-2`)."""
    folder: Path = request.app.state.recordings_folder
    found = sorted(folder.glob(f"*-{call_sid}.jsonl")) + sorted(folder.glob(f"*-{call_sid}-[0-9]*.jsonl"))
    return found[-1] if found else None


def _wav_of(path: Path) -> bytes:
    """The recording as a stereo WAV, through the same export as `telephony-bridge export-wav`."""
    call = read_recording(path)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "call.wav"
        export_wav(call, out)
        return out.read_bytes()
