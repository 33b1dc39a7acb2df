"""One chat-completion call: its body (only what the model accepts), sending it, reading the answer.

The body: the config's generation defaults, its ``extra_params``, then the request's own params;
JSON mode (``response_format``), logprobs and reasoning effort when asked; then the model's rules
(:meth:`~actors.llm.ModelCatalog.params` plus what the provider learned at run time): its output
limit under the name it takes, and nothing it rejects. So the config's defaults
(``temperature: 0.7``, ``max_tokens``) never break a reasoning model.

The SDK sends it with its low-level ``post`` and ``cast_to=object``: auth, base_url, headers,
timeouts, typed status errors and SSE decoding are the SDK's; the answer is read as plain data by
:mod:`~actors.llm._wire_decode` (no pydantic model per chunk).
"""

from __future__ import annotations

import json
import math
import re
import weakref
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
from openai._streaming import ServerSentEvent, SSEDecoder

from ._catalog import ModelCatalog, ModelParams
from ._errors import LLMBadRequestError, LLMInvalidJSONError
from ._messages import LLMResponse, ProviderCall, TokenLogprob, ToolCall, Usage
from ._provider_config import ProviderConfig
from ._provider_kinds import ProviderKindRules
from ._response_bounds import TooManyValuesRefused, values_allowed
from ._tokens import count_text_tokens
from ._wire_decode import TokenLogprob as WireLogprob
from ._wire_decode import TooManyValues, WireUsage, value_bound

__all__ = [
    "PLATFORM_HEADERS_OMITTED",
    "CallPlan",
    "answered_model",
    "check_json",
    "estimate_output_tokens",
    "logprobs_of",
    "open_stream",
    "plan_call",
    "post_completion",
    "price_usage",
    "rejected_param",
    "table_cost",
]

_GENERATION_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "max_tokens")
_UNSUPPORTED_CODES = frozenset({"unsupported_parameter", "unsupported_value"})
# OpenAI refuses ``json_object`` unless a message says "json"; a short system line says it.
_JSON_INSTRUCTION = {"role": "system", "content": "Answer in json: one JSON object."}
_STREAM_CLS = openai.AsyncStream[object]
# More tokens than any answer has: a count past it is garbage (and would overflow a price).
_MAX_COUNT = 2**53
# Characters of an output counted exactly; a longer one is estimated from them (~15-140 ms).
_EXACT_CHARS = 2**18
# Longer than any model's name ("accounts/fireworks/models/llama-v3p1-405b-instruct": 50).
_MAX_MODEL_NAME = 256
#: The SDK's default headers that describe this machine (operating system, CPU, Python and
#: package versions) to every upstream: left out of each client's requests. Nothing upstream
#: needs them, and they were ~20% of the SDK's request building (the headers are copied and
#: normalised four times a request).
PLATFORM_HEADERS_OMITTED: dict[str, Any] = {name: openai.Omit() for name in (
    "X-Stainless-Lang", "X-Stainless-Package-Version", "X-Stainless-OS", "X-Stainless-Arch",
    "X-Stainless-Runtime", "X-Stainless-Runtime-Version", "X-Stainless-Async")}
# Each client's absolute completions URL, joined once: given a path, the SDK parses it, joins it
# to its base URL and parses the join again; given an absolute URL, it parses it once (one URL
# parse of three a request saved).
_COMPLETIONS_URLS: weakref.WeakKeyDictionary[openai.AsyncOpenAI, str] = (
    weakref.WeakKeyDictionary())


@dataclass(frozen=True, slots=True)
class CallPlan:
    """The body of one call, the output limit it allows, and whether the answer must be JSON."""

    body: dict[str, Any]
    max_tokens: int
    json_mode: bool


