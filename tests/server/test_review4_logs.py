"""Review 4: the log line of a turn or a clear that failed unexpectedly.

It held the whole conversation id (the capability to use the conversation, which review 3 took
out of every other log line) and the client's request id raw: a request id with a line break
wrote a line of the client's choosing into the server's log.
"""

from __future__ import annotations

import logging

import pytest

from server._turns import failure

CONVERSATION = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("what", ["turn", "clear_history"])
def test_an_unexpected_failure_is_logged_with_the_conversation_label_and_a_quoted_request_id(
    caplog: pytest.LogCaptureFixture, what: str,
) -> None:
    request_id = "r1\n2026-11-30 00:00:00 ERROR server: forged"
    with caplog.at_level(logging.ERROR, logger="server.websocket"):
        envelope = failure(request_id, RuntimeError("a bug"), what, CONVERSATION)
    assert envelope == {"request_id": request_id, "status": "error",
                        "chunk": {"error": "internal error", "error_type": "internal_error"}}
    [record] = caplog.records
    assert record.getMessage() == (
        f"{what} 'r1\\n2026-11-30 00:00:00 ERROR server: forged' of conversation 01234567..."
        " failed")
    assert CONVERSATION not in caplog.text
    assert "\n2026-11-30 00:00:00 ERROR server: forged" not in caplog.text
