"""What a Realtime session accepts in ``session.update``, in each dialect, and the audio formats it names.

GA sessions nest audio settings under ``session.audio.input/output`` with formats ``audio/pcm``
(24 kHz only), ``audio/pcmu`` and ``audio/pcma``; preview sessions are flat, with
``pcm16``, ``g711_ulaw`` and ``g711_alaw``. Unknown fields are refused whole
(``unknown_parameter``), as the real service does, so a session shaped for the wrong dialect fails.

``tools`` and ``tool_choice`` are checked the same way in both dialects (and in a
``response.create``'s ``response``): a ``function`` tool is ``type``, ``name``, ``description`` and
``parameters`` (a JSON Schema object) and nothing else, so a tool copied from the Responses API with
``strict`` is refused. ``mcp`` tools exist on GA only. Errors name the path (``session.tools[0].name``)
and never quote an MCP tool's ``authorization`` or ``headers``, which carry secrets; ``session.updated``
echoes them as given, the worst case for a client that records what it receives.
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass
from typing import Any, TypeGuard

from telephony_bridge.config import Dialect
from telephony_bridge.wire import PCM24K_RATE_HZ, ULAW_RATE_HZ

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "ALAW", "EAGERNESS_SILENCE_MS", "FIRST_PREVIEW", "GA_FORMATS", "PCM16", "PREVIEW_FORMATS", "ULAW",
    "ClientError", "Codec", "apply_ga_update", "apply_preview_update", "default_session",
    "function_names", "invalid_value", "is_int", "missing_parameter", "require_dict", "tool_choice", "tools",
]


@dataclass(frozen=True)
class Codec:
    """An audio format a session may name: its sample rate and bytes per sample."""

    name: str
    rate: int
    sample_bytes: int

    @property
    def bytes_per_ms(self) -> float:
        return self.rate * self.sample_bytes / 1000

    def to_pcm16(self, data: bytes) -> bytes:
        if self.name == "ulaw":
            return audioop.ulaw2lin(data, 2)
        if self.name == "alaw":
            return audioop.alaw2lin(data, 2)
        return data

    def from_pcm16_24k(self, pcm: bytes) -> bytes:
        if self.name == "pcm16":
            return pcm
        # Naive resampling is good enough for a simulator: nobody listens to it critically.
        narrow, _ = audioop.ratecv(pcm, 2, 1, PCM24K_RATE_HZ, self.rate, None)
        return audioop.lin2ulaw(narrow, 2) if self.name == "ulaw" else audioop.lin2alaw(narrow, 2)


PCM16 = Codec("pcm16", PCM24K_RATE_HZ, 2)
ULAW = Codec("ulaw", ULAW_RATE_HZ, 1)
ALAW = Codec("alaw", ULAW_RATE_HZ, 1)
GA_FORMATS = {"audio/pcm": PCM16, "audio/pcmu": ULAW, "audio/pcma": ALAW}
PREVIEW_FORMATS = {"pcm16": PCM16, "g711_ulaw": ULAW, "g711_alaw": ALAW}

_GA_SESSION_KEYS = {
    "type", "model", "instructions", "output_modalities", "audio", "tools", "tool_choice",
    "max_output_tokens", "tracing", "truncation", "prompt", "include", "parallel_tool_calls",
    "reasoning",
}
_GA_AUDIO_KEYS = {"input", "output"}
_GA_INPUT_KEYS = {"format", "transcription", "noise_reduction", "turn_detection"}
_GA_OUTPUT_KEYS = {"format", "voice", "speed"}
_PREVIEW_SESSION_KEYS = {
    "model", "modalities", "instructions", "voice", "input_audio_format", "output_audio_format",
    "input_audio_transcription", "input_audio_noise_reduction", "turn_detection", "tools",
    "tool_choice", "temperature", "max_response_output_tokens", "speed", "tracing",
}
_SERVER_VAD_KEYS = {
    "type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response",
    "interrupt_response", "idle_timeout_ms",
}
_SEMANTIC_VAD_KEYS = {"type", "eagerness", "create_response", "interrupt_response"}
# semantic_vad is approximated by the energy VAD with an eagerness-dependent end of turn.
EAGERNESS_SILENCE_MS = {"low": 1000, "medium": 500, "auto": 500, "high": 250}


class ClientError(Exception):
    """A client event the real service would answer with an ``error`` event."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def _unknown(param: str) -> ClientError:
    return ClientError("unknown_parameter", f"Unknown parameter: '{param}'.", param)


def missing_parameter(param: str) -> ClientError:
    return ClientError(
        "missing_required_parameter", f"Missing required parameter: '{param}'.", param
    )


