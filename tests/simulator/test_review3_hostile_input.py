"""The simulator answers hostile input with a clear 4xx and keeps serving: a body nested past the
JSON parser's depth, list fields of another JSON type, request framing it cannot read (a bad
request line, Content-Length or chunk size, a body over its bound, chunked or not).

The real child process on 127.0.0.1, spoken to over a raw socket (an HTTP client would refuse
to send most of this)."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from simulator.process import SyncSimulatorProcess

pytestmark = pytest.mark.anyio

KEY = "sk-sim-test"
MAX_BODY = 64 * 1024 * 1024


def post(body: bytes, framing: bytes | None = None) -> bytes:
    """A chat completion request: ``body`` with its Content-Length, or after ``framing``."""
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Type: application/json\r\n")
    if framing is None:
        framing = b"Content-Length: %d\r\n" % len(body)
    return head + framing + b"\r\n" + body


async def exchange(sim: SyncSimulatorProcess, *parts: bytes) -> tuple[int, dict[str, Any], bool]:
    """Send ``parts`` on one connection; the answer's status and JSON body, and whether the
    simulator closed the connection after it (bounded: 10 s)."""
    with anyio.fail_after(10):
        async with await anyio.connect_tcp("127.0.0.1", sim.port) as stream:
            for part in parts:
                await stream.send(part)
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            head, _, rest = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines[1:])}
            length = int(headers["content-length"])
            while len(rest) < length:
                rest += await stream.receive()
            closed = headers.get("connection") == "close"
    return int(lines[0].split(" ")[1]), json.loads(rest[:length]), closed


async def still_serving(sim: SyncSimulatorProcess) -> None:
    body = json.dumps({"model": "gpt-4o-mini",
                       "messages": [{"role": "user", "content": "hello there"}]}).encode()
    status, answer, _ = await exchange(sim, post(body))
    assert (status, answer["choices"][0]["message"]["content"]) == (200, "Echo: hello there")


def error(message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": code}}


async def test_a_body_nested_past_the_json_parsers_depth_is_a_400(
        sim: SyncSimulatorProcess) -> None:
    nested = b'{"model": "gpt-4o-mini", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, answer, closed = await exchange(sim, post(nested))
    assert (status, answer) == (400, error("We could not parse the JSON body of your request."))
    assert not closed
    await still_serving(sim)


@pytest.mark.parametrize(("fields", "param", "got"), [
    ({"tools": 5}, "tools", "an integer"),
    ({"tools": {"type": "function"}}, "tools", "an object"),
    ({"messages": [{"role": "user", "content": "hi"},
                   {"role": "assistant", "content": None, "tool_calls": True}]},
     "messages[1].tool_calls", "a boolean"),
    ({"messages": [{"role": "assistant", "content": "x", "tool_calls": 1.5}]},
     "messages[0].tool_calls", "a decimal"),
])
async def test_a_list_field_of_another_json_type_is_a_400_naming_it(
        sim: SyncSimulatorProcess, fields: dict[str, Any], param: str, got: str) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **fields}
    status, answer, _ = await exchange(sim, post(json.dumps(body).encode()))
    assert (status, answer) == (400, error(
        f"Invalid type for '{param}': expected an array, but got {got} instead.", param,
        "invalid_type"))
    assert sim.stats()["by_status"] == {"400": 1}
    await still_serving(sim)


@pytest.mark.parametrize(("request_bytes", "status", "message"), [
    (b"GARBAGE\r\n\r\n", 400, "malformed request line"),
    (post(b"{}", b"Content-Length: -5\r\n"), 400, "invalid Content-Length"),
    (post(b"{}", b"Content-Length: two\r\n"), 400, "invalid Content-Length"),
    (post(b"{}", b"Content-Length: %d\r\n" % (MAX_BODY + 1)), 413,
     f"request body over {MAX_BODY} bytes"),
    (post(b"zz\r\n{}\r\n", b"Transfer-Encoding: chunked\r\n"), 400, "invalid chunk size"),
    (post(b"-2\r\n{}\r\n", b"Transfer-Encoding: chunked\r\n"), 400, "invalid chunk size"),
    (post(b"%x\r\n" % (MAX_BODY + 1), b"Transfer-Encoding: chunked\r\n"), 413,
     f"request body over {MAX_BODY} bytes"),
], ids=["request line", "negative length", "length not a number", "length over the bound",
        "chunk size not hex", "negative chunk size", "one chunk over the bound"])
async def test_framing_it_cannot_read_is_answered_then_the_connection_closed(
        sim: SyncSimulatorProcess, request_bytes: bytes, status: int, message: str) -> None:
    answer = await exchange(sim, request_bytes)
    assert answer == (status, error(message), True)
    await still_serving(sim)


async def test_a_chunked_body_is_bounded_as_a_whole_not_per_chunk(
        sim: SyncSimulatorProcess) -> None:
    piece = 8 * 1024 * 1024
    chunk = b"%x\r\n" % piece + b" " * piece + b"\r\n"
    parts = [post(b"", b"Transfer-Encoding: chunked\r\n"), *[chunk] * (MAX_BODY // piece),
             b"%x\r\n" % piece]  # the chunk that would take the body over the bound
    answer = await exchange(sim, *parts)
    assert answer == (413, error(f"request body over {MAX_BODY} bytes"), True)
    await still_serving(sim)
