"""The names the model sees for the tools of every server (OpenAI's name rule, clashes)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Final

from ._tool_types import ToolSpec

__all__ = ["exposed_tool_names"]

_OPENAI_NAME: Final = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def exposed_tool_names(tools_by_server: Mapping[str, list[ToolSpec]]) -> dict[str, ToolSpec]:
    """The names the model sees for every tool, mapped to the tool.

    The rule: a tool name offered by exactly one server keeps its name; a name offered by several
    servers becomes ``<server>__<tool>`` on every one of them. Names are then made valid for
    OpenAI (``^[a-zA-Z0-9_-]{1,64}$``: other characters become ``_``, the result is cut to 64
    characters). If two tools still end up with the same name (after sanitizing, or a server
    listing a name twice), the later one, in server then listing order, gets ``_2``, ``_3``, ...
    """
    servers_per_name = Counter(
        name for tools in tools_by_server.values() for name in {spec.name for spec in tools}
    )
    exposed: dict[str, ToolSpec] = {}
    for server, tools in tools_by_server.items():
        for spec in tools:
            clashes = servers_per_name[spec.name] > 1
            base = _sanitize(f"{server}__{spec.name}" if clashes else spec.name)
            candidate = base
            for n in range(2, len(exposed) + 3):
                if candidate not in exposed:
                    break
                suffix = f"_{n}"
                candidate = base[: 64 - len(suffix)] + suffix
            exposed[candidate] = spec
    return exposed


def _sanitize(name: str) -> str:
    if _OPENAI_NAME.match(name):
        return name
    cleaned = re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:64]
    return cleaned or "_"
