"""MetricsStore refuses a finished request whose cost or token counts cannot be counted (NaN,
negative): its counters only grow, and a NaN would stick in them for good."""

from __future__ import annotations

import math

import pytest

from actors.metrics._store import MetricsStore
from tests.metrics.test_store import ok


@pytest.mark.parametrize(("field", "value", "message"), [
    ("cost", math.nan, r"^invalid cost nan$"),
    ("cost", math.inf, r"^invalid cost inf$"),
    ("cost", -5.0, r"^invalid cost -5\.0$"),
    ("prompt_tokens", -1000, r"^invalid prompt_tokens -1000$"),
    ("completion_tokens", -1, r"^invalid completion_tokens -1$"),
    ("cached_tokens", -2, r"^invalid cached_tokens -2$"),
    ("reasoning_tokens", -3, r"^invalid reasoning_tokens -3$"),
])
def test_a_request_with_a_cost_or_count_that_is_not_one_is_refused_without_a_trace(
        field: str, value: float, message: str) -> None:
    store = MetricsStore()
    store.apply(ok())
    with pytest.raises(ValueError, match=message):
        store.apply(ok(**{field: value}))
    summary = store.summary()
    assert (summary["total_requests"], summary["total_cost"], summary["prompt_tokens"],
            summary["completion_tokens"]) == (1, 0.001, 10, 5)
    assert "NaN" not in store.prometheus_text().decode()
