"""Tests for the simulator's reasoning models: OpenAI's parameter rules, streamed reasoning.

The real child process, read through raw httpx2 (the exact wire) and the openai SDK's typed
objects (proof that the shapes are the ones the SDK expects).
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

KEY = "sk-sim-test"
USER_HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]
# "Thinking about the request: hello there" then the filler thoughts, one token a word.
THOUGHTS = ["Thinking", " about", " the", " request:", " hello", " there", " weighing", " the",
            " options", " then", " checking", " each", " step", " again", " weighing", " the"]


def body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": USER_HELLO, **extra}


def deltas_of(text: str) -> list[dict[str, Any]]:
    """``choices[0].delta`` of every SSE chunk that has a choice."""
    events = [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    return [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]


# -- OpenAI-style reasoning models refuse what they do not support -----------------------------


@pytest.mark.parametrize("model", ["o4-mini", "gpt-5-mini"])
async def test_reasoning_model_refuses_max_tokens_with_openais_exact_body(
    http: httpx2.AsyncClient, model: str
) -> None:
    response = await http.post("/chat/completions", json=body(model, max_tokens=10))
    assert response.status_code == 400
    assert response.json() == {"error": {
        "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                   "Use 'max_completion_tokens' instead.",
        "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter",
    }}


async def test_reasoning_model_refuses_a_non_default_temperature_with_openais_exact_body(
    http: httpx2.AsyncClient,
) -> None:
    response = await http.post("/chat/completions", json=body("o4-mini", temperature=0.7))
    assert response.status_code == 400
    assert response.json() == {"error": {
        "message": "Unsupported value: 'temperature' does not support 0.7 with this model. "
                   "Only the default (1) value is supported.",
        "type": "invalid_request_error", "param": "temperature", "code": "unsupported_value",
    }}


@pytest.mark.parametrize(("param", "value", "default"), [
    ("top_p", 0.9, 1), ("presence_penalty", 0.5, 0), ("frequency_penalty", -1, 0),
])
async def test_reasoning_model_refuses_non_default_sampling_through_the_sdk(
    client: AsyncOpenAI, param: str, value: float, default: int
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="gpt-5-mini", messages=USER_HELLO, extra_body={param: value}
        )
    assert caught.value.status_code == 400
    assert (caught.value.code, caught.value.param) == ("unsupported_value", param)
    assert caught.value.body == {
        "message": f"Unsupported value: '{param}' does not support {value} with this model. "
                   f"Only the default ({default}) value is supported.",
        "type": "invalid_request_error", "param": param, "code": "unsupported_value",
    }


async def test_reasoning_model_accepts_default_sampling_values(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="o4-mini", messages=USER_HELLO, temperature=1, top_p=1, presence_penalty=0,
        frequency_penalty=0,
    )
    assert completion.choices[0].message.content == "Echo: hello there"


async def test_reasoning_model_counts_reasoning_tokens_in_completion_tokens(
    client: AsyncOpenAI,
) -> None:
    completion = await client.chat.completions.create(
        model="o4-mini", messages=USER_HELLO, max_completion_tokens=100, reasoning_effort="low"
    )
    message = completion.choices[0].message
    assert message.content == "Echo: hello there"
    assert message.model_extra == {}  # OpenAI never sends its reasoning text
    usage = completion.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 8
    # 3 answer words + 8 reasoning tokens (low effort).
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (6, 11, 17)


@pytest.mark.parametrize(("effort", "reasoning_tokens"), [
    ("minimal", 2), ("low", 8), ("medium", 16), ("high", 32), (None, 16),
])
async def test_reasoning_effort_sets_the_reasoning_tokens(
    http: httpx2.AsyncClient, effort: str | None, reasoning_tokens: int
) -> None:
    extra = {} if effort is None else {"reasoning_effort": effort}
    response = await http.post("/chat/completions", json=body("gpt-5-mini", **extra))
    assert response.json()["usage"] == {
        "prompt_tokens": 6, "completion_tokens": 3 + reasoning_tokens,
        "total_tokens": 9 + reasoning_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning_tokens, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
        },
    }


async def test_unknown_reasoning_effort_is_an_invalid_value(http: httpx2.AsyncClient) -> None:
    response = await http.post("/chat/completions",
                               json=body("o4-mini", reasoning_effort="extreme"))
    assert response.status_code == 400
    assert response.json() == {"error": {
        "message": "Invalid value: 'extreme'. Supported values are: 'minimal', 'low', 'medium', "
                   "and 'high'.",
        "type": "invalid_request_error", "param": "reasoning_effort", "code": "invalid_value",
    }}


async def test_reasoning_effort_on_a_model_that_does_not_reason_is_unsupported(
    http: httpx2.AsyncClient,
) -> None:
    response = await http.post("/chat/completions",
                               json=body("gpt-4o-mini", reasoning_effort="low"))
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
        "type": "invalid_request_error", "param": "reasoning_effort",
        "code": "unsupported_parameter",
    }


async def test_reasoning_spends_max_completion_tokens_before_the_answer(
    client: AsyncOpenAI,
) -> None:
    completion = await client.chat.completions.create(
        model="o4-mini", messages=USER_HELLO, max_completion_tokens=10, reasoning_effort="low"
    )
    assert completion.choices[0].message.content == "Echo: hello"
    assert completion.choices[0].finish_reason == "length"
    usage = completion.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert (usage.completion_tokens, usage.completion_tokens_details.reasoning_tokens) == (10, 8)


async def test_openai_style_stream_hides_reasoning_and_reports_it_in_the_usage_chunk(
    client: AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model="o4-mini", messages=USER_HELLO, stream=True,
        stream_options={"include_usage": True},
    )
    texts: list[str] = []
    extras: list[dict[str, Any]] = []
    usage = None
    async for chunk in stream:
        if chunk.choices:
            texts.append(chunk.choices[0].delta.content or "")
            extras.append(chunk.choices[0].delta.model_extra or {})
        usage = chunk.usage or usage
    assert texts == ["", "Echo:", " hello", " there", ""]
    assert extras == [{}] * 5
    assert usage is not None and usage.completion_tokens_details is not None
    assert (usage.completion_tokens, usage.completion_tokens_details.reasoning_tokens) == (19, 16)


# -- DeepSeek: reasoning_content ---------------------------------------------------------------


async def test_deepseek_streams_reasoning_content_before_the_content(
    http: httpx2.AsyncClient,
) -> None:
    response = await http.post("/chat/completions", json=body("deepseek-reasoner", stream=True))
    deltas = deltas_of(response.text)
    assert deltas[0] == {"role": "assistant", "content": None, "reasoning_content": ""}
    assert deltas[1:17] == [{"content": None, "reasoning_content": word} for word in THOUGHTS]
    assert deltas[17:20] == [{"content": word, "reasoning_content": None}
                             for word in ["Echo:", " hello", " there"]]
    assert deltas[20:] == [{}]


async def test_deepseek_answer_carries_reasoning_content_and_its_token_count(
    client: AsyncOpenAI,
) -> None:
    completion = await client.chat.completions.create(model="deepseek-reasoner",
                                                      messages=USER_HELLO)
    message = completion.choices[0].message
    assert message.content == "Echo: hello there"
    assert message.model_extra == {"reasoning_content": "".join(THOUGHTS)}
    usage = completion.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert (usage.completion_tokens, usage.completion_tokens_details.reasoning_tokens) == (19, 16)
    assert usage.model_extra == {"prompt_cache_hit_tokens": 0, "prompt_cache_miss_tokens": 6}


async def test_deepseek_reasoning_through_the_sdk_stream_comes_before_the_text(
    client: AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model="deepseek-reasoner", messages=USER_HELLO, stream=True
    )
    order: list[tuple[str, str]] = []
    async for chunk in stream:
        delta = chunk.choices[0].delta
        reasoning = (delta.model_extra or {}).get("reasoning_content")
        if reasoning:
            order.append(("reasoning", reasoning))
        if delta.content:
            order.append(("text", delta.content))
    assert order == [("reasoning", w) for w in THOUGHTS] + [
        ("text", "Echo:"), ("text", " hello"), ("text", " there")]


# -- OpenRouter: reasoning and reasoning_details -----------------------------------------------


def _router_delta(word: str) -> dict[str, Any]:
    return {"role": "assistant", "content": "", "reasoning": word, "reasoning_details": [
        {"type": "reasoning.text", "text": word, "format": "unknown", "index": 0}]}


async def test_openrouter_streams_reasoning_and_reasoning_details_before_the_answer(
    http: httpx2.AsyncClient,
) -> None:
    response = await http.post("/chat/completions", headers={"X-Sim-Flavor": "openrouter"},
                               json=body("deepseek/deepseek-r1", stream=True,
                                         reasoning={"effort": "low"}))
    deltas = deltas_of(response.text)
    assert deltas[0] == {"role": "assistant", "content": "", "refusal": None}
    assert deltas[1:9] == [_router_delta(word) for word in THOUGHTS[:8]]
    assert deltas[9:] == [{"content": "Echo:"}, {"content": " hello"}, {"content": " there"}, {}]
    usage = json.loads(response.text.split("data: ")[-2])["usage"]
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 8}
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert usage["completion_tokens"] == 11


async def test_openrouter_reasoning_max_tokens_sets_the_reasoning_length(
    client: AsyncOpenAI,
) -> None:
    completion = await client.chat.completions.create(
        model="deepseek/deepseek-r1", messages=USER_HELLO,
        extra_body={"reasoning": {"max_tokens": 3}},
    )
    message = completion.choices[0].message
    assert message.content == "Echo: hello there"
    assert message.model_extra == {
        "reasoning": "Thinking about the",
        "reasoning_details": [{"type": "reasoning.text", "text": "Thinking about the",
                               "format": "unknown", "index": 0}],
    }
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 6


async def test_openrouter_reasoning_exclude_streams_no_reasoning_but_counts_it(
    http: httpx2.AsyncClient,
) -> None:
    response = await http.post("/chat/completions", json=body(
        "deepseek/deepseek-r1", stream=True, stream_options={"include_usage": True},
        reasoning={"effort": "high", "exclude": True},
    ))
    deltas = deltas_of(response.text)
    assert deltas == [{"role": "assistant", "content": "", "refusal": None},
                      {"content": "Echo:"}, {"content": " hello"}, {"content": " there"}, {}]
    usage = json.loads(response.text.split("data: ")[-2])["usage"]
    assert (usage["completion_tokens"], usage["completion_tokens_details"]) == (
        35, {"reasoning_tokens": 32})


async def test_reasoning_comes_before_tool_calls(http: httpx2.AsyncClient) -> None:
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    response = await http.post("/chat/completions", json={
        "model": "deepseek-reasoner", "stream": True, "tools": tools,
        "messages": [{"role": "user", "content": "call add"}],
    })
    deltas = deltas_of(response.text)
    assert deltas[0] == {"role": "assistant", "content": None, "reasoning_content": ""}
    assert [d["reasoning_content"] for d in deltas[1:17]] == [
        "Thinking", " about", " the", " request:", " call", " add", " weighing", " the",
        " options", " then", " checking", " each", " step", " again", " weighing", " the"]
    assert deltas[17] == {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                          "function": {"name": "add", "arguments": ""}}]}
