"""The test simulators behave like the services they stand in for, over real loopback sockets.

The Realtime simulator is driven by a tiny scripted client; the Twilio simulator talks to a
tiny websocket server (or a bare ASGI app for the signed webhook) playing the bridge.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from itertools import pairwise
from typing import Any
from urllib.parse import parse_qsl

import pytest
import uvicorn
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from telephony_bridge.testing.realtime_simulator import (
    RealtimeSimulator,
    ScriptedAnswer,
    ScriptedCall,
    speech_like_pcm16,
)
from telephony_bridge.testing.twilio_simulator import (
    SimulatedCall,
    speech_like_ulaw,
    ulaw_silence,
)
from telephony_bridge.wire import (
    PCM24K_BYTES_PER_MS,
    PCM24K_RATE_HZ,
    SERVER_EVENTS,
    ULAW_FRAME_BYTES,
    ULAW_RATE_HZ,
    ULAW_SILENCE,
    pcm24k_ms,
)

pytestmark = pytest.mark.anyio

PUBLIC_URL = "https://bridge.example.com"
STREAM_URL = "wss://bridge.example.com/twilio/media"
TOKEN = "twilio-test-auth-token"
GA, PREVIEW = SERVER_EVENTS["ga"], SERVER_EVENTS["preview"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pcm_silence(ms: int) -> bytes:
    return bytes(PCM24K_BYTES_PER_MS * ms)


def ga_update(**turn_detection: Any) -> dict[str, Any]:
    return {"type": "realtime", "instructions": "Be brief.", "audio": {
        "input": {"format": {"type": "audio/pcm", "rate": PCM24K_RATE_HZ},
                  "turn_detection": {"type": "server_vad", **turn_detection}},
        "output": {"format": {"type": "audio/pcm", "rate": PCM24K_RATE_HZ}, "voice": "cedar"},
    }}


# --------------------------------------------------------------------------- Realtime


class ScriptClient:
    """A tiny Realtime client: sends events, reads server events in order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []

    async def send(self, event_type: str, **fields: Any) -> None:
        await self.ws.send(json.dumps({"type": event_type, **fields}))

    async def append(self, pcm: bytes, chunk_ms: int = 20) -> None:
        step = PCM24K_BYTES_PER_MS * chunk_ms
        for i in range(0, len(pcm), step):
            chunk = base64.b64encode(pcm[i:i + step]).decode()
            await self.send("input_audio_buffer.append", audio=chunk)

    async def until(self, match: str | Callable[[dict[str, Any]], bool],
                    timeout: float = 3.0) -> dict[str, Any]:
        predicate = match if callable(match) else (lambda e: e["type"] == match)
        async with asyncio.timeout(timeout):
            while True:
                event = json.loads(await self.ws.recv())
                self.events.append(event)
                if predicate(event):
                    return event

    def of(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == event_type]


@asynccontextmanager
async def realtime_client(sim: RealtimeSimulator, url: str | None = None,
                          **connect_args: Any) -> AsyncIterator[ScriptClient]:
    async with connect(url or sim.url, **connect_args) as ws:
        client = ScriptClient(ws)
        await client.until("session.created")
        yield client


async def test_session_update_is_applied_and_answered_with_session_updated() -> None:
    async with RealtimeSimulator() as sim, realtime_client(sim) as client:
        await client.send("session.update",
                          session=ga_update(threshold=0.7, silence_duration_ms=300))
        updated = await client.until("session.updated")
        session = await sim.wait_for_session()
        assert updated["session"]["audio"]["output"]["voice"] == "cedar"
        assert updated["session"]["audio"]["input"]["turn_detection"]["threshold"] == 0.7
        assert session.instructions == "Be brief."
        assert session.turn_detection["silence_duration_ms"] == 300
        assert session.turn_detection["prefix_padding_ms"] == 300  # the default, filled in
        assert session.dialect == "ga"


async def test_server_vad_finds_speech_in_audio_time_and_answers_with_the_whole_answer() -> None:
    async with RealtimeSimulator(speed=10) as sim, realtime_client(sim) as client:
        await client.send("session.update", session=ga_update(silence_duration_ms=500))
        await client.until("session.updated")
        sent_at = time.monotonic()
        # 2.3 s of audio sent in a few ms: the VAD must count audio, not wall-clock time.
        await client.append(pcm_silence(500) + speech_like_pcm16(1000) + pcm_silence(800))
        started = await client.until("input_audio_buffer.speech_started")
        stopped = await client.until("input_audio_buffer.speech_stopped")
        assert time.monotonic() - sent_at < 1.0
        assert 200 <= started["audio_start_ms"] <= 240  # onset 500 ms minus 300 ms padding
        assert 1980 <= stopped["audio_end_ms"] <= 2040  # speech end + 500 ms of silence
        assert stopped["item_id"] == started["item_id"]
        committed = await client.until("input_audio_buffer.committed")
        assert committed["item_id"] == started["item_id"]

        created = await client.until("response.created")
        t_created = time.monotonic()
        done = await client.until("response.done")
        elapsed = time.monotonic() - t_created
        deltas = client.of(GA.audio_delta)
        sizes = [len(base64.b64decode(d["delta"])) for d in deltas]
        assert sum(sizes) == len(sim.answer_audio)
        assert len(set(sizes)) > 1, "delta sizes should vary, as real ones do"
        assert all(d["response_id"] == created["response"]["id"] for d in deltas)
        assert elapsed >= 0.8 * sim.answer_ms / 10 / 1000  # paced at 10x real time
        assert done["response"]["status"] == "completed"
        assert client.of(GA.transcript_done)[0]["transcript"]

        session = sim.sessions[0]
        item_id = deltas[0]["item_id"]
        assert session.item_audio_ms[item_id] == pytest.approx(3000)
        assert session.input_audio_ms == pytest.approx(2300)
        assert session.responses[0].status == "completed"


