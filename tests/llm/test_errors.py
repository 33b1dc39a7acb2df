"""Tests for actors.llm._errors: the hierarchy, wire names, retryability, the translation of
kernel errors, redaction, pickling and repr."""

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
    LLMOverloadedError,
    LLMQuotaExceededError,
    LLMRateLimitError,
    LLMServerError,
    LLMStreamingError,
    LLMTimeoutError,
    LLMTokenLimitError,
    ProviderUnavailable,
    as_llm_error,
    redact,
)
from runtime import (
    ActorCrashed,
    ActorError,
    ActorStopped,
    DeadlineExceeded,
    Overloaded,
    RestartIntensityExceeded,
)

KEY = "sk-proj-AbCdEf0123456789xyz"

RETRYABLE = [
    LLMRateLimitError,
    LLMTimeoutError,
    LLMConnectionError,
    LLMServerError,
    LLMOverloadedError,
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


@pytest.mark.parametrize(
    ("cls", "error_type"),
    [
        (LLMClientError, "client"),
        (LLMRateLimitError, "rate_limit"),
        (LLMQuotaExceededError, "quota_exceeded"),
        (LLMAuthError, "auth"),
        (LLMTokenLimitError, "token_limit"),
        (LLMModelNotFoundError, "model_not_found"),
        (LLMStreamingError, "streaming"),
        (LLMCostLimitError, "cost_limit"),
        (LLMTimeoutError, "timeout"),
        (LLMConnectionError, "connection"),
        (LLMServerError, "server"),
        (LLMBadRequestError, "bad_request"),
        (LLMOverloadedError, "overloaded"),
        (ContentRefused, "content_refused"),
        (ProviderUnavailable, "provider_unavailable"),
    ],
)
def test_every_error_declares_its_wire_name(cls: type[LLMClientError], error_type: str) -> None:
    assert cls("x").error_type == error_type


def test_a_private_subclass_keeps_the_wire_name_of_its_public_parent() -> None:
    class _Rejected(LLMAuthError):
        pass

    assert _Rejected("x").error_type == "auth"


@pytest.mark.parametrize(
    ("kernel", "cls", "retryable", "message"),
    [
        (Overloaded("provider:openai", 8), LLMOverloadedError, True,
         "actor 'provider:openai' is overloaded: mailbox full (8 messages) (openai:gpt-4o)"),
        (DeadlineExceeded("router"), LLMTimeoutError, True,
         "actor 'router': no reply before the deadline (openai:gpt-4o)"),
        (ActorCrashed("provider:openai", KeyError("k")), ProviderUnavailable, True,
         "actor 'provider:openai' crashed before replying: KeyError (openai:gpt-4o)"),
        (ActorStopped("router"), ProviderUnavailable, False,
         "actor 'router': actor is stopped (openai:gpt-4o)"),
        (RestartIntensityExceeded("root", "router", 3, 5.0), ProviderUnavailable, False,
         "supervisor 'root' gave up: child 'router' needed more than 3 restarts in 5s"
         " (openai:gpt-4o)"),
    ],
)
def test_kernel_errors_become_llm_errors(
    kernel: ActorError, cls: type[LLMClientError], retryable: bool, message: str
) -> None:
    error = as_llm_error(kernel, provider="openai", model="gpt-4o")
    assert type(error) is cls
    assert error.retryable is retryable
    assert str(error) == message


def test_llm_errors_pass_the_translation_unchanged() -> None:
    error = LLMServerError("boom")
    assert as_llm_error(error, provider="openai") is error
    assert error.provider is None


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
