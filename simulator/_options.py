"""What a request asks of the answer beyond its messages: limits, reasoning, JSON, logprobs.

Also where a model refuses a parameter: OpenAI's reasoning models answer ``max_tokens`` and
non-default sampling parameters with the exact 400 bodies the real API sends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from ._config import ModelSpec

__all__ = ["EFFORT_WORDS", "JsonFormat", "Options", "Rejection", "mistyped", "read_options"]

EFFORT_WORDS: dict[str, int] = {"minimal": 2, "low": 8, "medium": 16, "high": 32}
"""Reasoning tokens planned per effort; ``medium`` when the request names none."""

_MAX_TOP_LOGPROBS = 20
_MAX_REASONING_TOKENS = 4096
# Parameter -> the only value an OpenAI reasoning model accepts (its default).
_SAMPLING_DEFAULTS: dict[str, int] = {
    "temperature": 1,
    "top_p": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
}
_EFFORTS = tuple(EFFORT_WORDS)


class Rejection(NamedTuple):
    """A 400 ``invalid_request_error`` to answer instead of a completion."""

    message: str
    param: str | None
    code: str | None


@dataclass(frozen=True, slots=True)
class JsonFormat:
    """``response_format``: ``json_object`` (``schema`` ``None``) or ``json_schema``."""

    schema: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Options:
    """The request's answer options, validated against the model."""

    max_tokens: int | None
    reasoning_tokens: int
    """Reasoning the model does before it answers (0 for a model that does not reason)."""
    show_reasoning: bool
    """Whether that reasoning is sent (OpenRouter and DeepSeek styles, unless excluded)."""
    json_format: JsonFormat | None
    top_logprobs: int | None
    """``None`` without ``logprobs: true``; else how many alternatives per token (0 to 20)."""


def _number(value: Any) -> str:
    return json.dumps(value)