async def test_every_ga_server_event_validates_against_the_openai_models() -> None:
    adapter = TypeAdapter(RealtimeServerEvent)
    async with RealtimeSimulator(speed=float("inf")) as sim, realtime_client(sim) as client:
        await client.send("session.update", session=ga_update())
        await client.append(speech_like_pcm16(600) + pcm_silence(600))
        done = await client.until("response.done")
        item_id = done["response"]["output"][0]["id"]
        await client.send("conversation.item.truncate", item_id=item_id, content_index=0,
                          audio_end_ms=500)
        await client.until("conversation.item.truncated")
        await client.send("conversation.item.create", item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "The caller pressed 5"}]})
        await client.until("conversation.item.done")
        await client.send("input_audio_buffer.clear")
        await client.until("input_audio_buffer.cleared")
        await client.send("no.such.event")
        await client.until("error")
    types = {event["type"] for event in sim.sessions[0].sent}
    assert {"session.created", "input_audio_buffer.speech_started", GA.audio_delta,
            "conversation.item.truncated", "error"} <= types
    for event in sim.sessions[0].sent:
        adapter.validate_python(event)


async def test_truncate_past_the_audio_sent_is_an_error_and_within_it_is_acknowledged() -> None:
    async with RealtimeSimulator(speed=float("inf")) as sim, realtime_client(sim) as client:
        await client.send("response.create")
        done = await client.until("response.done")
        item_id = done["response"]["output"][0]["id"]

        await client.send("conversation.item.truncate", event_id="evt_1", item_id=item_id,
                          content_index=0, audio_end_ms=3500)
        error = (await client.until("error"))["error"]
        assert error["message"] == "Audio content of 3000 ms is already shorter than 3500 ms"
        assert error["type"] == "invalid_request_error"
        assert error["event_id"] == "evt_1"

        await client.send("conversation.item.truncate", item_id=item_id, content_index=0,
                          audio_end_ms=1200)
        truncated = await client.until("conversation.item.truncated")
        assert (truncated["item_id"], truncated["audio_end_ms"]) == (item_id, 1200)

        # The item now holds 1200 ms: truncating past that fails in turn.
        await client.send("conversation.item.truncate", item_id=item_id, content_index=0,
                          audio_end_ms=1500)
        error = (await client.until("error"))["error"]
        assert error["message"] == "Audio content of 1200 ms is already shorter than 1500 ms"
        assert [t["audio_end_ms"] for t in sim.sessions[0].truncates] == [1200]
        assert sim.sessions[0].truncates[0]["audio_sent_ms"] == 3000


async def test_truncate_of_an_unknown_item_is_an_error() -> None:
    async with RealtimeSimulator() as sim, realtime_client(sim) as client:
        await client.send("conversation.item.truncate", item_id="item_nope", content_index=0,
                          audio_end_ms=100)
        error = (await client.until("error"))["error"]
        assert error["param"] == "item_id"
        assert sim.sessions[0].truncates == []


async def test_speech_during_a_response_cancels_it() -> None:
    async with RealtimeSimulator(speed=1.0) as sim, realtime_client(sim) as client:
        await client.send("response.create")
        for _ in range(3):
            await client.until(GA.audio_delta)
        await client.append(speech_like_pcm16(300))
        await client.until("input_audio_buffer.speech_started")
        done = await client.until("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"

        heard = sum(pcm24k_ms(len(base64.b64decode(d["delta"])))
                    for d in client.of(GA.audio_delta))
        session = sim.sessions[0]
        assert 0 < heard < 3000
        assert session.responses[0].audio_ms == pytest.approx(heard)
        assert session.item_audio_ms[session.responses[0].item_id] == pytest.approx(heard)
        await asyncio.sleep(0.15)
        assert not [e for e in session.sent[session.sent.index(
            session.events("response.done", sent=True)[0]):]
            if e["type"] == GA.audio_delta]


async def test_a_second_response_create_is_refused_while_one_is_active() -> None:
    async with RealtimeSimulator(speed=1.0) as sim, realtime_client(sim) as client:
        await client.send("response.create")
        await client.until("response.created")
        await client.send("response.create")
        error = (await client.until("error"))["error"]
        assert error["code"] == "conversation_already_has_active_response"
        await client.send("response.cancel")
        done = await client.until("response.done")
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
        await client.send("response.cancel")
        assert (await client.until("error"))["error"]["code"] == "response_cancel_not_active"
        assert [r.status for r in sim.sessions[0].responses] == ["cancelled"]


async def test_preview_path_speaks_the_preview_dialect() -> None:
    async with RealtimeSimulator(speed=float("inf")) as sim:
        async with connect(sim.preview_url) as ws:
            client = ScriptClient(ws)
            created = await client.until("session.created")
            assert created["session"]["input_audio_format"] == "pcm16"
            await client.send("session.update", session={
                "instructions": "Hi", "voice": "shimmer", "input_audio_format": "pcm16",
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 300}})
            updated = await client.until("session.updated")
            assert updated["session"]["voice"] == "shimmer"
            await client.send("response.create")
            await client.until("response.done")
        session = sim.sessions[0]
        types = [e["type"] for e in client.events]
        assert session.dialect == "preview"
        assert "api-version=2024-10-01-preview" in session.path
        assert {PREVIEW.audio_delta, PREVIEW.audio_done, PREVIEW.transcript_done, PREVIEW.item_added} <= set(types)
        assert not set(types) & {GA.audio_delta, GA.audio_done, GA.transcript_done, GA.item_added}


