"""Tests for server.config and actors.config: loading, error messages, keys, merging."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from actors.llm import CostConfig, LLMAuthError, LLMConfig, ProviderConfig
from server.config import AppConfig, ConfigError, ServerConfig, load_config

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config.yaml"
SECRET = "sk-test-0123456789abcdefSECRET"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run every test in an empty directory with no credentials in the environment."""
    monkeypatch.chdir(tmp_path)
    for name in ("OPENAI_API_KEY", "OPENROUTER_API_KEY", "MCP_BACKEND_TOKEN", "LOCAL_KEY"):
        monkeypatch.delenv(name, raising=False)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def load_error(text: str) -> str:
    """Write ``config.yaml`` in the working directory, load it, return the error message."""
    write(Path("config.yaml"), text)
    with pytest.raises(ConfigError) as info:
        load_config("config.yaml")
    return str(info.value)


# Defaults and the shipped config.yaml


def test_defaults_load_without_a_file_or_an_api_key() -> None:
    config = load_config(None)

    assert config == AppConfig()
    assert config.llm.active == "openrouter"
    assert config.llm.candidate_order() == ["openrouter", "openai"]
    assert config.llm.providers["openai"].base_url == "https://api.openai.com/v1"
    assert config.llm.providers["openrouter"].base_url == "https://openrouter.ai/api/v1"
    assert config.llm.providers_with_credentials() == []
    assert config.mcp_servers["demo"].command == sys.executable
    assert config.mcp_servers["time"].enabled is False
    assert config.simulator.enabled == "auto"
    assert config.server.host == "127.0.0.1"


def test_repository_config_yaml_validates() -> None:
    config = load_config(REPO_CONFIG)

    assert config.llm.candidate_order() == ["openrouter", "openai"]
    assert config.llm.providers["openrouter"].api_key_env == "OPENROUTER_API_KEY"
    assert config.llm.providers["openai"].api_key_env == "OPENAI_API_KEY"
    assert config.llm.providers["openrouter"].model == "openai/gpt-4o-mini"
    assert config.llm.providers["openai"].model == "gpt-4o-mini"
    assert config.mcp_servers["demo"].args == ["-m", "server.demo_mcp_server"]
    assert config.mcp_servers["time"].command == "mcp-server-time"
    assert config.llm.cost.db_path == str(REPO_CONFIG.parent / "data" / "ledger.sqlite3")


def test_repository_config_yaml_states_the_builtin_defaults() -> None:
    def comparable(config: AppConfig) -> dict[str, Any]:
        data = config.model_dump_safe()
        data["mcpServers"]["demo"]["command"] = "python"
        data["llm"]["cost"]["db_path"] = Path(data["llm"]["cost"]["db_path"]).name
        data["chat"]["history_db"] = Path(data["chat"]["history_db"]).name
        return data

    assert comparable(load_config(REPO_CONFIG)) == comparable(AppConfig())


def test_empty_file_gives_the_defaults() -> None:
    write(Path("config.yaml"), "# nothing configured\n")
    assert load_config("config.yaml") == AppConfig()


# Error messages name the file and the key path


def test_wrong_value_names_the_file_and_the_key_path() -> None:
    message = load_error(
        "llm:\n  providers:\n    openai:\n      kind: openai\n      model: gpt-4o\n"
        "      temperature: 3\n"
    )
    assert message == (
        "config.yaml: llm.providers.openai.temperature: Input should be less than or equal to 2"
    )


def test_unknown_key_is_not_allowed_and_says_where() -> None:
    message = load_error(
        "llm:\n  providers:\n    openai:\n      kind: openai\n      model: gpt-4o\n"
        "      temprature: 0.5\n"
    )
    assert message == (
        "config.yaml: llm.providers.openai.temprature: unknown key 'temprature' is not allowed"
        " in llm.providers.openai (did you mean 'temperature'?)"
    )


def test_unknown_top_level_section_is_reported() -> None:
    assert load_error("servre:\n  port: 1\n") == (
        "config.yaml: servre: unknown key 'servre' is not allowed in the top level"
        " (did you mean 'server'?)"
    )


def test_every_failing_key_is_reported_on_its_own_line() -> None:
    message = load_error(
        "llm:\n  cost: {day_timezone: Mars/Olympus, daily_cost_limit: -1}\nserver: {port: 70000}\n"
    )
    assert message.splitlines() == [
        "config.yaml: llm.cost.daily_cost_limit: Input should be greater than 0",
        "config.yaml: llm.cost.day_timezone: unknown time zone 'Mars/Olympus'",
        "config.yaml: server.port: Input should be less than or equal to 65535",
    ]


