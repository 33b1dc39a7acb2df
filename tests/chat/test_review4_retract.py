"""Review 4: ``HistoryStore.retract``, which takes a refused turn's message back (with leases),
in a real SQLite file: only the conversation's newest messages, all or none."""

from __future__ import annotations

from pathlib import Path

from actors.chat import HistoryStore


def _m(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def test_messages_that_are_not_the_newest_are_not_retracted(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "history.sqlite3") as history:
        history.append("c1", [_m("a")])
        history.append("c1", [_m("b")])  # written after: "a" is no longer the newest
        assert history.retract("c1", [_m("a")]) is False
        assert history.retract("c1", [_m("a"), _m("c")]) is False
        assert history.retract("c2", [_m("b")]) is False  # another conversation's
        assert history.load("c1") == [_m("a"), _m("b")]


def test_the_newest_messages_are_retracted_and_the_older_kept(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "history.sqlite3") as history:
        history.append("c1", [_m("a"), _m("b")])
        history.append("c1", [_m("c"), _m("d")])
        assert history.retract("c1", [_m("c"), _m("d")]) is True
        assert history.load("c1") == [_m("a"), _m("b")]
        assert history.exists("c1")
        history.append("c1", [_m("e")])  # the next append follows what is left
        assert history.load("c1") == [_m("a"), _m("b"), _m("e")]


def test_a_conversation_retracted_to_nothing_is_forgotten(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "history.sqlite3") as history:
        history.append("c1", [_m("a")])
        assert history.retract("c1", [_m("a")]) is True
        assert history.load("c1") == []
        assert not history.exists("c1")
        assert history.retract("c1", []) is True


def test_what_max_stored_messages_deleted_for_the_append_stays_deleted(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "history.sqlite3", max_stored_messages=2) as history:
        history.append("c1", [_m("a"), _m("b")])
        history.append("c1", [_m("c")])  # "a" deleted: over the bound
        assert history.retract("c1", [_m("c")]) is True
        assert history.load("c1") == [_m("b")]