async def test_the_first_preview_refuses_fields_and_voices_it_does_not_know_whole() -> None:
    async with RealtimeSimulator(speed=float("inf")) as sim:
        async with connect(sim.preview_url) as ws:
            client = ScriptClient(ws)
            await client.until("session.created")
            await client.send("session.update", session={
                "instructions": "Hi", "turn_detection": {"type": "server_vad", "create_response": True}})
            assert (await client.until("error"))["error"]["param"] == "session.turn_detection.create_response"
            await client.send("session.update", session={"instructions": "Hi", "voice": "marin"})
            assert (await client.until("error"))["error"]["param"] == "session.voice"
        assert sim.sessions[0].instructions == ""


async def test_ga_session_refuses_a_preview_shaped_update_whole() -> None:
    async with RealtimeSimulator() as sim, realtime_client(sim) as client:
        await client.send("session.update", session={"type": "realtime", "voice": "alloy"})
        error = (await client.until("error"))["error"]
        assert (error["code"], error["param"]) == ("unknown_parameter", "session.voice")
        await client.send("session.update", session={"instructions": "no type"})
        error = (await client.until("error"))["error"]
        assert (error["code"], error["param"]) == ("missing_required_parameter", "session.type")
        assert sim.sessions[0].voice == "marin"
        assert sim.sessions[0].instructions == ""


async def test_malformed_events_get_error_events_and_the_session_goes_on() -> None:
    async with RealtimeSimulator() as sim, realtime_client(sim) as client:
        for junk in ("{not json", "[1, 2]", b"\x00\x01"):
            await client.ws.send(junk)
            await client.until("error")
        await client.send("input_audio_buffer.append", audio="%%% not base64 %%%")
        assert (await client.until("error"))["error"]["param"] == "audio"
        await client.send("response.dance")
        assert (await client.until("error"))["error"]["param"] == "type"
        await client.send("session.update", session={"type": "realtime", "instructions": "ok"})
        await client.until("session.updated")
        assert sim.sessions[0].closed_at is None


async def test_conversation_item_create_is_acknowledged_and_recorded() -> None:
    async with RealtimeSimulator() as sim, realtime_client(sim) as client:
        await client.send("conversation.item.create", item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "The caller pressed 5"}]})
        added = await client.until(GA.item_added)
        await client.until("conversation.item.done")
        session = sim.sessions[0]
        assert session.items[added["item"]["id"]]["content"][0]["text"] == "The caller pressed 5"
        received = await session.wait_for("conversation.item.create")
        assert received["item"]["role"] == "user"


async def test_handshake_without_the_key_is_refused_with_401() -> None:
    async with RealtimeSimulator(require_key="sk-test") as sim:
        with pytest.raises(InvalidStatus) as refused:
            await connect(sim.url)
        assert refused.value.response.status_code == 401
        for headers in ({"Authorization": "Bearer sk-test"}, {"api-key": "sk-test"}):
            async with realtime_client(sim, additional_headers=headers):
                pass
        assert len(sim.rejected) == 1
        assert len(sim.sessions) == 2
        assert sim.sessions[1].headers["api-key"] == "sk-test"


async def test_beta_header_on_the_ga_path_closes_with_4000() -> None:
    async with RealtimeSimulator() as sim:
        async with connect(sim.url, additional_headers={"OpenAI-Beta": "realtime=v1"}) as ws:
            error = json.loads(await ws.recv())
            assert error["error"]["code"] == "beta_api_shape_disabled"
            with pytest.raises(ConnectionClosedError):
                await ws.recv()
            assert ws.close_code == 4000


async def test_fault_injection_sends_errors_and_drops_the_connection() -> None:
    async with RealtimeSimulator() as sim, realtime_client(sim) as client:
        session = await sim.wait_for_session()
        await session.send_error("server_error", "The server had an error.")
        assert (await client.until("error"))["error"]["message"] == "The server had an error."
        await session.drop(1011)
        with pytest.raises(ConnectionClosedError):
            await client.ws.recv()
        assert client.ws.close_code == 1011
        assert await session.wait_closed() >= session.opened_at


# --------------------------------------------------------------------------- Realtime function calls

END_CALL = {"type": "function", "name": "end_call", "description": "Hang up after saying goodbye.",
            "parameters": {"type": "object", "properties": {}}}
TRANSFER_CALL = {"type": "function", "name": "transfer_call", "description": "Hand the caller to a person.",
                 "parameters": {"type": "object", "properties": {"target": {"type": "string"},
                                                                 "summary": {"type": "string"}}}}
LOOKUP_ORDER = {"type": "function", "name": "lookup_order", "parameters": {"type": "object"}}
CALLS = ("response.output_item.added", "response.function_call_arguments.delta",
         "response.function_call_arguments.done", "response.output_item.done")


def with_tools(*tools: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"type": "realtime", "tools": list(tools), **fields}


async def declare(client: ScriptClient, session: dict[str, Any]) -> None:
    await client.send("session.update", session=session)
    await client.until("session.updated")


def compact(events: list[dict[str, Any]], names: tuple[str, ...]) -> list[str]:
    """The event types among ``names``, with runs of the same type folded into one."""
    kept = [e["type"] for e in events if e["type"] in names]
    return [t for i, t in enumerate(kept) if i == 0 or kept[i - 1] != t]


