"""Sliding 60-second windows and the counters served by ``GET /_sim/stats``."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["WINDOW_SECONDS", "SlidingWindow", "Stats", "format_reset"]

WINDOW_SECONDS = 60.0
LOG_CAPACITY = 100_000


class SlidingWindow:
    """Requests and tokens seen in the last :data:`WINDOW_SECONDS`, and the most ever seen."""

    __slots__ = ("_entries", "max_requests", "max_tokens", "tokens")

    def __init__(self) -> None:
        self._entries: deque[tuple[float, int]] = deque()
        self.tokens = 0
        self.max_requests = 0
        self.max_tokens = 0

    def __repr__(self) -> str:
        return f"<SlidingWindow [{len(self._entries)} requests, {self.tokens} tokens]>"

    def prune(self, now: float) -> None:
        entries = self._entries
        horizon = now - WINDOW_SECONDS
        while entries and entries[0][0] <= horizon:
            self.tokens -= entries.popleft()[1]

    @property
    def requests(self) -> int:
        return len(self._entries)

    def add(self, now: float, tokens: int) -> None:
        self.prune(now)
        self._entries.append((now, tokens))
        self.tokens += tokens
        self.max_requests = max(self.max_requests, len(self._entries))
        self.max_tokens = max(self.max_tokens, self.tokens)

    def seconds_until_oldest_expires(self, now: float) -> float:
        if not self._entries:
            return 0.0
        return max(0.0, self._entries[0][0] + WINDOW_SECONDS - now)

    def seconds_until_tokens_fit(self, now: float, limit: int, tokens: int) -> float:
        """How long until ``tokens`` more fit under ``limit`` (0.0 if they fit now)."""
        excess = self.tokens + tokens - limit
        for at, spent in self._entries:
            if excess <= 0:
                return max(0.0, at - now)
            excess -= spent
        return WINDOW_SECONDS


def format_reset(seconds: float) -> str:
    """OpenAI's duration format of ``x-ratelimit-reset-*``: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1.0:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60.0:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}m{round(rest, 3):g}s"


class Stats:
    """Counters of the chat completions served since start or the last reset."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.arrivals = SlidingWindow()
        self.log: deque[tuple[float, int, int, int, bool]] = deque(maxlen=LOG_CAPACITY)
        self.by_status: dict[int, int] = {}
        self.faults: dict[str, int] = {}
        self.total_requests = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost = 0.0
        self.streams_started = 0
        self.streams_completed = 0
        self.streams_aborted_by_client = 0
        self.streams_dropped = 0
        self.streams_errored = 0
        self.streams_open = 0

    def __repr__(self) -> str:
        return (
            f"<Stats [Requests: {self.total_requests} | Streams: {self.streams_open} open,"
            f" {self.streams_completed} completed, {self.streams_aborted_by_client} aborted]>"
        )

    def record(
        self, status: int, prompt_tokens: int, completion_tokens: int, key_ok: bool
    ) -> None:
        """Count one chat completion; ``status`` 0 means no response (reset or timeout)."""
        now = self._clock()
        self.total_requests += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.log.append((now, status, prompt_tokens, completion_tokens, key_ok))
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def count_fault(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def as_json(self) -> dict[str, Any]:
        self.arrivals.prune(self._clock())
        return {
            "total_requests": self.total_requests,
            "by_status": {str(status): n for status, n in sorted(self.by_status.items())},
            "faults": dict(sorted(self.faults.items())),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": self.cost,
            "streams": {
                "started": self.streams_started,
                "completed": self.streams_completed,
                "aborted_by_client": self.streams_aborted_by_client,
                "dropped": self.streams_dropped,
                "errored": self.streams_errored,
                "open": self.streams_open,
            },
            "window_seconds": WINDOW_SECONDS,
            "requests_in_window": self.arrivals.requests,
            "tokens_in_window": self.arrivals.tokens,
            "max_requests_in_window": self.arrivals.max_requests,
            "max_tokens_in_window": self.arrivals.max_tokens,
            "log": [list(entry) for entry in self.log],
        }
