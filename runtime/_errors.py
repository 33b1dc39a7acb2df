"""Errors of the actor kernel.

The tree::

    ActorError                     base; ``retryable`` says whether trying again may succeed
    ├── Overloaded                 the mailbox is full: an overload signal (retryable)
    ├── DeadlineExceeded           the caller's deadline passed before the reply (retryable)
    ├── ActorCrashed               the instance serving the request crashed; a new one may serve
    │                              a retry (retryable)
    ├── ActorStopped               the actor is stopped or the system is shutting down
    └── RestartIntensityExceeded   a supervisor saw more restarts than its intensity allows and
        └── SystemFailure          escalated; at the root the whole system stops with this error

Like trio's ``ClosedResourceError`` / ``BrokenResourceError``, each has one exact meaning.
"""

from __future__ import annotations

__all__ = [
    "ActorCrashed",
    "ActorError",
    "ActorStopped",
    "DeadlineExceeded",
    "Overloaded",
    "RestartIntensityExceeded",
    "SystemFailure",
]


class ActorError(Exception):
    """Base of the kernel's errors."""

    retryable: bool = False


class Overloaded(ActorError):
    """The target's mailbox is full; the message was not accepted."""

    retryable = True

    def __init__(self, actor: str, capacity: int) -> None:
        super().__init__(f"actor {actor!r} is overloaded: mailbox full ({capacity} messages)")
        self.actor = actor
        self.capacity = capacity


class DeadlineExceeded(ActorError, TimeoutError):
    """The request's deadline passed before it was answered (or before it was handled)."""

    retryable = True

    def __init__(self, actor: str, detail: str = "no reply before the deadline") -> None:
        super().__init__(f"actor {actor!r}: {detail}")
        self.actor = actor


class ActorCrashed(ActorError):
    """The actor instance handling this request crashed before answering it."""

    retryable = True

    def __init__(self, actor: str, cause: BaseException | None = None) -> None:
        reason = f": {type(cause).__name__}" if cause is not None else ""
        super().__init__(f"actor {actor!r} crashed before replying{reason}")
        self.actor = actor
        self.cause = cause


class ActorStopped(ActorError):
    """The actor is stopped (or stopping) and accepts no more messages."""

    def __init__(self, actor: str, detail: str = "actor is stopped") -> None:
        super().__init__(f"actor {actor!r}: {detail}")
        self.actor = actor


class RestartIntensityExceeded(ActorError):
    """A supervisor exceeded its restart intensity and escalates to its parent."""

    def __init__(self, supervisor: str, child: str, restarts: int, period: float) -> None:
        super().__init__(
            f"supervisor {supervisor!r} gave up: child {child!r} needed more than "
            f"{restarts} restarts in {period:g}s"
        )
        self.supervisor = supervisor
        self.child = child


class SystemFailure(RestartIntensityExceeded):
    """The root supervisor escalated: the actor system stopped."""

    def __init__(self, cause: RestartIntensityExceeded) -> None:
        Exception.__init__(self, f"actor system stopped: {cause}")
        self.supervisor = cause.supervisor
        self.child = cause.child
        self.cause = cause
