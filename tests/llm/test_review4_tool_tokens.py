"""The tool-definition count at every level of a schema (``actors.llm._token_recipe``): nested
objects, ``items``, ``anyOf`` and ``$defs`` went with every request and were not counted, so the
pre-flight context check and the tpm reservation under-counted it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from actors.llm._token_recipe import MAX_SCHEMA_NODES, MessageCounts, tools_tokens
from actors.llm._tokens import count_text_tokens, count_tools_tokens, encoding_for_model

SEARCH_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "search",
    "description": "Search the catalog.",
    "parameters": {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "Words to find"},
            "filters": {"type": "object", "description": "Narrow the search", "properties": {
                "tags": {"type": "array", "items": {"type": "string", "enum": ["new", "used"]}},
                "price": {"anyOf": [{"type": "number"}, {"$ref": "#/$defs/range"}]},
            }},
        },
        "required": ["query"],
        "$defs": {"range": {"type": "object", "properties": {
            "min": {"type": "number", "default": 0},
        }}},
    },
}}


@pytest.mark.parametrize(("model", "func_init"), [("gpt-4o", 7), ("gpt-4", 10)])
def test_a_nested_schema_is_counted_at_every_level(model: str, func_init: int) -> None:
    # The old count stopped at "query" and "filters" (name, type, description): 46 tokens of
    # 110 for gpt-4o.
    def t(text: str) -> int:
        return count_text_tokens(text, model)

    expected = (
        func_init + t("search:Search the catalog")
        + 3 + (3 + t("query:string:Words to find")) + (3 + t("filters:object:Narrow the search"))
        + 3 + (3 + t("range:object:"))  # $defs
        + 3 + (3 + t("tags:array:")) + (3 + t("price::"))  # filters.properties
        + 3 + (-3 + 3 + t("new") + 3 + t("used")) + t(":string:")  # tags.items
        + (3 + t(":number:")) + (3 + t("::"))  # price.anyOf
        + t('$ref:"#/$defs/range"')
        + 3 + (3 + t("min:number:"))  # range.properties
        + t("default:0")
        + 12
    )
    assert count_tools_tokens([SEARCH_TOOL], model) == expected
    if model == "gpt-4o":
        assert expected == 110


def test_a_schema_that_refers_to_itself_is_counted_in_bounded_work() -> None:
    # Only a Python-built schema can be a cycle (JSON cannot): the walk stops at its node budget.
    looping: dict[str, Any] = {"type": "object", "properties": {}}
    looping["properties"]["self"] = looping
    tool = {"type": "function", "function": {"name": "loop", "parameters": looping}}
    encoder = encoding_for_model("gpt-4o")
    assert encoder is not None
    per_node = 3 + 3 + len(encoder.encode_ordinary("self:object:"))
    assert tools_tokens(encoder, [tool], cl100k=False) == (
        7 + len(encoder.encode_ordinary("loop:")) + per_node * MAX_SCHEMA_NODES + 12
    )


def test_the_tools_counted_last_are_known_by_identity_and_equal_copies_by_content() -> None:
    encoder = encoding_for_model("gpt-4o")
    assert encoder is not None
    counts = MessageCounts(encoder)
    tools = [SEARCH_TOOL]
    assert counts.known_tools(tools, cl100k=False) is None
    counted = counts.tools(tools, cl100k=False)
    assert counts.known_tools(list(tools), cl100k=False) == counted
    twin = [copy.deepcopy(SEARCH_TOOL)]
    assert counts.known_tools(twin, cl100k=False) is None
    assert counts.tools(twin, cl100k=False) == counted
    assert counts.known_tools(tools, cl100k=True) is None
