"""Shared test configuration."""

from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.redis_server import REDIS_SERVER, RedisServer

# `make test` (CI) explores the same examples on every run (`--hypothesis-profile=ci`): a clean
# clone has no example database, and a landing must not depend on the draw. A bare `pytest`
# keeps drawing new ones.
settings.register_profile("ci", derandomize=True)


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
