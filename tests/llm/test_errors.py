"""Tests for actors.errors: the hierarchy, retryability, redaction, pickling and repr."""

from __future__ import annotations

import pickle

import pytest

from actors.llm import (
    ContentRefused,
    LLMAuthError,
    LLMBadRequestError,
    LLMClientError,
    LLMConnectionError,
    LLMCostLimitError,
    LLMModelNotFoundError,
    LLMQuotaExceededError,
    LLMRateLimitError,
    LLMServerError,
    LLMStreamingError,
    LLMTimeoutError,
    LLMTokenLimitError,
    ProviderUnavailable,
    redact,
)

KEY = "sk-proj-AbCdEf0123456789xyz"

RETRYABLE = [
    LLMRateLimitError,
    LLMTimeoutError,
    LLMConnectionError,
    LLMServerError,
    ProviderUnavailable,
]
NOT_RETRYABLE = [
    LLMQuotaExceededError,
    LLMAuthError,
    LLMTokenLimitError,
    LLMModelNotFoundError,
    LLMCostLimitError,
    LLMBadRequestError,
    ContentRefused,
]


@pytest.mark.parametrize("cls", RETRYABLE)
def test_transient_errors_are_retryable(cls: type[LLMClientError]) -> None:
    assert cls("x").retryable is True


@pytest.mark.parametrize("cls", NOT_RETRYABLE)
def test_permanent_errors_are_not_retryable(cls: type[LLMClientError]) -> None:
    assert cls("x").retryable is False


@pytest.mark.parametrize(
    ("cls", "provider_specific"),
    [
        (LLMAuthError, True),
        (LLMQuotaExceededError, True),
        (LLMModelNotFoundError, True),
        (LLMTokenLimitError, False),
        (LLMBadRequestError, False),
        (LLMCostLimitError, False),
        (ContentRefused, False),
    ],
)
def test_non_retryable_errors_say_whether_another_provider_may_succeed(
    cls: type[LLMClientError], provider_specific: bool
) -> None:
    assert cls("x").provider_specific is provider_specific


def test_every_error_derives_from_the_base() -> None:
    for cls in [*RETRYABLE, *NOT_RETRYABLE, LLMStreamingError]:
        assert issubclass(cls, LLMClientError)
    assert issubclass(LLMQuotaExceededError, LLMRateLimitError)


def test_retryable_can_be_overridden_per_instance() -> None:
    error = LLMServerError("x", retryable=False)
    assert error.retryable is False
    assert LLMServerError.retryable is True


def test_streaming_error_is_retryable_only_before_the_first_chunk() -> None:
    assert LLMStreamingError("x").retryable is True
    assert LLMStreamingError("x", partial_text="Hel").retryable is False
    assert LLMStreamingError("x", partial_text="Hel", retryable=True).retryable is True


def test_str_names_provider_and_model() -> None:
    error = LLMTimeoutError("request timed out", provider="openai", model="gpt-4o")
    assert str(error) == "request timed out (openai:gpt-4o)"
    assert str(LLMTimeoutError("request timed out")) == "request timed out"


def test_repr_shows_fields() -> None:
    error = LLMRateLimitError("slow down", provider="openai", status_code=429, retry_after=2.0)
    assert repr(error) == (
        "LLMRateLimitError('slow down', provider='openai', status_code=429, retry_after=2.0)"
    )


@pytest.mark.parametrize(
    "error",
    [
        LLMRateLimitError("a", provider="p", model="m", status_code=429, retry_after=1.5),
        LLMQuotaExceededError("b", provider="p", status_code=402),
        LLMStreamingError("c", partial_text="half", provider="p"),
        LLMStreamingError("c", partial_text="half", retryable=True),
        ProviderUnavailable("d", retry_after=3.0),
        LLMServerError("e", retryable=False),
        LLMAuthError("f", provider="openrouter", model="x", status_code=401),
    ],
)
def test_errors_round_trip_through_pickle(error: LLMClientError) -> None:
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert repr(clone) == repr(error)
    assert clone.retryable is error.retryable
    assert vars(clone) == vars(error)


def test_redact_replaces_given_secrets() -> None:
    assert redact("key abcdef1234 is bad", ["abcdef1234"]) == "key [REDACTED] is bad"


def test_redact_replaces_key_shaped_text_even_when_not_given() -> None:
    text = f"Incorrect API key provided: {KEY}. Header: Authorization: Bearer abc.def-ghi"
    assert redact(text) == (
        "Incorrect API key provided: [REDACTED]. Header: Authorization: [REDACTED]"
    )


def test_redact_ignores_tiny_secrets() -> None:
    assert redact("a b c", ["a", ""]) == "a b c"


def test_redact_prefers_the_longest_secret() -> None:
    assert redact("xyz-secret-long", ["secret", "xyz-secret-long"]) == "[REDACTED]"


def test_redact_leaves_ordinary_words_alone() -> None:
    text = "task-manager on disk-cleanup; the bearer of bad news"
    assert redact(text) == text


def test_error_messages_are_scrubbed_even_when_built_by_hand() -> None:
    error = LLMAuthError(f"bad key {KEY}", provider="openai")
    assert KEY not in str(error)
    assert KEY not in repr(error)
    assert error.message == "bad key [REDACTED]"
