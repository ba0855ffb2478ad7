"""Operator tools over real sockets: the bridge on loopback, the Realtime simulator and a real HTTP tool server."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from support import TEST_CONFIG, bridge_for, place_call
from telephony_bridge.config import parse_config
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator, ScriptedAnswer, ScriptedCall, speech_like_pcm16
from telephony_bridge.testing.tool_server import ToolReply, ToolServer
from telephony_bridge.tools.http_tools import HOLDING_INSTRUCTIONS
from telephony_bridge.tools.requests import MAX_ANSWER_BYTES
from telephony_bridge.twilio.signatures import SIGNATURE_HEADER, verify

CLINIC_LINE = "+15550001111"
SECRET = "tool-signing-secret-for-tests"
AFTER_SECRET = "after-call-secret-for-tests"
SLOT = {"slots": ["09:30", "14:00"]}
PCM = speech_like_pcm16(300)


def tools_config(server: ToolServer, *, timeout: float = 2.0, after_call: bool = False) -> str:
    text = f"""
[numbers."{CLINIC_LINE}"]
instructions = "You are the clinic's receptionist."
greeting = "Bright Smile Dental."

[[numbers."{CLINIC_LINE}".tools]]
name = "check_availability"
description = "Free appointment slots on a given day."
url = "{server.url('/availability')}"
parameters = {{ type = "object", properties = {{ day = {{ type = "string" }} }}, required = ["day"] }}
timeout_seconds = {timeout}
secret_env = "CLINIC_TOOL_SECRET"

[[numbers."{CLINIC_LINE}".tools]]
name = "find_order"
description = "An order by its number."
url = "{server.url('/orders')}"
parameters = {{ type = "object", properties = {{ order = {{ type = "integer" }} }} }}
"""
    if after_call:
        text += f"""
[numbers."{CLINIC_LINE}".after_call]
url = "{server.url('/after-call')}"
secret_env = "AFTER_CALL_SECRET"
"""
    return text


def simulator(*answers: ScriptedAnswer) -> RealtimeSimulator:
    return RealtimeSimulator(answers=answers, speed=float("inf"))


def checks(day: str = "2026-12-01") -> ScriptedAnswer:
    return ScriptedAnswer(PCM, "Let me check.", calls=(ScriptedCall("check_availability", {"day": day}),))


SAYS_SLOTS = ScriptedAnswer(PCM, "We have 9:30 or 2 pm.")


@asynccontextmanager
async def clinic(
    realtime: RealtimeSimulator, server: ToolServer, **options: Any
) -> AsyncIterator[str]:
    env = {"CLINIC_TOOL_SECRET": SECRET, "AFTER_CALL_SECRET": AFTER_SECRET}
    config = parse_config(TEST_CONFIG + tools_config(server, **options), "test.toml", env)
    async with realtime, bridge_for(realtime, config=config) as bridge:
        yield bridge


def output_index(session: Any, call_id: str) -> int:
    """Where the bridge's output for `call_id` is among the events the session received."""
    return next(i for i, e in enumerate(session.received) if e.get("item", {}).get("call_id") == call_id
                and e.get("item", {}).get("type") == "function_call_output")


def creates_after(session: Any, call_id: str) -> list[dict[str, Any]]:
    """The `response.create`s the bridge sent after its output for `call_id`."""
    return [e for e in session.received[output_index(session, call_id):] if e["type"] == "response.create"]


async def test_a_tool_call_is_a_signed_post_whose_answer_is_the_output_and_one_response_follows() -> None:
    realtime = simulator(checks(), SAYS_SLOTS)
    async with ToolServer(lambda path, body: ToolReply(body=SLOT)) as server, clinic(realtime, server) as bridge:
        call, session = await place_call(bridge, realtime, CLINIC_LINE)
        output = await session.wait_for_function_output("check_availability")
        assert json.loads(output) == SLOT
        (request,) = server.requests
        assert request.path == "/availability" and request.headers["content-type"] == "application/json"
        assert request.json == {"tool": "check_availability", "arguments": {"day": "2026-12-01"},
                                "call": {"call_sid": call.call_sid, "from": call.from_number, "to": CLINIC_LINE}}
        assert verify(SECRET.encode(), request.body, request.headers[SIGNATURE_HEADER.lower()], time.time())
        call_id = next(iter(session.function_call_outputs))
        await session.wait_for("response.create", since=output_index(session, call_id))
        await asyncio.sleep(0.3)
        assert len(creates_after(session, call_id)) == 1
        tools = {t["name"]: t for t in session.config["tools"]}
        assert tools["check_availability"]["parameters"]["required"] == ["day"]
        assert SECRET not in json.dumps(session.received)
        await call.hang_up()


