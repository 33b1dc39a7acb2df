"""Hostile or careless configuration input: each is one ``ConfigError`` (or exit 1), never a
traceback; ``~`` and relative paths mean the same whatever the working directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from server.config import ConfigError, load_config
from tests.server_harness import ROOT, server_env, write_config


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An empty working directory, and a home directory of the test's own."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _config(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_tilde_is_expanded_in_every_database_path(tmp_path: Path) -> None:
    path = _config(tmp_path / "etc", "chat:\n  history_db: ~/h.sqlite3\n"
                   "llm:\n  cost:\n    db_path: ~/data/l.sqlite3\n")
    config = load_config(path)
    assert config.chat.history_db == str(tmp_path / "home" / "h.sqlite3")
    assert config.llm.cost.db_path == str(tmp_path / "home" / "data" / "l.sqlite3")


def test_tilde_of_an_unknown_user_is_a_config_error(tmp_path: Path) -> None:
    path = _config(tmp_path / "etc", "chat:\n  history_db: ~nosuchuser-7f3/h.sqlite3\n")
    assert _error(path) == (
        f"{path}: chat.history_db: cannot expand '~nosuchuser-7f3': no such user"
    )


def test_an_env_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = _config(tmp_path / "etc", "chat:\n  max_tool_hops: 2\n")
    (tmp_path / "etc" / ".env").write_bytes(b"OPENAI_API_KEY=abc\xff\xfe\n")
    env_file = tmp_path / "etc" / ".env"
    assert _error(path) == f"{env_file}: not UTF-8 text (byte 19 cannot be decoded)"


def test_deeply_nested_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = _config(tmp_path / "etc", "chat: " + "[" * 20_000 + "]" * 20_000 + "\n")
    assert _error(path) == f"{path}: invalid YAML: nested too deeply"


def test_deeply_nested_json_in_the_mcp_servers_file_is_a_config_error(tmp_path: Path) -> None:
    servers = tmp_path / "etc" / "servers.json"
    path = _config(tmp_path / "etc", "mcp_servers_file: servers.json\n")
    servers.write_text('{"mcpServers": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert _error(path) == f"{servers}: invalid JSON: nested too deeply"


def test_relative_mcp_command_and_cwd_resolve_against_the_declaring_file(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    path = _config(etc, "mcp_servers_file: more/servers.json\n"
                   "mcpServers:\n"
                   "  local:\n    command: ./tools/server.py\n    cwd: work\n"
                   "  npx:\n    command: npx\n    args: [./not-a-path-of-ours]\n"
                   "  home:\n    command: ~/bin/tool\n")
    (etc / "more").mkdir()
    (etc / "more" / "servers.json").write_text(json.dumps(
        {"mcpServers": {"json": {"command": "bin/tool", "cwd": "."}}}))
    servers = load_config(path).mcp_servers
    assert (servers["local"].command, servers["local"].cwd) == (
        str(etc / "tools" / "server.py"), str(etc / "work"))
    assert (servers["npx"].command, servers["npx"].args, servers["npx"].cwd) == (
        "npx", ["./not-a-path-of-ours"], None)
    assert servers["home"].command == str(tmp_path / "home" / "bin" / "tool")
    assert (servers["json"].command, servers["json"].cwd) == (
        str(etc / "more" / "bin" / "tool"), str(etc / "more"))


@pytest.mark.parametrize("command", ["serve", "check-config"])
def test_a_history_db_that_cannot_be_created_exits_1_with_one_line(
    tmp_path: Path, command: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    config = write_config(tmp_path, simulator_url="http://127.0.0.1:9", mcp_servers={},
                          chat={"history_db": str(blocker / "history.sqlite3")})
    argv = [sys.executable, "-m", "server", command,
            *(["--config", str(config)] if command == "serve" else [str(config)])]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=server_env(),
                            cwd=ROOT)
    assert (result.returncode, result.stdout, result.stderr) == (
        1, "", f"chat.history_db: cannot use {blocker / 'history.sqlite3'}:"
               f" {blocker} is not a directory\n")


def test_a_shared_reservation_ttl_shorter_than_a_request_may_run_is_a_config_error(
        tmp_path: Path) -> None:
    """A request may run up to the ledger's reservation TTL (600 s): a shared reservation that
    expired sooner would let its money be granted twice while the call still runs."""
    path = _config(tmp_path, "cluster:\n  redis_url: redis://127.0.0.1:6379/0\n"
                             "  reservation_ttl: 120\n")
    assert _error(path) == (f"{path}: cluster.reservation_ttl: Input should be greater than or"
                            " equal to 600")
    assert load_config(_config(tmp_path / "ok", "cluster:\n  reservation_ttl: 600\n")
                       ).cluster.reservation_ttl == 600