async def test_a_goodbye_then_end_call_sends_the_audio_item_whole_then_the_call_in_the_service_order() -> None:
    goodbye = ScriptedAnswer(speech_like_pcm16(1000), "Goodbye!", calls=(ScriptedCall("end_call"),))
    async with RealtimeSimulator(speed=10, answers=[goodbye]) as sim, realtime_client(sim) as client:
        await declare(client, with_tools(END_CALL))
        await client.send("response.create")
        created = await client.until("response.created")
        t_created = time.monotonic()
        args_done = await client.until("response.function_call_arguments.done")
        args_after = time.monotonic() - t_created
        done = (await client.until("response.done"))["response"]

    order = compact(client.events, (GA.audio_delta, GA.audio_done, GA.transcript_done, *CALLS, "response.done"))
    assert order == ["response.output_item.added", GA.audio_delta, GA.audio_done, GA.transcript_done,
                     "response.output_item.done", *CALLS, "response.done"]
    assert args_after >= 0.8 * 1000 / 10 / 1000  # the call follows the audio at its paced end
    message, call = done["output"]
    assert done["status"] == "completed" and done["id"] == created["response"]["id"]
    assert (message["type"], message["status"], message["content"][0]["transcript"]) == ("message", "completed", "Goodbye!")
    assert call == {"id": args_done["item_id"], "object": "realtime.item", "type": "function_call",
                    "status": "completed", "name": "end_call", "call_id": args_done["call_id"], "arguments": "{}"}
    assert call["call_id"].startswith("call_") and call["id"].startswith("item_")
    added = [e for e in client.of("response.output_item.added") if e["item"]["type"] == "function_call"][0]
    assert (added["output_index"], added["item"]["status"], added["item"]["arguments"]) == (1, "in_progress", "")
    assert args_done["output_index"] == 1 and args_done["response_id"] == done["id"]
    adapter = TypeAdapter(RealtimeServerEvent)
    for event in sim.sessions[0].sent:
        adapter.validate_python(event)


async def test_a_call_alone_streams_its_arguments_in_pieces_with_no_audio_in_the_preview_dialect() -> None:
    arguments = {"target": "+15550100", "summary": "Caller wants a refund for order 42."}
    transfer = ScriptedAnswer(None, calls=(ScriptedCall("transfer_call", arguments),))
    async with RealtimeSimulator(speed=1.0, answers=[transfer]) as sim:
        async with connect(sim.preview_url) as ws:
            client = ScriptClient(ws)
            await client.until("session.created")
            await declare(client, {"tools": [TRANSFER_CALL], "tool_choice": "auto"})
            await client.send("response.create")
            done = (await client.until("response.done"))["response"]

    deltas = client.of("response.function_call_arguments.delta")
    args_done = client.of("response.function_call_arguments.done")[0]
    assert len(deltas) > 1
    assert "".join(d["delta"] for d in deltas) == args_done["arguments"]
    assert json.loads(args_done["arguments"]) == arguments
    assert {d["call_id"] for d in deltas} == {args_done["call_id"]}
    assert args_done["name"] == "transfer_call"
    assert not {PREVIEW.audio_delta, PREVIEW.audio_done, "response.content_part.added"} & {e["type"] for e in client.events}
    assert PREVIEW.item_added in {e["type"] for e in client.events}
    assert done["status"] == "completed"
    assert [item["type"] for item in done["output"]] == ["function_call"]
    assert sim.sessions[0].responses[0].item_id is None


async def test_two_calls_in_one_response_each_get_their_own_item_call_id_and_output_index() -> None:
    two = ScriptedAnswer(None, calls=(ScriptedCall("lookup_order", {"order": 42}), ScriptedCall("end_call")))
    async with RealtimeSimulator(speed=float("inf"), answers=[two]) as sim, realtime_client(sim) as client:
        await declare(client, with_tools(LOOKUP_ORDER, END_CALL))
        await client.send("response.create")
        done = (await client.until("response.done"))["response"]

    finished = client.of("response.function_call_arguments.done")
    assert [(e["name"], e["output_index"]) for e in finished] == [("lookup_order", 0), ("end_call", 1)]
    assert len({e["call_id"] for e in finished}) == 2 and len({e["item_id"] for e in finished}) == 2
    assert [item["call_id"] for item in done["output"]] == [e["call_id"] for e in finished]
    # The first call is done before the second starts.
    order = compact(client.events, CALLS)
    assert order == [*CALLS, *CALLS]
    assert set(sim.sessions[0].function_calls) == {e["call_id"] for e in finished}


async def test_outputs_are_recorded_and_the_next_response_create_says_the_next_answer() -> None:
    answers = [ScriptedAnswer(None, calls=(ScriptedCall("lookup_order", {"order": 42}),)),
               (speech_like_pcm16(400), "Your order ships today.")]
    async with RealtimeSimulator(speed=float("inf"), answers=answers) as sim, realtime_client(sim) as client:
        await declare(client, with_tools(LOOKUP_ORDER))
        await client.send("response.create")
        call_id = (await client.until("response.function_call_arguments.done"))["call_id"]
        await client.until("response.done")
        await client.send("conversation.item.create", item={
            "type": "function_call_output", "call_id": call_id, "output": '{"ships": "today"}'})
        added = await client.until(GA.item_added)
        await client.send("response.create")
        second = await client.until(GA.transcript_done)
        await client.until("response.done")

        session = sim.sessions[0]
        assert await session.wait_for_function_output("lookup_order", timeout=1) == '{"ships": "today"}'
        assert await session.wait_for_function_output(call_id, timeout=1) == '{"ships": "today"}'
        with pytest.raises(TimeoutError):
            await session.wait_for_function_output("end_call", timeout=0.1)
    assert added["item"]["type"] == "function_call_output"
    assert session.function_call_outputs == {call_id: '{"ships": "today"}'}
    assert second["transcript"] == "Your order ships today."
    assert [r.trigger for r in session.responses] == ["response.create", "response.create"]


