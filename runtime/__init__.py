"""The actor kernel: mailboxes, references, supervision. Knows nothing about LLMs, HTTP or MCP.

``ActorRef.tell`` / ``ask`` / ``ask_stream`` talk to actors; a :class:`ChildSpec` says how to run
and restart one; a :class:`SupervisorSpec` groups children under a :class:`Strategy`;
:class:`ActorSystem` runs the tree.
"""

from runtime._actor import (
    Actor,
    ActorContext,
    ActorRef,
    ActorState,
    ActorStatus,
    unwrap_group,
)
from runtime._clock import Clock, FakeClock, MonotonicClock
from runtime._errors import (
    ActorCrashed,
    ActorError,
    ActorStopped,
    DeadlineExceeded,
    Overloaded,
    RestartIntensityExceeded,
    SystemFailure,
)
from runtime._request import Outcome, Request, RequestKind
from runtime._supervisor import Backoff, ChildSpec, Restart, Strategy, SupervisorSpec
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
    "Backoff",
    "ChildSpec",
    "Clock",
    "DeadlineExceeded",
    "FakeClock",
    "MonotonicClock",
    "Outcome",
    "Overloaded",
    "Request",
    "RequestKind",
    "Restart",
    "RestartIntensityExceeded",
    "Strategy",
    "SupervisorSpec",
    "SystemFailure",
    "unwrap_group",
]