def test_list_items_are_addressed_by_index() -> None:
    message = load_error("mcpServers:\n  demo:\n    command: python\n    args: [-m, [x]]\n")
    assert message == "config.yaml: mcpServers.demo.args[1]: Input should be a valid string"


def test_references_to_unknown_providers_are_rejected() -> None:
    assert load_error("llm:\n  active: anthropic\n") == (
        "config.yaml: llm.active: unknown provider 'anthropic' (known: openrouter, openai)"
    )
    assert load_error("llm:\n  fallback_order: [openai, local]\n") == (
        "config.yaml: llm.fallback_order: unknown providers ['local'] (known: openrouter, openai)"
    )


def test_openai_compatible_provider_needs_a_base_url() -> None:
    message = load_error(
        "llm:\n  providers:\n    local: {kind: openai-compatible, model: llama3}\n"
    )
    assert message == (
        "config.yaml: llm.providers.local: base_url is required for kind 'openai-compatible'"
    )


def test_yaml_syntax_error_gives_the_line() -> None:
    message = load_error("llm:\n  active: openai\n    providers: {}\n")
    assert message == (
        "config.yaml: line 3, column 14: invalid YAML: mapping values are not allowed here"
    )


def test_duplicate_key_is_an_error_with_its_line() -> None:
    message = load_error("server:\n  port: 1\nchat: {}\nserver:\n  port: 2\n")
    assert message == "config.yaml: line 4, column 1: invalid YAML: found duplicate key 'server'"


def test_missing_file_and_non_mapping_top_level_are_reported() -> None:
    with pytest.raises(ConfigError, match=r"^nope\.yaml: file not found$"):
        load_config("nope.yaml")
    assert load_error("- a\n- b\n") == (
        "config.yaml: the top level must be a mapping of sections, not list"
    )


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# Provider settings


def test_provider_defaults_follow_its_kind() -> None:
    config = LLMConfig.model_validate(
        {
            "providers": {
                "local": {
                    "kind": "openai-compatible",
                    "base_url": "http://127.0.0.1:11434/v1/",
                    "model": "llama3",
                    "requires_api_key": False,
                },
                "openai": {"kind": "openai", "model": "gpt-4o-mini"},
            }
        }
    )
    assert config.active == "local"
    assert config.fallback_order == ["local", "openai"]
    assert config.providers["local"].base_url == "http://127.0.0.1:11434/v1"
    assert config.providers["local"].read_api_key() is None
    assert config.providers["openai"].api_key_env == "OPENAI_API_KEY"
    assert config.providers_with_credentials() == ["local"]


def test_candidate_order_puts_active_first_without_duplicates() -> None:
    config = LLMConfig(active="openai", fallback_order=["openrouter", "openai", "openrouter"])
    assert config.candidate_order() == ["openai", "openrouter"]


def test_native_fallbacks_are_only_for_openrouter() -> None:
    with pytest.raises(ValidationError, match="use_native_fallbacks is only supported by kind"):
        ProviderConfig.model_validate(
            {"kind": "openai", "model": "gpt-4o", "use_native_fallbacks": True}
        )


def test_keepalive_connections_cannot_exceed_the_pool() -> None:
    with pytest.raises(ValidationError, match=r"max_keepalive_connections \(5\) must not exceed"):
        ProviderConfig.model_validate(
            {"kind": "openai", "model": "m", "max_connections": 2, "max_keepalive_connections": 5}
        )


def test_models_lists_the_primary_then_fallbacks_once() -> None:
    provider = ProviderConfig.model_validate(
        {"kind": "openai", "model": "a", "fallback_models": ["b", "a", "c"]}
    )
    assert provider.models == ["a", "b", "c"]


def test_cost_day_timezone_is_validated() -> None:
    assert CostConfig(day_timezone="Europe/Paris").day_timezone == "Europe/Paris"
    with pytest.raises(ValidationError, match="unknown time zone 'Nowhere/Land'"):
        CostConfig(day_timezone="Nowhere/Land")


# API keys: .env, files, rotation, never displayed


