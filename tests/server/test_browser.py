"""The chat page in headless Chromium (Debian's ``chromium``, driven by Playwright).

The server runs exactly as the README's first command leaves it: no API key, so the simulator
serves and the page shows the demo banner. Skipped, saying why, when ``/usr/bin/chromium`` is
absent (``.ci/run`` installs it with apt; ``playwright install`` would need the network).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright, expect

from tests.server_harness import ServerChild, write_config

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

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is not installed (apt-get install -y chromium; .ci/run does it)",
)


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerChild]:
    directory = tmp_path_factory.mktemp("browser")
    config = write_config(directory, simulator_url=None, simulator="auto", mcp_servers={
        "demo": {"command": sys.executable, "args": ["-m", "server.demo_mcp_server"]},
    })
    server = ServerChild(config)
    yield server
    assert server.stop() == 0, server.output


@pytest.fixture
async def page(demo_server: ServerChild, tmp_path: Path) -> AsyncIterator[Page]:
    profile = tmp_path / "chromium-profile"
    async with async_playwright() as playwright:
        # A persistent context is how Playwright takes a fresh --user-data-dir of our choosing.
        context = await playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=FLAGS, headless=True,
            timeout=30_000,
        )
        try:
            page = await context.new_page()
            await page.goto(demo_server.url + "/", timeout=15_000)
            yield page
        finally:
            await context.close()
    shutil.rmtree(profile, ignore_errors=True)


async def test_page_streams_an_answer_and_shows_the_demo_banner(page: Page) -> None:
    await expect(page.locator("#banner")).to_be_visible(timeout=10_000)
    await expect(page.locator("#banner")).to_contain_text("simulator")
    await page.fill("#input", "hello from the browser")
    await page.click("#send")
    answer = page.locator(".msg.assistant").last
    await expect(answer).to_contain_text("Echo: hello from the browser", timeout=15_000)
    await expect(answer).to_have_attribute("data-state", "done", timeout=15_000)


async def test_page_shows_a_tool_call(page: Page) -> None:
    await page.fill("#input", 'call add {"a": 2, "b": 3}')
    await page.click("#send")
    tool = page.locator(".tool-call").last
    await expect(tool).to_have_attribute("data-status", "finished", timeout=15_000)
    await expect(tool).to_contain_text("add")
    await expect(page.locator(".msg.assistant").last).to_contain_text("returned: 5",
                                                                      timeout=15_000)
