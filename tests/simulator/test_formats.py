"""Tests for the simulator's answer formats: JSON mode (``response_format``) and logprobs.

The real child process, read through raw httpx2 (the exact wire) and the openai SDK's typed
objects, including its own ``parse`` of a structured output.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel

from simulator.process import SyncSimulatorProcess

KEY = "sk-sim-test"
ASK_JSON: list[ChatCompletionMessageParam] = [{"role": "user", "content": "answer in JSON: hi"}]
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "temperature": {"type": "number"},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "raining": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "note": {"type": ["string", "null"]},
        "optional": {"type": "string"},
    },
    "required": ["city", "temperature", "days", "raining", "tags", "unit", "note"],
    "additionalProperties": False,
}


@pytest.fixture
def sim(shared_sim: SyncSimulatorProcess) -> SyncSimulatorProcess:
    shared_sim.reset()
    shared_sim.configure(faults={"invalid_json": False})
    return shared_sim


def chunks_of(text: str) -> list[dict[str, Any]]:
    events = [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


# -- JSON mode ---------------------------------------------------------------------------------


async def test_json_object_mode_answers_a_json_object(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=ASK_JSON, response_format={"type": "json_object"}
    )
    content = completion.choices[0].message.content
    assert content == '{"answer": "Echo: answer in JSON: hi"}'
    assert json.loads(content) == {"answer": "Echo: answer in JSON: hi"}
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 6  # the JSON text's whitespace-separated words


async def test_json_object_mode_without_the_word_json_is_refused_like_openai(
    http: httpx2.AsyncClient,
) -> None:
    response = await http.post("/chat/completions", json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_object"},
    })
    assert response.status_code == 400
    assert response.json() == {"error": {
        "message": "'messages' must contain the word 'json' in some form, to use "
                   "'response_format' of type 'json_object'.",
        "type": "invalid_request_error", "param": "messages", "code": None,
    }}


async def test_openrouter_flavor_leaves_the_json_word_rule_to_the_upstream(
    http: httpx2.AsyncClient,
) -> None:
    response = await http.post("/chat/completions", headers={"X-Sim-Flavor": "openrouter"},
                               json={"model": "gpt-4o-mini",
                                     "messages": [{"role": "user", "content": "hi"}],
                                     "response_format": {"type": "json_object"}})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == '{"answer": "Echo: hi"}'


async def test_json_schema_mode_answers_the_required_keys_with_typed_values(
    http: httpx2.AsyncClient,
) -> None:
    response = await http.post("/chat/completions", json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "weather"}],
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "weather", "strict": True, "schema": WEATHER_SCHEMA}},
    })
    assert response.status_code == 200
    content = json.loads(response.json()["choices"][0]["message"]["content"])
    assert content == {
        "city": "city: Echo: weather", "temperature": 0.5, "days": 7, "raining": True,
        "tags": ["tags: Echo: weather"], "unit": "celsius", "note": "note: Echo: weather",
    }


class Weather(BaseModel):
    city: str
    temperature: float
    raining: bool
    tags: list[str]


async def test_sdk_parse_reads_the_json_schema_answer_into_a_pydantic_model(
    client: AsyncOpenAI,
) -> None:
    completion = await client.chat.completions.parse(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "weather"}],
        response_format=Weather,
    )
    assert completion.choices[0].message.parsed == Weather(
        city="city: Echo: weather", temperature=0.5, raining=True, tags=["tags: Echo: weather"]
    )


async def test_streamed_json_answer_joins_into_valid_json(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=ASK_JSON, response_format={"type": "json_object"},
        stream=True,
    )
    parts = [chunk.choices[0].delta.content or "" async for chunk in stream]
    assert parts == ["", '{"answer":', ' "Echo:', " answer", " in", " JSON:", ' hi"}', ""]
    assert json.loads("".join(parts)) == {"answer": "Echo: answer in JSON: hi"}


async def test_invalid_json_fault_header_cuts_the_answer_short(http: httpx2.AsyncClient) -> None:
    response = await http.post("/chat/completions", headers={"X-Sim-Fault": "invalid_json"},
                               json={"model": "gpt-4o-mini", "messages": ASK_JSON,
                                     "response_format": {"type": "json_object"}})
    content = response.json()["choices"][0]["message"]["content"]
    assert content == '{"answer": "Echo: answer in JSON: hi"'
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)


async def test_invalid_json_switch_breaks_every_json_answer_until_turned_off(
    sim: SyncSimulatorProcess, client: AsyncOpenAI
) -> None:
    sim.configure(faults={"invalid_json": True})
    contents = []
    for _ in range(2):
        completion = await client.chat.completions.create(
            model="gpt-4o-mini", messages=ASK_JSON, response_format={"type": "json_object"}
        )
        contents.append(completion.choices[0].message.content)
    plain = await client.chat.completions.create(model="gpt-4o-mini", messages=ASK_JSON)
    sim.configure(faults={"invalid_json": False})
    fixed = await client.chat.completions.create(
        model="gpt-4o-mini", messages=ASK_JSON, response_format={"type": "json_object"}
    )
    assert contents == ['{"answer": "Echo: answer in JSON: hi"'] * 2
    assert plain.choices[0].message.content == "Echo: answer in JSON: hi"
    assert fixed.choices[0].message.content == '{"answer": "Echo: answer in JSON: hi"}'


async def test_unknown_response_format_type_is_an_invalid_value(http: httpx2.AsyncClient) -> None:
    response = await http.post("/chat/completions", json={
        "model": "gpt-4o-mini", "messages": ASK_JSON, "response_format": {"type": "yaml"}})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "Invalid value: 'yaml'. Supported values are: 'json_object', 'json_schema', "
                   "and 'text'.",
        "type": "invalid_request_error", "param": "response_format.type", "code": "invalid_value",
    }


# -- logprobs ----------------------------------------------------------------------------------


async def test_logprobs_without_streaming_have_openais_shape(http: httpx2.AsyncClient) -> None:
    response = await http.post("/chat/completions", json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}],
        "logprobs": True, "top_logprobs": 2,
    })
    logprobs = response.json()["choices"][0]["logprobs"]
    assert logprobs == {"refusal": None, "content": [
        {"token": "Echo:", "logprob": -0.19, "bytes": [69, 99, 104, 111, 58], "top_logprobs": [
            {"token": "Echo:", "logprob": -0.19, "bytes": [69, 99, 104, 111, 58]},
            {"token": "the", "logprob": -1.69, "bytes": [116, 104, 101]}]},
        {"token": " hello", "logprob": -0.1167, "bytes": [32, 104, 101, 108, 108, 111],
         "top_logprobs": [
            {"token": " hello", "logprob": -0.1167, "bytes": [32, 104, 101, 108, 108, 111]},
            {"token": " the", "logprob": -1.6167, "bytes": [32, 116, 104, 101]}]},
        {"token": " there", "logprob": -0.0783, "bytes": [32, 116, 104, 101, 114, 101],
         "top_logprobs": [
            {"token": " there", "logprob": -0.0783, "bytes": [32, 116, 104, 101, 114, 101]},
            {"token": " the", "logprob": -1.5783, "bytes": [32, 116, 104, 101]}]},
    ]}


async def test_logprobs_read_through_the_sdk_types(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}],
        logprobs=True, top_logprobs=5,
    )
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert [entry.token for entry in logprobs.content] == ["Echo:", " hello", " there"]
    assert [len(entry.top_logprobs) for entry in logprobs.content] == [5, 5, 5]
    assert [alt.token for alt in logprobs.content[1].top_logprobs] == [
        " hello", " the", " a", " and", " of"]
    assert all(entry.bytes == list(entry.token.encode()) for entry in logprobs.content)


async def test_logprobs_stream_one_entry_per_content_chunk(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}],
        logprobs=True, top_logprobs=1, stream=True,
    )
    seen: list[tuple[str | None, list[str] | None]] = []
    async for chunk in stream:
        choice = chunk.choices[0]
        tokens = None
        if choice.logprobs is not None and choice.logprobs.content is not None:
            tokens = [entry.token for entry in choice.logprobs.content]
        seen.append((choice.delta.content, tokens))
    assert seen == [("", []), ("Echo:", ["Echo:"]), (" hello", [" hello"]),
                    (" there", [" there"]), (None, None)]


async def test_logprobs_without_top_logprobs_list_no_alternatives(
    http: httpx2.AsyncClient,
) -> None:
    response = await http.post("/chat/completions", json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
        "logprobs": True,
    })
    content = response.json()["choices"][0]["logprobs"]["content"]
    assert [(entry["token"], entry["top_logprobs"]) for entry in content] == [
        ("Echo:", []), (" hi", [])]


async def test_top_logprobs_above_20_is_refused(http: httpx2.AsyncClient) -> None:
    response = await http.post("/chat/completions", json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
        "logprobs": True, "top_logprobs": 21,
    })
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "Invalid 'top_logprobs': integer above maximum value. Expected a value <= 20, "
                   "but got 21 instead.",
        "type": "invalid_request_error", "param": "top_logprobs",
        "code": "integer_above_max_value",
    }


async def test_reasoning_model_refuses_logprobs(http: httpx2.AsyncClient) -> None:
    response = await http.post("/chat/completions", json={
        "model": "o4-mini", "messages": [{"role": "user", "content": "hi"}], "logprobs": True,
    })
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "Unsupported parameter: 'logprobs' is not supported with this model.",
        "type": "invalid_request_error", "param": "logprobs", "code": "unsupported_parameter",
    }
