"""Errors of the shared (Redis) state.

The tree::

    ClusterError              base
    ├── ClusterUnavailable    Redis is unreachable, too slow or refusing: nothing was decided
    │                         (retryable; ``error_type == "unavailable"``)
    └── LeaseLost             the conversation lease this holder had is gone (expired or taken over)
"""

from __future__ import annotations

__all__ = ["ClusterError", "ClusterUnavailable", "LeaseLost"]


class ClusterError(Exception):
    """Base of the errors of shared state."""

    retryable: bool = False
    error_type: str = "cluster"


class ClusterUnavailable(ClusterError):
    """Redis did not answer within the operation timeout, or refused the connection.

    The operation is treated as not done (budgets, windows and leases fail closed). The message
    names the operation and the kind of failure only, never the URL or its password.
    """

    retryable = True
    error_type = "unavailable"

    def __init__(self, operation: str, reason: str) -> None:
        super().__init__(f"shared state unavailable during {operation}: {reason}")
        self.operation = operation
        self.reason = reason

    def __reduce__(self) -> tuple[type[ClusterUnavailable], tuple[str, str]]:
        return (type(self), (self.operation, self.reason))


class LeaseLost(ClusterError):
    """The lease on a conversation is no longer ours: its turn must stop writing."""

    def __init__(self, conversation_id: str, token: int) -> None:
        super().__init__(f"lease on conversation {conversation_id!r} (token {token}) was lost")
        self.conversation_id = conversation_id
        self.token = token

    def __reduce__(self) -> tuple[type[LeaseLost], tuple[str, int]]:
        return (type(self), (self.conversation_id, self.token))
