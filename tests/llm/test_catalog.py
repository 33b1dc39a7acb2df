"""Tests for actors.catalog: context windows, prices, pre-flight check and cost."""

from __future__ import annotations

import pydantic
import pytest

from actors.llm import LLMTokenLimitError
from actors.llm._catalog import DEFAULT_CONTEXT_WINDOW, ModelCatalog, ModelPrice


@pytest.mark.parametrize(
    ("model", "window"),
    [
        ("gpt-4o", 128_000),
        ("gpt-4o-mini", 128_000),
        ("gpt-4.1", 1_047_576),
        ("gpt-4.1-mini", 1_047_576),
        ("gpt-4", 8_192),
        ("gpt-3.5-turbo", 16_385),
        ("o1", 200_000),
        ("o3-mini", 200_000),
        ("o4-mini", 200_000),
        ("openai/gpt-4o-mini", 128_000),
        ("anthropic/claude-sonnet-4", 200_000),
        ("gpt-4o-2024-08-06", 128_000),
        ("gpt-4-0613", 8_192),
        ("openai/gpt-4o:free", 128_000),
        ("GPT-4o", 128_000),
    ],
)
def test_builtin_context_windows(model: str, window: int) -> None:
    assert ModelCatalog().context_window(model) == window


def test_unknown_model_gets_the_default_window() -> None:
    catalog = ModelCatalog(default_context_window=4096)
    assert catalog.context_window("my-local-llama") == 4096
    assert catalog.knows_context_window("my-local-llama") is False
    assert ModelCatalog().context_window("o3-pro") == DEFAULT_CONTEXT_WINDOW


def test_config_overrides_and_extends_the_builtin_tables() -> None:
    catalog = ModelCatalog(
        context_windows={"gpt-4o": 64_000, "my-model": 32_000},
        prices={"my-model": ModelPrice(input=1.0, output=2.0)},
    )
    assert catalog.context_window("gpt-4o") == 64_000
    assert catalog.context_window("openai/gpt-4o") == 64_000
    assert catalog.context_window("my-model") == 32_000
    assert catalog.price("my-model") == ModelPrice(input=1.0, output=2.0)
    assert catalog.price("gpt-4o-mini") == ModelPrice(input=0.15, output=0.60, cached_input=0.075)


def test_builtin_false_starts_empty() -> None:
    catalog = ModelCatalog(builtin=False)
    assert catalog.price("gpt-4o") is None
    assert catalog.knows_context_window("gpt-4o") is False


def test_invalid_windows_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"^context windows must be positive: \{'x': 0\}$"):
        ModelCatalog(context_windows={"x": 0})
    with pytest.raises(ValueError, match=r"^default_context_window must be positive$"):
        ModelCatalog(default_context_window=0)


def test_model_price_is_frozen_and_validated() -> None:
    price = ModelPrice(input=1.0, output=2.0)
    with pytest.raises(pydantic.ValidationError):
        price.input = 3.0  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        ModelPrice(input=-1.0, output=2.0)


def test_preflight_passes_when_everything_fits_exactly() -> None:
    ModelCatalog().preflight_check(8_000, 192, "gpt-4")


def test_preflight_message_counts_tokens_in_plural() -> None:
    with pytest.raises(LLMTokenLimitError, match=r" by 809 tokens \(gpt-4\)$"):
        ModelCatalog().preflight_check(9_000, None, "gpt-4")


def test_preflight_rejects_prompt_plus_max_tokens_over_the_window() -> None:
    with pytest.raises(LLMTokenLimitError) as info:
        ModelCatalog().preflight_check(8_000, 193, "gpt-4")
    assert info.value.message.endswith("by 1 token")
    assert str(info.value) == (
        "prompt of 8000 tokens plus max_tokens 193 exceeds the context window of gpt-4 "
        "(8192 tokens) by 1 token (gpt-4)"
    )
    assert info.value.retryable is False
    assert info.value.model == "gpt-4"


def test_preflight_without_max_tokens_needs_room_for_one_token() -> None:
    catalog = ModelCatalog()
    catalog.preflight_check(8_191, None, "gpt-4")
    with pytest.raises(
        LLMTokenLimitError,
        match=(
            r"^prompt of 8192 tokens exceeds the context window of gpt-4 \(8192 tokens\) "
            r"by 1 token \(gpt-4\)$"
        ),
    ):
        catalog.preflight_check(8_192, None, "gpt-4")


def test_cost_of_uses_input_cached_and_output_prices() -> None:
    # gpt-4o: 2.50 input, 1.25 cached input, 10.00 output per million tokens.
    cost = ModelCatalog().cost_of("gpt-4o", 1_000_000, 1_000_000, cached_tokens=400_000)
    assert cost == pytest.approx(0.6 * 2.50 + 0.4 * 1.25 + 10.00)


def test_cached_input_defaults_to_the_input_price() -> None:
    catalog = ModelCatalog(prices={"m": ModelPrice(input=2.0, output=4.0)})
    assert catalog.cost_of("m", 1_000, 0, cached_tokens=1_000) == pytest.approx(0.002)


def test_cached_tokens_beyond_the_prompt_are_clamped() -> None:
    catalog = ModelCatalog(prices={"m": ModelPrice(input=2.0, cached_input=1.0, output=4.0)})
    assert catalog.cost_of("m", 100, 0, cached_tokens=500) == pytest.approx(100e-6)


def test_cost_of_an_unpriced_model_is_none_not_zero() -> None:
    assert ModelCatalog().cost_of("my-local-llama", 10, 10) is None


def test_openrouter_names_are_priced_through_their_prefix() -> None:
    catalog = ModelCatalog()
    mini = ModelPrice(input=0.15, output=0.60, cached_input=0.075)
    assert catalog.price("gpt-4o-mini") == mini
    assert catalog.price("openai/gpt-4o-mini") == mini


def test_repr() -> None:
    catalog = ModelCatalog(builtin=False, context_windows={"a": 1}, default_context_window=2)
    assert repr(catalog) == "<ModelCatalog windows=1 prices=0 default_context_window=2>"


def test_lookups_are_the_same_when_repeated_and_past_the_kept_names() -> None:
    catalog = ModelCatalog(context_windows={"my-model": 1000},
                           prices={"my-model": ModelPrice(input=1.0, output=2.0)})
    first = (catalog.context_window("openai/my-model:free"), catalog.price("my-model"),
             catalog.params("o3-mini-2025-01-31"), catalog.knows_context_window("unknown"))
    for i in range(1100):  # more names than a catalog keeps: it starts over, same answers
        assert catalog.context_window(f"unknown-{i}") == DEFAULT_CONTEXT_WINDOW
    again = (catalog.context_window("openai/my-model:free"), catalog.price("my-model"),
             catalog.params("o3-mini-2025-01-31"), catalog.knows_context_window("unknown"))
    assert first == again == (1000, ModelPrice(input=1.0, output=2.0),
                              catalog.params("o3"), False)
    assert first[2].max_tokens_param == "max_completion_tokens"
    assert catalog.cost_of("my-model", 1000, 500) == 0.002