def test_dotenv_next_to_the_config_file_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    write(config_dir / ".env", f"OPENAI_API_KEY={SECRET}\n")
    config_file = write(config_dir / "config.yaml", "llm: {active: openai}\n")

    config = load_config(config_file)

    key = config.llm.providers["openai"].read_api_key()
    assert key is not None
    assert key.get_secret_value() == SECRET
    assert config.llm.providers_with_credentials() == ["openai"]


def test_dotenv_in_the_working_directory_never_overrides_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write(Path(".env"), "OPENAI_API_KEY=from-dotenv\nOPENROUTER_API_KEY=router-from-dotenv\n")
    monkeypatch.setenv("OPENAI_API_KEY", "from-environment")

    config = load_config(None)

    openai_key = config.llm.providers["openai"].read_api_key()
    router_key = config.llm.providers["openrouter"].read_api_key()
    assert openai_key is not None and openai_key.get_secret_value() == "from-environment"
    assert router_key is not None and router_key.get_secret_value() == "router-from-dotenv"


def test_missing_required_key_names_the_variable_and_the_file() -> None:
    provider = ProviderConfig.model_validate(
        {
            "kind": "openai-compatible",
            "base_url": "http://127.0.0.1:1/v1",
            "model": "m",
            "api_key_env": "LOCAL_KEY",
            "api_key_file": "/nonexistent/key",
        }
    )
    with pytest.raises(LLMAuthError) as info:
        provider.read_api_key(provider="local")
    assert str(info.value) == (
        "no API key: environment variable LOCAL_KEY is not set or empty;"
        " key file '/nonexistent/key' cannot be read (No such file or directory) (local)"
    )
    assert info.value.provider == "local"
    assert not provider.has_api_key()


def test_key_file_is_read_again_after_rotation(tmp_path: Path) -> None:
    write(
        Path("config.yaml"),
        "llm:\n  providers:\n    local:\n      kind: openai-compatible\n"
        "      base_url: http://127.0.0.1:1/v1\n      model: m\n"
        "      api_key_file: secrets/local.key\n",
    )
    (tmp_path / "secrets").mkdir()
    key_file = write(tmp_path / "secrets" / "local.key", "first-key\n")
    provider = load_config("config.yaml").llm.providers["local"]
    assert provider.api_key_file == str(key_file)

    first = provider.read_api_key()
    write(key_file, "second-key\n")
    second = provider.read_api_key()

    assert first == SecretStr("first-key")
    assert second == SecretStr("second-key")


def test_environment_variable_is_read_again_on_every_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = LLMConfig().providers["openai"]
    monkeypatch.setenv("OPENAI_API_KEY", "old")
    assert provider.read_api_key() == SecretStr("old")
    monkeypatch.setenv("OPENAI_API_KEY", "new")
    assert provider.read_api_key() == SecretStr("new")


def test_api_key_never_appears_in_reprs_strings_dumps_or_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    write(
        Path("config.yaml"),
        f"server:\n  auth_token: {SECRET}\n"
        "mcpServers:\n  remote:\n    url: http://127.0.0.1:1/mcp\n"
        f"    headers: {{Authorization: Bearer {SECRET}}}\n",
    )
    config = load_config("config.yaml")
    key = config.llm.providers["openai"].read_api_key()
    token = config.server.read_auth_token()
    assert key is not None and token is not None
    assert token.get_secret_value() == SECRET

    shown = [
        repr(key),
        str(key),
        repr(config),
        str(config),
        repr(config.server),
        json.dumps(config.model_dump_safe()),
    ]
    for text in shown:
        assert SECRET not in text

    provider = ProviderConfig.model_validate(
        {"kind": "openai", "model": "m", "extra_headers": {"X-Proxy-Key": SECRET, "X-Env": "dev"}}
    )
    assert SECRET not in repr(provider)
    assert SECRET not in str(provider)
    assert "'X-Env': 'dev'" in repr(provider)

    # A key pasted where it does not belong is rejected without being echoed.
    message = load_error(
        f"llm:\n  providers:\n    openai: {{kind: openai, model: m, api_key: {SECRET}}}\n"
        f"server: {{auth_token: [{SECRET}]}}\n"
    )
    assert SECRET not in message
    assert "llm.providers.openai.api_key: unknown key 'api_key' is not allowed" in message


