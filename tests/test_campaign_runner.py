"""The campaign runner on a real database, with the placing interface it is given: what a restart finds dialling."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from telephony_bridge.outbound.campaigns import CampaignRequest, CampaignRunner
from telephony_bridge.outbound.campaigns_schedule import CampaignState, RowState
from telephony_bridge.outbound.campaigns_store import CampaignStore
from telephony_bridge.outbound.placing import OutboundOutcome, OutboundRequest, PlacedCall


class TwilioRecords:
    """The placing interface as a restarted bridge sees it: Twilio's records of calls placed before, and no new calls."""

    def __init__(self, records: dict[str, dict[str, Any]]) -> None:
        self.records = records
        self.placed: list[OutboundRequest] = []
        self.looked_up: list[str] = []

    async def place(self, request: OutboundRequest) -> PlacedCall:
        self.placed.append(request)
        return PlacedCall("OB1", f"CA{len(self.placed)}")

    def add_outcome_listener(self, listener: Callable[[OutboundOutcome], None]) -> None:
        pass

    async def find_call(self, call_sid: str) -> dict[str, Any] | None:
        self.looked_up.append(call_sid)
        return self.records.get(call_sid)


def lines(dialling: Collection[str | None]) -> int:
    return 10


async def stored_campaign(path: Path) -> tuple[CampaignStore, str]:
    """A campaign of three rows as a stopped bridge left it: 0 dialling without a SID, 1 and 2 dialling with one."""
    store = CampaignStore(path)
    await store.open()
    request = CampaignRequest.model_validate({"from": "+14155550100", "rows": [{"to": f"+1555700000{n}"} for n in range(3)],
                                              "concurrency": 3})
    settings, rows = request.campaign("CMtest")
    await store.create("CMtest", settings, rows, datetime.now(UTC))
    for row in rows:
        dialling = row.moved("dial", attempts=1)
        await store.save(dialling if row.position == 0 else dialling.moved("placed", call_sid=f"CAold{row.position}"))
    return store, "CMtest"


async def test_a_restart_never_dials_a_row_it_may_have_called(tmp_path: Path) -> None:
    store, campaign_id = await stored_campaign(tmp_path / "calls.db")
    twilio = TwilioRecords({
        "CAold1": {"status": "completed", "answered_by": "machine_end_beep"},
        "CAold2": {"status": "in-progress"},
    })
    runner = CampaignRunner(store, twilio, lines, reconcile_interval_s=0.05)
    await runner.start()
    try:
        view = await store.view(campaign_id)
        assert view is not None and view.rows[0].state is RowState.UNKNOWN
        twilio.records["CAold2"] = {"status": "no-answer"}
        async with asyncio.timeout(5):
            while (view := await store.view(campaign_id)) is not None and view.state is not CampaignState.FINISHED:
                await asyncio.sleep(0.02)
    finally:
        await runner.stop()
    assert twilio.placed == [] and view is not None
    assert [(row.state, row.outcome) for row in view.rows] == [
        (RowState.UNKNOWN, None), (RowState.DONE, "voicemail"), (RowState.DONE, "no-answer"),
    ]
    assert twilio.looked_up.count("CAold2") >= 2  # asked again while the call was in progress
