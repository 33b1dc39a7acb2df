"""The simulator's request handler: routes, authentication, limits and faults.

Which fault a request gets is in ``_faults``; how a streamed answer goes on the wire (delays,
mid-stream faults) in ``_streaming``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import random
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from ._config import FAULT_KINDS, Flavor, ModelSpec, SimulatorConfig, merge_patch
from ._faults import INVALID_JSON, MIDSTREAM, STATUS_FAULTS, draw_fault
from ._http import Exchange, Request
from ._options import Options, Rejection, mistyped, read_options
from ._pacing import Pacer
from ._replies import Reply, estimate_prompt_tokens, plan_reply
from ._stats import SlidingWindow, Stats, format_reset
from ._streaming import stream_reply
from ._wire import StreamEvents, completion_body, dumps, error_body, usage_of

__all__ = ["Simulator"]

UNLIMITED_REQUESTS = 10_000_000
UNLIMITED_TOKENS = 1_000_000_000
_JSON = ("content-type", "application/json")


class Simulator:
    """Answers chat completions like OpenAI or OpenRouter, with the configured faults.

    Not thread-safe: one event loop serves it. Faults draw from one ``random.Random(seed)``,
    two numbers per chat completion in arrival order, whatever the outcome.
    """

    def __init__(
        self,
        config: SimulatorConfig,
        clock: Callable[[], float] = time.monotonic,
        *,
        control_token: str | None = None,
    ) -> None:
        self._config = config
        self._control_token = control_token
        self._clock = clock
        self._rng = random.Random(config.seed)
        self._admitted = SlidingWindow()
        self.stats = Stats(clock)
        self._next_call = 1
        self._next_completion = 1
        self._pacer = Pacer()

    def __repr__(self) -> str:
        return f"<Simulator [{self._config.flavor}, seed {self._config.seed} | {self.stats!r}]>"

    @property
    def config(self) -> SimulatorConfig:
        return self._config

    def reconfigure(self, patch: dict[str, Any]) -> SimulatorConfig:
        """Merge ``patch`` into the configuration; a new ``seed`` re-seeds the fault draws."""
        self._config = merge_patch(self._config, patch)
        if "seed" in patch:
            self._rng = random.Random(self._config.seed)
        return self._config

    def reset(self) -> None:
        """Clear the statistics and limit windows, re-seed the fault draws, renumber ids."""
        self._rng = random.Random(self._config.seed)
        self._admitted = SlidingWindow()
        self.stats = Stats(self._clock)
        self._next_call = 1
        self._next_completion = 1

    async def handle(self, request: Request, exchange: Exchange) -> None:
        path = request.path.removeprefix("/api")
        route = (request.method, path.removeprefix("/v1"))
        if route[1].startswith("/_sim/") and route[1] != "/_sim/health" and not (
            self._control_allowed(request)
        ):
            self._send_error(exchange, "openai", 401, "the control endpoints need the control"
                             " token", "invalid_request_error", "invalid_control_token")
            return
        if route == ("POST", "/chat/completions"):
            await self._chat(request, exchange)
        elif route == ("GET", "/models"):
            self._models(request, exchange)
        elif route == ("GET", "/_sim/stats"):
            self._send_json(exchange, 200, self.stats.as_json())
        elif route in (("POST", "/_sim/config"), ("GET", "/_sim/config")):
            self._configure(request, exchange)
        elif route == ("POST", "/_sim/reset"):
            self.reset()
            self._send_json(exchange, 200, {"ok": True})
        elif route == ("GET", "/_sim/health"):
            self._send_json(exchange, 200, {"status": "ok"})
        else:
            self._send_json(exchange, 404, {"error": {
                "message": f"Unknown request URL: {request.method} {request.path}.",
                "type": "invalid_request_error", "param": None, "code": "unknown_url"}})

    # -- plumbing ---------------------------------------------------------------------------

    def _headers(self) -> list[tuple[str, str]]:
        now = self._clock()
        window = self._admitted
        window.prune(now)
        rpm = self._config.requests_per_minute or UNLIMITED_REQUESTS
        tpm = self._config.tokens_per_minute or UNLIMITED_TOKENS
        reset = format_reset(window.seconds_until_oldest_expires(now))
        return [
            ("x-ratelimit-limit-requests", str(rpm)),
            ("x-ratelimit-remaining-requests", str(max(0, rpm - window.requests))),
            ("x-ratelimit-reset-requests", reset),
            ("x-ratelimit-limit-tokens", str(tpm)),
            ("x-ratelimit-remaining-tokens", str(max(0, tpm - window.tokens))),
            ("x-ratelimit-reset-tokens", reset),
        ]

    def _send_json(self, exchange: Exchange, status: int, value: Any) -> None:
        headers = self._headers()
        headers.append(_JSON)
        exchange.send(status, headers, dumps(value))

    def _send_error(
        self,
        exchange: Exchange,
        flavor: Flavor,
        status: int,
        message: str,
        type_: str,
        code: str | None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        headers = self._headers()
        headers.append(_JSON)
        if retry_after is not None:
            headers.append(("retry-after", str(math.ceil(retry_after))))
            headers.append(("retry-after-ms", str(round(retry_after * 1000))))
        exchange.send(status, headers, error_body(flavor, status, message, type_, code, param))

    def _models(self, request: Request, exchange: Exchange) -> None:
        data = [
            {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "simulator",
             "context_length": spec.context_window}
            for name, spec in self._config.models.items()
        ]
        self._send_json(exchange, 200, {"object": "list", "data": data})

    def _configure(self, request: Request, exchange: Exchange) -> None:
        if request.method == "POST":
            try:
                patch = json.loads(request.body or b"{}")
                if not isinstance(patch, dict):
                    raise ValueError("the configuration patch must be a JSON object")
                self.reconfigure(patch)
            except (ValueError, ValidationError) as exc:
                self._send_error(exchange, "openai", 400, str(exc), "invalid_request_error", None)
                return
        shown = self._config.model_dump()
        if shown["api_keys"]:
            shown["api_keys"] = ["***"] * len(shown["api_keys"])
        self._send_json(exchange, 200, shown)

    def _control_allowed(self, request: Request) -> bool:
        if self._control_token is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self._control_token.encode()
        )

    def _key_ok(self, authorization: str) -> bool:
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return False
        accepted = self._config.api_keys
        return not accepted or key.strip() in accepted

    # -- chat completions -------------------------------------------------------------------

    async def _chat(self, request: Request, exchange: Exchange) -> None:
        fault_draw, position_draw = self._rng.random(), self._rng.random()
        config = self._config
        now = self._clock()
        flavor: Flavor = config.flavor
        if request.headers.get("x-sim-flavor") in ("openai", "openrouter"):
            flavor = "openrouter" if request.headers["x-sim-flavor"] == "openrouter" else "openai"
        key_ok = self._key_ok(request.headers.get("authorization", ""))

        body: Any = None
        try:
            body = json.loads(request.body)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than json parses
            body = None
        messages = body.get("messages") if isinstance(body, dict) else None
        valid = isinstance(messages, list) and bool(messages)
        wrong_type = mistyped(body, messages) if valid and isinstance(messages, list) else None
        planned_ok = valid and wrong_type is None
        prompt_tokens = estimate_prompt_tokens(messages) if planned_ok and messages else 0
        forced = request.headers.get("x-sim-fault")
        broken_json = config.faults.invalid_json or forced == INVALID_JSON
        spec: ModelSpec | None = None
        reply: Reply | None = None
        options: Options | Rejection | None = None
        if planned_ok and isinstance(body, dict) and messages:
            spec = config.models.get(str(body.get("model"))) if config.models else ModelSpec()
            if spec is not None:
                options = read_options(body, messages, spec, flavor == "openai")
            if isinstance(options, Options):
                tools = [
                    t["function"]["name"] for t in body.get("tools") or ()
                    if isinstance(t, dict) and isinstance(t.get("function"), dict)
                    and "name" in t["function"]
                ]
                reply = plan_reply(
                    messages, tools, spec.reply_words if spec else 0, options.max_tokens,
                    self._next_call, reasoning_tokens=options.reasoning_tokens,
                    show_reasoning=options.show_reasoning, json_format=options.json_format,
                    broken_json=broken_json,
                )
        planned = reply.completion_tokens if reply else 0
        self.stats.arrivals.add(now, prompt_tokens + planned)

        if forced is not None and forced != INVALID_JSON:
            fault: str | None = forced.removeprefix("rate_")
            if fault not in FAULT_KINDS:
                self.stats.record(400, prompt_tokens, 0, key_ok)
                self._send_error(exchange, flavor, 400, f"Unknown X-Sim-Fault {forced!r}; "
                                 f"expected one of {', '.join(FAULT_KINDS)} or {INVALID_JSON}.",
                                 "invalid_request_error", None)
                return
        else:
            fault = draw_fault(fault_draw, config.faults.rates())

        if config.faults.latency:
            await asyncio.sleep(config.faults.latency)
        if not key_ok:
            self.stats.record(401, prompt_tokens, 0, key_ok)
            self._send_error(exchange, flavor, 401, "Incorrect API key provided.",
                             "invalid_request_error", "invalid_api_key")
            return
        if not isinstance(body, dict):
            self.stats.record(400, 0, 0, key_ok)
            self._send_error(exchange, flavor, 400,
                             "We could not parse the JSON body of your request.",
                             "invalid_request_error", None)
            return
        if not valid:
            self.stats.record(400, 0, 0, key_ok)
            self._send_error(exchange, flavor, 400, "'messages' must be a non-empty array.",
                             "invalid_request_error", None, "messages")
            return
        if wrong_type is not None:
            self.stats.record(400, 0, 0, key_ok)
            self._send_error(exchange, flavor, 400, wrong_type.message, "invalid_request_error",
                             wrong_type.code, wrong_type.param)
            return
        if fault is not None and fault not in MIDSTREAM:
            self.stats.count_fault(fault)
            await self._fault(exchange, flavor, fault, prompt_tokens, key_ok)
            return
        if spec is None:
            self.stats.record(404, prompt_tokens, 0, key_ok)
            self._send_error(exchange, flavor, 404, f"The model `{body.get('model')}` does not "
                             "exist or you do not have access to it.",
                             "invalid_request_error", "model_not_found")
            return
        if isinstance(options, Rejection):
            self.stats.record(400, prompt_tokens, 0, key_ok)
            self._send_error(exchange, flavor, 400, options.message, "invalid_request_error",
                             options.code, options.param)
            return
        assert options is not None and reply is not None  # a known model always plans a reply
        max_tokens = options.max_tokens
        requested = prompt_tokens + (max_tokens or 0)
        if requested > spec.context_window:
            self.stats.record(400, prompt_tokens, 0, key_ok)
            self._send_error(
                exchange, flavor, 400,
                f"This model's maximum context length is {spec.context_window} tokens. However, "
                f"you requested {requested} tokens ({prompt_tokens} in the messages, "
                f"{max_tokens or 0} in the completion). Please reduce the length of the messages "
                "or completion.", "invalid_request_error", "context_length_exceeded", "messages")
            return
        if self._over_limit(exchange, flavor, now, prompt_tokens + planned, prompt_tokens, key_ok):
            return
        self._admitted.add(now, prompt_tokens + planned)
        self._next_call += len(reply.tool_calls)
        completion_id = f"chatcmpl-sim{self._next_completion}"
        self._next_completion += 1
        cost = (prompt_tokens * spec.price_in + reply.completion_tokens * spec.price_out) / 1e6
        usage = usage_of(flavor, prompt_tokens, reply.completion_tokens, cost, spec.reasoning,
                         reply.reasoning_tokens)
        self.stats.record(200, prompt_tokens, reply.completion_tokens, key_ok)
        self.stats.cost += cost
        model = str(body.get("model"))
        if fault is not None:
            self.stats.count_fault(fault)
        if body.get("stream") is True:
            stream_options = body.get("stream_options")
            include_usage = flavor == "openrouter" or (
                isinstance(stream_options, dict) and stream_options.get("include_usage") is True
            )
            events = StreamEvents(flavor, completion_id, int(time.time()), model, include_usage,
                                  spec.reasoning, options.top_logprobs)
            await stream_reply(exchange, self._headers(), flavor, events, reply,
                               usage if include_usage else None, fault, position_draw,
                               faults=self._config.faults, stats=self.stats, clock=self._clock,
                               pacer=self._pacer)
            return
        payload = completion_body(flavor, completion_id, int(time.time()), model, reply, usage,
                                  spec.reasoning, options.top_logprobs)
        headers = self._headers()
        headers.append(_JSON)
        if fault == "midstream_drop":
            await exchange.send_partial(200, headers, payload)
        elif fault == "midstream_error":
            self._send_error(exchange, flavor, 502, "Upstream error mid generation.",
                             "server_error", None)
        else:
            exchange.send(200, headers, payload)

    def _over_limit(
        self, exchange: Exchange, flavor: Flavor, now: float, tokens: int, prompt: int,
        key_ok: bool,
    ) -> bool:
        config = self._config
        window = self._admitted
        window.prune(now)
        wait = 0.0
        kind = ""
        if config.requests_per_minute and window.requests >= config.requests_per_minute:
            wait, kind = window.seconds_until_oldest_expires(now), "requests"
        elif config.tokens_per_minute and window.tokens + tokens > config.tokens_per_minute:
            wait = window.seconds_until_tokens_fit(now, config.tokens_per_minute, tokens)
            kind = "tokens"
        if not kind:
            return False
        self.stats.record(429, prompt, 0, key_ok)
        limit = config.requests_per_minute if kind == "requests" else config.tokens_per_minute
        self._send_error(exchange, flavor, 429,
                         f"Rate limit reached for {kind} per min (RPM/TPM): Limit {limit}. "
                         f"Please try again in {format_reset(wait)}.",
                         kind, "rate_limit_exceeded", retry_after=max(wait, 0.001))
        return True

    async def _fault(
        self, exchange: Exchange, flavor: Flavor, fault: str, prompt: int, key_ok: bool
    ) -> None:
        if fault == "timeout":
            self.stats.record(0, prompt, 0, key_ok)
            await exchange.wait_client_gone(self._config.faults.hang_seconds)
            exchange.reset()
        elif fault == "reset":
            self.stats.record(0, prompt, 0, key_ok)
            exchange.reset()
        else:
            status, message, type_, code = STATUS_FAULTS[fault]
            self.stats.record(status, prompt, 0, key_ok)
            retry = self._config.faults.retry_after if fault == "429" else None
            self._send_error(exchange, flavor, status, message, type_, code, retry_after=retry)
