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
    """The names the model sees for every tool, mapped to the tool (in server then listing order).

    The rule: names are made valid for OpenAI (``^[a-zA-Z0-9_-]{1,64}$``: other characters
    become ``_``, the result is cut to 64 characters); a valid name offered by exactly one server
    is the tool's; one offered by several servers (``get.weather`` and ``get_weather`` are one)
    becomes ``<server>__<tool>`` on every one of them, made valid the same way. If two tools
    still end up with the same name (a server listing a name twice, or a tool named like a
    prefixed one), the later one gets ``_2``, ``_3``, ...: prefixed names first, then the
    others, each in server then listing order.
    """
    # Counted as the model would see them: else a server listed first could offer
    # ``get.weather`` and take the name another server's ``get_weather`` is offered under.
    servers_per_name = Counter(
        name for tools in tools_by_server.values()
        for name in {_sanitize(spec.name) for spec in tools}
    )
    listed = [(server, spec) for server, tools in tools_by_server.items() for spec in tools]
    clashes = [servers_per_name[_sanitize(spec.name)] > 1 for _, spec in listed]
    # Prefixed names are given out first: otherwise a server listed earlier could offer a tool
    # literally named ``github__create_issue`` and take the name the rule gives GitHub's tool.
    order = [i for i in range(len(listed)) if clashes[i]]
    order += [i for i in range(len(listed)) if not clashes[i]]
    names: dict[int, str] = {}
    taken: set[str] = set()
    # Per base, the suffix to try next: those below it were taken, and names are never freed, so
    # a server listing thousands of tools of one name is named in linear time.
    next_suffix: dict[str, int] = {}
    for i in order:
        server, spec = listed[i]
        base = _sanitize(f"{server}__{spec.name}" if clashes[i] else spec.name)
        candidate = base
        n = next_suffix.get(base, 2)
        while candidate in taken:
            suffix = f"_{n}"
            candidate = base[: 64 - len(suffix)] + suffix
            n += 1
        next_suffix[base] = n
        names[i] = candidate
        taken.add(candidate)
    return {names[i]: spec for i, (_, spec) in enumerate(listed)}


def _sanitize(name: str) -> str:
    if _OPENAI_NAME.match(name):
        return name
    cleaned = re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:64]
    return cleaned or "_"
