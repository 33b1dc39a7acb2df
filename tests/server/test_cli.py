"""The ``mcp-backend`` command line, run as a real process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from runtime.gc_tuning import YOUNG_THRESHOLD
from server.cli import SWITCH_INTERVAL
from tests.server_harness import ServerChild, server_env, write_config

SECRET = "sk-test-abcdefghijklmnop0123"


def _run(*args: str, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args], capture_output=True, text=True, timeout=30,
        cwd=cwd, env=server_env(env),
    )


def test_help_lists_the_commands() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for command in ("serve", "check-config", "simulator"):
        assert command in result.stdout


def test_simulator_help_is_the_simulators_own() -> None:
    result = _run("simulator", "--help")
    assert result.returncode == 0
    assert "--flavor" in result.stdout


def test_check_config_of_the_repository_file_prints_ok_and_a_masked_summary() -> None:
    result = _run("check-config", "config.yaml", cwd=Path(__file__).parents[2],
                  env={"OPENAI_API_KEY": SECRET})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "OK: config.yaml"
    assert "provider openai: openai https://api.openai.com/v1 model gpt-4o-mini (key available)" \
        in result.stdout
    assert "provider openrouter: openrouter https://openrouter.ai/api/v1 model" \
        " openai/gpt-4o-mini (NO KEY)" in result.stdout
    assert "mcp server demo: stdio" in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_check_config_hides_the_credentials_of_a_base_url(tmp_path: Path) -> None:
    password = "hunter2supersecret"
    config = tmp_path / "config.yaml"
    config.write_text(
        "llm:\n  providers:\n    proxy:\n      kind: openai-compatible\n"
        f"      base_url: http://admin:{password}@127.0.0.1:9/v1?key={SECRET}\n"
        "      model: gpt-4o-mini\n      requires_api_key: false\n"
        f"  cost: {{db_path: {tmp_path}/ledger.sqlite3}}\n"
        f"chat: {{history_db: {tmp_path}/history.sqlite3}}\nmcpServers: {{}}\n"
    )
    result = _run("check-config", str(config))
    assert result.returncode == 0, result.stderr
    assert "  provider proxy: openai-compatible http://***@127.0.0.1:9/v1?key=[REDACTED] model" \
        " gpt-4o-mini (no key needed)" in result.stdout.splitlines()
    assert password not in result.stdout + result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_check_config_without_a_path_uses_the_built_in_defaults(tmp_path: Path) -> None:
    result = _run("check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "OK: (built-in defaults)"
    assert "simulator: will be used (simulator.enabled: auto)" in result.stdout


def test_check_config_names_the_file_and_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("server:\n  port: 70000\nchat:\n  max_tool_hopz: 3\n")
    result = _run("check-config", str(config))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{config}: server.port: Input should be less than or equal to 65535",
        f"{config}: chat.max_tool_hopz: unknown key 'max_tool_hopz' is not allowed in chat"
        " (did you mean 'max_tool_hops'?)",
    ]


def test_check_config_of_a_missing_file_fails(tmp_path: Path) -> None:
    result = _run("check-config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"{tmp_path / 'nope.yaml'}: file not found"


def test_check_config_refuses_a_public_bind_without_a_token(tmp_path: Path) -> None:
    config = tmp_path / "public.yaml"
    config.write_text("server:\n  host: 0.0.0.0\n")
    result = _run("check-config", str(config))
    assert result.returncode == 1
    assert "refusing to listen on 0.0.0.0" in result.stderr
    assert _run("check-config", str(config), env={"MCP_BACKEND_TOKEN": "t0ken-value"}
                ).returncode == 0


def test_serve_with_an_invalid_config_exits_1_with_the_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("llm:\n  active: nobody\n")
    result = _run("serve", "--config", str(config))
    assert result.returncode == 1
    assert f"{config}: llm.active: unknown provider 'nobody'" in result.stderr


def test_serve_with_a_port_out_of_range_exits_1_with_one_line_naming_the_option(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, simulator_url=None, mcp_servers={})
    for port, problem in (("70000", "less than or equal to 65535"),
                          ("-1", "greater than or equal to 0")):
        result = _run("serve", "--config", str(config), "--port", port)
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.splitlines() == [f"--port: Input should be {problem}"]


def test_check_config_refuses_a_ledger_database_that_cannot_be_used(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger-is-a-directory"
    ledger.mkdir()
    config = tmp_path / "ledger.yaml"
    config.write_text(f"llm:\n  cost:\n    db_path: {ledger}\n")
    result = _run("check-config", str(config))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"llm.cost.db_path: the ledger database {str(ledger)!r} cannot be used:"
        " unable to open database file"
    ]


def test_serve_refuses_a_ledger_held_by_another_server_with_exit_1(tmp_path: Path) -> None:
    first = ServerChild(write_config(tmp_path, simulator_url=None, mcp_servers={},
                                     simulator="always"))
    try:
        result = _run("serve", "--config", str(tmp_path / "config.yaml"))
    finally:
        assert first.stop() == 0, first.output
    assert result.returncode == 1
    ledger = tmp_path / "ledger.simulated.sqlite3"  # demo mode keeps its own ledger file
    assert result.stderr.splitlines()[-1] == (
        f"the ledger database {str(ledger)!r} is in use by another process (pid {first.pid});"
        " two servers on one ledger file would each spend the whole daily limit: give each its"
        " own cost.db_path, or share one budget through cluster.redis_url"
    )


def test_serve_tunes_the_garbage_collector_once_started(tmp_path: Path) -> None:
    server = ServerChild(write_config(tmp_path, simulator_url=None, mcp_servers={},
                                      simulator="always"))
    assert server.stop() == 0, server.output
    tuned = re.findall(r"garbage collector tuned: (\d+) start-up objects frozen, young threshold"
                       r" (\d+); thread switch interval ([\d.]+) ms", server.output)
    assert len(tuned) == 1, server.output
    frozen, threshold = map(int, tuned[0][:2])
    assert frozen > 10_000  # the modules, classes and config of a started server
    assert threshold == YOUNG_THRESHOLD
    assert float(tuned[0][2]) == SWITCH_INTERVAL * 1000 == 0.5