async def test_two_tools_in_one_response_run_at_once_and_one_response_follows_both() -> None:
    both = ScriptedAnswer(PCM, "Checking both.", calls=(
        ScriptedCall("check_availability", {"day": "2026-12-01"}), ScriptedCall("find_order", {"order": 7}),
    ))
    realtime = simulator(both, SAYS_SLOTS)
    answer = {"/availability": ToolReply(body=SLOT, delay_s=0.4), "/orders": ToolReply(body={"status": "shipped"}, delay_s=0.4)}
    async with ToolServer(lambda path, body: answer[path]) as server, clinic(realtime, server) as bridge:
        call, session = await place_call(bridge, realtime, CLINIC_LINE)
        first, second = await server.wait_for_requests(2)
        assert abs(first.received_at - second.received_at) < 0.3, "the second request did not wait for the first"
        assert json.loads(await session.wait_for_function_output("find_order")) == {"status": "shipped"}
        assert json.loads(await session.wait_for_function_output("check_availability")) == SLOT
        await asyncio.sleep(0.4)
        outputs = [i for i, e in enumerate(session.received) if e.get("item", {}).get("type") == "function_call_output"]
        creates = [e for e in session.received[outputs[0]:] if e["type"] == "response.create"]
        assert len(outputs) == 2 and len(creates) == 1
        await call.hang_up()


@pytest.mark.parametrize(("reply", "error"), [
    (ToolReply(body=SLOT, delay_s=1.5), "did not answer within 0.5 s"),
    (ToolReply(status=500, body={"detail": "boom"}), "HTTP 500"),
    (ToolReply(body=b"<html>sorry</html>"), "not JSON"),
    (ToolReply(body=b'"' + b"x" * (MAX_ANSWER_BYTES + 10) + b'"'), "over 64 KiB"),
], ids=["timeout", "500", "not-json", "oversized"])
async def test_a_failing_tool_gives_the_model_an_error_and_the_call_goes_on(reply: ToolReply, error: str) -> None:
    realtime = simulator(checks(), SAYS_SLOTS)
    async with ToolServer(lambda path, body: reply) as server, clinic(realtime, server, timeout=0.5) as bridge:
        call, session = await place_call(bridge, realtime, CLINIC_LINE)
        output = json.loads(await session.wait_for_function_output("check_availability", timeout=5))
        assert set(output) == {"error"} and error in output["error"]
        await session.wait_for(lambda e: e["type"] == "response.create" and not e.get("response"), timeout=5)
        await call.hang_up()


async def test_a_slow_tool_gets_one_holding_phrase() -> None:
    holding = ScriptedAnswer(PCM, "One moment.")
    realtime = simulator(checks(), holding, SAYS_SLOTS)
    async with ToolServer(lambda path, body: ToolReply(body=SLOT, delay_s=2.2)) as server, \
            clinic(realtime, server, timeout=4) as bridge:
        call, session = await place_call(bridge, realtime, CLINIC_LINE)
        await session.wait_for_function_output("check_availability", timeout=6)
        await asyncio.sleep(0.5)
        asked = [e.get("response", {}).get("instructions") for e in session.events("response.create")]
        assert asked.count(HOLDING_INSTRUCTIONS) == 1
        assert asked[-1] is None, "the answer's response.create came after the holding phrase"
        await call.hang_up()


async def test_a_caller_who_hangs_up_mid_tool_abandons_the_request_and_nothing_is_sent() -> None:
    realtime = simulator(checks(), SAYS_SLOTS)
    async with ToolServer(lambda path, body: ToolReply(body=SLOT, delay_s=3)) as server, \
            clinic(realtime, server, timeout=5) as bridge:
        call, session = await place_call(bridge, realtime, CLINIC_LINE)
        await server.wait_for_requests(1)
        started = time.monotonic()
        await call.hang_up()
        await server.wait_disconnected(timeout=2)
        await session.wait_closed()
        assert time.monotonic() - started < 2
        assert session.function_call_outputs == {}


async def test_after_the_call_its_summary_is_posted_signed_and_retried() -> None:
    attempts: list[int] = []

    def answer(path: str, body: Any) -> ToolReply:
        if path == "/after-call":
            attempts.append(1)
            return ToolReply(status=503 if len(attempts) == 1 else 204, body=b"")
        return ToolReply(body=SLOT)

    realtime = simulator(checks(), SAYS_SLOTS)
    async with ToolServer(answer) as server, clinic(realtime, server, after_call=True) as bridge:
        call, session = await place_call(bridge, realtime, CLINIC_LINE)
        await session.wait_for_function_output("check_availability")
        await call.hang_up()
        posts = [r for r in await server.wait_for_requests(3, timeout=8) if r.path == "/after-call"]
        assert len(posts) == 2 and posts[0].body == posts[1].body, "one 503, then the same summary again"
        summary = posts[-1].json
        assert verify(AFTER_SECRET.encode(), posts[-1].body, posts[-1].headers[SIGNATURE_HEADER.lower()], time.time())
        assert summary["call_sid"] == call.call_sid and summary["to"] == CLINIC_LINE
        assert summary["outcome"] == "caller_hung_up" and summary["ended_at"] >= summary["started_at"]
        assert [(t["tool"], t["outcome"]) for t in summary["tool_calls"]] == [("check_availability", "ok")]
        assert any(turn["speaker"] == "tool" and "check_availability" in turn["text"] for turn in summary["transcript"])


