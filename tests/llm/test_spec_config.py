"""The specification's ``config.yaml``, as written there, next to the project's richer form.

``data/spec_config.yaml`` is a verbatim copy of the ``llm:`` block of "Modern LLM Client
Architecture" (section 6); its hash is pinned so that nobody "fixes" it. The conversation test
points its two providers at simulators through the documented override
``MCP_BACKEND_<NAME>_BASE_URL`` and gives the keys in ``OPENAI_API_KEY`` / ``OPENROUTER_API_KEY``:
nothing else differs from the file.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from actors.llm import LLMConfig, ProviderConfig, RateLimitConfig, infer_kind
from server.config import ConfigError, base_url_variable, load_config
from tests.server_harness import ServerChild, SimulatorChild, chat, connect, server_env, text_of

SPEC_CONFIG = Path(__file__).parent / "data" / "spec_config.yaml"
SPEC_SHA256 = "c86363c6a0f4ab39594e5fd1f23048334847bebbd800a05ac8e4c41b29b46a5c"
OPENAI_KEY = "sk-openai-test-0123456789abcdef"
OPENROUTER_KEY = "sk-or-test-0123456789abcdef"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENROUTER_API_KEY", base_url_variable("openai"),
                 base_url_variable("openrouter")):
        monkeypatch.delenv(name, raising=False)


def _providers(text: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def test_the_copy_of_the_specification_block_is_verbatim() -> None:
    assert hashlib.sha256(SPEC_CONFIG.read_bytes()).hexdigest() == SPEC_SHA256


def test_the_specification_block_validates_with_its_meaning() -> None:
    llm = load_config(SPEC_CONFIG).llm
    assert llm.active == "openrouter"
    assert llm.candidate_order() == ["openrouter", "openai"]
    openai, openrouter = llm.providers["openai"], llm.providers["openrouter"]

    assert (openai.kind, openai.base_url, openai.model) == (
        "openai", "https://api.openai.com/v1", "gpt-4o-mini")
    assert openai.api_key_env == "OPENAI_API_KEY"
    assert (openai.temperature, openai.max_tokens, openai.top_p) == (0.7, 4096, 1.0)
    assert (openai.frequency_penalty, openai.presence_penalty) == (0.0, 0.0)
    assert (openai.timeout, openai.max_retries) == (60.0, 3)
    assert (openai.max_connections, openai.max_keepalive_connections) == (100, 20)
    assert (openai.enable_logprobs, openai.enable_json_mode) == (False, False)
    assert openai.rate_limits == RateLimitConfig(requests_per_minute=3500,
                                                 tokens_per_minute=200000)
    assert (openai.requests_per_minute, openai.tokens_per_minute) == (3500, 200000)
    assert openai.enable_cost_tracking is True
    assert openai.cost_warning_threshold == 1.00  # USD per request
    assert (openai.extra_headers, openai.extra_params) == ({}, {})
    assert (openai.max_cost_per_request, openai.daily_cost_limit) == (None, None)

    assert (openrouter.kind, openrouter.base_url, openrouter.model) == (
        "openrouter", "https://openrouter.ai/api/v1", "openai/gpt-4o-mini")
    assert openrouter.api_key_env == "OPENROUTER_API_KEY"
    assert (openrouter.temperature, openrouter.max_tokens, openrouter.top_p) == (0.7, 4096, 1.0)
    assert openrouter.enable_cost_tracking is True
    assert openrouter.enable_fallback_models is True
    assert openrouter.models == [
        "openai/gpt-4o-mini", "openai/gpt-3.5-turbo", "anthropic/claude-3-haiku"]
    assert openrouter.extra_headers == {"HTTP-Referer": "https://localhost:8000",
                                        "X-Title": "MCP Platform"}
    assert (openrouter.max_cost_per_request, openrouter.daily_cost_limit) == (0.10, 10.00)
    assert openrouter.cost_warning_threshold is None
    assert openrouter.rate_limits == RateLimitConfig()
    # The project's own fraction-of-the-daily-limit threshold keeps its place and default.
    assert llm.cost.cost_warning_threshold == 0.8


@pytest.mark.parametrize(
    ("name", "base_url", "kind"),
    [
        ("openai", None, "openai"),
        ("openrouter", None, "openrouter"),
        ("openai", "http://127.0.0.1:9/v1", "openai"),
        ("router", "https://openrouter.ai/api/v1", "openrouter"),
        ("gpt", "https://api.openai.com/v1", "openai"),
        ("ollama", "http://127.0.0.1:11434/v1", "openai-compatible"),
        ("other", None, "openai-compatible"),
    ],
)
def test_kind_is_inferred_from_the_name_then_the_base_url(
    name: str, base_url: str | None, kind: str
) -> None:
    assert infer_kind(name, base_url) == kind


def test_a_provider_without_kind_takes_it_from_its_name_or_url() -> None:
    llm = LLMConfig.model_validate({"providers": {
        "openai": {"model": "gpt-4o-mini"},
        "router": {"model": "openai/gpt-4o-mini", "base_url": "https://openrouter.ai/api/v1"},
        "local": {"model": "llama", "base_url": "http://127.0.0.1:11434/v1",
                  "requires_api_key": False},
    }})
    assert {name: p.kind for name, p in llm.providers.items()} == {
        "openai": "openai", "router": "openrouter", "local": "openai-compatible"}
    assert llm.providers["router"].api_key_env == "OPENROUTER_API_KEY"


def test_an_unknown_provider_without_base_url_says_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("llm:\n  providers:\n    local:\n      model: llama\n")
    with pytest.raises(ConfigError, match=r"^" + str(path) + r": llm\.providers\.local: "
                       r"base_url is required for kind 'openai-compatible'$"):
        load_config(path)


def test_flat_rate_limits_and_rate_limits_may_be_mixed_but_must_agree() -> None:
    both = ProviderConfig.model_validate({"kind": "openai", "model": "m",
                                          "requests_per_minute": 10,
                                          "rate_limits": RateLimitConfig(tokens_per_minute=500)})
    assert both.rate_limits == RateLimitConfig(requests_per_minute=10, tokens_per_minute=500)
    with pytest.raises(ValueError, match=r"requests_per_minute \(10\) and "
                                         r"rate_limits\.requests_per_minute \(20\) disagree"):
        ProviderConfig.model_validate({"kind": "openai", "model": "m", "requests_per_minute": 10,
                                       "rate_limits": {"requests_per_minute": 20}})


def test_enable_fallback_models_false_leaves_them_unused() -> None:
    provider = ProviderConfig.model_validate({"kind": "openrouter", "model": "a",
                                              "fallback_models": ["b", "c"],
                                              "enable_fallback_models": False})
    assert provider.models == ["a"]


def test_top_logprobs_needs_logprobs_and_stays_within_twenty() -> None:
    base = {"kind": "openai", "model": "m"}
    assert ProviderConfig.model_validate(
        {**base, "enable_logprobs": True, "top_logprobs": 20}).top_logprobs == 20
    with pytest.raises(ValueError, match=r"top_logprobs needs enable_logprobs: true"):
        ProviderConfig.model_validate({**base, "top_logprobs": 3})
    with pytest.raises(ValueError, match=r"top_logprobs\n  Input should be less than or equal"):
        ProviderConfig.model_validate({**base, "enable_logprobs": True, "top_logprobs": 21})


@pytest.mark.parametrize("key", ["cost_warning_threshold", "max_cost_per_request",
                                 "daily_cost_limit"])
def test_provider_money_limits_must_be_positive(key: str) -> None:
    with pytest.raises(ValueError, match=rf"{key}\n  Input should be greater than 0"):
        ProviderConfig.model_validate({"kind": "openai", "model": "m", key: 0})


def test_the_base_url_override_keeps_the_written_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("llm:\n  providers:\n    router:\n      base_url: https://openrouter.ai/api/v1"
                    "\n      model: openai/gpt-4o-mini\n")
    monkeypatch.setenv("MCP_BACKEND_ROUTER_BASE_URL", "http://127.0.0.1:9/v1")
    provider = load_config(path).llm.providers["router"]
    assert (provider.kind, provider.base_url) == ("openrouter", "http://127.0.0.1:9/v1")
    assert base_url_variable("my-proxy.eu") == "MCP_BACKEND_MY_PROXY_EU_BASE_URL"


def _check_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60, env=server_env(env),
                          cwd=path.parent)


def test_check_config_accepts_the_specification_block_and_masks_its_keys(
    tmp_path: Path,
) -> None:
    path = Path(shutil.copy(SPEC_CONFIG, tmp_path / "config.yaml"))
    env = {"OPENAI_API_KEY": OPENAI_KEY, "OPENROUTER_API_KEY": OPENROUTER_KEY,
           base_url_variable("openai"): "http://127.0.0.1:9/v1"}
    result = _check_config(path, env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        f"OK: {path}",
        "llm: active openrouter, fallback order openrouter -> openai",
        "  provider openai: openai http://127.0.0.1:9/v1 model gpt-4o-mini (key available)",
        "  provider openrouter: openrouter https://openrouter.ai/api/v1 model"
        " openai/gpt-4o-mini (key available)",
    ]
    assert OPENAI_KEY not in result.stdout and OPENROUTER_KEY not in result.stdout


@pytest.fixture
def simulators(tmp_path: Path) -> Iterator[tuple[SimulatorChild, SimulatorChild]]:
    openai = SimulatorChild({"api_keys": [OPENAI_KEY]}, directory=tmp_path)
    try:
        openrouter = SimulatorChild({"api_keys": [OPENROUTER_KEY], "flavor": "openrouter"},
                                    directory=tmp_path)
        try:
            yield openai, openrouter
        finally:
            openrouter.stop()
    finally:
        openai.stop()


async def test_the_specification_block_serves_a_conversation(
    tmp_path: Path, simulators: tuple[SimulatorChild, SimulatorChild]
) -> None:
    openai, openrouter = simulators
    path = Path(shutil.copy(SPEC_CONFIG, tmp_path / "config.yaml"))
    server = ServerChild(path, env={
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENROUTER_API_KEY": OPENROUTER_KEY,
        base_url_variable("openai"): openai.url + "/v1",
        base_url_variable("openrouter"): openrouter.url + "/v1",
    })
    try:
        assert server.health()["simulated"] is False
        ws = await connect(server.ws_url)
        try:
            envelopes = await chat(ws, "hello world", streaming=True)
        finally:
            await ws.close()
    finally:
        assert server.stop() == 0, server.output
    assert text_of(envelopes) == "Echo: hello world", envelopes
    assert envelopes[0]["status"] == "processing"
    assert envelopes[-1]["status"] == "complete"
    # The active provider (OpenRouter) answered, with the key from its environment variable.
    assert openrouter.stats()["by_status"] == {"200": 1}
    assert openai.stats()["total_requests"] == 0
