"""Shared test configuration."""

from collections.abc import Iterator

import pytest

from tests.redis_server import REDIS_SERVER, RedisServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh, empty redis-server on a free 127.0.0.1 port (skips if it is not installed)."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed: run scripts/install-system-deps.sh")
    with RedisServer() as server:
        yield server
