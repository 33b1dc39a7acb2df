"""Fixtures of the cluster tests: a real redis-server per test and a link to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from actors.cluster import ClusterConfig, RedisLink
from tests.redis_server import RedisServer


@pytest.fixture
def cluster_config(redis_server: RedisServer) -> ClusterConfig:
    # A short journal interval: a fresh Redis (no ledger epoch) grants money under a day limit
    # only after 2 x journal_interval + op_timeout.
    return ClusterConfig(redis_url=redis_server.url, key_prefix="test", journal_interval=0.1)


@pytest.fixture
async def link(cluster_config: ClusterConfig) -> AsyncIterator[RedisLink]:
    async with RedisLink(cluster_config) as shared:
        yield shared
