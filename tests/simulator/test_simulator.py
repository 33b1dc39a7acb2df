"""Tests for simulator: the real child process, through the openai SDK and raw httpx2."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx2
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from simulator import SimulatorConfig, load_config, main
from simulator.process import SimulatorProcess, SyncSimulatorProcess

KEY = "sk-sim-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
USER_HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("add", "mul")
]


def body(model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": USER_HELLO, **extra}


def events_of(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    return [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]


# -- answers -------------------------------------------------------------------------------


async def test_non_streaming_reply_echoes_the_last_user_message_with_usage(
    client: AsyncOpenAI,
) -> None:
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"},
    ])
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Echo: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    # (8 + 11 characters) // 4 + 4 per message; one token per word.
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (12, 3)


async def test_stream_sends_role_first_then_words_then_the_usage_chunk(
    client: AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=USER_HELLO, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


async def test_raw_stream_is_chunked_sse_ending_with_done_on_a_kept_alive_connection(
    http: httpx2.AsyncClient,
) -> None:
    for _ in range(2):
        async with http.stream("POST", "/chat/completions", json=body(stream=True)) as response:
            text = (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.headers["connection"] == "keep-alive"
        payloads = events_of(text)
        assert payloads[-1] == "[DONE]"
        assert json.loads(payloads[0])["choices"][0]["delta"]["role"] == "assistant"
        assert all("usage" not in json.loads(p) for p in payloads[:-1])
        assert text.endswith("data: [DONE]\n\n")


async def test_max_tokens_cuts_a_padded_reply_with_finish_reason_length(
    client: AsyncOpenAI,
) -> None:
    full = await client.chat.completions.create(model="sim-long", messages=USER_HELLO)
    cut = await client.chat.completions.create(model="sim-long", messages=USER_HELLO,
                                               max_tokens=5)
    assert full.usage is not None and full.usage.completion_tokens == 200
    assert cut.choices[0].finish_reason == "length"
    assert cut.choices[0].message.content == "Echo: hello there lorem ipsum"


async def test_streamed_tool_call_deltas_assemble_into_parallel_calls(
    client: AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", tools=TOOLS, stream=True,
        messages=[{"role": "user", "content": 'please call add {"a": 2, "b": 3} then call mul'}],
    )
    calls: dict[int, dict[str, str]] = {}
    fragments = 0
    finish = None
    async for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or ():
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            if delta.function is not None:
                call["name"] += delta.function.name or ""
                if delta.function.arguments:
                    fragments += 1
                    call["arguments"] += delta.function.arguments
    assert finish == "tool_calls"
    assert calls == {
        0: {"id": "call_1", "name": "add", "arguments": '{"a": 2, "b": 3}'},
        1: {"id": "call_2", "name": "mul", "arguments": "{}"},
    }
    assert fragments > 2


async def test_tool_call_without_stream_and_the_answer_to_its_result(client: AsyncOpenAI) -> None:
    ask: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": 'call add {"a": 1} and call missing_tool'}
    ]
    first = await client.chat.completions.create(model="gpt-4o-mini", messages=ask, tools=TOOLS)
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.type == "function"
    assert (call.id, call.function.name, call.function.arguments) == ("call_1", "add", '{"a": 1}')
    history: list[Any] = [
        *ask,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "x" * 300},
    ]
    second = await client.chat.completions.create(model="gpt-4o-mini", messages=history,
                                                  tools=TOOLS)
    assert second.choices[0].message.content == "Tool add returned: " + "x" * 200


async def test_call_directive_without_offered_tools_is_echoed(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "call add"}]
    )
    assert completion.choices[0].message.content == "Echo: call add"


# -- requests it refuses --------------------------------------------------------------------


async def test_models_list_and_unknown_model(client: AsyncOpenAI) -> None:
    models = [model.id async for model in client.models.list()]
    assert models == list(SimulatorConfig().models)
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="nope", messages=USER_HELLO)
    assert caught.value.code == "model_not_found"


async def test_prompt_plus_max_tokens_over_the_context_window_is_refused(
    client: AsyncOpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="sim-tiny", messages=USER_HELLO,
                                             max_tokens=300)
    assert caught.value.code == "context_length_exceeded"
    assert "maximum context length is 256 tokens" in caught.value.message


async def test_invalid_json_is_a_400_invalid_request_error(http: httpx2.AsyncClient) -> None:
    response = await http.post("/chat/completions", content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_every_response_carries_rate_limit_headers(http: httpx2.AsyncClient) -> None:
    for response in (await http.post("/chat/completions", json=body()), await http.get("/models"),
                     await http.post("/chat/completions", json=body("nope"))):
        for name in ("requests", "tokens"):
            assert int(response.headers[f"x-ratelimit-limit-{name}"]) > 0
            assert int(response.headers[f"x-ratelimit-remaining-{name}"]) > 0
            assert response.headers[f"x-ratelimit-reset-{name}"].endswith("s")


# -- forced faults --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "type_", "code"),
    [
        ("429", 429, "requests", "rate_limit_exceeded"),
        ("401", 401, "invalid_request_error", "invalid_api_key"),
        ("402", 402, "insufficient_quota", "insufficient_quota"),
        ("500", 500, "server_error", None),
        ("502", 502, "server_error", None),
        ("503", 503, "server_error", None),
    ],
)
async def test_forced_status_fault_has_openai_status_and_body(
    http: httpx2.AsyncClient, fault: str, status: int, type_: str, code: str | None
) -> None:
    response = await http.post("/chat/completions", json=body(), headers={"X-Sim-Fault": fault})
    assert response.status_code == status
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (type_, code, None)
    assert isinstance(error["message"], str)
    if fault == "429":
        assert response.headers["retry-after"] == "1"
        assert response.headers["retry-after-ms"] == "1000"


async def test_openrouter_errors_carry_a_numeric_code(http: httpx2.AsyncClient) -> None:
    response = await http.post("/chat/completions", json=body(),
                               headers={"X-Sim-Fault": "402", "X-Sim-Flavor": "openrouter"})
    assert response.status_code == 402
    assert response.json()["error"]["code"] == 402


async def test_forced_429_raises_rate_limit_error_in_the_sdk(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="gpt-4o-mini", messages=USER_HELLO,
                                             extra_headers={"X-Sim-Fault": "429"})
    assert caught.value.response.headers["retry-after"] == "1"


async def test_reset_fault_closes_the_connection_without_a_response(
    client: AsyncOpenAI, sim: SyncSimulatorProcess
) -> None:
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=USER_HELLO,
                                             extra_headers={"X-Sim-Fault": "reset"})
    assert sim.stats()["by_status"] == {"0": 1}


async def test_timeout_fault_hangs_until_the_client_gives_up(client: AsyncOpenAI) -> None:
    with anyio.fail_after(5):
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=USER_HELLO,
                                                 timeout=0.3,
                                                 extra_headers={"X-Sim-Fault": "timeout"})


async def test_midstream_drop_cuts_the_body_after_some_content(http: httpx2.AsyncClient) -> None:
    received: list[str] = []
    with pytest.raises(httpx2.RemoteProtocolError):
        async with http.stream("POST", "/chat/completions", json=body("sim-long", stream=True),
                               headers={"X-Sim-Fault": "midstream_drop"}) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    received.append(line)
    assert len(received) >= 2
    assert "[DONE]" not in received[-1]


@pytest.mark.parametrize("flavor", ["openai", "openrouter"])
async def test_midstream_error_raises_api_error_in_the_sdk(
    client: AsyncOpenAI, flavor: str
) -> None:
    stream = await client.chat.completions.create(
        model="sim-long", messages=USER_HELLO, stream=True,
        extra_headers={"X-Sim-Fault": "midstream_error", "X-Sim-Flavor": flavor},
    )
    words = 0
    with pytest.raises(openai.APIError, match=r"^Upstream error mid generation\.$"):
        async for chunk in stream:
            words += bool(chunk.choices and chunk.choices[0].delta.content)
    assert 1 <= words < 200


# -- configuration, determinism, statistics -------------------------------------------------


async def test_key_rotation_through_sim_config() -> None:
    async with SimulatorProcess({"api_keys": ["old-key"]}) as sim:
        async def status(key: str) -> int:
            async with httpx2.AsyncClient(timeout=5) as http:
                response = await http.post(f"{sim.base_url}/chat/completions", json=body(),
                                           headers={"Authorization": f"Bearer {key}"})
            return response.status_code

        assert (await status("old-key"), await status("new-key")) == (200, 401)
        shown = await sim.configure(api_keys=["new-key"])
        assert shown["api_keys"] == ["***"]
        assert (await status("old-key"), await status("new-key")) == (401, 200)
        stats = await sim.stats()
        assert [entry[4] for entry in stats["log"]] == [True, False, False, True]
        async with AsyncOpenAI(base_url=sim.base_url, api_key="old-key", max_retries=0) as c:
            with pytest.raises(openai.AuthenticationError) as caught:
                await c.chat.completions.create(model="gpt-4o-mini", messages=USER_HELLO)
        assert caught.value.code == "invalid_api_key"


async def test_openrouter_cost_and_processing_comments() -> None:
    config = {
        "flavor": "openrouter",
        "models": {"m": {"price_in": 1.0, "price_out": 2.0}},
        "faults": {"first_byte_delay": 0.35, "keepalive_interval": 0.1},
    }
    async with (
        SimulatorProcess(config) as sim,
        httpx2.AsyncClient(base_url=sim.base_url, headers=AUTH, timeout=5) as http,
    ):
        async with http.stream("POST", "/chat/completions", json=body("m", stream=True)) as r:
            text = (await r.aread()).decode()
        first_data = text.index("data: ")
        assert text[:first_data].count(": OPENROUTER PROCESSING\n\n") >= 3
        payloads = events_of(text)
        usage = json.loads(payloads[-2])["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (6, 3)
        assert usage["cost"] == pytest.approx((6 * 1.0 + 3 * 2.0) / 1e6)
        async with AsyncOpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0) as client:
            stream = await client.chat.completions.create(model="m", messages=USER_HELLO,
                                                          stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "Echo: hello there"


async def _statuses(base_url: str, count: int) -> list[int]:
    statuses = []
    async with httpx2.AsyncClient(base_url=base_url, headers=AUTH, timeout=5) as http:
        for _ in range(count):
            response = await http.post("/chat/completions", json=body())
            statuses.append(response.status_code)
    return statuses


async def test_same_seed_and_sequence_give_the_same_faults() -> None:
    faults = {"rate_429": 0.2, "rate_500": 0.2, "rate_503": 0.2, "retry_after": 0.0}
    async with SimulatorProcess({"seed": 7, "faults": faults}) as sim:
        first = await _statuses(sim.base_url, 40)
        await sim.reset()
        again = await _statuses(sim.base_url, 40)
        await sim.restart()
        after_restart = await _statuses(sim.base_url, 40)
        await sim.configure(seed=8)
        other_seed = await _statuses(sim.base_url, 40)
    assert first == again == after_restart
    assert first != other_seed
    assert {200, 429, 500, 503} == set(first)


async def test_stats_count_a_stream_the_client_closed_early() -> None:
    async with (
        SimulatorProcess({"faults": {"chunk_delay": 0.02}}) as sim,
        httpx2.AsyncClient(base_url=sim.base_url, headers=AUTH, timeout=5) as http,
    ):
        request = body("sim-long", stream=True)
        async with http.stream("POST", "/chat/completions", json=request) as r:
            lines = 0
            async for line in r.aiter_lines():
                lines += line.startswith("data: ")
                if lines == 3:
                    break
        streams: dict[str, int] = {}
        with anyio.fail_after(5):
            while streams.get("aborted_by_client") != 1:
                await anyio.sleep(0.05)
                streams = (await sim.stats())["streams"]
        assert streams == {"started": 1, "completed": 0, "aborted_by_client": 1, "dropped": 0,
                           "errored": 0, "open": 0}


async def test_own_requests_per_minute_limit_answers_429_with_retry_after() -> None:
    async with (
        SimulatorProcess({"requests_per_minute": 2}) as sim,
        httpx2.AsyncClient(base_url=sim.base_url, headers=AUTH, timeout=5) as http,
    ):
        responses = [await http.post("/chat/completions", json=body()) for _ in range(3)]
        assert [r.status_code for r in responses] == [200, 200, 429]
        assert [r.headers["x-ratelimit-remaining-requests"] for r in responses] == ["1", "0", "0"]
        assert responses[2].json()["error"]["code"] == "rate_limit_exceeded"
        assert 0 < int(responses[2].headers["retry-after-ms"]) <= 60_000
        assert responses[2].headers["retry-after"] == "60"
        stats = await sim.stats()
        assert stats["max_requests_in_window"] == 3
        assert stats["by_status"] == {"200": 2, "429": 1}


async def test_own_tokens_per_minute_limit_counts_prompt_and_completion() -> None:
    # Each request is 6 prompt + 3 completion tokens: two fit in 20, the third does not.
    async with (
        SimulatorProcess({"tokens_per_minute": 20}) as sim,
        httpx2.AsyncClient(base_url=sim.base_url, headers=AUTH, timeout=5) as http,
    ):
        responses = [await http.post("/chat/completions", json=body()) for _ in range(3)]
        assert [r.status_code for r in responses] == [200, 200, 429]
        assert [r.headers["x-ratelimit-remaining-tokens"] for r in responses] == ["11", "2", "2"]
        assert responses[2].json()["error"]["type"] == "tokens"
        assert "retry-after" in responses[2].headers


async def test_killed_simulator_restarts_on_the_same_port_and_exits_0_on_sigterm() -> None:
    async with SimulatorProcess() as sim:
        port = sim.port
        sim.kill()
        with pytest.raises(httpx2.ConnectError):
            await _statuses(sim.base_url, 1)
        await sim.restart()
        assert sim.returncode == -9
        assert sim.port == port
        assert await _statuses(sim.base_url, 1) == [200]
    assert sim.returncode == 0


async def test_unknown_forced_fault_is_a_400(http: httpx2.AsyncClient) -> None:
    response = await http.post("/chat/completions", json=body(), headers={"X-Sim-Fault": "boom"})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("Unknown X-Sim-Fault 'boom'")


def test_yaml_configuration_file_is_loaded(tmp_path: Any) -> None:
    path = tmp_path / "faults.yaml"
    path.write_text(
        "seed: 3\nflavor: openrouter\napi_keys: [a]\nmodels:\n  m: {reply_words: 9}\n"
        "faults: {rate_503: 0.5, chunk_delay: 0.01}\n"
    )
    config = load_config(path)
    assert (config.seed, config.flavor, config.api_keys) == (3, "openrouter", ["a"])
    assert config.models["m"].reply_words == 9
    assert (config.faults.rate_503, config.faults.chunk_delay) == (0.5, 0.01)


def test_bad_configuration_file_exits_2(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "faults.yaml"
    path.write_text("faults:\n  rate_5OO: 0.1\n")
    assert main(["--config", str(path)]) == 2
    assert "faults.rate_5OO" in capsys.readouterr().err
    path.write_text("faults: {rate_500: 0.7, rate_503: 0.7}\n")
    assert main(["--config", str(path)]) == 2
    assert "add up to more than 1" in capsys.readouterr().err
