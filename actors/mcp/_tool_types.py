"""What an MCP server offers and answers: :class:`ToolSpec` and :class:`ToolResult`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

import mcp_types

__all__ = ["ToolResult", "ToolSpec"]

_WORD: Final = re.compile(r"\S+")  # what str.split() splits off (the same whitespace)


@dataclass(frozen=True)
class ToolSpec:
    """One tool offered by an MCP server, as listed at start-up."""

    server: str
    name: str
    description: str
    input_schema: dict[str, Any]

    def to_openai_tool(self, exposed_name: str) -> dict[str, Any]:
        """The OpenAI ``tools`` entry for this tool, under the name the model sees."""
        parameters = self.input_schema or {"type": "object", "properties": {}}
        return {
            "type": "function",
            "function": {
                "name": exposed_name,
                "description": self.description,
                "parameters": parameters,
            },
        }


@dataclass(frozen=True)
class ToolResult:
    """The outcome of a tool call that reached the tool (``is_error`` if the tool reported one)."""

    text: str
    structured: dict[str, Any] | None
    is_error: bool

    def as_tool_message_content(self) -> str:
        """What goes back to the model: the text, else the structured content as JSON."""
        if self.text:
            return self.text
        if self.structured is not None:
            return json.dumps(self.structured, ensure_ascii=False)
        return "(the tool returned no content)"

    def preview(self, n: int = 200) -> str:
        """The first ``n`` characters of the model-facing content, on one line."""
        # Word by word, only as far as the preview goes: a result may be megabytes of words.
        words: list[str] = []
        size = -1
        for word in _WORD.finditer(self.as_tool_message_content()):
            words.append(word.group())
            size += len(words[-1]) + 1
            if size > n:
                break
        flat = " ".join(words)
        return flat if len(flat) <= n else flat[: max(n - 1, 0)] + "…"

    @classmethod
    def from_call_result(cls, result: mcp_types.CallToolResult) -> ToolResult:
        """Flatten an SDK result: text joined, other content described, structured kept."""
        parts = [_describe_content(block) for block in result.content]
        structured = result.structured_content
        if structured is not None and not isinstance(structured, dict):
            structured = {"result": structured}
        return cls(text="\n".join(parts), structured=structured, is_error=result.is_error)


def _describe_content(block: mcp_types.ContentBlock) -> str:
    if isinstance(block, mcp_types.TextContent):
        return block.text
    if isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
        return f"[{block.mime_type} {_base64_size(block.data)} bytes]"
    if isinstance(block, mcp_types.EmbeddedResource):
        resource = block.resource
        if isinstance(resource, mcp_types.TextResourceContents):
            return resource.text
        mime = resource.mime_type or "application/octet-stream"
        return f"[{mime} {_base64_size(resource.blob)} bytes from {resource.uri}]"
    return f"[resource link {block.uri}]"


def _base64_size(data: str) -> int:
    stripped = data.rstrip("=")
    return len(stripped) * 3 // 4
