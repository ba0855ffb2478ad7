"""The bridge's requests to operators' servers: a tool call's signed POST and its answer, and the after-call summary.

The body is `{"tool", "arguments", "call": {"call_sid", "from", "to"}}`. A 2xx JSON answer of at
most `MAX_ANSWER_BYTES` becomes the `function_call_output` as it is; anything else (a timeout, a
refused connection, another status, a body that is not JSON or is too big) becomes
`{"error": ...}` naming what went wrong, never the secret. Nothing here raises: a tool that fails
must not end the call. The answer is read as a stream and cut at the cap, so a server that sends
megabytes costs 64 KiB.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from telephony_bridge.call.events import ToolOutcome
from telephony_bridge.call.summary import CallSummary
from telephony_bridge.config import AfterCall, HttpTool
from telephony_bridge.tls import tls_context
from telephony_bridge.tools.http_tools import error_output
from telephony_bridge.twilio.signatures import SIGNATURE_HEADER, signature

MAX_ANSWER_BYTES = 64 * 1024
"""A function output is text the model reads on every later turn: 64 KiB is some 16 000 tokens, far more than a
phone answer needs; more is an operator's mistake (a whole table dumped) that would slow every turn."""


async def new_client() -> httpx.AsyncClient:
    """An HTTP client for a call's requests to operators' servers, with the process's one TLS context (`tls`)."""
    return httpx.AsyncClient(verify=await tls_context(), follow_redirects=False)


@dataclass(frozen=True, slots=True)
class CallParties:
    call_sid: str
    from_number: str
    to_number: str


@dataclass(frozen=True, slots=True)
class ToolResult:
    output: str
    outcome: ToolOutcome
    status: int | None


def signed_headers(secret: str | None, body: bytes, now: Callable[[], float] = time.time) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if secret:
        headers[SIGNATURE_HEADER] = signature(secret.encode("utf-8"), body, int(now()))
    return headers


def request_body(tool: HttpTool, arguments: str, parties: CallParties) -> bytes:
    call = {"call_sid": parties.call_sid, "from": parties.from_number, "to": parties.to_number}
    return json.dumps({"tool": tool.name, "arguments": json.loads(arguments or "{}"), "call": call}).encode("utf-8")


async def call_tool(client: httpx.AsyncClient, tool: HttpTool, body: bytes) -> ToolResult:
    """POST `body` to `tool`; the answer, or the error the model reads instead."""
    secret = tool.secret.get_secret_value() if tool.secret is not None else None
    try:
        async with client.stream(
            "POST", tool.url, content=body, headers=signed_headers(secret, body), timeout=tool.timeout_seconds
        ) as response:
            answer = bytearray()
            async for chunk in response.aiter_bytes():
                answer += chunk
                if len(answer) > MAX_ANSWER_BYTES:
                    return ToolResult(error_output(f"the tool's answer is over {MAX_ANSWER_BYTES // 1024} KiB"),
                                      "too_large", response.status_code)
    except httpx.TimeoutException:
        return ToolResult(error_output(f"the tool did not answer within {tool.timeout_seconds:g} s"), "timeout", None)
    except httpx.HTTPError as error:
        return ToolResult(error_output(f"the tool could not be reached ({type(error).__name__})"), "unreachable", None)
    status = response.status_code
    if not 200 <= status < 300:
        return ToolResult(error_output(f"the tool answered HTTP {status}"), "http_error", status)
    try:
        parsed: Any = json.loads(bytes(answer))
    except ValueError:
        return ToolResult(error_output("the tool's answer is not JSON"), "not_json", status)
    return ToolResult(json.dumps(parsed, ensure_ascii=False), "ok", status)


AFTER_CALL_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
"""Waits before each retry of an after-call POST that failed: about a minute in all, for a receiver that restarts."""
AFTER_CALL_TIMEOUT_S = 10.0


async def post_after_call(
    client: httpx.AsyncClient, after: AfterCall, body: bytes, delays_s: tuple[float, ...] = AFTER_CALL_DELAYS_S,
    sleep: Callable[[float], Any] = asyncio.sleep,
) -> int | None:
    """POST a call's summary until a 2xx (returned) or the retries run out (`None`); 4xx but 408/429 are final."""
    secret = after.secret.get_secret_value() if after.secret is not None else None
    for attempt in range(len(delays_s) + 1):
        try:
            response = await client.post(
                after.url, content=body, headers=signed_headers(secret, body), timeout=AFTER_CALL_TIMEOUT_S
            )
        except httpx.HTTPError:
            status = None
        else:
            status = response.status_code
            if 200 <= status < 300:
                return status
            if 400 <= status < 500 and status not in (408, 429):
                return None
        if attempt < len(delays_s):
            await sleep(delays_s[attempt])
    return None


def after_call_body(summary: CallSummary, ended_at: float) -> bytes:
    """The summary an operator's system gets after a call: numbers, times, outcome, transfer, tool calls, transcript."""
    return json.dumps({
        "call_sid": summary.call_sid,
        "from": summary.caller_number,
        "to": summary.called_number,
        "started_at": round(ended_at - summary.duration_s, 3),
        "ended_at": round(ended_at, 3),
        "duration_s": round(summary.duration_s, 3),
        "outcome": summary.outcome,
        "end_reason": summary.end_reason,
        "transfer": summary.transfer_target,
        "tool_calls": [
            {"tool": record.name, "arguments": record.arguments, "outcome": record.outcome,
             "latency_ms": round(record.latency_ms, 1)}
            for record in summary.tool_calls
        ],
        "transcript": [
            {"speaker": turn.speaker, "text": turn.text, "at_s": None if at_s is None else round(at_s, 3)}
            for turn, at_s in summary.timed_transcript()
        ],
    }).encode("utf-8")