def plan_call(call: ProviderCall, config: ProviderConfig, kind: ProviderKindRules,
              params: ModelParams, learned: Collection[str] = ()) -> CallPlan:
    """The body for ``call`` (see the module docstring). ``learned``: parameters the upstream
    refused for this model at run time (``max_tokens`` refused means ``max_completion_tokens``)."""
    request = call.request
    body: dict[str, Any] = {name: getattr(config, name) for name in _GENERATION_FIELDS}
    body.update(config.extra_params)
    if "max_completion_tokens" in request.params:
        body.pop("max_tokens")
    body.update(request.params)
    response_format = request.response_format
    if response_format is None and config.enable_json_mode:
        response_format = {"type": "json_object"}
    if response_format is not None:
        body["response_format"] = response_format
    if config.enable_logprobs:
        body["logprobs"] = True
        if config.top_logprobs is not None:
            body["top_logprobs"] = config.top_logprobs
    effort = request.reasoning_effort or params.reasoning_effort or config.reasoning_effort
    if effort:
        body.update(kind.reasoning(effort))
    limit = body.pop("max_completion_tokens", None)
    limit = body.pop("max_tokens", None) if limit is None else limit
    if limit is None:
        limit = config.max_tokens
    body.pop("max_tokens", None)
    completion_name = (params.max_tokens_param == "max_completion_tokens"
                       or "max_tokens" in learned) and "max_completion_tokens" not in learned
    body["max_completion_tokens" if completion_name else "max_tokens"] = limit
    for name in (*params.rejected_params, *learned):
        if name not in ("max_tokens", "max_completion_tokens"):
            body.pop(name, None)
    messages = list(request.messages)
    json_object = isinstance(response_format, dict) and response_format.get(
        "type") == "json_object"
    if json_object and "json" not in json.dumps(messages).lower():
        messages.insert(0, _JSON_INSTRUCTION)
    body["model"] = call.model
    body["messages"] = messages
    if request.tools:
        body["tools"] = list(request.tools)
    body.update(kind.fallbacks(config, call.model, call.fallback_models))
    json_mode = isinstance(response_format, dict) and response_format.get("type") in (
        "json_object", "json_schema") and "response_format" in body
    return CallPlan(body, int(limit), json_mode)


def rejected_param(error: LLMBadRequestError, body: dict[str, Any]) -> str | None:
    """The body parameter an OpenAI "Unsupported parameter/value" 400 names, if it is one we sent
    (``reasoning.effort`` names ``reasoning``); ``None`` for any other error."""
    cause = error.__cause__
    if not isinstance(cause, openai.APIStatusError) or cause.code not in _UNSUPPORTED_CODES:
        return None
    param = cause.param
    if not isinstance(param, str) or not param:
        return None
    name = param.split(".", 1)[0].split("[", 1)[0]
    if name in ("model", "messages", "stream", "stream_options"):
        return None
    return name if name in body else None


async def post_completion(client: openai.AsyncOpenAI, body: dict[str, Any]) -> object:
    """Send a non-streaming call; its body as plain data (raises the SDK's errors, and
    :class:`TooManyValues` past :func:`value_bound`, counted before it is parsed).

    The SDK's own reading of a 2xx body (``cast_to=object``): JSON when the content type says
    so (counted by the response's :class:`~._response_bounds.BoundedBody`), else the text."""
    response = await _post(client, body, cast_to=httpx2.Response)
    if not response.headers.get("content-type", "*").split(";")[0].endswith("json"):
        return response.text
    return response.json()


class _BoundedDecoder(SSEDecoder):
    """The SDK's SSE decoder, refusing an event past ``bound`` JSON values before the SDK parses
    it: counted (three ``str.count``) only in an event longer than ``bound`` characters (a value
    is at least one), so that a delta costs one ``len``."""

    def __init__(self, bound: int) -> None:
        super().__init__()
        self._bound = bound

    def _decode_lines(self, lines: Iterator[bytes]) -> Iterator[ServerSentEvent]:
        decode = self.decode
        bound = self._bound
        for raw_line in lines:
            sse = decode(raw_line.decode("utf-8"))
            if sse:
                data = sse.data
                if len(data) > bound and (
                        data.count(",") + data.count("{") + data.count("[") > bound):
                    raise TooManyValues(bound)
                yield sse


