"""ClusterConfig and RedisLink never show the password of the Redis URL."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from actors.cluster import ClusterConfig, ClusterUnavailable, RedisLink, redact_url
from tests.redis_server import REDIS_SERVER, RedisServer

SECRET = "s3cr3t-pass-word"


def test_repr_and_errors_redact_the_password_of_the_url() -> None:
    config = ClusterConfig(redis_url=f"redis://:{SECRET}@127.0.0.1:6390/0")
    assert SECRET not in repr(config)
    assert SECRET not in str(config)
    assert "redis_url='redis://***@127.0.0.1:6390/0'" in repr(config)
    shown = "<RedisLink redis://***@127.0.0.1:6390/0 prefix='mcp-backend'>"
    assert repr(RedisLink(config)) == shown
    with pytest.raises(ValidationError) as caught:
        ClusterConfig(redis_url=f"http://user:{SECRET}@host")
    assert SECRET not in str(caught.value)
    assert "redis_url must start with redis://, rediss:// or unix://" in str(caught.value)


def test_redact_url_keeps_urls_without_credentials() -> None:
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redact_url(f"rediss://user:{SECRET}@[::1]:6380/2") == "rediss://***@[::1]:6380/2"


def test_an_unset_url_means_one_process_without_redis() -> None:
    config = ClusterConfig()
    assert (config.enabled, config.key_prefix) == (False, "mcp-backend")
    with pytest.raises(ValueError, match=r"^cluster.redis_url is not set$"):
        RedisLink(config)
    with pytest.raises(ValidationError):
        ClusterConfig(redis_urls="redis://x")  # type: ignore[call-arg]


async def test_a_wrong_password_is_a_typed_error_without_the_password() -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed: run scripts/install-system-deps.sh")
    with RedisServer(password="right-password") as server:
        url = f"redis://:{SECRET}@127.0.0.1:{server.port}/0"
        async with RedisLink(ClusterConfig(redis_url=url)) as link:
            with pytest.raises(ClusterUnavailable) as caught:
                await link.server_time()
            assert caught.value.reason in ("authentication failed", "connection failed")
            assert SECRET not in str(caught.value)
            assert SECRET not in repr(caught.value)
            health = await link.ping()
            assert health.ok is False
