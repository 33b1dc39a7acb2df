"""JSON answers for ``response_format``: a value of the requested shape, a function of the text."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["json_answer"]

_MAX_DEPTH = 8


def json_answer(text: str, schema: dict[str, Any] | None, broken: bool) -> str:
    """The JSON text answering ``text``: ``{"answer": text}`` for ``json_object``, else a value
    of ``schema`` (every required key, or every property when none is required).

    ``broken`` cuts off the last character, as a model stopped mid-object would: what a client's
    validity check must catch.
    """
    value = {"answer": text} if schema is None else _value(schema, text, "answer", 0)
    answer = json.dumps(value, ensure_ascii=False)
    return answer[:-1] if broken else answer


def _value(schema: Any, text: str, name: str, depth: int) -> Any:
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return text
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return _value(options[0], text, name, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = schema.get("required")
        keys = required if isinstance(required, list) and required else list(properties)
        return {str(k): _value(properties.get(k, {}), text, str(k), depth + 1) for k in keys}
    if kind == "array":
        return [_value(schema.get("items", {}), text, name, depth + 1)]
    if kind == "integer":
        return max(int(schema.get("minimum", 0)), min(42, int(schema.get("maximum", 42))))
    if kind == "number":
        return max(float(schema.get("minimum", 0.0)), min(0.5, float(schema.get("maximum", 0.5))))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return text if name == "answer" else f"{name}: {text}"