async def open_stream(client: openai.AsyncOpenAI,
                      body: dict[str, Any]) -> openai.AsyncStream[object]:
    """Send a streaming call (with the usage chunk); its events as plain data, each refused
    with :class:`TooManyValues` past :func:`value_bound`."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    stream: openai.AsyncStream[object] = await _post(client, body, cast_to=object, stream=True,
                                                     stream_cls=_STREAM_CLS)
    # Not iterated yet: its events are decoded from the first read on.
    stream._decoder = _BoundedDecoder(value_bound(body))
    return stream


async def _post(client: openai.AsyncOpenAI, body: dict[str, Any], **options: Any) -> Any:
    """``client.post`` of ``body``, whose answer's body, if parsed whole (an error's, or JSON),
    is refused past :func:`value_bound` values as it arrives: for a 2xx one,
    :class:`TooManyValues`; for an error status, the SDK's status error of that status without
    the body (never parsed)."""
    bound = value_bound(body)
    token = values_allowed.set(bound)
    url = _completions_url(client)
    try:
        try:
            return await client.post(url, body=body, **options)
        except UnicodeEncodeError:  # raised building the request: nothing was sent
            return await client.post(url, body=utf8_safe(body), **options)
    except (openai.APIConnectionError, TooManyValuesRefused) as exc:
        # The SDK wraps a failed read of a body it reads itself; an error body read for its
        # status error fails raw.
        refused = exc if isinstance(exc, TooManyValuesRefused) else exc.__cause__
        if not isinstance(refused, TooManyValuesRefused):
            raise
        if 200 <= refused.status_code < 300:
            raise TooManyValues(bound) from None
        if refused.response is None:
            raise  # typed by its status (see _error_mapping)
        raise client._make_status_error(f"Error code: {refused.status_code}", body=None,
                                        response=refused.response) from None
    finally:
        values_allowed.reset(token)


def _completions_url(client: openai.AsyncOpenAI) -> str:
    """``client``'s ``chat/completions`` URL, joined to its base URL as the SDK joins a path."""
    url = _COMPLETIONS_URLS.get(client)
    if url is None:
        base = client.base_url
        url = _COMPLETIONS_URLS[client] = str(base.copy_with(
            raw_path=base.raw_path + b"chat/completions"))
    return url


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def utf8_safe(value: Any) -> Any:
    """``value`` with every lone surrogate in its text replaced by U+FFFD.

    Python's ``json`` decodes a ``\\ud800`` escape that no low surrogate follows (a client's, a
    tool's or a model's text split inside an escape) into a code point UTF-8 cannot carry, and
    the SDK writes its bodies in UTF-8: such a body failed before it was sent, with a raw
    ``UnicodeEncodeError``, and a history holding one failed every later turn. Only a body that
    failed so is walked (the common one costs nothing)."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {utf8_safe(key): utf8_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [utf8_safe(item) for item in value]
    return value


def check_json(response: LLMResponse, provider: str) -> None:
    """Raise :class:`LLMInvalidJSONError` unless the answer's text is JSON (a tool-call answer
    without text passes: the tool calls carry JSON of their own). Its ``status_code`` is 200:
    the answer arrived, and was billed."""
    if not response.content and response.tool_calls:
        return
    try:
        json.loads(response.content)
    except ValueError:
        raise LLMInvalidJSONError(
            f"{provider} answered with text that is not JSON ({len(response.content)} characters,"
            f" finish_reason {response.finish_reason})",
            provider=provider, model=response.model, status_code=200,
            usage=response.usage) from None


def logprobs_of(tokens: tuple[WireLogprob, ...], asked: bool) -> list[TokenLogprob] | None:
    """The answer's log probabilities when they were asked for."""
    if not asked:
        return None
    return [TokenLogprob(token=t.token, logprob=t.logprob) for t in tokens]