def invalid_value(param: str, value: Any, expected: str) -> ClientError:
    return ClientError(
        "invalid_value", f"Invalid value for '{param}': {value!r}. Expected {expected}.", param
    )


def _check_keys(obj: dict[str, Any], allowed: set[str], prefix: str) -> None:
    for key in obj:
        if key not in allowed:
            raise _unknown(f"{prefix}.{key}")


def require_dict(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ClientError("invalid_type", f"Invalid type for '{param}': expected an object.", param)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> TypeGuard[int]:
    """An integer as the service means it: JSON's `true` is not 1."""
    return isinstance(value, int) and not isinstance(value, bool)


def _turn_detection(value: Any, param: str, *, ga: bool) -> dict[str, Any] | None:
    """Validate a ``turn_detection`` object and fill in the service's defaults."""
    if value is None:
        return None
    value = require_dict(value, param)
    kind = value.get("type")
    if kind is None:
        raise missing_parameter(f"{param}.type")
    if kind == "server_vad":
        _check_keys(value, _SERVER_VAD_KEYS if ga else _SERVER_VAD_KEYS - {"idle_timeout_ms"}, param)
        result: dict[str, Any] = {
            "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
            "silence_duration_ms": 500, "create_response": True, "interrupt_response": True,
        }
        if ga:
            result["idle_timeout_ms"] = None
    elif kind == "semantic_vad":
        _check_keys(value, _SEMANTIC_VAD_KEYS, param)
        result = {"type": "semantic_vad", "eagerness": "auto", "create_response": True,
                  "interrupt_response": True}
    else:
        raise invalid_value(f"{param}.type", kind, "'server_vad' or 'semantic_vad'")
    threshold = value.get("threshold", 0.5)
    if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
        raise invalid_value(f"{param}.threshold", threshold, "a number between 0 and 1")
    for key in ("prefix_padding_ms", "silence_duration_ms"):
        if key in value and (not is_int(value[key]) or value[key] < 0):
            raise invalid_value(f"{param}.{key}", value[key], "a non-negative integer")
    for key in ("create_response", "interrupt_response"):
        if key in value and not isinstance(value[key], bool):
            raise invalid_value(f"{param}.{key}", value[key], "a boolean")
    if "eagerness" in value and value["eagerness"] not in EAGERNESS_SILENCE_MS:
        raise invalid_value(f"{param}.eagerness", value["eagerness"], "low, medium, high or auto")
    idle = value.get("idle_timeout_ms")
    if idle is not None and (not is_int(idle) or idle < 0):
        raise invalid_value(f"{param}.idle_timeout_ms", idle, "a non-negative integer or null")
    result.update(value)
    return result


def _ga_format(value: Any, param: str) -> dict[str, Any]:
    value = require_dict(value, param)
    _check_keys(value, {"type", "rate"}, param)
    kind = value.get("type", "audio/pcm")
    if kind not in GA_FORMATS:
        raise invalid_value(f"{param}.type", kind, "'audio/pcm', 'audio/pcmu' or 'audio/pcma'")
    if kind == "audio/pcm":
        if value.get("rate", PCM24K_RATE_HZ) != PCM24K_RATE_HZ:
            raise invalid_value(f"{param}.rate", value["rate"], str(PCM24K_RATE_HZ))
        return {"type": kind, "rate": PCM24K_RATE_HZ}
    return {"type": kind}


_FUNCTION_TOOL_KEYS = {"type", "name", "description", "parameters"}
# Every field of the GA MCP tool in the openai package's RealtimeToolsConfigUnion.
_MCP_TOOL_KEYS = {
    "type", "server_label", "server_url", "connector_id", "tunnel_id", "allowed_tools", "allowed_callers",
    "authorization", "headers", "require_approval", "server_description", "defer_loading",
}
_TOOL_CHOICE_OPTIONS = ("auto", "none", "required")
_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _invalid_type(param: str, expected: str) -> ClientError:
    return ClientError("invalid_type", f"Invalid type for '{param}': expected {expected}.", param)


def _function_tool(tool: dict[str, Any], param: str) -> None:
    _check_keys(tool, _FUNCTION_TOOL_KEYS, param)
    if "name" not in tool:
        raise missing_parameter(f"{param}.name")
    name = tool["name"]
    if not isinstance(name, str):
        raise _invalid_type(f"{param}.name", "a string")
    if not _FUNCTION_NAME.fullmatch(name):
        raise invalid_value(f"{param}.name", name, "a name of 1 to 64 letters, digits, '_' or '-'")
    if "description" in tool and not isinstance(tool["description"], str):
        raise _invalid_type(f"{param}.description", "a string")
    if "parameters" in tool and not isinstance(tool["parameters"], dict):
        raise _invalid_type(f"{param}.parameters", "an object (a JSON Schema)")


def _mcp_tool(tool: dict[str, Any], param: str) -> None:
    _check_keys(tool, _MCP_TOOL_KEYS, param)
    if "server_label" not in tool:
        raise missing_parameter(f"{param}.server_label")
    if not isinstance(tool["server_label"], str) or not tool["server_label"]:
        raise _invalid_type(f"{param}.server_label", "a non-empty string")
    if not any(tool.get(key) for key in ("server_url", "connector_id", "tunnel_id")):
        raise missing_parameter(f"{param}.server_url")
    headers = tool.get("headers")
    if headers is not None and (not isinstance(headers, dict)
                                or not all(isinstance(v, str) for v in headers.values())):
        raise _invalid_type(f"{param}.headers", "an object of strings")
    if tool.get("authorization") is not None and not isinstance(tool["authorization"], str):
        raise _invalid_type(f"{param}.authorization", "a string")
    approval = tool.get("require_approval")
    if approval is not None and approval not in ("always", "never") and not isinstance(approval, dict):
        raise invalid_value(f"{param}.require_approval", approval, "'always', 'never' or a filter object")
    allowed = tool.get("allowed_tools")
    if allowed is not None and not isinstance(allowed, (list, dict)):
        raise _invalid_type(f"{param}.allowed_tools", "a list of tool names or a filter object")


def tools(value: Any, param: str, *, ga: bool) -> list[dict[str, Any]]:
    """A validated copy of a ``tools`` list; ``ClientError`` naming the first fault's path."""
    if not isinstance(value, list):
        raise _invalid_type(param, "an array")
    for index, tool in enumerate(value):
        where = f"{param}[{index}]"
        tool = require_dict(tool, where)
        if "type" not in tool:
            raise missing_parameter(f"{where}.type")
        if tool["type"] == "function":
            _function_tool(tool, where)
        elif tool["type"] == "mcp" and ga:
            _mcp_tool(tool, where)
        else:
            raise invalid_value(f"{where}.type", tool["type"], "'function' or 'mcp'" if ga else "'function'")
    return copy.deepcopy(value)


def function_names(declared: list[dict[str, Any]]) -> set[str]:
    return {tool["name"] for tool in declared if tool.get("type") == "function"}


def tool_choice(value: Any, param: str, declared: list[dict[str, Any]], *, ga: bool) -> Any:
    """A validated ``tool_choice``; a named function or MCP server must be among ``declared``."""
    if isinstance(value, str):
        if value not in _TOOL_CHOICE_OPTIONS:
            raise invalid_value(param, value, "'auto', 'none', 'required' or a tool object")
        return value
    choice = require_dict(value, param)
    if "type" not in choice:
        raise missing_parameter(f"{param}.type")
    if choice["type"] == "function":
        _check_keys(choice, {"type", "name"}, param)
        if "name" not in choice:
            raise missing_parameter(f"{param}.name")
        if choice["name"] not in function_names(declared):
            raise invalid_value(f"{param}.name", choice["name"], "the name of a function in 'tools'")
    elif choice["type"] == "mcp" and ga:
        _check_keys(choice, {"type", "server_label", "name"}, param)
        if "server_label" not in choice:
            raise missing_parameter(f"{param}.server_label")
        labels = {tool["server_label"] for tool in declared if tool.get("type") == "mcp"}
        if choice["server_label"] not in labels:
            raise invalid_value(f"{param}.server_label", choice["server_label"], "the label of an MCP tool in 'tools'")
    else:
        raise invalid_value(f"{param}.type", choice["type"], "'function' or 'mcp'" if ga else "'function'")
    return copy.deepcopy(choice)


def _apply_tools(new: dict[str, Any], update: dict[str, Any], *, ga: bool) -> None:
    """Check ``tools`` and ``tool_choice`` together: a choice must name a tool the session will have."""
    if "tools" in update:
        new["tools"] = tools(update["tools"], "session.tools", ga=ga)
    if "tool_choice" in update or "tools" in update:
        new["tool_choice"] = tool_choice(new["tool_choice"], "session.tool_choice", new["tools"], ga=ga)


def default_session(dialect: Dialect, session_id: str, model: str) -> dict[str, Any]:
    vad = _turn_detection({"type": "server_vad"}, "session.turn_detection", ga=dialect == "ga")
    if dialect == "ga":
        return {
            "type": "realtime", "object": "realtime.session", "id": session_id, "model": model,
            "output_modalities": ["audio"], "instructions": "", "tools": [],
            "tool_choice": "auto", "max_output_tokens": "inf", "tracing": None,
            "truncation": "auto", "prompt": None,
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": PCM24K_RATE_HZ},
                    "transcription": None, "noise_reduction": None, "turn_detection": vad,
                },
                "output": {"format": {"type": "audio/pcm", "rate": PCM24K_RATE_HZ}, "voice": "marin",
                           "speed": 1.0},
            },
        }
    return {
        "object": "realtime.session", "id": session_id, "model": model,
        "modalities": ["text", "audio"], "instructions": "", "voice": "alloy",
        "input_audio_format": "pcm16", "output_audio_format": "pcm16",
        "input_audio_transcription": None, "turn_detection": vad, "tools": [],
        "tool_choice": "auto", "temperature": 0.8, "max_response_output_tokens": "inf",
    }