async def test_an_output_for_a_call_id_the_session_never_issued_is_refused() -> None:
    async with RealtimeSimulator() as sim, realtime_client(sim) as client:
        await client.send("conversation.item.create", event_id="evt_out", item={
            "type": "function_call_output", "call_id": "call_made_up", "output": "done"})
        error = (await client.until("error"))["error"]
        assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", "item.call_id", "evt_out")
        await client.send("conversation.item.create", item={"type": "function_call_output", "output": "done"})
        error = (await client.until("error"))["error"]
        assert (error["code"], error["param"]) == ("missing_required_parameter", "item.call_id")
    assert sim.sessions[0].function_call_outputs == {}
    assert not [e for e in sim.sessions[0].sent if e["type"] == GA.item_added]


async def test_a_response_create_while_a_call_is_being_made_is_refused() -> None:
    goodbye = ScriptedAnswer(speech_like_pcm16(2000), "Goodbye!", calls=(ScriptedCall("end_call"),))
    async with RealtimeSimulator(speed=1.0, answers=[goodbye]) as sim, realtime_client(sim) as client:
        await declare(client, with_tools(END_CALL))
        await client.send("response.create")
        await client.until("response.created")
        await client.send("response.create", event_id="evt_again")
        error = (await client.until("error"))["error"]
    assert (error["code"], error["event_id"]) == ("conversation_already_has_active_response", "evt_again")
    assert len(sim.sessions[0].responses) == 1


async def test_an_mcp_tool_is_refused_on_the_preview_and_accepted_on_ga() -> None:
    mcp = {"type": "mcp", "server_label": "crm", "server_url": "https://mcp.example.com/mcp",
           "allowed_tools": ["lookup_order"], "headers": {"Authorization": "Bearer mcp-secret"},
           "require_approval": "never"}
    async with RealtimeSimulator() as sim:
        async with connect(sim.preview_url) as ws:
            client = ScriptClient(ws)
            await client.until("session.created")
            await client.send("session.update", event_id="evt_mcp", session={"tools": [END_CALL, mcp]})
            error = (await client.until("error"))["error"]
            assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", "session.tools[1].type", "evt_mcp")
        async with realtime_client(sim) as client:
            await client.send("session.update", session=with_tools(END_CALL, mcp, tool_choice={
                "type": "mcp", "server_label": "crm"}))
            updated = (await client.until("session.updated"))["session"]
            await client.send("session.update", session=with_tools({"type": "mcp", "server_url": "https://x.example"}))
            error = (await client.until("error"))["error"]
            assert (error["code"], error["param"]) == ("missing_required_parameter", "session.tools[0].server_label")
    assert [tool["type"] for tool in updated["tools"]] == ["function", "mcp"]
    assert sim.sessions[0].config["tools"] == []
    assert [tool["type"] for tool in sim.sessions[1].config["tools"]] == ["function", "mcp"]
    assert "mcp-secret" not in json.dumps([e for e in sim.sessions[1].sent if e["type"] == "error"])


@pytest.mark.parametrize(("tool", "code", "param"), [
    ({**END_CALL, "strict": True}, "unknown_parameter", "session.tools[0].strict"),
    ({"type": "function", "parameters": {"type": "object"}}, "missing_required_parameter", "session.tools[0].name"),
    ({**END_CALL, "parameters": "{}"}, "invalid_type", "session.tools[0].parameters"),
    ({**END_CALL, "name": "end call!"}, "invalid_value", "session.tools[0].name"),
    ({"name": "end_call"}, "missing_required_parameter", "session.tools[0].type"),
    ({**END_CALL, "type": "web_search"}, "invalid_value", "session.tools[0].type"),
])
async def test_a_malformed_tool_refuses_the_whole_update_naming_its_path(tool: dict[str, Any], code: str, param: str) -> None:
    async with RealtimeSimulator() as sim, realtime_client(sim) as client:
        await client.send("session.update", event_id="evt_tools", session=with_tools(tool, instructions="Changed."))
        error = (await client.until("error"))["error"]
    assert (error["code"], error["param"], error["event_id"]) == (code, param, "evt_tools")
    assert sim.sessions[0].config["tools"] == [] and sim.sessions[0].instructions == ""


@pytest.mark.parametrize(("choice", "code", "param"), [
    ("sometimes", "invalid_value", "session.tool_choice"),
    ({"type": "function"}, "missing_required_parameter", "session.tool_choice.name"),
    ({"type": "function", "name": "transfer_call"}, "invalid_value", "session.tool_choice.name"),
    ({"type": "function", "name": "end_call", "strict": True}, "unknown_parameter", "session.tool_choice.strict"),
])
async def test_a_tool_choice_must_be_an_option_or_name_a_declared_tool(choice: Any, code: str, param: str) -> None:
    async with RealtimeSimulator() as sim, realtime_client(sim) as client:
        await client.send("session.update", session=with_tools(END_CALL, tool_choice=choice))
        error = (await client.until("error"))["error"]
        await client.send("session.update", session=with_tools(END_CALL, tool_choice="required"))
        await client.until("session.updated")
    assert (error["code"], error["param"]) == (code, param)
    assert sim.sessions[0].config["tool_choice"] == "required"


