"""The monitoring files in ``deploy/``: promtool checks the alert rules and runs their unit tests;
every metric the rules and the Grafana dashboard query is one a real server's ``/metrics`` exposes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.server_harness import ROOT, ServerChild, chat, connect, http_get, write_config

PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "mcp-backend.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package `prometheus`)"
)

# Series Prometheus itself makes from alerting rules, not scraped from us.
PROMETHEUS_OWN = frozenset({"ALERTS"})

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"\[[^\]]*\]|\{[^}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])[a-zA-Z_:][\w:]*(?![\w:]|\s*\()")
_KEYWORDS = frozenset({"and", "or", "unless", "offset", "bool"})


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    bare = _GROUPING.sub(" ", _BRACKETS.sub(" ", _QUOTED.sub(" ", expr)))
    return {name for name in _IDENTIFIER.findall(bare) if name not in _KEYWORDS}


def test_metric_names_skips_functions_labels_and_keywords() -> None:
    expr = ('histogram_quantile(0.95, sum by (provider, le) (rate(a_bucket{x="y"}[30m] offset 1d)))'
            ' > 1.2 * sum without (model) (b_total) and on (provider) c{le="+Inf"} or vector(0)')
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def exposed_names(body: str) -> set[str]:
    """Every series name a ``/metrics`` body offers, also of families that have no sample yet."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                "gauge": [""], "summary": ["_sum", "_count", ""]}
    names: set[str] = set()
    for family in text_string_to_metric_families(body):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """Series names of a demo-mode server's ``/metrics`` after one chat turn."""
    directory = tmp_path_factory.mktemp("deploy")
    server = ServerChild(write_config(directory, simulator_url=None, simulator="auto",
                                      mcp_servers={}))
    try:
        async def turn() -> None:
            async with await connect(server.ws_url) as ws:
                assert (await chat(ws, "hello"))[-1]["status"] == "complete"

        anyio.run(turn)
        status, _, body = http_get(server.url + "/metrics")
        assert status == 200
        yield exposed_names(body)
    finally:
        assert server.stop() == 0, server.output


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


@needs_promtool
def test_alert_rules_pass_promtool_check() -> None:
    result = _promtool("check", "rules", "alerts.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


@needs_promtool
def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    result = _promtool("test", "rules", "alerts_test.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alerts_are_the_specifications_rollback_triggers() -> None:
    assert [rule["alert"] for rule in _alert_rules()] == [
        "McpBackendLLMErrorRateIncrease",
        "McpBackendLLMLatencyP95Increase",
        "McpBackendLLMLatencyMeanIncrease",
        "McpBackendLLMCostIncrease",
        "McpBackendLLMAuthenticationFailure",
    ]


def test_alerts_query_only_exposed_metrics(exposed: set[str]) -> None:
    used = set().union(*(metric_names(rule["expr"]) for rule in _alert_rules()))
    assert used == {
        "mcp_backend_llm_requests_total",
        "mcp_backend_llm_request_duration_seconds_bucket",
        "mcp_backend_llm_request_duration_seconds_sum",
        "mcp_backend_llm_request_duration_seconds_count",
        "mcp_backend_llm_cost_usd_total",
        "mcp_backend_llm_errors_total",
    }
    assert used <= exposed


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"]
             for target in panel.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    # label_values(metric, label): only its first argument is a metric.
    exprs += [re.sub(r",\s*\w+\)$", ")", v["definition"])
              for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def test_dashboard_queries_only_exposed_metrics(exposed: set[str]) -> None:
    used = set().union(*(metric_names(expr) for expr in _dashboard_exprs()))
    assert used - PROMETHEUS_OWN <= exposed, sorted(used - PROMETHEUS_OWN - exposed)
    # Requests, errors, latency percentiles, TTFT, tokens, cost, breakers, rate limits.
    assert {
        "mcp_backend_llm_requests_total",
        "mcp_backend_llm_errors_total",
        "mcp_backend_llm_request_duration_seconds_bucket",
        "mcp_backend_llm_time_to_first_token_seconds_bucket",
        "mcp_backend_llm_tokens_total",
        "mcp_backend_llm_cost_usd_total",
        "mcp_backend_breaker_state",
        "mcp_backend_breaker_transitions_total",
        "mcp_backend_llm_rate_limited_total",
        "mcp_backend_pool_connections_in_use",
    } <= used
