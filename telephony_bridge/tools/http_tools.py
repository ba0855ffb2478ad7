"""The operator's tools: what the session offers the model, and the calls in flight; sans I/O.

A number's `tools` are HTTP endpoints the bridge calls for the model (`tool_requests` does the
POST); its `mcp` servers the Realtime service calls itself, so they exist here only as entries of
`session.update` (GA only: the preview dialect has no `mcp` tool). A call runs only once its
response is done and `completed` (`functions.FunctionCalls`); it becomes a `RunTool` action, done
off the audio path, and its answer comes back as `ToolAnswered`.

The caller is never left in silence: when a batch of calls is still out after
`HOLDING_PHRASE_AFTER_S`, the model is asked once for a short holding phrase. A person on the
phone hears a second of silence as a pause and two as a dropped line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from telephony_bridge.call.events import FunctionCallRequested, RunTool, ToolAnswered, ToolOutcome
from telephony_bridge.config import CallProfile, Dialect, HttpTool

HOLDING_PHRASE_AFTER_S = 1.0
HOLDING_INSTRUCTIONS = (
    "A lookup you asked for is still running. Say one short holding phrase, such as 'One moment while I check.', "
    "and nothing else. Do not call any function."
)
MAX_TRANSCRIPT_OUTPUT = 300
"""How much of a tool's answer its line in the call log's transcript shows."""


def function_definitions(profile: CallProfile) -> list[dict[str, Any]]:
    """The number's HTTP tools as function tools (the same shape in both dialects)."""
    return [
        {"type": "function", "name": tool.name, "description": tool.description, "parameters": tool.parameters}
        for tool in profile.tools
    ]


def mcp_definitions(profile: CallProfile, dialect: Dialect) -> list[dict[str, Any]]:
    """The number's MCP servers as the service's own `mcp` tools; none on the preview, which has no such tool.

    `require_approval` is `never`: otherwise the service waits on an approval request nobody on a
    phone call can answer. The header values are secrets: the recorder and the logs redact them.
    """
    if dialect != "ga":
        return []
    definitions = []
    for server in profile.mcp:
        definition: dict[str, Any] = {
            "type": "mcp", "server_label": server.server_label, "server_url": server.server_url, "require_approval": "never",
        }
        if server.allowed_tools is not None:
            definition["allowed_tools"] = list(server.allowed_tools)
        if server.headers:
            definition["headers"] = {name: value.get_secret_value() for name, value in server.headers.items()}
        definitions.append(definition)
    return definitions


def dialect_problems(profiles: dict[str, CallProfile], dialect: Dialect) -> list[tuple[str, str]]:
    """(key, reason) for each number with `mcp` entries on the preview dialect: a configuration error."""
    if dialect == "ga":
        return []
    return [(f"{key}.mcp", "MCP servers need the GA Realtime API; the preview dialect has no mcp tool")
            for key, profile in profiles.items() if profile.mcp]


def error_output(reason: str) -> str:
    """What the model reads when a tool failed: it can apologise and go on."""
    return json.dumps({"error": reason})


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    """One tool call as the call's summary keeps it: for metrics, the call log and the after-call POST."""

    call_id: str
    name: str
    arguments: str
    outcome: ToolOutcome
    latency_ms: float
    output: str

    def transcript_line(self) -> str:
        output = self.output if len(self.output) <= MAX_TRANSCRIPT_OUTPUT else self.output[:MAX_TRANSCRIPT_OUTPUT] + "…"
        return f"{self.name}({self.arguments}) -> {output} [{self.outcome}, {self.latency_ms:.0f} ms]"


class ToolCalls:
    """The operator's tool calls of one call: those out, those answered, and the one holding phrase per batch."""

    def __init__(self) -> None:
        self.records: list[ToolCallRecord] = []
        self._out: dict[str, tuple[str, str]] = {}
        self._batch_started: float | None = None
        self._held = False

    @property
    def out(self) -> int:
        return len(self._out)

    def start(self, call: FunctionCallRequested, tool: HttpTool, now: float) -> RunTool | ToolAnswered:
        """The request for `call`, or at once its failure when the arguments are not a JSON object."""
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            arguments = None
        self._out[call.call_id] = (tool.name, call.arguments)
        if not isinstance(arguments, dict):
            return ToolAnswered(call.call_id, error_output("the arguments are not a JSON object"), "bad_arguments", 0.0)
        if self._batch_started is None:
            self._batch_started = now
        return RunTool(call.call_id, tool, call.arguments)

    def answered(self, event: ToolAnswered) -> ToolCallRecord | None:
        """Record an answer; `None` for a call this call never started."""
        started = self._out.pop(event.call_id, None)
        if started is None:
            return None
        if not self._out:
            self._batch_started = None
            self._held = False
        record = ToolCallRecord(event.call_id, started[0], started[1], event.outcome, event.latency_ms, event.output)
        self.records.append(record)
        return record

    def holding_phrase_due(self, now: float) -> bool:
        """True once per batch, when its calls have been out `HOLDING_PHRASE_AFTER_S`."""
        if self._held or self._batch_started is None or now - self._batch_started < HOLDING_PHRASE_AFTER_S:
            return False
        self._held = True
        return True
