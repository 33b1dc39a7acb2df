"""Fuzzing ``server.config.load_config``: any file gives an ``AppConfig`` or a ``ConfigError``.

A ``ConfigError`` names the file it is about (``config.yaml`` or the ``mcp_servers_file`` it
names), and never copies a value from the file (a misplaced API key must not reach a log).
Any other exception type is a bug (invariant 7).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.config import AppConfig, ConfigError, load_config

SECRET = "sk-chaos-fuzzsecretvalue0123456789"

KEYS = [
    "llm", "server", "chat", "metrics", "mcpServers", "mcp_servers_file", "simulator",
    "providers", "active", "fallback_order", "cost", "hedging", "request_timeout", "openai",
    "sim", "kind", "base_url", "api_key_env", "api_key_file", "model", "fallback_models",
    "rate_limits", "requests_per_minute", "tokens_per_minute", "breaker", "prices", "input",
    "output", "context_windows", "max_tokens", "temperature", "timeout", "mailbox_size",
    "daily_cost_limit", "max_cost_per_request", "db_path", "day_timezone", "host", "port",
    "auth_token", "auth_token_env", "allowed_origins", "max_message_bytes", "history_db",
    "max_tool_hops", "tool_timeout", "command", "args", "env", "cwd", "url", "headers",
    "enabled", "call_timeout", "failure_rate_threshold", "x", "",
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from([SECRET, "openai", "openai-compatible", "openrouter", "http://127.0.0.1:1/v1",
                     "UTC", "Mars/Olympus", "../../etc/passwd", "~/x", "", "auto"]),
)
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.integers(), st.booleans()), children,
                        max_size=5),
    ),
    max_leaves=25,
)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=5)
raw_texts = st.one_of(
    st.text(max_size=200),
    st.sampled_from([
        "llm: {providers: {a: &x {kind: openai}}, b: *x}", "!!python/object:os.system {}",
        "a: 1\na: 2\n", "llm:\n  providers:\n    - 1\n", "\t- [", "{", "--- a\n--- b\n",
        "server: {port: 0x10000}", "llm: {cost: {day_timezone: 'Nowhere/Land'}}",
        f"llm: {{providers: {{o: {{kind: openai, model: m, api_key_env: '{SECRET}', x: 1}}}}}}",
        f"mcpServers: {{a: {{command: 1, env: {{TOKEN: '{SECRET}'}}, url: u}}}}",
        "mcp_servers_file: missing.json", "mcp_servers_file: garbage.json",
        "mcp_servers_file: list.json", "mcp_servers_file: [1]",
    ]),
)


def check(directory: Path, content: bytes) -> None:
    path = directory / "config.yaml"
    path.write_bytes(content)
    try:
        config = load_config(path)
    except ConfigError as exc:
        message = str(exc)
        # The file at fault: config.yaml, or the mcpServers JSON file it names.
        assert message.startswith(str(directory)), message
        assert SECRET not in message, message
    else:
        assert isinstance(config, AppConfig)


def workdir() -> tempfile.TemporaryDirectory[str]:
    directory = tempfile.TemporaryDirectory(prefix="chaos-config-")
    base = Path(directory.name)
    (base / "garbage.json").write_text('{"mcpServers": {"a": ')
    (base / "list.json").write_text('[1, 2, {"mcpServers": 3}]')
    return directory


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents)
def test_structured_yaml_gives_a_config_or_a_config_error(document: dict[str, Any]) -> None:
    with workdir() as directory:
        check(Path(directory), yaml.safe_dump(document, allow_unicode=True).encode())


@settings(max_examples=200, deadline=None)
@given(text=raw_texts)
def test_raw_text_gives_a_config_or_a_config_error(text: str) -> None:
    with workdir() as directory:
        check(Path(directory), text.encode("utf-8", "surrogatepass"))


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=200))
def test_binary_file_gives_a_config_error(data: bytes) -> None:
    with workdir() as directory:
        check(Path(directory), data)
