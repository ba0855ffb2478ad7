"""The admin API's campaign routes: submit a call list, follow its progress row by row, pause and resume it, and
settle by hand a row a restart left `unknown`.

Guarded like every admin route (`bearer_guard`). The campaigns run in the server (`app.state.campaigns`,
a `CampaignRunner`, or a `FleetCampaignRunner` with `DATABASE_URL`); these routes only hand requests to it and
read the database through its store, so a row shown here is a row as committed, whichever instance is asked.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from telephony_bridge.admin.api import bearer_guard
from telephony_bridge.admin.sessions import ConsoleSessions
from telephony_bridge.outbound.campaigns import CampaignRequest, CampaignRunner, progress_counts
from telephony_bridge.outbound.campaigns_fleet import FleetCampaignRunner
from telephony_bridge.outbound.campaigns_schedule import CampaignInvalid, CampaignStateError, Row
from telephony_bridge.outbound.campaigns_store import CampaignView
from telephony_bridge.store.base import StoreUnavailable

Runner = CampaignRunner | FleetCampaignRunner
"""One process's campaigns on SQLite, or this instance's share of the fleet's on PostgreSQL (`DATABASE_URL`)."""
UNAVAILABLE = "the fleet's database does not answer; try again when /readyz is 200"


def campaigns_router(token: str | None, sessions: ConsoleSessions | None = None) -> APIRouter:
    router = APIRouter(prefix="/admin/campaigns", dependencies=[Depends(bearer_guard(token, sessions))])

    @router.post("")
    async def submit(request: Request) -> JSONResponse:
        """JSON `{"from", "rows": [{"to", "timezone"?, ...context}], "concurrency", "retries", "retry_delay_s",
        "between": "09:00-18:00", "timezone"}`; 201 with the campaign's id and progress."""
        runner = _runner(request)
        try:
            body = CampaignRequest.model_validate_json(await request.body())
            campaign_id = await runner.submit(body)
        except ValidationError as error:
            raise HTTPException(422, _problems(error)) from None
        except CampaignInvalid as error:
            raise HTTPException(422, str(error)) from None
        except StoreUnavailable:
            raise HTTPException(503, UNAVAILABLE) from None
        return JSONResponse(await _progress(runner, campaign_id), status_code=201)

    @router.get("")
    async def campaigns(request: Request) -> JSONResponse:
        runner = _runner(request)
        try:
            counted = await runner.store.counts()
        except StoreUnavailable:
            raise HTTPException(503, UNAVAILABLE) from None
        return JSONResponse({"campaigns": [
            {"id": campaign_id, "state": state, "rows": dict(counts)} for campaign_id, state, counts in counted
        ]})

    @router.get("/{campaign_id}")
    async def progress(request: Request, campaign_id: str) -> JSONResponse:
        return JSONResponse(await _progress(_runner(request), campaign_id))

    @router.post("/{campaign_id}/pause")
    async def pause(request: Request, campaign_id: str) -> JSONResponse:
        return await _move(request, campaign_id, "pause")

    @router.post("/{campaign_id}/resume")
    async def resume(request: Request, campaign_id: str) -> JSONResponse:
        return await _move(request, campaign_id, "resume")

    @router.post("/{campaign_id}/rows/{position}")
    async def settle(request: Request, campaign_id: str, position: int) -> JSONResponse:
        """Settle a row left `unknown` (its `position` as listed): JSON `{"outcome": "human", "call_sid"?}` for what the
        operator found in Twilio's call log, or `{"redial": true}` to dial it again; the campaign's progress."""
        runner = _runner(request)
        try:
            body = SettleRequest.model_validate_json(await request.body())
        except ValidationError as error:
            raise HTTPException(422, _problems(error)) from None
        if (body.outcome is None) == (not body.redial):
            raise HTTPException(422, 'give either "outcome" (the row is done) or "redial": true (it is dialled again)')
        try:
            row = await runner.settle(campaign_id, position, body.outcome, call_sid=body.call_sid)
        except CampaignStateError as error:
            raise HTTPException(409, f"{error}: only a row left unknown is settled by hand") from None
        except CampaignInvalid as error:
            raise HTTPException(422, str(error)) from None
        except StoreUnavailable:
            raise HTTPException(503, UNAVAILABLE) from None
        if row is None:
            raise HTTPException(404, f"no row {position} in campaign {campaign_id}")
        return JSONResponse(await _progress(runner, campaign_id))

    return router


class SettleRequest(BaseModel):
    """`POST /admin/campaigns/{id}/rows/{position}`."""

    model_config = ConfigDict(extra="forbid")

    outcome: str | None = None
    redial: bool = False
    call_sid: str | None = None


def _problems(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in error.errors())


def _runner(request: Request) -> Runner:
    runner: Runner | None = getattr(request.app.state, "campaigns", None)
    if runner is None:
        raise HTTPException(503, "campaigns are off: the call log's database is off ([call_log] path) or cannot be opened")
    return runner


async def _move(request: Request, campaign_id: str, event: str) -> JSONResponse:
    runner = _runner(request)
    try:
        moved = await (runner.pause(campaign_id) if event == "pause" else runner.resume(campaign_id))
    except CampaignStateError as error:
        raise HTTPException(409, str(error)) from None
    except StoreUnavailable:
        raise HTTPException(503, UNAVAILABLE) from None
    if moved is None:
        view = await _view(runner, campaign_id)
        if view is None:
            raise HTTPException(404, f"no campaign {campaign_id}")
        raise HTTPException(409, f"campaign {campaign_id} is {view.state}: cannot {event}")
    return JSONResponse(await _progress(runner, campaign_id))


async def _view(runner: Runner, campaign_id: str) -> CampaignView | None:
    try:
        return await runner.store.view(campaign_id)
    except StoreUnavailable:
        raise HTTPException(503, UNAVAILABLE) from None


async def _progress(runner: Runner, campaign_id: str) -> dict[str, Any]:
    view = await _view(runner, campaign_id)
    if view is None:
        raise HTTPException(404, f"no campaign {campaign_id}")
    return _view_json(view)


def _view_json(view: CampaignView) -> dict[str, Any]:
    settings = view.settings
    return {
        "id": view.campaign_id,
        "state": view.state.value,
        "created_at": view.created_at.isoformat(),
        "from": settings.from_number,
        "concurrency": settings.concurrency,
        "retries": settings.retries,
        "retry_delay_s": settings.retry_delay_s,
        "between": str(settings.window) if settings.window else None,
        "timezone": settings.timezone,
        "counts": dict(progress_counts(view.rows)),
        "rows": [_row_json(row) for row in view.rows],
    }


def _row_json(row: Row) -> dict[str, Any]:
    return {
        "position": row.position, "to": row.to_number, "state": row.state.value, "attempts": row.attempts,
        "outcome": row.outcome, "call_sid": row.call_sid, "amd_result": row.amd_result, "detail": row.detail,
        "next_attempt_at": row.next_attempt_at.isoformat() if row.next_attempt_at else None,
    }
