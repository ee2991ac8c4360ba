"""OpenAI's ``response_format`` and ``tools`` / ``tool_choice`` as constraints (``pyllm serve``).

``{"type": "text"}`` asks for nothing; ``{"type": "json_object"}`` for any JSON object;
``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": true}}`` for
JSON matching the schema. The schema is enforced token by token whatever ``strict`` says
(OpenAI's non-strict mode only tries; here trying and enforcing are the same thing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "ToolCallMode",
    "parse_tool_calls",
    "response_format_fields",
    "tool_call_mode",
    "tools_prompt",
]


def response_format_fields(response_format: Any) -> dict[str, Any]:
    """SamplingParams fields for an OpenAI ``response_format`` object; ValueError saying what is
    wrong otherwise."""
    if response_format is None:
        return {}
    if not isinstance(response_format, Mapping):
        raise ValueError(f"response_format must be an object, got {response_format!r}")
    kind = response_format.get("type")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), Mapping):
            raise ValueError(
                'response_format json_schema needs {"json_schema": {"name": ..., "schema": {...}}}'
            )
        strict = spec.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise ValueError(
                f"response_format json_schema.strict must be true or false, got {strict!r}"
            )
        return {"json_schema": dict(spec["schema"])}
    raise ValueError(f"response_format type must be text, json_object or json_schema, got {kind!r}")


class ToolCallMode:
    """A request whose reply must be a call of one of its tools (``tool_choice`` "required" or a
    named function): the output is constrained to ``{"name": ..., "arguments": {...}}`` with the
    tool's parameters schema, and the reply carries it as OpenAI's ``tool_calls``."""

    def __init__(self, tools: list[dict[str, Any]], names: list[str]) -> None:
        self.tools = tools  # every tool of the request, for the prompt
        self.names = names  # the ones the reply may call

    def offered(self) -> list[dict[str, Any]]:
        """The tools the reply may call, as OpenAI tool objects (what a chat template with tool
        support is given)."""
        return [t for t in self.tools if t["function"]["name"] in self.names]

    def schema(self) -> dict[str, Any]:
        options = []
        for tool in self.tools:
            fn = tool["function"]
            if fn["name"] in self.names:
                arguments = fn.get("parameters") or {"type": "object"}
                options.append(
                    {
                        "type": "object",
                        "properties": {"name": {"const": fn["name"]}, "arguments": arguments},
                        "required": ["name", "arguments"],
                        "additionalProperties": False,
                    }
                )
        return options[0] if len(options) == 1 else {"anyOf": options}


def _checked_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list) or not tools:
        raise ValueError(
            'tools must be a non-empty list of {"type": "function", "function": {...}}'
        )
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if (
            not isinstance(tool, Mapping)
            or tool.get("type") != "function"
            or not isinstance(fn, Mapping)
            or not isinstance(fn.get("name"), str)
            or not fn["name"]
        ):
            raise ValueError(
                f'tools[{i}] must be {{"type": "function", "function": '
                f'{{"name": ..., "parameters": {{...}}}}}}, got {tool!r}'
            )
        params = fn.get("parameters")
        if params is not None and not isinstance(params, Mapping):
            raise ValueError(f"tools[{i}].function.parameters must be a JSON schema object")
    return [dict(t) for t in tools]


def tool_call_mode(tools: Any, tool_choice: Any) -> ToolCallMode | None:
    """The ToolCallMode for a request's ``tools`` and ``tool_choice``; None when the reply is
    free text (no tools, ``"none"``, or ``"auto"``, OpenAI's default: pyllm then lets the model
    answer in text). ValueError for malformed tools or a choice naming no tool."""
    if tools is None:
        if tool_choice not in (None, "none", "auto"):
            raise ValueError("tool_choice needs tools")
        return None
    checked = _checked_tools(tools)
    names = [t["function"]["name"] for t in checked]
    if tool_choice in (None, "auto", "none"):
        return None
    if tool_choice == "required":
        return ToolCallMode(checked, names)
    if isinstance(tool_choice, Mapping) and isinstance(tool_choice.get("function"), Mapping):
        name = tool_choice["function"].get("name")
        if name not in names:
            raise ValueError(
                f"tool_choice names {name!r}, which is not one of the tools ({', '.join(names)})"
            )
        return ToolCallMode(checked, [name])
    raise ValueError(
        'tool_choice must be "none", "auto", "required" or '
        f'{{"type": "function", "function": {{"name": ...}}}}, got {tool_choice!r}'
    )


def tools_prompt(mode: ToolCallMode) -> str:
    """A system message telling the model which tools it may call and how the call is written."""
    import json

    lines = [
        (
            "You can call these tools. Reply with one JSON object "
            '{"name": <tool name>, "arguments": {...}} and nothing else.'
        )
    ]
    for tool in mode.tools:
        fn = tool["function"]
        if fn["name"] in mode.names:
            lines.append(
                json.dumps(
                    {
                        "name": fn["name"],
                        "description": fn.get("description", ""),
                        "parameters": fn.get("parameters") or {"type": "object"},
                    }
                )
            )
    return "\n".join(lines)


def parse_tool_calls(text: str, call_id: str) -> list[dict[str, Any]] | None:
    """OpenAI ``tool_calls`` from a finished constrained output, or None when it does not parse
    (an output cut by max_tokens)."""
    import json

    try:
        call = json.loads(text)
    except ValueError:
        return None
    if not isinstance(call, dict) or "name" not in call:
        return None
    return [
        {
            "id": call_id,
            "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}))},
        }
    ]
