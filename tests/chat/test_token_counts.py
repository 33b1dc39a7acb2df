"""Each message of a conversation is tokenized once, however many turns and layers count it.

The session counts the new messages and trims the history by tokens; the router counts the whole
request again for its pre-flight checks. Both read one per-message count cache (issue 11 item 4):
a real runtime, the real simulator and the real tiktoken encoding, wrapped only to record what
it is asked to encode.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import anyio
import pytest
import tiktoken

from actors.chat import (
    HistoryStore,
    RunTurn,
    TurnComplete,
    TurnText,
    session_child_spec,
    trim_history,
)
from actors.chat._trimming import HistoryFit
from actors.llm import CostConfig, LLMConfig, count_message_tokens, open_runtime
from actors.llm import _tokens as tokens
from actors.mcp import ToolCatalog
from runtime import SupervisorSpec
from server.config import ChatConfig
from server.simulated import simulated_llm_config
from simulator.process import SimulatorProcess

TURNS = 6
SYSTEM = "You are a terse assistant for the token counting test."


class RecordingEncoding:
    """The real tiktoken encoding; records every text it encodes, and on which thread."""

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self._encoding = encoding
        self.texts: Counter[str] = Counter()
        self.threads: dict[str, set[int]] = {}

    def encode_ordinary(self, text: str) -> list[int]:
        self.texts[text] += 1
        self.threads.setdefault(text, set()).add(threading.get_ident())
        return self._encoding.encode_ordinary(text)


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> RecordingEncoding:
    real = tokens.encoding_for_model("gpt-4o-mini")
    assert real is not None and real.name == "o200k_base"
    wrapper = RecordingEncoding(real)
    monkeypatch.setattr(tokens, "_encoders", {"o200k_base": wrapper})
    monkeypatch.setattr(tokens, "_counts", {})
    return wrapper


async def test_a_conversation_tokenizes_each_message_once(
        tmp_path: Path, recording: RecordingEncoding) -> None:
    cost = CostConfig(db_path=str(tmp_path / "ledger.sqlite3"))
    answers: list[str] = []
    async with SimulatorProcess() as sim:
        llm = simulated_llm_config(LLMConfig(cost=cost), sim.url)
        model = llm.providers[llm.candidate_order()[0]].model
        assert tokens.encoding_name_for_model(model) == "o200k_base"
        sessions = SupervisorSpec("sessions", [], max_restarts=100, max_seconds=1.0)
        with HistoryStore(tmp_path / "history.sqlite3") as history:
            async with open_runtime(llm, extra_children=[sessions]) as runtime:
                session = await runtime.system.spawn(
                    session_child_spec(
                        "counted", router=runtime.router, tools=ToolCatalog(runtime.system, []),
                        history=history, chat=ChatConfig(system_prompt=SYSTEM),
                        count_model=model,
                    ),
                    under="sessions",
                )
                for number in range(TURNS):
                    text = ""
                    with anyio.fail_after(30):
                        async with session.ask_stream(
                                RunTurn(f"question number {number}", f"r{number}", {})) as items:
                            async for item in items:
                                if isinstance(item, TurnText):
                                    text += item.text
                                last = item
                    assert isinstance(last, TurnComplete)
                    answers.append(text)
    # Every string of a message is encoded, its role too: once per message. The last answer is
    # never counted (no turn follows it).
    assert answers[-1].startswith("Echo: question number")
    expected = Counter({SYSTEM: 1, "system": 1, "user": TURNS, "assistant": TURNS - 1})
    expected.update(f"question number {n}" for n in range(TURNS))
    expected.update(answers[:-1])
    assert recording.texts == expected
    # The history surely fits the budget: the session counts nothing, and no turn takes a
    # worker-thread trip to count (the encoding is loaded: the router counts on the loop).
    loop = threading.get_ident()
    assert all(threads == {loop} for threads in recording.threads.values())


async def test_history_fit_counts_in_a_thread_first_then_new_messages_on_the_loop(
        recording: RecordingEncoding) -> None:
    model = "gpt-4o-mini"
    history = [{"role": role, "content": f"old {role} message number {n}"}
               for n in range(10) for role in ("user", "assistant")]
    fit = HistoryFit(budget_tokens=60, max_messages=100)  # 20 messages cannot surely fit
    loop = threading.get_ident()

    def expected(user: dict[str, str], past: list[dict[str, str]]) -> list[dict[str, str]]:
        reserved = count_message_tokens([user], model)
        return trim_history(past, model=model, budget_tokens=60, max_messages=100,
                            reserved_tokens=reserved)

    first = {"role": "user", "content": "first new question"}
    kept = await fit.fit(history, [], first, model)
    assert recording.threads["first new question"] != {loop}  # read from the store: a thread
    answer = {"role": "assistant", "content": "first new answer"}
    fit.added([first, answer])
    second = {"role": "user", "content": "second new question"}
    history2 = [*history, first, answer]
    kept2 = await fit.fit(history2, [], second, model)
    assert (recording.threads["second new question"], recording.threads["first new answer"]) == (
        {loop}, {loop})
    fit.forget()  # read again from the store: counted in a thread again
    third = {"role": "user", "content": "third new question"}
    kept3 = await fit.fit(history2, [], third, model)
    assert recording.threads["third new question"] != {loop}
    assert (kept, kept2, kept3) == (
        expected(first, history), expected(second, history2), expected(third, history2))
    assert 0 < len(kept) < len(history) and kept3 == history2[-len(kept3):]
