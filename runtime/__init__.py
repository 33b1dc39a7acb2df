"""The actor kernel: mailboxes, references, supervision. Knows nothing about LLMs, HTTP or MCP.

``ActorRef.tell`` / ``ask`` / ``ask_stream`` talk to actors; a message declares its reply type by
deriving from :class:`Ask` (or :class:`AskStream`); a :class:`ChildSpec` says how to run and
restart one; a :class:`SupervisorSpec` groups children under a :class:`Strategy`;
:class:`ActorSystem` runs the tree. Tests step time with :class:`runtime.testing.FakeClock`.
"""

from runtime._actor import Actor, ActorState, ActorStatus, Restart, unwrap_group
from runtime._clock import Clock, MonotonicClock
from runtime._context import ActorContext
from runtime._errors import (
    ActorCrashed,
    ActorError,
    ActorStopped,
    DeadlineExceeded,
    Overloaded,
    RestartIntensityExceeded,
    SystemFailure,
)
from runtime._queue import Queue
from runtime._ref import ActorRef
from runtime._request import Ask, AskStream, Outcome, Request, RequestKind
from runtime._supervisor import Backoff, ChildSpec, Strategy, SupervisorSpec
from runtime._system import ActorSystem

__all__ = [
    "Actor",
    "ActorContext",
    "ActorCrashed",
    "ActorError",
    "ActorRef",
    "ActorState",
    "ActorStatus",
    "ActorStopped",
    "ActorSystem",
    "Ask",
    "AskStream",
    "Backoff",
    "ChildSpec",
    "Clock",
    "DeadlineExceeded",
    "MonotonicClock",
    "Outcome",
    "Overloaded",
    "Queue",
    "Request",
    "RequestKind",
    "Restart",
    "RestartIntensityExceeded",
    "Strategy",
    "SupervisorSpec",
    "SystemFailure",
    "unwrap_group",
]
