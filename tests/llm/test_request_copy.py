"""ChatRequest.of copies its messages exactly as a JSON round trip would, without the text."""

from __future__ import annotations

import enum
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.llm import ChatRequest
from actors.llm._messages import json_copy


class _Flag(enum.IntEnum):
    ON = 1


class _Text(str):
    pass


_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_keys = st.text() | st.integers() | st.booleans() | st.none()
_values = st.recursive(
    _scalars | st.just(_Flag.ON) | st.builds(_Text, st.text()),
    lambda inner: (st.lists(inner, max_size=4) | st.tuples(inner, inner)
                   | st.dictionaries(st.text(), inner, max_size=4)
                   | st.dictionaries(_keys, inner, max_size=3)),
    max_leaves=25,
)


def _shape(value: Any) -> Any:
    """The value with every type made visible (``1 == True == 1.0`` in plain equality)."""
    if isinstance(value, dict):
        return ("dict", [(type(key).__name__, key, _shape(item)) for key, item in value.items()])
    if isinstance(value, list):
        return ("list", [_shape(item) for item in value])
    return (type(value).__name__, value)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_the_copy_equals_the_json_round_trip_types_included(value: Any) -> None:
    assert _shape(json_copy(value)) == _shape(json.loads(json.dumps(value)))


def test_the_copy_shares_nothing_mutable_with_the_caller() -> None:
    messages: list[Any] = [{"role": "user", "content": "hi", "extra": {"list": [1, 2]}}]
    request = ChatRequest.of(messages)
    messages[0]["content"] = "changed"
    messages[0]["extra"]["list"].append(3)
    assert request.messages == ({"role": "user", "content": "hi", "extra": {"list": [1, 2]}},)


def test_a_nan_and_an_infinity_survive_as_the_round_trip_gives_them() -> None:
    copied = json_copy([float("nan"), float("inf"), -0.0])
    assert copied[0] != copied[0]
    assert copied[1:] == [float("inf"), -0.0]
    assert str(copied[2]) == "-0.0"


def test_what_json_cannot_encode_raises_its_errors() -> None:
    with pytest.raises(TypeError):
        ChatRequest.of([{"role": "user", "content": object()}])
    cyclic: dict[str, Any] = {"role": "user"}
    cyclic["self"] = cyclic
    with pytest.raises(ValueError, match="Circular reference"):
        ChatRequest.of([cyclic])
