"""The specification's ``LLMMetrics`` (section 8, "Monitoring and Observability"), review 8: its
public counters and its summary, as the specification's own code keeps them."""

from __future__ import annotations

from actors.llm.client_api import LLMMetrics


def test_llm_metrics_keeps_the_specifications_counters_per_provider_and_model() -> None:
    metrics = LLMMetrics()
    metrics.record_request("openai", "gpt-4o", 100, 0.25, 300.0)
    metrics.record_request("openai", "gpt-4o", 50, None, 100.0, "LLMRateLimitError")
    metrics.record_request("openrouter", "openai/gpt-4o-mini", 7, 0.0, 5.0, "LLMAuthError")
    assert metrics.request_count == {"openai:gpt-4o": 2, "openrouter:openai/gpt-4o-mini": 1}
    assert metrics.token_usage == {"openai:gpt-4o": 150, "openrouter:openai/gpt-4o-mini": 7}
    # ``if cost: self.cost_tracking[key] += cost``: no cost, no entry.
    assert metrics.cost_tracking == {"openai:gpt-4o": 0.25}
    assert metrics.error_count == {"openai:gpt-4o:LLMRateLimitError": 1,
                                   "openrouter:openai/gpt-4o-mini:LLMAuthError": 1}
    # defaultdicts, as the specification's: a key never seen reads 0.
    assert (metrics.request_count["x:y"], metrics.token_usage["x:y"],
            metrics.cost_tracking["x:y"], metrics.error_count["x:y:E"]) == (0, 0, 0.0, 0)


def test_avg_response_time_is_over_the_last_100_times_of_each_model() -> None:
    # ``Keep only recent response times (last 100)``; the average is over what is kept.
    metrics = LLMMetrics()
    metrics.record_request("openai", "gpt-4o", 10, None, 10_000.0)
    for _ in range(100):
        metrics.record_request("openai", "gpt-4o", 10, None, 100.0)
    assert metrics.get_summary()["avg_response_time"] == 100.0
