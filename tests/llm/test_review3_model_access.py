"""A 403 that denies one model (OpenAI: "Project ... does not have access to model ...", code
``model_not_found``) is about that model, not the key: the provider keeps serving the models
the key may use, and is not restarted. A raw upstream of our own on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from actors.llm import LLMModelNotFoundError, ProviderConfig
from actors.llm._provider import ProviderState
from tests.chaos.upstream import good_completion
from tests.llm.test_provider import call, running

pytestmark = pytest.mark.anyio

DENIED = "gpt-4o"
DENIAL = {"error": {"message": f"Project `proj_abc` does not have access to model `{DENIED}`",
                    "type": "invalid_request_error", "param": None, "code": "model_not_found"}}


@asynccontextmanager
async def upstream_denying_one_model(models: list[str]) -> AsyncIterator[str]:
    """Answers 403 ``model_not_found`` for :data:`DENIED`, a completion for any other model;
    notes each request's model in ``models``. Yields the base URL."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            model = json.loads(await reader.readexactly(length))["model"]
            models.append(model)
            status, body = (403, DENIAL) if model == DENIED else (200, good_completion())
            data = json.dumps(body).encode()
            writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n" % (status, len(data)) + data)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_403_denying_one_model_leaves_the_key_serving_the_others() -> None:
    models: list[str] = []
    async with upstream_denying_one_model(models) as base_url:
        config = ProviderConfig(kind="openai-compatible", base_url=base_url,
                                model="gpt-4o-mini", requires_api_key=False, max_tokens=10)
        async with running(config) as (system, ref):
            with anyio.fail_after(10):
                with pytest.raises(LLMModelNotFoundError) as denied:
                    await ref.ask(call(model=DENIED), timeout=5)
                assert denied.value.message == (
                    f"model '{DENIED}' not found at sim: Project `proj_abc` does not have "
                    f"access to model `{DENIED}`")
                assert (denied.value.status_code, denied.value.provider_specific) == (403, True)
                answer = await ref.ask(call(model="gpt-4o-mini"), timeout=5)
                assert answer.content == "fine"
                state: ProviderState = system.durable("sim")
                assert (state.rejected_key, state.health.auth_rejected) == (None, False)
                assert system.status()["sim"].restart_count == 0
    assert models == [DENIED, "gpt-4o-mini"]