async def test_mcp_servers_go_into_session_update_with_no_approval_and_their_headers_stay_out_of_logs(
    caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    extra = f"""
[recording]
folder = "{tmp_path.as_posix()}"
[numbers."{CLINIC_LINE}"]
record = true
[[numbers."{CLINIC_LINE}".mcp]]
server_label = "orders"
server_url = "https://mcp.example.com/mcp"
allowed_tools = ["lookup_order"]
headers_env = {{ Authorization = "MCP_TOKEN" }}
"""
    caplog.set_level(logging.DEBUG)
    config = parse_config(TEST_CONFIG + extra, "test.toml", {"MCP_TOKEN": "Bearer mcp-secret-token"})
    realtime = RealtimeSimulator(speed=float("inf"))
    async with realtime, bridge_for(realtime, config=config) as bridge:
        call, session = await place_call(bridge, realtime, CLINIC_LINE)
        await session.wait_for("session.update")
        (mcp,) = [t for t in session.received[0]["session"]["tools"] if t["type"] == "mcp"]
        assert mcp == {"type": "mcp", "server_label": "orders", "server_url": "https://mcp.example.com/mcp",
                       "require_approval": "never", "allowed_tools": ["lookup_order"],
                       "headers": {"Authorization": "Bearer mcp-secret-token"}}
        await call.hang_up()
        await session.wait_closed()
    await asyncio.sleep(0.3)
    recorded = "".join(path.read_text() for path in tmp_path.iterdir())
    assert '"Authorization":"<redacted>"' in recorded and "mcp-secret-token" not in recorded
    assert "mcp-secret-token" not in caplog.text


async def test_tool_calls_are_counted_by_tool_and_outcome_in_metrics() -> None:
    realtime = simulator(checks(), SAYS_SLOTS)
    async with ToolServer(lambda path, body: ToolReply(status=500)) as server, clinic(realtime, server) as bridge:
        call, session = await place_call(bridge, realtime, CLINIC_LINE)
        await session.wait_for_function_output("check_availability")
        await call.hang_up()
        await session.wait_closed()
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"{bridge}/metrics")).text
    assert 'telephony_bridge_tool_calls_total{outcome="http_error",tool="check_availability"} 1.0' in text
    assert "telephony_bridge_tool_latency_seconds_count 1.0" in text


def test_a_tampered_body_or_a_stale_time_does_not_verify() -> None:
    from telephony_bridge.twilio.signatures import signature

    body = b'{"tool":"check_availability","arguments":{"day":"2026-12-01"}}'
    header = signature(SECRET.encode(), body, 1_800_000_000)
    assert verify(SECRET.encode(), body, header, 1_800_000_010)
    assert not verify(SECRET.encode(), body.replace(b"12-01", b"12-02"), header, 1_800_000_010)
    assert not verify(b"another secret", body, header, 1_800_000_010)
    assert not verify(SECRET.encode(), body, header, 1_800_000_000 + 3600)


async def test_a_recording_holds_each_tool_request_and_answer_and_replay_serves_them_again(tmp_path: Any) -> None:
    from telephony_bridge.observe.recording import read_recording
    from telephony_bridge.observe.replay import replay

    realtime = simulator(checks(), SAYS_SLOTS)
    extra = f'\n[recording]\nfolder = "{tmp_path.as_posix()}"\n'
    async with ToolServer(lambda path, body: ToolReply(body=SLOT)) as server:
        text = TEST_CONFIG + extra + tools_config(server).replace('greeting =', 'record = true\ngreeting =')
        config = parse_config(text, "test.toml", {"CLINIC_TOOL_SECRET": SECRET})
        async with realtime, bridge_for(realtime, config=config) as bridge:
            call, session = await place_call(bridge, realtime, CLINIC_LINE)
            await session.wait_for_function_output("check_availability")
            await session.wait_for(lambda e: e["type"] == "response.create" and not e.get("response"))
            await asyncio.sleep(0.5)
            await call.hang_up()
            await session.wait_closed()
    await asyncio.sleep(0.3)
    (path,) = tmp_path.glob("*.jsonl")
    assert SECRET not in path.read_text()
    recording = read_recording(path)
    lines = [frame.message for frame in recording.frames if frame.direction == "tools"]
    assert [(m["kind"], m["tool"]) for m in lines] == [("request", "check_availability"), ("answer", "check_availability")]
    assert lines[0]["arguments"] == {"day": "2026-12-01"} and json.loads(lines[1]["output"]) == SLOT
    result = await replay(recording)
    assert not [d for d in result.differences if "tool" in d], result.report()
