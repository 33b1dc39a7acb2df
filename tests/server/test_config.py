"""server/config.py: what the configuration shows of itself (repr, the safe dump) hides secrets."""

from __future__ import annotations

import json

from server.config import AppConfig

REDIS_PASSWORD = "redis-pass-4c1d9e"
PROXY_PASSWORD = "proxy-pass-7b2a0f"


def _config(base_url: str) -> AppConfig:
    return AppConfig.model_validate({
        "cluster": {"redis_url": f"rediss://:{REDIS_PASSWORD}@redis.internal:6380/0"},
        "llm": {"providers": {"proxy": {
            "kind": "openai-compatible", "base_url": base_url, "model": "gpt-4o-mini",
            "requires_api_key": False}}},
    })


def test_the_safe_dump_hides_the_user_info_of_the_redis_url_and_a_base_url() -> None:
    dump = _config(f"https://team:{PROXY_PASSWORD}@llm-proxy/v1").model_dump_safe()
    assert dump["cluster"]["redis_url"] == "rediss://***@redis.internal:6380/0"
    assert dump["llm"]["providers"]["proxy"]["base_url"] == "https://***@llm-proxy/v1"
    assert REDIS_PASSWORD not in json.dumps(dump)
    assert PROXY_PASSWORD not in json.dumps(dump)


def test_a_password_holding_an_at_sign_is_hidden_whole() -> None:
    dump = _config(f"https://team:p@ss-{PROXY_PASSWORD}@llm-proxy/v1").model_dump_safe()
    assert dump["llm"]["providers"]["proxy"]["base_url"] == "https://***@llm-proxy/v1"


def test_a_key_in_the_query_of_a_base_url_is_redacted_in_the_dump() -> None:
    dump = _config("https://llm-proxy/v1?key=sk-proxy0123456789").model_dump_safe()
    assert dump["llm"]["providers"]["proxy"]["base_url"] == "https://llm-proxy/v1?key=[REDACTED]"


def test_the_repr_hides_the_user_info_of_a_base_url_and_the_redis_url() -> None:
    shown = repr(_config(f"https://team:{PROXY_PASSWORD}@llm-proxy/v1"))
    assert "base_url='https://***@llm-proxy/v1'" in shown
    assert "redis_url='rediss://***@redis.internal:6380/0'" in shown
    assert PROXY_PASSWORD not in shown
    assert REDIS_PASSWORD not in shown
