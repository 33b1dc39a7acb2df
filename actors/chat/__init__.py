"""Conversations: one actor per conversation, its persisted history, the tool loop of a turn."""

from ._history import HistoryStore
from ._leases import SharedTurnLeases, TurnLeases
from ._session import (
    ClearHistory,
    GetHistory,
    RunTurn,
    ToolCallFinished,
    ToolCallStarted,
    TurnComplete,
    TurnText,
    session_actor_name,
    session_child_spec,
    trim_history,
)

__all__ = [
    "ClearHistory",
    "GetHistory",
    "HistoryStore",
    "RunTurn",
    "SharedTurnLeases",
    "ToolCallFinished",
    "ToolCallStarted",
    "TurnComplete",
    "TurnLeases",
    "TurnText",
    "session_actor_name",
    "session_child_spec",
    "trim_history",
]
