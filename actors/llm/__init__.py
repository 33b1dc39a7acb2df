"""Calling models: provider actors, the router, the ledger, tokens, and the runtime facade.

The embedding API is :func:`open_runtime`; the specification's client API is
:func:`create_llm_client`. Both raise only :class:`LLMClientError` subclasses.
"""

from ._breaker import BreakerConfig
from ._catalog import ModelCatalog, ModelParams, ModelPrice
from ._client import BaseLLMClient, OpenAIClient, OpenRouterClient, create_llm_client
from ._client_settings import LLMClientConfig, mask_secrets
from ._config import CostConfig, LLMConfig
from ._errors import (
    ContentRefused,
    LLMAuthError,
    LLMBadRequestError,
    LLMClientError,
    LLMConnectionError,
    LLMCostLimitError,
    LLMInvalidJSONError,
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
from ._ledger_lock import LedgerUnavailable, check_ledger
from ._limits import RateLimitConfig
from ._messages import (
    ChatRequest,
    DeltaSink,
    LLMResponse,
    ProviderCall,
    ReasoningDelta,
    StreamEnd,
    TextDelta,
    TokenLogprob,
    ToolCall,
    Usage,
)
from ._provider import provider_child_spec
from ._provider_config import ProviderConfig, infer_kind
from ._runtime import LLMRuntime, build_catalog, configured_models, open_runtime
from ._shared import SharedState
from ._spec_metrics import LLMMetrics
from ._tokens import count_message_tokens, preload_encodings
from ._validation import describe_validation_error

__all__ = [
    "BaseLLMClient",
    "BreakerConfig",
    "ChatRequest",
    "ContentRefused",
    "CostConfig",
    "DeltaSink",
    "LLMAuthError",
    "LLMBadRequestError",
    "LLMClientConfig",
    "LLMClientError",
    "LLMConfig",
    "LLMConnectionError",
    "LLMCostLimitError",
    "LLMInvalidJSONError",
    "LLMMetrics",
    "LLMModelNotFoundError",
    "LLMOverloadedError",
    "LLMQuotaExceededError",
    "LLMRateLimitError",
    "LLMResponse",
    "LLMRuntime",
    "LLMServerError",
    "LLMStreamingError",
    "LLMTimeoutError",
    "LLMTokenLimitError",
    "LedgerUnavailable",
    "ModelCatalog",
    "ModelParams",
    "ModelPrice",
    "OpenAIClient",
    "OpenRouterClient",
    "ProviderCall",
    "ProviderConfig",
    "ProviderUnavailable",
    "RateLimitConfig",
    "ReasoningDelta",
    "SharedState",
    "StreamEnd",
    "TextDelta",
    "TokenLogprob",
    "ToolCall",
    "Usage",
    "as_llm_error",
    "build_catalog",
    "check_ledger",
    "configured_models",
    "count_message_tokens",
    "create_llm_client",
    "describe_validation_error",
    "infer_kind",
    "mask_secrets",
    "open_runtime",
    "preload_encodings",
    "provider_child_spec",
    "redact",
]
