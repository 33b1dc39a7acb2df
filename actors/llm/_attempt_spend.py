"""The money side of one attempt: reserve before the call, settle after it, and pay for what left.

Why a failed or cancelled attempt is charged: once the request has left for the upstream, the
provider bills the prompt and whatever it generated, whether or not the answer reached anyone.
Releasing such a reservation would let repeated cancels spend past ``daily_cost_limit`` with the
ledger showing $0. So an attempt that was sent and then failed in flight (cancelled, timed out,
connection lost, stream broken) is settled at its prompt cost plus everything it streamed (text,
reasoning, tool-call pieces), priced by the ledger; only what never left (refused by our limiter or
breaker, or answered by an upstream error status, which bills nothing) is released. An error the
upstream answered inside a 2xx response (a body holding ``error``, a stream's error event) came
after it took the request: charged its prompt, as the upstream may bill it.
A connection that failed before sending is charged its prompt too: we cannot tell it apart from one
that failed after, and erring that way keeps the limit.

A non-streaming attempt that left and then ended without an answer (cancelled: a hedge's loser,
a caller gone; timed out; its connection lost) is charged its whole output limit: the upstream
does not stop a non-streaming request when its client goes (OpenRouter's documentation: such
requests are not cancelled and are "billed for the complete response"), and nothing tells how
much of it was generated. A stream is stopped by closing it, so it is charged what streamed;
unless its upstream bills the whole answer anyway (the provider's ``stream_cancel_stops_billing``;
on OpenRouter, the provider that answered: see :mod:`._provider_kinds`): then, cancelled, out of
time or cut off (our read timeout, its connection dropped: :func:`._stream.cut_off`, decided
by the provider, which then leaves ``whole`` set), it is
charged its whole output limit too (:class:`StreamBill`'s ``whole``); a stream the upstream
ended with its own error event stopped there and is charged what streamed.

What streamed is counted up to the output limit (``Reserve.max_tokens``): the body capped the
output there, so the upstream cannot have billed more. An answer that arrived but that we cannot
use was billed whole: one that is not the JSON asked for is charged its own usage (its error
carries it); a malformed one (its error has a 2xx ``status_code``) does not say how much it
produced and is charged its whole output limit, the bound it reserved.

A stream that failed after the upstream reported its usage (a chunk with ``usage``) is charged
that report, priced as a successful stream's would be (its reported cost, else the price table):
the report is the upstream's own count of the attempt, whatever ended the attempt after it. It
is carried on the error (``LLMClientError.usage``, :func:`reported_usage`), or, for a stream
cancelled or past the router's deadline (no error of the provider's), read from the
:class:`StreamBill` the provider fills in as it reads.
"""

from __future__ import annotations

import logging

import anyio

from runtime import ActorRef, DeadlineExceeded

from ._catalog import ModelCatalog
from ._errors import (
    LLMClientError,
    LLMConnectionError,
    LLMStreamingError,
    LLMTimeoutError,
)
from ._messages import (
    ProviderCall,
    Release,
    Reservation,
    Reserve,
    Settle,
    StreamBill,
    ToolCall,
    Usage,
)
from ._sdk_call import estimate_output_tokens, price_usage
from ._wire_decode import WireUsage

__all__ = ["AttemptSpend", "billed_in_flight", "reported_usage"]

logger = logging.getLogger(__name__)

#: Seconds a settle may take once the answer is in hand (shielded from the caller's cancel).
_SETTLE_TIMEOUT = 5.0


def billed_in_flight(error: BaseException | None) -> bool:
    """Whether an attempt that ended with ``error`` after it was sent may have been billed.

    ``None`` stands for a cancelled attempt.
    """
    if error is None or isinstance(error, (LLMTimeoutError, LLMConnectionError,
                                           LLMStreamingError)) or _answered(error):
        return True
    if isinstance(error, LLMClientError) and error.accepted:
        return True  # an error the upstream answered inside a 2xx response, after taking it
    # The bare base class is what an answer we could not read becomes: it was produced (billed).
    return type(error) is LLMClientError or not isinstance(error, LLMClientError)


def _answered(error: BaseException | None) -> bool:
    """Whether ``error`` is about an answer that arrived (a 2xx status) but cannot be used."""
    status = error.status_code if isinstance(error, LLMClientError) else None
    return status is not None and 200 <= status < 300


def _unanswered(error: BaseException | None) -> bool:
    """Whether an attempt in flight ended with no answer from the upstream (``None``:
    cancelled), which may still be generating it."""
    return error is None or isinstance(error, (LLMTimeoutError, LLMConnectionError,
                                               DeadlineExceeded))


