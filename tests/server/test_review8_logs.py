"""Review 8: what outsiders write into the log lines, and the secrets the log and the
observability surfaces never show.

A hostile upstream's error message reaches the supervisor's WARNING line (a rejected key crashes
the provider on purpose, and the crash is logged with its reason). Its line breaks, ANSI escapes
and bidi controls must arrive escaped: a terminal tailing the log must not obey them and a reader
must not be shown a forged line.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import yaml

from server._logging import configure_logging
from tests.chaos.upstream import GarbageUpstream, Reply
from tests.server_harness import ServerChild, chat, connect, http_get, write_config

FORGED = "2026-01-01 00:00:00,000 INFO    server: all good"
MESSAGE = f"key refused\n{FORGED}\r\x1b[2J\x1b[31mred\x07\x9b1m\x7f\u202edesrever"
KEY = "key-0f3c8e1d5a7b9c2e4f6a8b0d1c3e5f7a"  # no sk- prefix: only its exact value is redacted


def _auth_refusal() -> Reply:
    body = {"error": {"message": MESSAGE, "type": "invalid_request_error",
                      "code": "invalid_api_key"}}
    return Reply(status=401, body=json.dumps(body).encode())


def _keyed_config(directory: Path, upstream_url: str) -> Path:
    """The harness's config, its provider taking ``KEY`` from ``R8_KEY``."""
    path = write_config(directory, simulator_url=upstream_url, mcp_servers={})
    config = yaml.safe_load(path.read_text())
    provider = config["llm"]["providers"]["sim"]
    provider.update(requires_api_key=True, api_key_env="R8_KEY")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.anyio
async def test_an_upstreams_error_message_reaches_the_log_escaped_and_never_forges_a_line(
    tmp_path: Path,
) -> None:
    async with GarbageUpstream() as upstream:
        upstream.reply = upstream.stream_reply = _auth_refusal()
        server = ServerChild(_keyed_config(tmp_path, upstream.base_url.removesuffix("/v1")),
                             env={"R8_KEY": KEY})
        try:
            async with await connect(server.ws_url) as ws:
                ending = (await chat(ws, "hello"))[-1]
            assert ending["status"] == "error"
            assert ending["chunk"]["error_type"] == "auth"
            assert KEY not in json.dumps(ending)
            for path in ("/health", "/metrics"):
                status, _, body = http_get(server.url + path)
                # The provider fails fast on its rejected key: the service is failing.
                assert status == (503 if path == "/health" else 200), body
                assert KEY not in body
        finally:
            assert server.stop() == 0, server.output
    assert upstream.requests >= 1
    output = server.output
    assert KEY not in output
    # Nothing from the upstream begins a line of its own, and no control character but the
    # line breaks between log lines is written.
    assert not [line for line in server.lines if line.startswith(FORGED[:10])]
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", output)
    crash = [line for line in server.lines if "ended with" in line]
    assert len(crash) == 1, output
    assert crash[0].endswith(
        "key refused\\n" + FORGED + "\\r\\x1b[2J\\x1b[31mred\\x07\\x9b1m\\x7f\\u202edesrever"
        " (sim:gpt-4o-mini)"), crash[0]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_every_log_line_has_its_control_characters_escaped(
    log_format: str, capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("INFO", log_format)
        logging.getLogger("review8").warning("tool %s said %s", "a\x1b]0;title\x07", MESSAGE)
        try:
            raise ValueError("bad\x1b[2J\nvalue")
        except ValueError:
            logging.getLogger("review8").exception("failed on %r", "x")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]",
                         err.replace("\n", ""))
    said = "tool a\\x1b]0;title\\x07 said key refused\\n" + FORGED + (
        "\\r\\x1b[2J\\x1b[31mred\\x07\\x9b1m\\x7f\\u202edesrever")
    if log_format == "json":
        entries = [json.loads(line) for line in lines]
        assert entries[0]["message"] == said
        assert entries[1]["exception"].endswith("ValueError: bad\\x1b[2J\nvalue")
    else:
        assert lines[0].endswith(" WARNING review8: " + said)
        # A traceback keeps its own line breaks; its other control characters are escaped.
        assert lines[-2:] == ["ValueError: bad\\x1b[2J", "value"]
