"""Choosing a model per turn, reasoning on the socket and on the chat page, against a real server.

One real ``mcp-backend serve`` in demo mode (no API key: it runs its own simulator, whose
reasoning models are documented in simulator/__init__.py: 16 reasoning tokens at the default
effort, 8 at ``low``), no MCP server. The browser test drives the real page in headless Chromium
and is skipped when ``/usr/bin/chromium`` is absent.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.llm import LLMConfig
from server.simulated import DEMO_MODELS, SIMULATED_MODEL, simulated_llm_config
from tests.server_harness import (
    ServerChild,
    connect,
    http_get,
    send,
    text_of,
    until_end,
    write_config,
)

HAVE_CHROMIUM = Path("/usr/bin/chromium").exists()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerChild]:
    workdir = tmp_path_factory.mktemp("models")
    config = write_config(workdir, simulator_url=None, mcp_servers={}, simulator="always")
    child = ServerChild(config)
    yield child
    child.stop()


def frame(text: str, **payload: Any) -> dict[str, Any]:
    return {"action": "chat", "request_id": uuid.uuid4().hex,
            "payload": {"text": text, "streaming": True, **payload}}


async def turn(server: ServerChild, text: str, **payload: Any) -> list[dict[str, Any]]:
    ws = await connect(server.ws_url)
    try:
        sent = frame(text, **payload)
        await send(ws, sent)
        return await until_end(ws, sent["request_id"])
    finally:
        await ws.close()


def test_api_models_lists_the_configured_models_and_the_default(server: ServerChild) -> None:
    status, content_type, body = http_get(server.url + "/api/models")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body) == {
        "models": [{"provider": "simulator", "model": model} for model in DEMO_MODELS],
        "default": SIMULATED_MODEL,
    }


def test_api_models_and_static_files_answer_only_an_allowed_host(server: ServerChild) -> None:
    assert http_get(server.url + "/static/marked.min.js")[0] == 200
    assert http_get(server.url + "/api/models", {"Host": "evil.example"})[0] == 400
    assert http_get(server.url + "/static/marked.min.js", {"Host": "evil.example"})[0] == 400


async def test_o4_mini_turn_completes_with_the_simulators_reasoning_tokens(
    server: ServerChild,
) -> None:
    envelopes = await turn(server, "hello", model="o4-mini")
    last = envelopes[-1]
    assert last["status"] == "complete", last
    assert (last["chunk"]["model"], last["chunk"]["usage"]["reasoning_tokens"]) == ("o4-mini", 16)
    assert [e for e in envelopes if e["chunk"].get("type") == "reasoning"] == []  # never sent
    low = (await turn(server, "hello", model="o4-mini", reasoning_effort="low"))[-1]
    assert low["chunk"]["usage"]["reasoning_tokens"] == 8


async def test_streamed_reasoning_reaches_the_socket_before_the_text(server: ServerChild) -> None:
    envelopes = await turn(server, "why", model="deepseek/deepseek-r1")
    kinds = [e["chunk"]["type"] for e in envelopes if e["status"] == "chunk"]
    first_text = kinds.index("text")
    assert kinds[:first_text] == ["reasoning"] * first_text and first_text > 0
    assert "reasoning" not in kinds[first_text:]
    reasoning = "".join(e["chunk"]["data"] for e in envelopes
                        if e["status"] == "chunk" and e["chunk"]["type"] == "reasoning")
    assert reasoning.startswith("Thinking about the request: why")
    assert text_of(envelopes).startswith("Echo: why")
    assert envelopes[-1]["chunk"]["usage"]["reasoning_tokens"] == 16


async def test_a_model_that_is_not_configured_is_an_invalid_request(server: ServerChild) -> None:
    envelopes = await turn(server, "hi", model="gpt-9-ultra")
    assert [e["status"] for e in envelopes] == ["error"]
    assert envelopes[0]["chunk"] == {
        "error": "model 'gpt-9-ultra' is not configured; choose one of "
                 + ", ".join(sorted(DEMO_MODELS)),
        "error_type": "invalid_request",
    }


def test_demo_runs_the_configured_model_when_the_simulator_serves_it() -> None:
    config = LLMConfig.model_validate({"providers": {"openai": {"model": "o4-mini"}}})
    provider = simulated_llm_config(config, "http://127.0.0.1:1").providers["simulator"]
    assert (provider.model, provider.models) == ("o4-mini", ["o4-mini"])
    assert provider.fallback_models == [m for m in DEMO_MODELS if m != "o4-mini"]


# -- the chat page in a real browser against the real server ------------------------------------


@pytest.fixture
async def page(server: ServerChild, tmp_path: Path) -> AsyncIterator[Any]:
    if not HAVE_CHROMIUM:
        pytest.skip("/usr/bin/chromium is not installed (apt-get install -y chromium)")
    from playwright.async_api import async_playwright, expect

    profile = tmp_path / "chromium-profile"
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile), executable_path="/usr/bin/chromium", headless=True, timeout=30_000,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        try:
            page = await context.new_page()
            await page.goto(server.url + "/", timeout=15_000)
            await expect(page.locator("#connection")).to_have_attribute(
                "data-state", "open", timeout=10_000)
            yield page
        finally:
            await context.close()
    shutil.rmtree(profile, ignore_errors=True)


async def test_chat_page_lists_the_models_and_shows_reasoning_before_the_answer(
    page: Any,
) -> None:
    from playwright.async_api import expect

    picker = page.locator("#model")
    await expect(picker).to_be_visible(timeout=10_000)
    await expect(picker.locator("option")).to_have_text(
        [f"{model} (simulator)" for model in DEMO_MODELS])
    await expect(picker).to_have_value(SIMULATED_MODEL)
    await picker.select_option("deepseek/deepseek-r1")
    await page.fill("#input", "ponder")
    await page.click("#send")
    answer = page.locator(".msg.assistant").last
    await expect(answer).to_have_attribute("data-state", "done", timeout=20_000)
    blocks = await answer.locator(".body > *").evaluate_all("nodes => nodes.map(n => n.className)")
    assert blocks == ["thinking", "text markdown"]
    thinking = answer.locator("details.thinking")
    await expect(thinking.locator(".thinking-text")).to_have_text(
        re.compile(r"^Thinking about the request: ponder"))
    await expect(answer.locator(".markdown")).to_have_text(re.compile(r"^Echo: ponder"))
    await expect(answer.locator(".meta")).to_contain_text("16 reasoning")