def reported_usage(catalog: ModelCatalog, call: ProviderCall, report: WireUsage, content: str,
                   tool_calls: list[ToolCall], model: str, reasoning: str, limit: int) -> Usage:
    """What a stream that failed after its usage ``report`` is charged (priced).

    The report, priced as a successful stream's usage (:func:`price_usage`: its reported cost,
    else the table), when it covers what the stream showed: a prompt count (more than 0) and at
    least the completion tokens of what streamed (``content``, ``reasoning``, ``tool_calls``,
    estimated and capped at the output ``limit`` as a failure without a report is). Else the
    report is partial (a running count, or output came after it) or implausible, and each count
    is the larger of the report's and ours, priced at the larger of the report's cost and the
    table's price for them. Why the larger: a budget must count what may be billed, and what
    streamed after a report may be billed on top of it; while a report that covers what we saw
    is believed over our estimate even when lower (a cached prompt, another tokenizer, a cheaper
    route), as a successful stream's is.
    """
    usage = price_usage(catalog, call, report, content, tool_calls, model, reasoning)
    tools = "".join(c.name + c.arguments for c in tool_calls)
    streamed = min(estimate_output_tokens(reasoning, model)
                   + estimate_output_tokens(content + tools, model), limit)
    if usage.prompt_tokens > 0 and usage.completion_tokens >= streamed:
        return usage
    prompt = max(usage.prompt_tokens, call.prompt_tokens)
    completion = max(usage.completion_tokens, streamed)
    larger = WireUsage(prompt_tokens=prompt, completion_tokens=completion)
    table = price_usage(catalog, call, larger, "", [], model).total_cost
    costs = [cost for cost in (usage.total_cost, table) if cost is not None]
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 total_tokens=prompt + completion, reasoning_tokens=usage.reasoning_tokens,
                 total_cost=max(costs) if costs else None)


class AttemptSpend:
    """Reserves, settles or charges one attempt with the ledger (no ledger: does nothing).

    ``streamed`` collects every piece of output that came back (text, reasoning, tool calls).
    """

    def __init__(self, ledger: ActorRef | None, reserve: Reserve, *, stream: bool = False) -> None:
        self._ledger = ledger
        self._reserve = reserve
        self._stream = stream
        self.reservation: Reservation | None = None
        self.sent = False
        self.streamed: list[str] = []
        self.bill = StreamBill() if stream else None
        """What the stream's provider learns of the upstream's bill (give it the call)."""

    async def reserve(self, deadline: float) -> None:
        if self._ledger is not None:
            self.reservation = await self._ledger.ask(self._reserve, deadline=deadline)

    async def settle(self, usage: Usage) -> float | None:
        """Settle at the answer's usage (its reported cost when present); the USD charged."""
        reservation, self.reservation = self.reservation, None
        if reservation is None or self._ledger is None:
            return usage.total_cost
        charged: float | None = None
        # One scope, shielded from the caller's cancel and bounded by its own deadline.
        with anyio.CancelScope(shield=True, deadline=anyio.current_time() + _SETTLE_TIMEOUT):
            charged = await self._ledger.ask(Settle(reservation.id, usage, usage.total_cost))
        return charged

    def fail(self, error: BaseException | None) -> None:
        """The attempt ended without an answer (``error``; ``None``: cancelled).

        Charges the usage the upstream reported when ``error`` carries it or a stream read it
        (:attr:`bill`), else the prompt plus what was streamed (an unusable answer, or one that
        was left unanswered and runs on upstream: its output limit) if it was sent and may have
        been billed, releases the reservation otherwise. Never awaits, so it is safe while
        cancelled.
        """
        reservation, self.reservation = self.reservation, None
        if reservation is None or self._ledger is None:
            return
        report = error.usage if isinstance(error, LLMClientError) else None
        if report is None and self.bill is not None:
            report = self.bill.report()  # a stream cancelled or out of time after its report
        message: Settle | Release
        if report is not None:
            # An answer that arrived whole, or a stream's report: charged at its usage and cost.
            message = Settle(reservation.id, report, report.total_cost)
        elif self.sent and (self.streamed or billed_in_flight(error)):
            prompt = self._reserve.prompt_tokens
            text = "".join(self.streamed)
            # The body capped the output at max_tokens: the upstream cannot have billed more, so
            # neither is charged (an estimate of garbage could otherwise charge past the limit).
            completion = estimate_output_tokens(text, self._reserve.model,
                                                self._reserve.max_tokens)
            whole = not self._stream or (self.bill is not None and self.bill.whole)
            # A stream's failure (LLMStreamingError) leaves ``whole`` set only when it was cut
            # off on our side or on the way (the provider tells it by the error's origin).
            if _answered(error) or (whole and (_unanswered(error)
                                               or isinstance(error, LLMStreamingError))):
                completion = self._reserve.max_tokens
            usage = Usage(prompt_tokens=prompt, completion_tokens=completion,
                          total_tokens=prompt + completion)
            message = Settle(reservation.id, usage)
        else:
            message = Release(reservation.id)
        if not self._ledger.try_tell(message):
            logger.error("ledger mailbox full: reservation %s of %s awaits its expiry (then "
                         "charged what it holds)", reservation.id, self._reserve.request_id)
