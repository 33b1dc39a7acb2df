"""The model's tool arguments: parsed, checked against the tool's input schema, explained.

Every problem is an ``McpToolError`` whose message is written for the model, so it can correct
its call. With a deadline, the whole check is bounded by it (every keyword checked looks at the
clock: a schema whose ``anyOf`` and ``$ref`` branch at every level of the model's arguments is
exponential), a ``pattern`` is matched without the GIL, and ``uniqueItems`` is checked in linear
time (jsonschema compares objects pairwise: 50 KB of them took 45 s). What we
cannot check safely is left to the server, which judges its arguments anyway: a broken schema,
one whose ``$ref`` does not resolve, and one with ``patternProperties`` (jsonschema matches
those with ``re``, holding the GIL without a time limit: a model-made key could freeze the
process).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Final

from ._errors import McpToolError
from ._tool_types import ToolSpec

__all__ = ["validate_arguments"]

_MAX_VALIDATION_MESSAGES: Final = 5


def validate_arguments(
    spec: ToolSpec, arguments_json: str, *, deadline: float | None = None
) -> dict[str, Any]:
    """Parse the model's JSON arguments and check them against the tool's input schema.

    An empty string counts as ``{}``. Raises ``McpToolError`` with a message written for the
    model (invalid JSON, not an object, missing property, wrong type, ...). With ``deadline``
    (``time.monotonic()`` seconds), the check stops there and fails the arguments, and
    ``pattern`` keywords are matched by the ``regex`` module with the GIL released and at most
    until then: a backtracking pattern fails the arguments instead of freezing the process (call
    it in a worker thread).
    """
    # Imported by the first tool call, not at start: ~2 MiB. A dependency of mcp, without types.
    import jsonschema  # type: ignore[import-untyped]

    prefix = f"Invalid arguments for tool {spec.name!r}"
    try:
        arguments = json.loads(arguments_json) if arguments_json.strip() else {}
    except json.JSONDecodeError as exc:
        raise McpToolError(
            f"{prefix}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}). "
            "Send a JSON object with the tool's parameters.",
            server=spec.server,
            tool=spec.name,
        ) from None
    except RecursionError:
        raise McpToolError(_too_deep(prefix), server=spec.server, tool=spec.name) from None
    if not isinstance(arguments, dict):
        raise McpToolError(
            f"{prefix}: expected a JSON object, got {_json_type(arguments)}.",
            server=spec.server,
            tool=spec.name,
        )
    _check_unicode(arguments, prefix, spec)
    import referencing.exceptions

    validator_class = jsonschema.validators.validator_for(spec.input_schema)
    try:
        validator_class.check_schema(spec.input_schema)
    except jsonschema.SchemaError:
        # The server's schema is broken; let the server judge the arguments itself.
        return arguments
    if _has_key(spec.input_schema, "patternProperties"):
        return arguments
    keywords: dict[str, Callable[..., Any]] = {"uniqueItems": _unique_items}
    if deadline is not None:
        keywords["pattern"] = _bounded_pattern(deadline)
        keywords = {
            name: _until(deadline, keyword)
            for name, keyword in {**validator_class.VALIDATORS, **keywords}.items()
        }
    validator_class = jsonschema.validators.extend(validator_class, keywords)
    errors: list[Any] = []
    try:
        for error in validator_class(spec.input_schema).iter_errors(arguments):
            errors.append(error)  # one by one: those found before a timeout are kept
    except _OutOfTime:
        if not errors:  # else the errors found by then (a pattern's timeout among them) say it
            raise McpToolError(
                f"{prefix}: they could not be checked in time. Send smaller or simpler"
                " arguments.",
                server=spec.server,
                tool=spec.name,
            ) from None
    except RecursionError:
        raise McpToolError(_too_deep(prefix), server=spec.server, tool=spec.name) from None
    except referencing.exceptions.Unresolvable:
        return arguments  # a $ref the schema does not resolve (remote ones are never fetched)
    if errors:
        errors.sort(key=lambda error: list(error.absolute_path))
        messages = [_describe_validation_error(e) for e in errors[:_MAX_VALIDATION_MESSAGES]]
        raise McpToolError(f"{prefix}: {'; '.join(messages)}.", server=spec.server, tool=spec.name)
    return arguments


def _check_unicode(arguments: dict[str, Any], prefix: str, spec: ToolSpec) -> None:
    """Refuse arguments holding a lone surrogate (a model's split ``\\u`` escape): UTF-8, which
    the request to the server is written in, cannot carry one, and the failed write would end
    the server's session, failing every call in flight on it."""
    try:
        json.dumps(arguments, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        raise McpToolError(
            f"{prefix}: they hold text that is not valid Unicode (a lone surrogate,"
            f" U+{ord(exc.object[exc.start]):04X}). Send the text without it.",
            server=spec.server,
            tool=spec.name,
        ) from None


class _OutOfTime(Exception):
    """The deadline of a check passed."""


def _until(deadline: float, keyword: Callable[..., Any]) -> Callable[..., Any]:
    def checked(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        if time.monotonic() > deadline:
            raise _OutOfTime
        return keyword(validator, value, instance, schema)

    return checked


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[Any]:
    import jsonschema

    if (unique and validator.is_type(instance, "array")
            and len({_comparable(item) for item in instance}) < len(instance)):
        yield jsonschema.ValidationError("has non-unique elements")


def _comparable(value: Any) -> Hashable:
    """``value`` (parsed JSON) as a hashable that equals another's when JSON Schema says the
    values are equal (``1`` and ``1.0`` are, ``true`` and ``1`` are not)."""
    if isinstance(value, bool) or value is None:
        return (type(value), value)
    if isinstance(value, dict):
        return frozenset((key, _comparable(item)) for key, item in value.items())
    if isinstance(value, list):
        return tuple(_comparable(item) for item in value)
    hashable: Hashable = value  # a number or a string
    return hashable


def _has_key(schema: Any, key: str) -> bool:
    """Whether ``key`` is a key of any object within ``schema``."""
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if key in node:
                return True
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return False


def _too_deep(prefix: str) -> str:
    return f"{prefix}: nested too deeply to read. Send a flat JSON object of the tool's parameters."


def _bounded_pattern(deadline: float) -> Callable[..., Iterator[Any]]:
    # regex (a dependency of tiktoken) matches with a timeout; ~1.4 MiB, imported when first used.
    import jsonschema
    import regex  # type: ignore[import-untyped]

    def pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
        if not validator.is_type(instance, "string"):
            return
        shown = instance if len(instance) <= 40 else instance[:39] + "…"
        try:
            found = regex.search(
                pattern, instance, timeout=max(0.0, deadline - time.monotonic()), concurrent=True
            )
        except TimeoutError:
            yield jsonschema.ValidationError(
                f"{shown!r} could not be matched against {pattern!r} in time"
            )
            return
        except regex.error:
            return  # a pattern we cannot read: the server judges the value itself
        if found is None:
            yield jsonschema.ValidationError(f"{shown!r} does not match {pattern!r}")

    return pattern


def _describe_validation_error(error: Any) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    location = f"'{path.lstrip('.')}'" if path else "the arguments"
    if error.validator == "type":
        expected = error.validator_value
        expected_text = " or ".join(expected) if isinstance(expected, list) else str(expected)
        return f"{location} must be of type {expected_text}, got {_json_type(error.instance)}"
    return f"{location}: {error.message}"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"