async def test_the_model_does_not_call_a_function_the_session_did_not_declare_or_ruled_out() -> None:
    goodbye = ScriptedAnswer(speech_like_pcm16(300), "Goodbye!", calls=(ScriptedCall("end_call"),))
    async with RealtimeSimulator(speed=float("inf"), answers=[goodbye]) as sim, realtime_client(sim) as client:
        await client.send("response.create")
        undeclared = (await client.until("response.done"))["response"]
        await declare(client, with_tools(END_CALL, tool_choice="none"))
        await client.send("response.create")
        ruled_out = (await client.until("response.done"))["response"]
        await client.send("response.create", response={"tool_choice": "auto"})
        allowed = (await client.until("response.done"))["response"]
    assert [item["type"] for item in undeclared["output"]] == ["message"]
    assert [item["type"] for item in ruled_out["output"]] == ["message"]
    assert [item["type"] for item in allowed["output"]] == ["message", "function_call"]
    assert [r.withheld_calls for r in sim.sessions[0].responses] == [["end_call"], ["end_call"], []]


async def test_barge_in_after_a_calls_arguments_cancels_the_response_with_the_call_still_in_its_output() -> None:
    transfer = ScriptedAnswer(speech_like_pcm16(3000), "Let me put you through.", calls=(
        ScriptedCall("transfer_call", {"target": "sales", "summary": "wants a quote"}, before_audio=True),))
    async with RealtimeSimulator(speed=1.0, answers=[transfer]) as sim, realtime_client(sim) as client:
        await declare(client, with_tools(TRANSFER_CALL))
        await client.send("response.create")
        args_done = await client.until("response.function_call_arguments.done")
        for _ in range(3):
            await client.until(GA.audio_delta)
        await client.append(speech_like_pcm16(300))
        done = (await client.until("response.done"))["response"]

    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "turn_detected"
    call, message = done["output"]
    assert (call["type"], call["call_id"], call["status"]) == ("function_call", args_done["call_id"], "completed")
    assert json.loads(call["arguments"]) == {"target": "sales", "summary": "wants a quote"}
    assert (message["type"], message["status"]) == ("message", "incomplete")
    assert client.of(GA.audio_delta)[0]["output_index"] == 1
    assert GA.audio_done not in {e["type"] for e in client.events}
    assert sim.sessions[0].responses[0].status == "cancelled"


@pytest.mark.parametrize("dialect", ["ga", "preview"])
async def test_a_system_message_item_is_accepted_in_both_dialects(dialect: str) -> None:
    async with RealtimeSimulator() as sim:
        async with connect(sim.url if dialect == "ga" else sim.preview_url) as ws:
            client = ScriptClient(ws)
            await client.until("session.created")
            await client.send("conversation.item.create", item={
                "type": "message", "role": "system",
                "content": [{"type": "input_text", "text": "The caller is a premium customer."}]})
            added = await client.until(SERVER_EVENTS[dialect].item_added)
    assert added["item"]["role"] == "system"
    assert not [e for e in client.events if e["type"] == "error"]


def test_a_scripted_answer_says_something_or_calls_something() -> None:
    with pytest.raises(ValueError):
        ScriptedAnswer(None)
    with pytest.raises(ValueError):
        ScriptedAnswer(b"\x00")
    with pytest.raises(TypeError):
        ScriptedCall("end_call", {"when": object()})
    assert ScriptedCall("end_call", "{not json").arguments_json == "{not json"


# --------------------------------------------------------------------------- Twilio


