"""What the console relies on, without a browser: its sessions, the live event stream, timelines, and being off."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import AUTH_TOKEN, PUBLIC_URL, SHOP, ManualClock, bridge_for, new_call
from telephony_bridge.admin.sessions import SESSION_S, ConsoleSessions
from telephony_bridge.admin.timeline import speech_spans, timeline_of, timeline_svg
from telephony_bridge.app import create_app
from telephony_bridge.call.controller import CallController
from telephony_bridge.call.events import (
    FunctionCallRequested,
    MarkEchoed,
    ModelAudio,
    ModelAudioDone,
    RealtimeConnected,
    ResponseDone,
    ResponseStarted,
    SendTwilioMark,
    SessionConfigured,
    StreamStarted,
    ToolAnswered,
)
from telephony_bridge.config import BridgeConfig, CallProfile, HttpTool, settings_from_env
from telephony_bridge.observe.recording import read_recording
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator

ADMIN_TOKEN = "console-api-admin-token"
RECORDING = Path(__file__).parent / "recordings" / "barge-in-mid-answer.jsonl"
NOW = 1_800_000_000.0


def test_a_session_cookie_stands_for_its_session_until_it_expires() -> None:
    sessions = ConsoleSessions(ADMIN_TOKEN)
    cookie, issued = sessions.issue(NOW)
    assert sessions.session(cookie, NOW + 60) == issued
    assert sessions.session(cookie, NOW + SESSION_S + 1) is None
    assert ADMIN_TOKEN not in cookie


def test_a_forged_or_altered_cookie_is_no_session() -> None:
    sessions = ConsoleSessions(ADMIN_TOKEN)
    cookie, _ = sessions.issue(NOW)
    session_id, expires, signature = cookie.split(".")
    assert sessions.session(f"{session_id}.{int(expires) + 86400}.{signature}", NOW) is None
    assert sessions.session(f"other.{expires}.{signature}", NOW) is None
    assert sessions.session(cookie, NOW) is not None
    assert ConsoleSessions("another-admin-token").session(cookie, NOW) is None, "a new admin token signs everyone out"
    assert sessions.session("", NOW) is None and sessions.session("a.b", NOW) is None


def test_the_csrf_token_belongs_to_one_session() -> None:
    sessions = ConsoleSessions(ADMIN_TOKEN)
    _, first = sessions.issue(NOW)
    _, second = sessions.issue(NOW)
    assert sessions.csrf_valid(first, first.csrf_token)
    assert not sessions.csrf_valid(first, second.csrf_token)
    assert not sessions.csrf_valid(first, None) and not sessions.csrf_valid(first, "")


def test_signing_out_revokes_the_session() -> None:
    sessions = ConsoleSessions(ADMIN_TOKEN)
    cookie, session = sessions.issue(NOW)
    sessions.revoke(session, NOW)
    assert sessions.session(cookie, NOW) is None


def test_speech_spans_join_pauses_shorter_than_a_turn() -> None:
    import numpy as np

    silence = np.zeros(8000, dtype="<i2")
    tone = (np.sin(np.arange(4000) / 3) * 8000).astype("<i2")
    short_gap = np.zeros(1600, dtype="<i2")
    track = np.concatenate([silence, tone, short_gap, tone, silence])
    [span] = speech_spans(track)
    assert span.start_s == pytest.approx(1.0, abs=0.02) and span.seconds == pytest.approx(1.2, abs=0.04)


def test_a_recordings_timeline_has_both_sides_and_its_barge_in() -> None:
    timeline = timeline_of(read_recording(RECORDING))
    assert timeline.caller and timeline.heard
    assert len(timeline.barge_ins) >= 1 and timeline.barge_ins[0].truncate_ms is not None
    last_end = max(span.start_s + span.seconds for span in (*timeline.caller, *timeline.heard))
    assert last_end <= timeline.length_s + 0.02
    svg = timeline_svg(timeline)
    assert svg.startswith("<svg") and "barge-in: clear + truncate at" in svg and f'data-seconds="{timeline.length_s:.3f}"' in svg


async def test_with_no_admin_token_the_console_is_not_there() -> None:
    settings = settings_from_env({"PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "OPENAI_API_KEY": "sk-x"})
    app = create_app(settings, BridgeConfig())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1") as client:
        for method, path in (("GET", "/console/"), ("GET", "/console/sign-in"), ("POST", "/console/sign-in"),
                             ("GET", "/console/live"), ("GET", "/console/static/console.js"),
                             ("GET", "/admin/calls/live/events")):
            assert (await client.request(method, path)).status_code == 404, path


async def test_the_live_event_stream_sends_a_call_then_only_its_new_lines_then_its_end(realtime: RealtimeSimulator) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    async with bridge_for(realtime, env={"BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN}) as bridge:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(base_url=bridge, headers=headers, timeout=30) as admin:
            async with admin.stream("GET", "/admin/calls/live/events") as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                events = _events(stream)

                async def until(wanted: Callable[[str, dict[str, Any]], bool]) -> None:
                    while not any(wanted(name, data) for name, data in seen):
                        seen.append(await asyncio.wait_for(anext(events), 10))

                call = new_call(bridge, SHOP)
                await call.dial()
                await call.connect()
                await until(lambda name, data: name == "call" and bool(data["transcript"]))
                await call.hang_up()
                await until(lambda name, data: name == "ended")
    calls = [data for name, data in seen if name == "call"]
    assert {(data["call_sid"], data["number"], data["caller"]) for data in calls} == {(call.call_sid, SHOP, "+1500555****")}
    sent = 0
    for data in calls:
        assert data["lines_from"] == sent, "each update carries only the lines not sent yet"
        sent += len(data["transcript"])
    assert {data["activity"] for data in calls} <= {"connecting", "listening", "speaking", "using_tool", "transferring"}
    assert seen[-1] == ("ended", {"call_sid": call.call_sid, "outcome": "caller_hung_up", "end_reason": "caller hung up"})


async def _events(stream: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    name = ""
    async for line in stream.aiter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            yield name, json.loads(line[6:])


def test_a_calls_activity_follows_the_stream_the_model_a_tool_and_a_transfer() -> None:
    clock = ManualClock()
    tool = HttpTool(name="opening_hours", description="When the shop is open.", url="https://tools.example.com/hours")
    controller = CallController(CallProfile(tools=[tool], transfer={"front_desk": "+14155550199"}), clock)
    controller.start()
    controller.handle(RealtimeConnected())
    controller.handle(SessionConfigured())
    assert controller.activity == "connecting"
    controller.handle(StreamStarted(stream_sid="MZ1", call_sid="CA1"))
    assert controller.activity == "listening"
    sent: list[str] = []
    for event in (ResponseStarted("resp1"), ModelAudio("resp1", "item1", b"\x10\x00" * 2400)):
        sent += [action.name for action in controller.handle(event) if isinstance(action, SendTwilioMark)]
    assert controller.activity == "speaking"
    for event in (ModelAudioDone("item1"), ResponseDone("resp1", "completed")):
        sent += [action.name for action in controller.handle(event) if isinstance(action, SendTwilioMark)]
    for name in sent:
        controller.handle(MarkEchoed(name))
    assert controller.activity == "listening"
    controller.handle(ResponseStarted("resp2"))
    controller.handle(FunctionCallRequested("resp2", "call1", "opening_hours", "{}"))
    controller.handle(ResponseDone("resp2", "completed"))
    assert controller.activity == "using_tool"
    controller.handle(ToolAnswered("call1", '{"open": "9-18"}', "ok", 120.0))
    assert controller.activity == "listening"
    controller.handle(ResponseStarted("resp3"))
    controller.handle(FunctionCallRequested("resp3", "call2", "transfer_call", '{"target": "front_desk", "summary": "hours"}'))
    controller.handle(ResponseDone("resp3", "completed"))
    assert controller.activity == "transferring"
    summary = controller.summarise(call_sid="CA1", called_number=SHOP, caller_number="", model="m", dialect="ga", duration_s=1)
    assert summary.activity == "transferring"
