"""server/protocol.py: frames in, envelopes out; and the error types clients see."""

from __future__ import annotations

import pytest

from actors.llm import ContentRefused, LLMCostLimitError, LLMRateLimitError, LLMTimeoutError
from runtime import ActorStopped, DeadlineExceeded, Overloaded
from server import protocol
from server.protocol import CancelFrame, ChatFrame, ClearHistoryFrame, ProtocolError, parse_frame
from server.websocket import error_type_of


def test_chat_frame_of_the_existing_frontend_parses_with_defaults() -> None:
    frame = parse_frame(
        '{"action": "chat", "request_id": "r1", "payload": {"text": "hi", "streaming": true,'
        ' "metadata": {"k": [1, "v"]}}}'
    )
    assert frame == ChatFrame(
        action="chat",
        request_id="r1",
        payload=protocol.ChatPayload(text="hi", streaming=True, metadata={"k": [1, "v"]}),
    )
    assert isinstance(frame, ChatFrame)
    assert frame.payload.conversation_id is None


def test_chat_frame_streaming_defaults_to_true_and_unknown_keys_are_ignored() -> None:
    frame = parse_frame('{"action": "chat", "request_id": "r", "extra": 1,'
                        ' "payload": {"text": "x", "more": 2}}')
    assert isinstance(frame, ChatFrame)
    assert frame.payload.streaming is True


def test_cancel_and_clear_history_frames_parse() -> None:
    assert parse_frame('{"action": "cancel", "request_id": "r1"}') == CancelFrame(
        action="cancel", request_id="r1"
    )
    assert parse_frame('{"action": "clear_history"}') == ClearHistoryFrame(action="clear_history")
    frame = parse_frame('{"action": "clear_history", "conversation_id": "abc-1"}')
    assert isinstance(frame, ClearHistoryFrame)
    assert frame.conversation_id == "abc-1"


def test_invalid_json_is_reported_with_its_position() -> None:
    with pytest.raises(ProtocolError, match=r"^invalid JSON: Expecting value at line 1, column 1$"
                       ) as caught:
        parse_frame("not json")
    assert caught.value.error_type == "invalid_json"
    assert caught.value.request_id is None


def test_an_integer_over_the_digit_limit_is_invalid_json() -> None:
    # Legal JSON, but Python refuses to convert integers this long (a plain ValueError).
    with pytest.raises(ProtocolError, match=r"^invalid JSON: an integer longer than 4300 digits$"
                       ) as caught:
        parse_frame('{"action": "chat", "request_id": "r1", "n": ' + "1" * 5000 + "}")
    assert caught.value.error_type == "invalid_json"
    assert caught.value.request_id is None


def test_a_frame_that_is_not_an_object_is_invalid() -> None:
    with pytest.raises(ProtocolError, match=r"^a frame must be a JSON object, not an array$"):
        parse_frame("[1, 2]")


def test_unknown_action_keeps_the_request_id() -> None:
    with pytest.raises(ProtocolError, match=r"^unknown action 'dance'; expected one of chat, "
                       r"cancel, clear_history$") as caught:
        parse_frame('{"action": "dance", "request_id": "r9"}')
    assert caught.value.error_type == "unknown_action"
    assert caught.value.request_id == "r9"


def test_missing_action_is_an_unknown_action() -> None:
    with pytest.raises(ProtocolError, match=r"^unknown action missing; ") as caught:
        parse_frame('{"request_id": "r9"}')
    assert caught.value.error_type == "unknown_action"


def test_missing_fields_are_named_without_echoing_input() -> None:
    with pytest.raises(ProtocolError, match=r"^invalid frame: payload\.text: required$") as caught:
        parse_frame('{"action": "chat", "request_id": "r2", "payload": {"streaming": false}}')
    assert caught.value.error_type == "invalid_request"
    assert caught.value.request_id == "r2"


def test_wrong_types_are_reported_without_the_value() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_frame('{"action": "chat", "request_id": "r", "payload": {"text": "sk-secret123456",'
                    ' "streaming": "maybe"}}')
    assert "payload.streaming" in caught.value.message
    assert "maybe" not in caught.value.message


def test_conversation_ids_are_plain_names() -> None:
    with pytest.raises(ProtocolError, match=r"payload\.conversation_id") as caught:
        parse_frame('{"action": "chat", "request_id": "r", "payload": {"text": "x",'
                    ' "conversation_id": "../etc"}}')
    assert caught.value.error_type == "invalid_request"


def test_empty_text_is_invalid() -> None:
    with pytest.raises(ProtocolError, match=r"payload\.text"):
        parse_frame('{"action": "chat", "request_id": "r", "payload": {"text": ""}}')


def test_envelopes_have_the_frontend_shape() -> None:
    assert protocol.processing("r", "hi", "c1") == {
        "request_id": "r",
        "status": "processing",
        "chunk": {"metadata": {"user_message": "hi", "conversation_id": "c1"}},
    }
    assert protocol.text_chunk("r", "de") == {
        "request_id": "r", "status": "chunk", "chunk": {"type": "text", "data": "de"}
    }
    assert protocol.error("r", "boom", "timeout") == {
        "request_id": "r", "status": "error", "chunk": {"error": "boom", "error_type": "timeout"}
    }
    started = protocol.tool_call_started("r", call_id="c", server="demo", tool="add",
                                         arguments={"a": 1})
    assert started["chunk"] == {
        "type": "tool_call_started",
        "data": {"server": "demo", "tool": "add", "arguments": {"a": 1}, "call_id": "c"},
    }
    finished = protocol.tool_call_finished("r", call_id="c", server="demo", tool="add",
                                           is_error=False, result_preview="3",
                                           duration_ms=1.234)
    assert finished["chunk"]["data"]["duration_ms"] == 1.2
    complete = protocol.complete("r", usage={"total_tokens": 3}, cost=0.5, provider="p",
                                 model="m", conversation_id="c1")
    assert complete["status"] == "complete"
    assert {"usage", "cost", "provider", "model"} <= complete["chunk"].keys()


@pytest.mark.parametrize(
    ("error", "error_type"),
    [
        (LLMRateLimitError("slow down", retry_after=1.0), "rate_limit"),
        (LLMCostLimitError("too expensive"), "cost_limit"),
        (LLMTimeoutError("late"), "timeout"),
        (ContentRefused("no"), "content_refused"),
        (Overloaded("session:x", 10), "overloaded"),
        (DeadlineExceeded("session:x"), "timeout"),
        (ActorStopped("session:x"), "unavailable"),
        (ValueError("bug"), "internal_error"),
    ],
)
def test_error_types_clients_see(error: Exception, error_type: str) -> None:
    assert error_type_of(error) == error_type
