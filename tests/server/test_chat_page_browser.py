"""The chat page's Markdown, reasoning and model picker in headless Chromium (Playwright).

The page is served by ``tests.server.chat_page_app``, a real child process speaking the chat
contract with scripted answers, so each test controls exactly what the page receives. Skipped,
saying why, when ``/usr/bin/chromium`` is absent.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, async_playwright, expect

from tests.server_harness import _Child

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 10_000

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is not installed (apt-get install -y chromium; .ci/run does it)",
)


@pytest.fixture(scope="module")
def app() -> Iterator[_Child]:
    child = _Child([sys.executable, "-m", "tests.server.chat_page_app"],
                   banner=re.compile(r"chat page app listening on (http://\S+)"))
    child.wait_banner()
    yield child
    child.stop()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _post(url: str) -> None:
    request = urllib.request.Request(url, data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=5):
        pass


@pytest.fixture
async def page(app: _Child, tmp_path: Path) -> AsyncIterator[Page]:
    profile = tmp_path / "chromium-profile"
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=FLAGS, headless=True,
            timeout=30_000,
        )
        try:
            page = await context.new_page()
            await page.goto(app.url + "/", timeout=15_000)
            await expect(page.locator("#connection")).to_have_attribute("data-state", "open",
                                                                        timeout=WAIT_MS)
            yield page
        finally:
            await context.close()
    shutil.rmtree(profile, ignore_errors=True)


async def _send(page: Page, text: str) -> None:
    await page.fill("#input", text)
    await page.click("#send")


async def test_answer_renders_markdown_table_code_block_list_and_link(page: Page) -> None:
    await _send(page, "markdown")
    answer = page.locator(".msg.assistant").last
    await expect(answer).to_have_attribute("data-state", "done", timeout=WAIT_MS)
    markdown = answer.locator(".markdown")
    await expect(markdown.locator("table th")).to_have_text(["name", "value"])
    await expect(markdown.locator("table td")).to_have_text(["alpha", "1", "beta", "2"])
    code = markdown.locator("pre > code.language-python")
    await expect(code).to_have_text("def add(a, b):\n    return a + b\n")
    await expect(markdown.locator("ul > li")).to_have_text(["first item", "second item"])
    link = markdown.locator("a")
    await expect(link).to_have_attribute("href", "https://example.com/docs")
    await expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
    assert "|" not in await markdown.locator("table").inner_text()


async def test_injected_html_is_shown_as_text_and_never_runs(page: Page) -> None:
    await _send(page, "inject")
    answer = page.locator(".msg.assistant").last
    await expect(answer).to_have_attribute("data-state", "done", timeout=WAIT_MS)
    markdown = answer.locator(".markdown")
    await expect(markdown).to_contain_text('<img src="x" onerror=')
    await expect(markdown).to_contain_text("<script>window.__pwned = 'script'</script>")
    assert await markdown.locator("img, script").count() == 0
    hrefs = await markdown.locator("a").evaluate_all("links => links.map(a => a.href)")
    assert [href for href in hrefs if href.lower().startswith("javascript:")] == []
    await markdown.locator("a").evaluate_all("links => links.forEach(a => a.click())")
    assert await page.evaluate("window.__pwned === undefined") is True


async def test_reasoning_streams_into_a_collapsed_thinking_block_before_and_between_text(
    app: _Child, page: Page
) -> None:
    await _send(page, "reason")
    answer = page.locator(".msg.assistant").last
    thinking = answer.locator("details.thinking")
    await expect(thinking.first).to_have_attribute("data-state", "streaming", timeout=WAIT_MS)
    await expect(thinking.first).to_contain_text("First I consider the question.")
    assert await thinking.first.evaluate("d => d.open") is False
    await expect(thinking.first.locator(".thinking-text")).not_to_be_visible()
    await expect(thinking.first.locator("summary")).to_have_text("Thinking")
    assert await answer.locator(".markdown").count() == 0

    _post(app.url + "/_test/release")
    await expect(answer).to_have_attribute("data-state", "done", timeout=WAIT_MS)
    blocks = await answer.locator(".body > *").evaluate_all(
        "nodes => nodes.map(n => [n.className, n.textContent.trim()])")
    assert blocks == [
        ["thinking", "ThinkingFirst I consider the question."],
        ["text markdown", "The answer is 42."],
        ["thinking", "ThinkingThen I double-check it."],
        ["text markdown", "Checked."],
    ]
    await expect(answer.locator(".markdown strong")).to_have_text("answer")
    assert await thinking.evaluate_all("ds => ds.map(d => [d.open, d.dataset.state])") == [
        [False, "done"], [False, "done"]]
    await expect(answer.locator(".meta")).to_contain_text("9 reasoning")
    await thinking.first.locator("summary").click()
    await expect(thinking.first.locator(".thinking-text")).to_be_visible()


async def test_model_picker_lists_the_models_and_sends_the_chosen_one(
    app: _Child, page: Page
) -> None:
    picker = page.locator("#model")
    await expect(picker).to_be_visible(timeout=WAIT_MS)
    await expect(picker.locator("option")).to_have_text([
        "gpt-4o-mini (openai)", "o4-mini (openai)", "deepseek/deepseek-r1 (openrouter)"])
    await expect(picker).to_have_value("gpt-4o-mini")
    before = len(_get(app.url + "/_test/payloads"))
    await _send(page, "first")
    await expect(page.locator(".msg.assistant").last).to_have_attribute(
        "data-state", "done", timeout=WAIT_MS)
    await picker.select_option("deepseek/deepseek-r1")
    await _send(page, "second")
    await expect(page.locator(".msg.assistant").last).to_contain_text(
        "Echo: second", timeout=WAIT_MS)
    sent = _get(app.url + "/_test/payloads")[before:]
    assert [(p["text"], p["model"]) for p in sent] == [
        ("first", "gpt-4o-mini"), ("second", "deepseek/deepseek-r1")]