class FakeBridge:
    """A tiny websocket server standing in for the bridge's media-stream endpoint."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        self.ws: ServerConnection | None = None
        self.close_after_start = False
        self._connected = asyncio.Event()
        self._update = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        self.ws = ws
        self._connected.set()
        loop = asyncio.get_running_loop()
        async for raw in ws:
            self.messages.append(json.loads(raw))
            self.arrivals.append(loop.time())
            self._update.set()
            if self.close_after_start and self.messages[-1]["event"] == "start":
                return

    async def send(self, **message: Any) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(message))

    async def media(self, ulaw: bytes, stream_sid: str) -> None:
        await self.send(event="media", streamSid=stream_sid,
                        media={"payload": base64.b64encode(ulaw).decode()})

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool],
                       timeout: float = 2.0) -> tuple[float, dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while True:
                for at, message in zip(self.arrivals, self.messages, strict=True):
                    if predicate(message):
                        return at, message
                self._update.clear()
                await self._update.wait()


@asynccontextmanager
async def call_on_fake_bridge(**call_args: Any) -> AsyncIterator[tuple[FakeBridge, SimulatedCall]]:
    bridge = FakeBridge()
    async with serve(bridge.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        call = SimulatedCall(bridge_url=f"http://127.0.0.1:{port}", public_url=PUBLIC_URL,
                             auth_token=TOKEN, **call_args)
        await call.connect(stream_url=STREAM_URL)
        try:
            yield bridge, call
        finally:
            await call.close()


async def test_stream_opens_with_connected_and_start_then_media_at_50_frames_a_second() -> None:
    said = speech_like_ulaw(200)
    async with call_on_fake_bridge() as (bridge, call):
        call.say(said)
        await asyncio.sleep(0.5)
        assert bridge.ws is not None and bridge.ws.request is not None
        assert bridge.ws.request.path == "/twilio/media"
        connected, start, *media = bridge.messages
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start["sequenceNumber"] == "1"
    assert start["start"]["callSid"] == call.call_sid
    assert start["start"]["streamSid"] == start["streamSid"] == call.stream_sid
    assert start["start"]["tracks"] == ["inbound"]
    assert start["start"]["mediaFormat"] == {
        "encoding": "audio/x-mulaw", "sampleRate": ULAW_RATE_HZ, "channels": 1}

    assert 22 <= len(media) <= 28
    assert [m["sequenceNumber"] for m in media] == [str(n) for n in range(2, len(media) + 2)]
    assert [m["media"]["chunk"] for m in media] == [str(n) for n in range(1, len(media) + 1)]
    timestamps = [int(m["media"]["timestamp"]) for m in media]
    assert timestamps[0] != 0
    assert all(b - a == 20 for a, b in pairwise(timestamps))
    assert {m["media"]["track"] for m in media} == {"inbound"}
    payloads = [base64.b64decode(m["media"]["payload"]) for m in media]
    assert {len(p) for p in payloads} == {ULAW_FRAME_BYTES}
    assert b"".join(payloads[:10]) == said
    assert set(b"".join(payloads[10:])) == {ULAW_SILENCE}
    media_arrivals = bridge.arrivals[2:]
    period = (media_arrivals[-1] - media_arrivals[0]) / (len(media_arrivals) - 1)
    assert period == pytest.approx(0.020, abs=0.002)


async def test_what_the_caller_says_is_stamped_when_its_first_frame_goes_out() -> None:
    first, second = speech_like_ulaw(100), speech_like_ulaw(60)
    async with call_on_fake_bridge() as (bridge, call):
        call.say(first)
        call.say(second)
        await asyncio.sleep(0.3)
        media_arrivals = bridge.arrivals[2:]
    assert [audio for _, audio in call.said] == [first, second]
    (first_at, _), (second_at, _) = call.said
    assert first_at == pytest.approx(media_arrivals[0], abs=0.025)
    assert second_at == pytest.approx(media_arrivals[5], abs=0.025)


async def test_mark_is_echoed_after_its_audio_has_played() -> None:
    audio = speech_like_ulaw(200)
    async with call_on_fake_bridge() as (bridge, call):
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        # Uneven pieces, as a bridge resampling model deltas would send.
        for piece in (audio[:700], audio[700:1000], audio[1000:]):
            await bridge.media(piece, call.stream_sid)
        await bridge.send(event="mark", streamSid=call.stream_sid, mark={"name": "turn-1"})
        echoed_at, echo = await bridge.wait_for(lambda m: m["event"] == "mark")
        assert echo["mark"] == {"name": "turn-1"}
        assert echo["streamSid"] == call.stream_sid
        assert 0.18 <= echoed_at - sent_at <= 0.30
        assert bytes(call.heard) == audio
        assert call.heard_ms() == 200
        assert [n for _, n in call.playback] == [700, 300, 600]
        (start_0, _), (start_1, _), (start_2, _) = call.playback
        assert (start_1 - start_0, start_2 - start_1) == (pytest.approx(0.0875), pytest.approx(0.0375))
        assert [(name, played) for _, name, played in call.marks_echoed] == [("turn-1", True)]

        # With nothing left to play, a mark comes straight back.
        sent_at = loop.time()
        await bridge.send(event="mark", streamSid=call.stream_sid, mark={"name": "idle"})
        echoed_at, _ = await bridge.wait_for(lambda m: m.get("mark") == {"name": "idle"})
        assert echoed_at - sent_at < 0.05


async def test_clear_drops_the_buffer_and_echoes_pending_marks_at_once() -> None:
    audio = speech_like_ulaw(2000)
    async with call_on_fake_bridge() as (bridge, call):
        loop = asyncio.get_running_loop()
        await bridge.media(audio, call.stream_sid)
        await bridge.send(event="mark", streamSid=call.stream_sid, mark={"name": "long"})
        await call.wait_heard(100, timeout=1.0)
        cleared_at = loop.time()
        await bridge.send(event="clear", streamSid=call.stream_sid)
        echoed_at, _ = await bridge.wait_for(lambda m: m["event"] == "mark")
        assert echoed_at - cleared_at < 0.05
        heard_at_clear = call.heard_ms()
        await asyncio.sleep(0.1)
        assert call.heard_ms() == heard_at_clear < 200
        assert bytes(call.heard) == audio[:len(call.heard)]
        assert [(name, played) for _, name, played in call.marks_echoed] == [("long", False)]
        ((_, dropped),) = call.clears
        assert dropped == len(audio) - len(call.heard)


async def test_dtmf_and_what_twilio_would_reject() -> None:
    async with call_on_fake_bridge() as (bridge, call):
        await call.send_dtmf("5")
        _, dtmf = await bridge.wait_for(lambda m: m["event"] == "dtmf")
        assert dtmf["dtmf"] == {"track": "inbound_track", "digit": "5"}
        assert isinstance(dtmf["sequenceNumber"], str)

        assert bridge.ws is not None
        await bridge.ws.send(b"\xff" * ULAW_FRAME_BYTES)
        await bridge.ws.send("not json")
        await bridge.media(ulaw_silence(100), "MZ-someone-else")
        await bridge.send(event="media", streamSid=call.stream_sid, media={"payload": "@@@"})
        await asyncio.sleep(0.1)
        assert [code for _, code, _ in call.errors] == [31950, 31951, 31951, 31924]
        assert call.heard_ms() == 0


async def test_hang_up_sends_stop_last_and_closes() -> None:
    async with call_on_fake_bridge() as (bridge, call):
        await asyncio.sleep(0.1)
        await call.hang_up()
        await asyncio.sleep(0.05)
        assert bridge.messages[-1]["event"] == "stop"
        assert bridge.messages[-1]["stop"] == {"accountSid": call.account_sid,
                                               "callSid": call.call_sid}
        assert call.closed_at is not None and not call.closed_by_bridge
        assert bridge.ws is not None and bridge.ws.close_code == 1000
        assert await call.wait_closed_by_bridge(0.1) is None


async def test_a_close_by_the_bridge_is_recorded_and_the_tasks_end_cleanly() -> None:
    loop = asyncio.get_running_loop()
    problems: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: problems.append(context))
    try:
        bridge = FakeBridge()
        bridge.close_after_start = True
        async with serve(bridge.handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            call = SimulatedCall(bridge_url=f"http://127.0.0.1:{port}", public_url=PUBLIC_URL,
                                 auth_token=None)
            await call.connect(stream_url=STREAM_URL)
            closed_at = await call.wait_closed_by_bridge(2.0)
            assert closed_at is not None and call.closed_by_bridge
            assert call.close_code == 1000
            await asyncio.sleep(0.05)
            assert all(task.done() for task in call._tasks)
            await call.hang_up()  # a no-op once closed
        import gc
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert problems == []


# ---- signatures, against a bare ASGI app that validates them as the bridge must


def twiml_app(seen: dict[str, Any]) -> Callable[..., Any]:
    validator = RequestValidator(TOKEN)

    async def app(scope: dict[str, Any], receive: Callable[..., Any],
                  send: Callable[..., Any]) -> None:
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        signature = headers.get("x-twilio-signature", "")
        if scope["type"] == "http":
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            params = dict(parse_qsl(body.decode()))
            seen["webhook_params"] = params
            ok = validator.validate(PUBLIC_URL + scope["path"], params, signature)
            twiml = (f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
                     f'<Stream url="{STREAM_URL}"><Parameter name="token" value="t0k3n"/>'
                     f'</Stream></Connect><Say>Sorry, please call again.</Say></Response>')
            body_out = twiml.encode() if ok else b"forbidden"
            await send({"type": "http.response.start", "status": 200 if ok else 403,
                        "headers": [(b"content-type", b"text/xml")]})
            await send({"type": "http.response.body", "body": body_out})
        elif scope["type"] == "websocket":
            await receive()  # websocket.connect
            ok = validator.validate(STREAM_URL, {}, signature)
            seen["upgrade_valid"] = ok
            seen["upgrade_valid_over_https"] = validator.validate(
                PUBLIC_URL + scope["path"], {}, signature)
            if not ok:
                await send({"type": "websocket.close", "code": 1008})
                return
            await send({"type": "websocket.accept"})
            seen["frames"] = [json.loads((await receive())["text"]) for _ in range(2)]
            await send({"type": "websocket.close", "code": 1000})

    return app


@asynccontextmanager
async def asgi_server(app: Callable[..., Any]) -> AsyncIterator[str]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning",
                            ws="websockets-sansio")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_webhook_is_signed_over_the_public_url_and_its_twiml_is_read() -> None:
    seen: dict[str, Any] = {}
    async with asgi_server(twiml_app(seen)) as bridge_url:
        call = SimulatedCall(bridge_url=bridge_url, public_url=PUBLIC_URL + "/",
                             auth_token=TOKEN)
        response = await call.dial()
        assert response.status_code == 200
        assert seen["webhook_params"]["CallStatus"] == "ringing"
        assert seen["webhook_params"]["Direction"] == "inbound"
        assert seen["webhook_params"]["CallSid"] == call.call_sid
        assert call.stream_url == STREAM_URL
        assert call.parameters == {"token": "t0k3n"}
        assert call.say_texts == ["Sorry, please call again."]
        assert call.verbs == ["Connect", "Say"]

        forged = SimulatedCall(bridge_url=bridge_url, public_url=PUBLIC_URL, auth_token="wrong")
        assert (await forged.dial()).status_code == 403


async def test_upgrade_is_signed_over_the_public_wss_url() -> None:
    seen: dict[str, Any] = {}
    async with asgi_server(twiml_app(seen)) as bridge_url:
        call = SimulatedCall(bridge_url=bridge_url, public_url=PUBLIC_URL, auth_token=TOKEN)
        await call.dial()
        await call.connect()
        assert await call.wait_closed_by_bridge(2.0) is not None
        assert seen["upgrade_valid"] is True
        assert seen["upgrade_valid_over_https"] is False  # the scheme is part of what is signed
        connected, start = seen["frames"]
        assert connected["event"] == "connected"
        assert start["start"]["customParameters"] == {"token": "t0k3n"}

        unsigned = SimulatedCall(bridge_url=bridge_url, public_url=PUBLIC_URL, auth_token=TOKEN)
        await unsigned.dial()
        with pytest.raises(InvalidStatus):
            await unsigned.connect(sign=False)


def test_a_wav_file_becomes_8k_mulaw_for_the_caller(tmp_path: Any) -> None:
    import wave

    from telephony_bridge.testing.twilio_simulator import load_wav_ulaw

    pcm16k = speech_like_pcm16(500, rate=16000)
    path = tmp_path / "caller.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        stereo = b"".join(pcm16k[i:i + 2] * 2 for i in range(0, len(pcm16k), 2))
        wav.writeframes(stereo)
    assert len(load_wav_ulaw(path)) == pytest.approx(4000, abs=2)  # 500 ms at 8 bytes/ms
