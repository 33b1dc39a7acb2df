"""Review 4: the chat page against a server at ``server.max_connections`` (headless Chromium).

A full server accepts a socket and closes it at once with 1013 (try again later), reading
nothing from it: what the page sent on it must go again on its next socket, and the page must
wait longer before each new try (every tab of a restarted server reconnects at once). Skipped,
saying why, when ``/usr/bin/chromium`` is absent.
"""

from __future__ import annotations

import re
import shutil
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from playwright.async_api import Page, async_playwright, expect

from tests.server.test_browser import CHROMIUM, FLAGS
from tests.server_harness import ServerChild, connect, write_config

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is not installed (apt-get install -y chromium; .ci/run does it)",
)


@pytest.fixture
def full_server(tmp_path: Path) -> Iterator[ServerChild]:
    config = write_config(tmp_path, simulator_url=None, simulator="auto", mcp_servers={},
                          server={"max_connections": 1})
    server = ServerChild(config)
    yield server
    assert server.stop() == 0, server.output


def _refused(server: ServerChild) -> int:
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(r"^mcp_backend_websockets_refused_total (\S+)$", text, re.MULTILINE)
    assert match is not None
    return int(float(match.group(1)))


async def _until_refused(server: ServerChild, count: int) -> None:
    with anyio.fail_after(20):
        while _refused(server) < count:
            await anyio.sleep(0.05)


@pytest.fixture
async def page(full_server: ServerChild, tmp_path: Path) -> AsyncIterator[Page]:
    profile = tmp_path / "chromium-profile"
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=FLAGS, headless=True,
            timeout=30_000,
        )
        try:
            yield await context.new_page()
        finally:
            await context.close()
    shutil.rmtree(profile, ignore_errors=True)


async def test_a_message_sent_while_the_server_is_full_is_answered_once_it_has_room(
    full_server: ServerChild, page: Page,
) -> None:
    holder = await connect(full_server.ws_url)  # the server's one connection
    try:
        await page.goto(full_server.url + "/", timeout=15_000)
        await _until_refused(full_server, 1)
        await page.fill("#input", "hello while full")
        await page.click("#send")
        # The page's next socket is refused too: the message goes out on it, unread.
        await _until_refused(full_server, _refused(full_server) + 1)
    finally:
        await holder.close()
    answer = page.locator(".msg.assistant").last
    await expect(answer).to_contain_text("Echo: hello while full", timeout=30_000)
    await expect(answer).to_have_attribute("data-state", "done", timeout=15_000)


async def test_the_page_waits_longer_before_each_try_at_a_full_server(
    full_server: ServerChild, page: Page,
) -> None:
    holder = await connect(full_server.ws_url)
    try:
        await page.goto(full_server.url + "/", timeout=15_000)
        await _until_refused(full_server, 1)
        # Tries at 0, 0.5 s and 1.5 s at the earliest, the next at 3.5 s (before: every 0.5 s,
        # 6 by then). A timer never fires early: a slow machine can only make fewer tries.
        await anyio.sleep(2.5)
        assert _refused(full_server) <= 3
    finally:
        await holder.close()
