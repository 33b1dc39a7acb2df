"""Every operation of a chaos run, and how each one ended.

An operation (a chat call, a stream, a tool call, a WebSocket turn) is ``begin``\\ -ed once and
must ``end`` exactly once: with a result, or with an error the caller saw. The books tell apart
what the invariants forbid: an operation that never ended (lost), one that ended after its deadline
plus a tolerance (hung), one that ended twice or delivered after its end (duplicated), one that
ended with an exception outside our typed hierarchy (untyped).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Books", "Operation"]


@dataclass
class Operation:
    """One operation: what it was, when it started, how it ended (``outcomes`` has one entry)."""

    id: str
    kind: str
    deadline_s: float
    started: float
    outcomes: list[str] = field(default_factory=list)
    ended: float | None = None
    untyped: str | None = None
    after_end: int = 0
    detail: str = ""

    @property
    def elapsed(self) -> float:
        return (self.ended if self.ended is not None else time.monotonic()) - self.started


class Books:
    """The ledger of operations of one run (single event loop, no locks)."""

    def __init__(self, tolerance_s: float) -> None:
        self.tolerance_s = tolerance_s
        self.operations: dict[str, Operation] = {}
        self._next = 0

    def begin(self, kind: str, deadline_s: float) -> Operation:
        self._next += 1
        op = Operation(f"{kind}-{self._next}", kind, deadline_s, time.monotonic())
        self.operations[op.id] = op
        return op

    def end(self, op: Operation, outcome: str, *, untyped: BaseException | None = None,
            detail: str = "") -> None:
        """Record how ``op`` ended; a second call is recorded too (it is what we look for)."""
        op.outcomes.append(outcome)
        op.detail = op.detail or detail[:300]
        if op.ended is None:
            op.ended = time.monotonic()
        if untyped is not None:
            op.untyped = f"{type(untyped).__module__}.{type(untyped).__qualname__}: {untyped}"

    def delivered_after_end(self, op: Operation) -> None:
        op.after_end += 1

    # -- verdicts ---------------------------------------------------------------------------

    def lost(self) -> list[Operation]:
        return [op for op in self.operations.values() if not op.outcomes]

    def duplicated(self) -> list[Operation]:
        return [op for op in self.operations.values() if len(op.outcomes) > 1 or op.after_end]

    def hung(self) -> list[Operation]:
        return [op for op in self.operations.values()
                if op.elapsed > op.deadline_s + self.tolerance_s]

    def untyped(self) -> list[Operation]:
        return [op for op in self.operations.values() if op.untyped is not None]

    def outcome_counts(self) -> Counter[str]:
        return Counter(outcome for op in self.operations.values() for outcome in op.outcomes[:1])

    def kind_counts(self) -> Counter[str]:
        return Counter(op.kind for op in self.operations.values())

    def max_overshoot(self) -> float:
        """The largest ``elapsed - deadline`` seen (negative: everything ended in time)."""
        return max((op.elapsed - op.deadline_s for op in self.operations.values()),
                   default=0.0)

    def violations(self) -> dict[str, list[dict[str, Any]]]:
        """Lost, hung, duplicated and untyped operations (at most 5 of each, for the message)."""
        def show(ops: list[Operation]) -> list[dict[str, Any]]:
            return [{"id": op.id, "outcomes": op.outcomes, "elapsed": round(op.elapsed, 2),
                     "deadline": op.deadline_s, "untyped": op.untyped,
                     "after_end": op.after_end, "detail": op.detail} for op in ops[:5]]
        return {name: show(ops) for name, ops in (
            ("lost", self.lost()), ("hung", self.hung()),
            ("duplicated", self.duplicated()), ("untyped", self.untyped())) if ops}
