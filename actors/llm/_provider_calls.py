"""One provider call in its child task: send through the limiter, read the answer as plain data.

:class:`CallSite` holds what a call needs of its :class:`~actors.llm._provider.ProviderActor`,
fixed when the actor starts the call (the SDK client, the durable state, the catalog, the
secrets to redact). Its methods run in the call's child task, never in the actor's loop: the
actor reads the outcome (and :class:`~actors.llm._stream.Progress`) back in its own loop.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import anyio
import openai

from runtime import Request, RequestKind

from ._attempt_spend import reported_usage
from ._catalog import ModelCatalog
from ._error_mapping import map_sdk_errors
from ._errors import (
    LLMBadRequestError,
    LLMClientError,
    LLMRateLimitError,
    LLMStreamingError,
    LLMTimeoutError,
)
from ._messages import LLMResponse, ProviderCall, StreamEnd, Usage
from ._provider_state import ProviderState
from ._response_bounds import BoundedBody, Stalled, StallWatch, responded, watching
from ._sdk_call import (
    CallPlan,
    answered_model,
    check_json,
    logprobs_of,
    open_stream,
    post_completion,
    price_usage,
    rejected_param,
)
from ._stream import Progress, cut_off, read_stream
from ._upstream_errors import error_in_answer
from ._wire_decode import MalformedResponse, StreamAssembly, decode_completion, malformed_error

__all__ = ["CallSite"]

logger = logging.getLogger("actors.llm._provider")

# Parameters one call may drop after "Unsupported parameter/value" answers (a reasoning model
# behind a stale override refuses max_tokens, then temperature, ...).
_MAX_REFUSED = 3


def _stops(event: object) -> bool:
    return True


def _produced(assembly: StreamAssembly, progress: Progress) -> bool:
    """Whether a stream gave any output yet: an error event after it is a stream's failure
    (charged its prompt and what streamed, not retried), before it an error typed as its status
    would be (charged its prompt: ``accepted``).

    Output is anything the upstream bills, delivered to the caller or not: text, reasoning or a
    tool call's piece (timed in ``progress``), a refusal, reasoning details (encrypted reasoning
    comes only there), log probabilities, or a usage report.
    """
    return (progress.ttft is not None or progress.ttfr is not None or assembly.usage is not None
            or bool(assembly.refusal or assembly.reasoning_details or assembly.logprobs))


@dataclass(frozen=True, slots=True)
class CallSite:
    """What a call's child task needs of its provider (see the module docstring)."""

    provider: str
    client: openai.AsyncOpenAI
    state: ProviderState
    catalog: ModelCatalog
    secrets: Sequence[str]
    plan: Callable[[ProviderCall], CallPlan]
    stall_timeout: float | None = None
    """Seconds a request may wait for its response and then for each next bytes of its body,
    bounded here (the aiohttp transport: see :mod:`._response_bounds`); ``None``: the
    transport's read timeout holds."""
    cancel_stops_billing: bool | None = True
    """Whether closing a stream stops the upstream's billing; ``None``: ``answerer_stops_billing``
    decides from the stream's first event (see :mod:`._provider_kinds`)."""
    answerer_stops_billing: Callable[[object], bool] = _stops

    def _note_failure(self, error: LLMClientError, progress: Progress) -> None:
        """A 429's ``Retry-After`` pauses the limiter (its headers were read by the hook)."""
        limiter = self.state.limiter
        assert limiter is not None
        if isinstance(error, LLMRateLimitError) and error.status_code == 429:
            progress.rate_limited = True
            if error.retry_after:
                limiter.pause_for(error.retry_after)

    def _learn(self, call: ProviderCall, error: LLMBadRequestError, plan: CallPlan) -> CallPlan:
        """The plan without the parameter the upstream refused; the rule kept for the model.

        Raises ``error`` when it is not an "Unsupported parameter/value" about what we sent.
        """
        param = rejected_param(error, plan.body)
        learned = self.state.learned_params
        known = learned.get(call.model, frozenset())
        if param is None or param in known:
            raise error
        learned[call.model] = known | {param}
        logger.warning("%s: model %s refuses %r; not sending it from now on", self.provider,
                       call.model, param)
        return self.plan(call)

    async def _send(self, call: ProviderCall, plan: CallPlan, tokens: int,
                    send: Callable[[dict[str, Any]], Awaitable[Any]]) -> tuple[Any, CallPlan]:
        """Send (through the limiter); again without a parameter the upstream refused, once per
        parameter (at most ``_MAX_REFUSED`` of them: each is one more request)."""
        limiter = self.state.limiter
        assert limiter is not None
        for attempt in range(_MAX_REFUSED + 1):
            try:
                async with limiter.admit(tokens) as permit:
                    responded.set(False)
                    with map_sdk_errors(self.provider, call.model, self.secrets):
                        try:
                            answer = await self._bounded(send(plan.body), call.model)
                        except ValueError as exc:  # the SDK's JSON, writing or reading
                            raise self._unwritten_or_unread(exc, call.model) from exc
                    permit.sent()
                return answer, plan
            except LLMBadRequestError as exc:
                if attempt == _MAX_REFUSED:
                    raise
                plan = self._learn(call, exc, plan)
        raise AssertionError("unreachable")

    def _unwritten_or_unread(self, error: ValueError, model: str) -> LLMClientError:
        """A ``ValueError`` out of the SDK call: a body JSON cannot write (a NaN or infinite
        number: refused, nothing was sent), or an answer Python cannot read (a number of more
        than 4300 digits: malformed). Either escaped untyped before."""
        if responded.get():
            return malformed_error(self.provider, model, error)
        return LLMBadRequestError(
            f"the request to {self.provider} cannot be written as JSON ({type(error).__name__}:"
            " a number that is not finite?)", provider=self.provider, model=model)

    async def _json_for_a_stream(self, stream: openai.AsyncStream[object],
                                 model: str) -> LLMClientError:
        """The error for a stream answered with a JSON body (read as SSE, it was an empty
        answer): the error it holds (a gateway's ``{"error": ...}`` with status 200), else a
        malformed answer."""
        try:
            with map_sdk_errors(self.provider, model, self.secrets):
                body = stream.response.stream
                data = json.loads(await self._bounded(
                    stream.response.aread(), model,
                    body if isinstance(body, BoundedBody) else None))
        except ValueError as exc:
            return malformed_error(self.provider, model, exc)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await stream.close()
        if isinstance(data, dict) and data.get("error") and not data.get("choices"):
            return error_in_answer(data["error"], self.provider, model, self.secrets)
        return malformed_error(self.provider, model, MalformedResponse("a JSON body"))

    async def _bounded(self, sending: Awaitable[Any], model: str,
                       body: BoundedBody | None = None) -> Any:
        """``sending`` awaited, each of its silences within :attr:`stall_timeout` when there is
        one: the wait for the response, then each wait for the next bytes of its body (the
        response hook hands the body to the watch), or of ``body`` when it is already here."""
        if self.stall_timeout is None:
            return await sending
        watch = StallWatch(body, self.stall_timeout)
        token = watching.set(weakref.ref(watch))
        try:
            return await watch.bound(sending)
        except Stalled:
            raise LLMTimeoutError(f"request to {self.provider} timed out",
                                  provider=self.provider, model=model) from None
        finally:
            watching.reset(token)

    async def complete(self, call: ProviderCall, plan: CallPlan, tokens: int,
                       progress: Progress) -> LLMResponse:
        """One non-streaming call: its :class:`LLMResponse`, or a typed error."""
        client = self.client
        try:
            data, plan = await self._send(call, plan, tokens,
                                          lambda body: post_completion(client, body))
        except LLMClientError as exc:
            self._note_failure(exc, progress)
            raise
        body = decode_completion(data)
        if body.error is not None:
            error = error_in_answer(body.error, self.provider, call.model, self.secrets)
            self._note_failure(error, progress)
            raise error
        elapsed = time.perf_counter() - progress.started
        progress.ttft = elapsed
        if body.reasoning:
            progress.ttfr = elapsed
        model = answered_model(body.model, call.model)
        tool_calls = list(body.tool_calls)
        response = LLMResponse(
            content=body.content,
            tool_calls=tool_calls,
            finish_reason=body.finish_reason,
            usage=price_usage(self.catalog, call, body.usage, body.content, tool_calls, model,
                              body.reasoning or ""),
            model=model,
            provider=self.provider,
            response_time_ms=elapsed * 1000,
            time_to_first_token_ms=elapsed * 1000,
            reasoning=body.reasoning or "",
            reasoning_details=list(body.reasoning_details),
            logprobs=logprobs_of(body.logprobs, plan.body.get("logprobs") is True),
            time_to_first_reasoning_ms=elapsed * 1000 if body.reasoning else None,
        )
        if plan.json_mode:
            check_json(response, self.provider)
        return response

    def _report(self, call: ProviderCall, assembly: StreamAssembly, limit: int) -> Usage | None:
        """What a stream that ends now without its answer is charged by the upstream's usage
        report (:func:`reported_usage`), or ``None`` while no report came."""
        if assembly.usage is None:
            return None
        return reported_usage(self.catalog, call, assembly.usage, assembly.text,
                              assembly.tool_calls(), answered_model(assembly.model, call.model),
                              assembly.reasoning, limit)

    def _bill(self, call: ProviderCall, assembly: StreamAssembly,
              limit: int) -> Callable[[object], None] | None:
        """Fill in the call's :class:`StreamBill` (the report as it comes; whether closing the
        stream stops the billing); the hook its first event is given to, when that decides."""
        bill = call.bill
        if bill is None:
            return None
        # Not ``call`` itself: it holds the bill, and the cycle (call, bill, this closure) held
        # each streamed request's messages and answer until a full collection (+15 KiB of RSS a
        # turn in benchmarks/streams.py).
        priced = replace(call, bill=None, deltas=None, on_output=None)
        bill.report = lambda: self._report(priced, assembly, limit)
        stops = self.cancel_stops_billing
        bill.whole = not stops  # undecided (None): whole until the first event says otherwise
        if stops is not None:
            return None
        answerer_stops_billing = self.answerer_stops_billing

        def first(event: object) -> None:
            bill.whole = not answerer_stops_billing(event)

        return first

    async def stream(self, call: ProviderCall, plan: CallPlan, tokens: int,
                     progress: Progress, request: Request) -> LLMResponse:
        """One streaming call: deltas to ``call.deltas`` (else to ``request``'s stream) as they
        come; the answer is returned, and also sent as one :class:`StreamEnd` to a stream.

        Cancelled, it closes the upstream stream at once (an unread answer must not keep
        costing tokens).
        """
        client = self.client
        provider = self.provider
        assembly = StreamAssembly()
        first = self._bill(call, assembly, plan.max_tokens)
        try:
            stream, plan = await self._send(call, plan, tokens,
                                            lambda body: open_stream(client, body))
            if stream.response.headers.get("content-type", "").startswith("application/json"):
                raise await self._json_for_a_stream(stream, call.model)
            body = stream.response.stream
            watch = (StallWatch(body, self.stall_timeout) if self.stall_timeout is not None
                     and isinstance(body, BoundedBody) else None)
            try:
                failure = await read_stream(
                    stream, request, assembly, progress,
                    lambda: map_sdk_errors(
                        provider, call.model, self.secrets, partial_text=lambda: assembly.text,
                        produced=lambda: _produced(assembly, progress)),
                    provider, call.model, call.deltas, call.on_output, watch, first)
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await stream.close()
            if failure is not None:
                raise failure
        except LLMClientError as exc:
            if exc.usage is None:
                exc.usage = self._report(call, assembly, plan.max_tokens)
            if call.bill is not None and isinstance(exc, LLMStreamingError) and not cut_off(exc):
                # The upstream ended the stream itself (its error event, an answer we cannot
                # read): it stopped there, billing what it made. Told here, where the error's
                # origin (its exception chain) is still known.
                call.bill.whole = False
            self._note_failure(exc, progress)
            raise
        elapsed = time.perf_counter() - progress.started
        content = assembly.text
        tool_calls = assembly.tool_calls()
        model = answered_model(assembly.model, call.model)
        response = LLMResponse(
            content=content,
            tool_calls=tool_calls,
            finish_reason=assembly.finish_reason,
            usage=price_usage(self.catalog, call, assembly.usage, content, tool_calls, model,
                              assembly.reasoning),
            model=model,
            provider=provider,
            response_time_ms=elapsed * 1000,
            time_to_first_token_ms=progress.ttft * 1000 if progress.ttft is not None else None,
            reasoning=assembly.reasoning,
            reasoning_details=list(assembly.reasoning_details),
            logprobs=logprobs_of(assembly.logprobs, plan.body.get("logprobs") is True),
            time_to_first_reasoning_ms=(
                progress.ttfr * 1000 if progress.ttfr is not None else None),
        )
        progress.streamed = response
        if plan.json_mode:
            check_json(response, provider)
        if request.kind is RequestKind.STREAM:
            await request.send(StreamEnd(response))
        return response
