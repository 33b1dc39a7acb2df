"""Which fault a chat completion gets: drawn from the configured rates or forced by the
``X-Sim-Fault`` header, and the canned error of each status fault."""

from __future__ import annotations

from collections.abc import Sequence

from ._config import FAULT_KINDS

__all__ = ["INVALID_JSON", "MIDSTREAM", "STATUS_FAULTS", "draw_fault"]

#: Faults that strike after the response started (a 502 when not streaming).
MIDSTREAM = ("midstream_drop", "midstream_error")
#: The ``X-Sim-Fault`` value that cuts the last character of a JSON answer.
INVALID_JSON = "invalid_json"
#: Fault kind -> (status, message, error type, error code), as OpenAI and OpenRouter send them.
STATUS_FAULTS: dict[str, tuple[int, str, str, str | None]] = {
    "429": (429, "Rate limit reached for requests. Please try again later.", "requests",
            "rate_limit_exceeded"),
    "401": (401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    "402": (402, "Insufficient credits. Add more using https://openrouter.ai/credits",
            "insufficient_quota", "insufficient_quota"),
    "500": (500, "The server had an error while processing your request. Sorry about that!",
            "server_error", None),
    "502": (502, "Bad gateway.", "server_error", None),
    "503": (503, "The engine is currently overloaded, please try again later.", "server_error",
            None),
}


def draw_fault(draw: float, rates: Sequence[float]) -> str | None:
    """The fault ``draw`` (uniform in [0, 1)) picks, walking ``rates`` in :data:`FAULT_KINDS`
    order; None past their sum."""
    cumulative = 0.0
    for kind, rate in zip(FAULT_KINDS, rates, strict=True):
        cumulative += rate
        if draw < cumulative:
            return kind
    return None
