"""The admin API's routes: live calls, the call history, a call's detail and audio, the numbers, reload, ending a call.

Every route needs `Authorization: Bearer <BRIDGE_ADMIN_TOKEN>`, compared in constant time; with no token
configured every route answers 404, as if the API were not there. The token travels only in that header,
which no log line of the bridge or uvicorn writes. Live calls are read as each call's `summary()` value,
the call history from the call log file (read-only, off the event loop), recordings from their folder.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import re
import tempfile
from collections import OrderedDict
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse

from ..call import Call
from ..call_log import CallQuery, CallRecord, find_call, search_calls
from ..config import MAX_SPOKEN_CHARS
from ..errors import CallLogError, RecordingError
from ..logs import mask_number
from ..recording import export_wav, read_recording
from ..reload import ConfigReloader
from ..store import Store, StoreUnavailable
from ..store import postgres as fleet_log
from ..switchboard import Switchboard
from .ranges import Unsatisfiable, byte_range

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


def admin_router(token: str | None) -> APIRouter:
    """The routes under `/admin`, guarded by `token` (`None`: the API is off and every route answers 404)."""
    expected = token.encode("utf-8") if token else None

    async def require_token(request: Request) -> None:
        if expected is None:
            raise HTTPException(404, "Not Found")
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode("utf-8"), expected):
            raise HTTPException(401, "a valid admin token is required", headers={"WWW-Authenticate": "Bearer"})

    router = APIRouter(prefix="/admin", dependencies=[Depends(require_token)])
    wavs: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()

    @router.get("/calls/live")
    async def live_calls(request: Request) -> JSONResponse:
        switchboard: Switchboard = request.app.state.switchboard
        store: Store | None = request.app.state.store
        if store is not None:
            return JSONResponse({"calls": await _fleet_calls(store, switchboard), "draining": switchboard.draining})
        calls = []
        for call in switchboard.calls_in_progress():
            summary = call.summary()
            calls.append({
                "call_sid": summary.call_sid,
                "number": summary.called_number,
                "caller": mask_number(summary.caller_number) if summary.caller_number else "",
                "duration_s": round(summary.duration_s, 1),
                "state": "in_progress" if summary.counters.frames_in else "connecting",
                "transcript": [{"speaker": turn.speaker, "text": turn.text}
                               for turn in summary.transcript[-LIVE_TRANSCRIPT_LINES:]],
            })
        return JSONResponse({"calls": calls, "draining": switchboard.draining})

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
            "calls": [_call_json(record) for record in records],
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
        detail = _call_json(record)
        detail["transfer"] = (
            {"target": record.transfer_target, "connected": record.transfer_connected}
            if record.transfer_target is not None else None
        )
        detail["transcript"] = [asdict(line) for line in record.transcript]
        detail["recording"] = (
            f"/admin/calls/{call_sid}/recording.wav" if _recording_of(request, call_sid) is not None else None
        )
        return JSONResponse(detail)

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

    @router.get("/numbers")
    async def numbers(request: Request) -> JSONResponse:
        config = request.app.state.switchboard.config
        return JSONResponse({
            "config_hash": config.digest,
            "source": config.source,
            "defaults": config.defaults.model_dump(),
            "numbers": {number: profile.model_dump() for number, profile in config.numbers.items()},
        })

    @router.post("/reload")
    async def reload(request: Request) -> JSONResponse:
        reloader: ConfigReloader = request.app.state.reloader
        outcome = await reloader.reload()
        if not outcome.ok:
            return JSONResponse({"ok": False, "config_hash": outcome.digest, "errors": list(outcome.problems)}, status_code=422)
        return JSONResponse({"ok": True, "config_hash": outcome.digest, "restart_needed": list(outcome.restart_needed)})

    return router


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


def _call_json(record: CallRecord) -> dict[str, Any]:
    return {
        "call_sid": record.call_sid, "from": record.from_number, "to": record.to_number, "direction": record.direction,
        "started_at": record.started_at.isoformat(), "ended_at": record.ended_at.isoformat(),
        "duration_s": round(record.duration_s, 3), "outcome": record.outcome, "end_reason": record.end_reason,
        "barge_ins": record.barge_ins, "reconnects": record.reconnects, "model": record.model, "dialect": record.dialect,
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
