"""Operator tools in the configuration: what start-up refuses, inheritance, and MCP on each dialect."""

from __future__ import annotations

import json

import pytest

from telephony_bridge.call.controller import CallController
from telephony_bridge.call.events import (
    AnswerFunctionCall,
    CreateResponse,
    FunctionCallRequested,
    RealtimeConnected,
    ResponseDone,
    ResponseStarted,
    RunTool,
    SessionConfigured,
    StreamStarted,
    Tick,
    ToolAnswered,
)
from telephony_bridge.config import parse_config, settings_from_env
from telephony_bridge.errors import ConfigError
from telephony_bridge.preflight import mcp_problems
from telephony_bridge.realtime.session import session_update
from telephony_bridge.tools.http_tools import HOLDING_INSTRUCTIONS

LINE = "+15550001111"
TOOL = """
[[{table}.tools]]
name = "{name}"
description = "Free slots."
url = "{url}"
parameters = {parameters}
{extra}
"""
PARAMETERS = '{ type = "object", properties = { day = { type = "string" } }, required = ["day"] }'


def tool(name: str = "check_availability", url: str = "https://clinic.example.com/slots", parameters: str = PARAMETERS,
         extra: str = "", table: str = f'numbers."{LINE}"') -> str:
    return TOOL.format(table=table, name=name, url=url, parameters=parameters, extra=extra)


def problems(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "bridge.toml", env or {})
    return str(raised.value)


@pytest.mark.parametrize(("text", "reason"), [
    (tool("end_call"), "'end_call' is a built-in function's name"),
    (tool() + tool(), "two tools are named 'check_availability'"),
    (tool(parameters='{ type = "string" }'), 'type "object"'),
    (tool(parameters='{ type = "object", properties = { day = { type = "str" } } }'), "'str' is not a JSON Schema type"),
    (tool(parameters='{ type = "object", properties = {}, required = ["day"] }'), "required must list names"),
    (tool(url="http://clinic.example.com/slots"), "not an https URL"),
    (tool(extra='secret_env = "CLINIC_TOOL_SECRET"'), "CLINIC_TOOL_SECRET is not set"),
    (tool(extra='secret = "hunter2"'), "a secret does not go in the file"),
    (f'[[numbers."{LINE}".mcp]]\nserver_label = "orders"\nserver_url = "https://mcp.example.com"\n'
     'headers_env = { Authorization = "MCP_TOKEN" }\n', "MCP_TOKEN is not set"),
], ids=["built-in name", "duplicate", "not an object", "bad type", "required unknown", "plain http", "secret unset",
        "secret in file", "mcp header unset"])
def test_start_up_refuses_a_tool_that_cannot_work(text: str, reason: str) -> None:
    assert reason in problems(text)


def test_http_to_loopback_is_allowed_and_a_secret_is_resolved_but_never_dumped() -> None:
    config = parse_config(tool(url="http://127.0.0.1:9000/slots", extra='secret_env = "S"'), "b.toml", {"S": "hunter2"})
    profile = config.numbers[LINE]
    assert profile.tools[0].secret is not None and profile.tools[0].secret.get_secret_value() == "hunter2"
    assert "hunter2" not in json.dumps(profile.model_dump(mode="json")) and "hunter2" not in repr(profile)


def test_a_numbers_tools_replace_the_defaults_unless_it_inherits_them() -> None:
    defaults = tool("find_order", table="defaults")
    replaced = parse_config(defaults + tool(), "b.toml", {})
    inherited = parse_config(defaults + f'[numbers."{LINE}"]\ninherit_tools = true\n' + tool(), "b.toml", {})
    assert [t.name for t in replaced.numbers[LINE].tools] == ["check_availability"]
    assert [t.name for t in inherited.numbers[LINE].tools] == ["find_order", "check_availability"]


MCP = f'[[numbers."{LINE}".mcp]]\nserver_label = "orders"\nserver_url = "https://mcp.example.com/mcp"\n'


def test_tools_are_function_tools_in_both_dialects_and_mcp_only_on_ga() -> None:
    profile = parse_config(tool() + MCP, "b.toml", {}).numbers[LINE]
    for dialect in ("ga", "preview"):
        tools = session_update(profile, dialect)["session"]["tools"]  # type: ignore[arg-type]
        assert {"type": "function", "name": "check_availability", "description": "Free slots.",
                "parameters": json.loads(json.dumps(profile.tools[0].parameters))} in tools
        assert [t for t in tools if t["type"] == "mcp"] == ([] if dialect == "preview" else [
            {"type": "mcp", "server_label": "orders", "server_url": "https://mcp.example.com/mcp", "require_approval": "never"}])


def test_mcp_on_the_preview_dialect_is_a_configuration_error() -> None:
    config = parse_config(MCP, "b.toml", {})
    preview = settings_from_env({"OPENAI_API_KEY": "k", "REALTIME_API": "preview"})
    ga = settings_from_env({"OPENAI_API_KEY": "k"})
    (problem,) = mcp_problems(config, preview)
    assert not problem.warning and "GA" in str(problem) and problem.error.key == f'numbers."{LINE}".mcp'
    assert mcp_problems(config, ga) == []


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def clinic() -> tuple[CallController, Clock]:
    clock = Clock()
    controller = CallController(parse_config(tool(), "b.toml", {}).numbers[LINE], clock)
    controller.start()
    controller.handle(RealtimeConnected())
    controller.handle(SessionConfigured())
    controller.handle(StreamStarted("MZ1", "CA1"))
    return controller, clock


def test_a_tool_call_of_a_cancelled_response_is_never_run() -> None:
    controller, _ = clinic()
    controller.handle(ResponseStarted("r1"))
    controller.handle(FunctionCallRequested("r1", "c1", "check_availability", '{"day": "2026-12-01"}'))
    assert controller.handle(ResponseDone("r1", "cancelled")) == []


def test_a_tool_runs_off_the_audio_path_and_its_answer_is_the_output_then_one_response() -> None:
    controller, clock = clinic()
    controller.handle(ResponseStarted("r1"))
    controller.handle(FunctionCallRequested("r1", "c1", "check_availability", '{"day": "2026-12-01"}'))
    (run,) = controller.handle(ResponseDone("r1", "completed"))
    assert isinstance(run, RunTool) and run.tool.name == "check_availability"
    clock.now += 0.5
    answered = controller.handle(ToolAnswered("c1", '{"slots": []}', "ok", 12.0))
    assert answered == [AnswerFunctionCall("c1", '{"slots": []}'), CreateResponse()]
    assert controller.conversation.transcript[-1].speaker == "tool"


def test_a_slow_tool_asks_for_one_holding_phrase() -> None:
    controller, clock = clinic()
    controller.handle(ResponseStarted("r1"))
    controller.handle(FunctionCallRequested("r1", "c1", "check_availability", '{"day": "2026-12-01"}'))
    controller.handle(ResponseDone("r1", "completed"))
    clock.now += 0.6
    assert controller.handle(Tick()) == []
    clock.now += 0.6
    assert controller.handle(Tick()) == [CreateResponse(HOLDING_INSTRUCTIONS)]
    clock.now += 2
    assert controller.handle(Tick()) == []


def test_arguments_that_are_not_json_are_answered_with_an_error_without_a_request() -> None:
    controller, _ = clinic()
    controller.handle(ResponseStarted("r1"))
    controller.handle(FunctionCallRequested("r1", "c1", "check_availability", "{day:"))
    done = controller.handle(ResponseDone("r1", "completed"))
    assert [type(a) for a in done] == [AnswerFunctionCall, CreateResponse]
    assert "error" in json.loads(done[0].output)