def apply_ga_update(current: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    if "type" not in update:
        raise missing_parameter("session.type")
    if update["type"] != "realtime":
        raise invalid_value("session.type", update["type"], "'realtime' (the simulator has no "
                       "transcription sessions)")
    _check_keys(update, _GA_SESSION_KEYS, "session")
    if "instructions" in update and not isinstance(update["instructions"], str):
        raise invalid_value("session.instructions", update["instructions"], "a string")
    new = copy.deepcopy(current)
    if "tool_choice" in update:
        new["tool_choice"] = update["tool_choice"]
    _apply_tools(new, update, ga=True)
    for key, value in update.items():
        if key in ("tools", "tool_choice"):
            continue
        if key != "audio":
            new[key] = copy.deepcopy(value)
            continue
        audio = require_dict(value, "session.audio")
        _check_keys(audio, _GA_AUDIO_KEYS, "session.audio")
        for side, allowed in (("input", _GA_INPUT_KEYS), ("output", _GA_OUTPUT_KEYS)):
            if side not in audio:
                continue
            prefix = f"session.audio.{side}"
            part = require_dict(audio[side], prefix)
            _check_keys(part, allowed, prefix)
            for name, item in part.items():
                if name == "format":
                    item = _ga_format(item, f"{prefix}.format")
                elif name == "turn_detection":
                    item = _turn_detection(item, f"{prefix}.turn_detection", ga=True)
                elif name == "voice" and not isinstance(item, (str, dict)):
                    raise invalid_value(f"{prefix}.voice", item, "a voice name")
                new["audio"][side][name] = copy.deepcopy(item)
    return new


FIRST_PREVIEW = "2024-10-01-preview"
_FIRST_PREVIEW_VAD_KEYS = {"type", "threshold", "prefix_padding_ms", "silence_duration_ms"}
_FIRST_PREVIEW_VOICES = {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse"}
"""What the first preview (Azure's 2024-10-01-preview models) accepts: no create/interrupt flags,
no semantic VAD, and the voices before marin and cedar. Later previews accept more."""


def _check_first_preview(update: dict[str, Any]) -> None:
    turn_detection = update.get("turn_detection")
    if isinstance(turn_detection, dict):
        _check_keys(turn_detection, _FIRST_PREVIEW_VAD_KEYS, "session.turn_detection")
        if turn_detection.get("type") != "server_vad":
            raise invalid_value("session.turn_detection.type", turn_detection.get("type"), "'server_vad'")
    if "voice" in update and update["voice"] not in _FIRST_PREVIEW_VOICES:
        raise invalid_value("session.voice", update["voice"], ", ".join(sorted(_FIRST_PREVIEW_VOICES)))


def apply_preview_update(current: dict[str, Any], update: dict[str, Any], *, first_preview: bool) -> dict[str, Any]:
    _check_keys(update, _PREVIEW_SESSION_KEYS, "session")
    if first_preview:
        _check_first_preview(update)
    new = copy.deepcopy(current)
    if "tool_choice" in update:
        new["tool_choice"] = update["tool_choice"]
    _apply_tools(new, update, ga=False)
    for key, value in update.items():
        if key in ("tools", "tool_choice"):
            continue
        if key in ("input_audio_format", "output_audio_format") and value not in PREVIEW_FORMATS:
            raise invalid_value(f"session.{key}", value, "'pcm16', 'g711_ulaw' or 'g711_alaw'")
        if key == "temperature" and (not _is_number(value) or not 0.6 <= value <= 1.2):
            raise invalid_value("session.temperature", value, "a number between 0.6 and 1.2")
        if key in ("instructions", "voice") and not isinstance(value, str):
            raise invalid_value(f"session.{key}", value, "a string")
        if key == "turn_detection":
            value = _turn_detection(value, "session.turn_detection", ga=False)
        new[key] = copy.deepcopy(value)
    return new