def answered_model(reported: str | None, asked: str) -> str:
    """The model an answer names, or ``asked`` when it names none or one longer than
    :data:`_MAX_MODEL_NAME` characters: the name becomes a metrics label (32 kept for ever),
    and a hostile upstream's name may be megabytes."""
    if reported and len(reported) <= _MAX_MODEL_NAME:
        return reported
    return asked


def estimate_output_tokens(text: str, model: str, limit: int | None = None) -> int:
    """Tokens of ``text``, a model's output, at most ``limit`` when given.

    A text of more than :data:`_EXACT_CHARS` characters is estimated from its beginning, scaled
    to its length: a hostile answer of tens of MiB took tiktoken seconds to a minute of the
    event loop (4 MiB of one letter: 2.9 s).
    """
    if not text:
        return 0
    if len(text) <= _EXACT_CHARS:
        count = count_text_tokens(text, model)
    else:
        count = -(-count_text_tokens(text[:_EXACT_CHARS], model) * len(text) // _EXACT_CHARS)
    return count if limit is None else min(count, limit)


def price_usage(catalog: ModelCatalog, call: ProviderCall, usage: WireUsage | None,
                content: str, tool_calls: list[ToolCall], model: str,
                reasoning: str = "") -> Usage:
    """Usage as reported (estimated when absent), priced: OpenRouter's cost, else the table
    (:func:`table_cost`: the dearer of the asked model's and the answered ``model``'s prices).

    Reasoning tokens are part of ``completion_tokens`` (OpenAI and OpenRouter count them there),
    so they are priced as output once, not added. The estimate counts all the model produced:
    its ``reasoning``, text and tool calls (:func:`estimate_output_tokens`). A reported count
    that is not one (negative, or past :data:`_MAX_COUNT`) is estimated likewise, and a
    reported cost that is not a finite amount >= 0 is priced from the table: no NaN or negative
    reaches the caller, the ledger or metrics.
    """
    reported_cost: float | None = None
    prompt = completion = None
    cached = reasoning_tokens = 0
    if usage is not None:
        prompt, completion = _count(usage.prompt_tokens or 0), _count(usage.completion_tokens or 0)
        cached = _count(usage.cached_tokens or 0) or 0
        reasoning_tokens = _count(usage.reasoning_tokens or 0) or 0
        cost = usage.reported_cost
        reported_cost = cost if cost is not None and 0 <= cost < math.inf else None
    if prompt is None:
        prompt = call.prompt_tokens
    if completion is None:
        reasoning_tokens = estimate_output_tokens(reasoning, model)
        text = content + "".join(c.name + c.arguments for c in tool_calls)
        completion = reasoning_tokens + estimate_output_tokens(text, model)
    if reported_cost is None:
        reported_cost = table_cost(catalog, call.model, model, prompt, completion, cached)
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 total_tokens=prompt + completion, cached_tokens=cached,
                 reasoning_tokens=reasoning_tokens, total_cost=reported_cost)


def table_cost(catalog: ModelCatalog, asked: str, answered: str, prompt: int, completion: int,
               cached: int = 0) -> float | None:
    """The price table's cost of these counts: at the dearer of the ``asked`` model's and the
    ``answered`` one's prices when both are known, else at the one known (``None``: neither).

    Why the dearer: the answer's model name is the upstream's word, and a confused or hostile
    upstream naming a cheaper model would be undercharged; a dearer one is believed (the
    upstream may really have answered with it, and billed it).
    """
    costs = [cost for cost in (catalog.cost_of(answered, prompt, completion, cached),
                               catalog.cost_of(asked, prompt, completion, cached)
                               if asked != answered else None) if cost is not None]
    return max(costs) if costs else None


def _count(value: int) -> int | None:
    """``value`` if it can be a token count, else ``None``."""
    return value if 0 <= value <= _MAX_COUNT else None