def _quoted(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else _number(value)


def _unsupported_parameter(name: str, hint: str = "") -> Rejection:
    return Rejection(
        f"Unsupported parameter: '{name}' is not supported with this model.{hint}",
        name, "unsupported_parameter",
    )


def _openai_reasoning_rules(body: dict[str, Any]) -> Rejection | None:
    if body.get("max_tokens") is not None:
        return _unsupported_parameter("max_tokens", " Use 'max_completion_tokens' instead.")
    for name, default in _SAMPLING_DEFAULTS.items():
        value = body.get(name)
        if value is not None and value != default:
            return Rejection(
                f"Unsupported value: '{name}' does not support {_number(value)} with this "
                f"model. Only the default ({default}) value is supported.",
                name, "unsupported_value",
            )
    if body.get("logprobs"):
        return _unsupported_parameter("logprobs")
    return None


def _effort_tokens(effort: Any, allowed: tuple[str, ...], param: str) -> int | Rejection:
    if effort is None:
        return EFFORT_WORDS["medium"]
    if effort not in allowed:
        quoted = ", ".join(f"'{e}'" for e in allowed[:-1]) + f", and '{allowed[-1]}'"
        return Rejection(
            f"Invalid value: {_quoted(effort)}. Supported values are: {quoted}.",
            param, "invalid_value",
        )
    return EFFORT_WORDS[str(effort)]


def _router_reasoning(body: dict[str, Any]) -> tuple[int, bool] | Rejection:
    """OpenRouter's ``reasoning`` object: ``effort`` or ``max_tokens``, and ``exclude``."""
    reasoning = body.get("reasoning")
    if reasoning is None:
        tokens = _effort_tokens(body.get("reasoning_effort"), _EFFORTS, "reasoning_effort")
        return tokens if isinstance(tokens, Rejection) else (tokens, True)
    if not isinstance(reasoning, dict):
        return Rejection("'reasoning' must be an object.", "reasoning", None)
    if reasoning.get("enabled") is False:
        return 0, False
    budget = reasoning.get("max_tokens")
    if budget is not None:
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
            return Rejection("'reasoning.max_tokens' must be a non-negative integer.",
                             "reasoning.max_tokens", None)
        planned: int | Rejection = min(budget, _MAX_REASONING_TOKENS)
    else:
        planned = _effort_tokens(reasoning.get("effort"), _EFFORTS, "reasoning.effort")
    if isinstance(planned, Rejection):
        return planned
    return planned, reasoning.get("exclude") is not True


def _json_format(body: dict[str, Any], messages: list[Any]) -> JsonFormat | Rejection | None:
    response_format = body.get("response_format")
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        if "json" not in json.dumps(messages).lower():
            return Rejection(
                "'messages' must contain the word 'json' in some form, to use "
                "'response_format' of type 'json_object'.", "messages", None)
        return JsonFormat(None)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            return Rejection("Missing required parameter: 'response_format.json_schema.name'.",
                             "response_format.json_schema.name", "missing_required_parameter")
        return JsonFormat(schema if isinstance(schema, dict) else {})
    return Rejection(
        f"Invalid value: {_quoted(kind)}. Supported values are: 'json_object', 'json_schema', "
        "and 'text'.", "response_format.type", "invalid_value")


def _logprobs(body: dict[str, Any]) -> int | Rejection | None:
    top = body.get("top_logprobs")
    if top is not None and (not isinstance(top, int) or isinstance(top, bool)):
        return Rejection("'top_logprobs' must be an integer.", "top_logprobs", None)
    if top is not None and top > _MAX_TOP_LOGPROBS:
        return Rejection(
            f"Invalid 'top_logprobs': integer above maximum value. Expected a value <= "
            f"{_MAX_TOP_LOGPROBS}, but got {top} instead.", "top_logprobs",
            "integer_above_max_value")
    if top is not None and top < 0:
        return Rejection(
            f"Invalid 'top_logprobs': integer below minimum value. Expected a value >= 0, but "
            f"got {top} instead.", "top_logprobs", "integer_below_min_value")
    if body.get("logprobs") is not True:
        if top is not None:
            return Rejection("Using top_logprobs requires logprobs to be true.",
                             "top_logprobs", None)
        return None
    return top or 0


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    return "an object" if isinstance(value, dict) else "null"


def _not_an_array(param: str, value: Any) -> Rejection:
    return Rejection(f"Invalid type for '{param}': expected an array, but got "
                     f"{_json_type(value)} instead.", param, "invalid_type")


def mistyped(body: dict[str, Any], messages: list[Any]) -> Rejection | None:
    """The API's 400 for a list field of the request that is not a list (``tools``, a message's
    ``tool_calls``): the fields the simulator iterates."""
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        return _not_an_array("tools", tools)
    for index, message in enumerate(messages):
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if calls is not None and not isinstance(calls, list):
            return _not_an_array(f"messages[{index}].tool_calls", calls)
    return None


def read_options(
    body: dict[str, Any], messages: list[Any], spec: ModelSpec, openai_checks: bool
) -> Options | Rejection:
    """The request's options, or why the model refuses them.

    ``openai_checks`` applies the rules the OpenAI API itself enforces (the ``json`` word for
    ``json_object``); OpenRouter leaves them to the upstream provider.
    """
    style = spec.reasoning
    reasoning_tokens, show = 0, False
    if style == "openai":
        rejected = _openai_reasoning_rules(body)
        if rejected is not None:
            return rejected
        effort = _effort_tokens(body.get("reasoning_effort"), _EFFORTS, "reasoning_effort")
        if isinstance(effort, Rejection):
            return effort
        reasoning_tokens = effort
    elif style == "openrouter":
        planned = _router_reasoning(body)
        if isinstance(planned, Rejection):
            return planned
        reasoning_tokens, show = planned
    elif style == "deepseek":
        reasoning_tokens, show = EFFORT_WORDS["medium"], True
    elif body.get("reasoning_effort") is not None and openai_checks:
        return _unsupported_parameter("reasoning_effort")
    json_format = _json_format(body, messages)
    if isinstance(json_format, Rejection):
        if json_format.param == "messages" and not openai_checks:
            json_format = JsonFormat(None)
        else:
            return json_format
    top_logprobs = _logprobs(body)
    if isinstance(top_logprobs, Rejection):
        return top_logprobs
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = limit if isinstance(limit, int) and limit > 0 else None
    return Options(max_tokens, reasoning_tokens, show and reasoning_tokens > 0, json_format,
                   top_logprobs)
