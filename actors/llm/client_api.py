"""The specification's client API in one module ("Modern LLM Client Architecture").

::

    from actors.llm.client_api import create_llm_client

    client = create_llm_client(provider, llm_config, api_key)   # a provider block of config.yaml
    await client.initialize()
    tokens = await client.estimate_tokens(messages)
    response = await client.get_response(messages)
    tracked = await client.get_response_with_cost_tracking(messages=messages)
    summary = client.metrics.get_summary()

Everything here runs on the actor runtime (see :mod:`actors.llm._client`) and raises only
:class:`LLMClientError` subclasses. The same names are exported by :mod:`actors.llm`.
"""

from ._client import (
    BaseLLMClient,
    CostTrackedResponse,
    OpenAIClient,
    OpenRouterClient,
    ResponseStream,
    create_llm_client,
)
from ._client_settings import LLMClientConfig
from ._errors import (
    LLMAuthError,
    LLMClientError,
    LLMCostLimitError,
    LLMModelNotFoundError,
    LLMRateLimitError,
    LLMStreamingError,
    LLMTokenLimitError,
)
from ._messages import LLMResponse, Usage
from ._spec_metrics import CostInfo, LLMMetrics

__all__ = [
    "BaseLLMClient",
    "CostInfo",
    "CostTrackedResponse",
    "LLMAuthError",
    "LLMClientConfig",
    "LLMClientError",
    "LLMCostLimitError",
    "LLMMetrics",
    "LLMModelNotFoundError",
    "LLMRateLimitError",
    "LLMResponse",
    "LLMStreamingError",
    "LLMTokenLimitError",
    "OpenAIClient",
    "OpenRouterClient",
    "ResponseStream",
    "Usage",
    "create_llm_client",
]
