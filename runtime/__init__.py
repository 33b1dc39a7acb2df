"""The actor kernel: mailboxes, references, supervision. Knows nothing about LLMs, HTTP or MCP."""

from runtime._clock import Clock, FakeClock, MonotonicClock

__all__ = ["Clock", "FakeClock", "MonotonicClock"]