def test_safe_dump_masks_secret_env_and_header_values() -> None:
    config = AppConfig.model_validate(
        {
            "mcpServers": {
                "gh": {
                    "command": "gh-mcp",
                    "env": {"GITHUB_TOKEN": "ghp_abcdef", "LOG_LEVEL": "debug"},
                },
            },
            "server": {"auth_token": "t0ken-value"},
        }
    )
    dump = config.model_dump_safe()
    assert dump["mcpServers"]["gh"]["env"] == {"GITHUB_TOKEN": "**********", "LOG_LEVEL": "debug"}
    assert dump["server"]["auth_token"] == "**********"
    assert "t0ken-value" not in json.dumps(dump)


def test_auth_token_comes_from_the_config_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ServerConfig().read_auth_token() is None
    monkeypatch.setenv("MCP_BACKEND_TOKEN", "from-env")
    assert ServerConfig().read_auth_token() == SecretStr("from-env")
    assert ServerConfig(auth_token=SecretStr("inline")).read_auth_token() == SecretStr("inline")
    assert ServerConfig(auth_token_env=None).read_auth_token() is None


# The mcpServers JSON file


def test_mcp_servers_json_file_is_merged_and_the_yaml_wins(tmp_path: Path) -> None:
    write(
        tmp_path / "claude.json",
        json.dumps(
            {
                "globalShortcut": "Ctrl+Space",
                "mcpServers": {
                    "fs": {"command": "mcp-server-filesystem", "args": ["/tmp"]},
                    "demo": {"command": "should-be-overridden"},
                },
            }
        ),
    )
    write(
        Path("config.yaml"),
        "mcp_servers_file: claude.json\nmcpServers:\n  demo: {command: python}\n",
    )

    config = load_config("config.yaml")

    assert set(config.mcp_servers) == {"fs", "demo"}
    assert config.mcp_servers["fs"].args == ["/tmp"]
    assert config.mcp_servers["demo"].command == "python"
    assert config.mcp_servers_file == str(tmp_path / "claude.json")


def test_mcp_servers_json_file_alone_replaces_the_builtin_servers(tmp_path: Path) -> None:
    write(tmp_path / "servers.json", '{"mcpServers": {"fs": {"url": "http://127.0.0.1:1/mcp"}}}')
    write(Path("config.yaml"), "mcp_servers_file: servers.json\n")
    assert list(load_config("config.yaml").mcp_servers) == ["fs"]


def test_errors_in_the_json_file_name_that_file(tmp_path: Path) -> None:
    json_file = write(tmp_path / "servers.json", '{"mcpServers": {"fs": {"args": []}}}')
    message = load_error("mcp_servers_file: servers.json\n")
    assert message == (
        f"{json_file}: mcpServers.fs: give exactly one of 'command' (stdio) or 'url'"
        " (streamable HTTP)"
    )

    write(json_file, '{"mcpServers": {"fs": {"command": "x",}}}')
    assert re.fullmatch(
        re.escape(str(json_file)) + r": line 1, column \d+: invalid JSON: .+",
        load_error("mcp_servers_file: servers.json\n"),
    )

    write(json_file, '{"servers": {}}')
    assert load_error("mcp_servers_file: servers.json\n") == (
        f'{json_file}: expected an object with an "mcpServers" object'
    )


def test_missing_json_file_is_reported_against_the_config(tmp_path: Path) -> None:
    message = load_error("mcp_servers_file: missing.json\n")
    assert message == (
        f"config.yaml: mcp_servers_file: cannot read {tmp_path / 'missing.json'}"
        " (No such file or directory)"
    )


PROXY_PASSWORD = "pr0xy-pa55word"


def test_a_base_url_with_credentials_is_masked_in_every_repr_and_error() -> None:
    url = f"https://team:{PROXY_PASSWORD}@proxy.example/v1"
    provider = ProviderConfig(kind="openai-compatible", base_url=url, model="m",
                              requires_api_key=False)
    config = LLMConfig(providers={"proxy": provider}, active="proxy", fallback_order=["proxy"])
    assert provider.base_url == url  # used as given
    for shown in (repr(provider), str(provider), repr(config), repr(AppConfig(llm=config))):
        assert PROXY_PASSWORD not in shown and "team" not in shown, shown
        assert "https://***@proxy.example/v1" in shown
    with pytest.raises(ValidationError) as info:
        ProviderConfig(kind="openai-compatible", base_url=f"ftp://team:{PROXY_PASSWORD}@host/",
                       model="m")
    assert PROXY_PASSWORD not in str(info.value)
    assert "got 'ftp://***@host/'" in str(info.value)
