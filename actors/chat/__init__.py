"""Conversations: one actor per conversation, its persisted history, the tool loop of a turn."""

from ._group_commit import GroupCommit
from ._history import EXPIRE_BATCH, HistoryStore, HistoryStoreClosed
from ._leases import ConversationUnavailable, SharedTurnLeases, TurnLeases
from ._messages import (
    ClearHistory,
    HistoryWriteError,
    RunTurn,
    ToolCallFinished,
    ToolCallStarted,
    TurnComplete,
    TurnReasoning,
    TurnText,
    conversation_label,
)
from ._session import session_actor_name, session_child_spec
from ._trimming import trim_history

__all__ = [
    "EXPIRE_BATCH",
    "ClearHistory",
    "ConversationUnavailable",
    "GroupCommit",
    "HistoryStore",
    "HistoryStoreClosed",
    "HistoryWriteError",
    "RunTurn",
    "SharedTurnLeases",
    "ToolCallFinished",
    "ToolCallStarted",
    "TurnComplete",
    "TurnLeases",
    "TurnReasoning",
    "TurnText",
    "conversation_label",
    "session_actor_name",
    "session_child_spec",
    "trim_history",
]
