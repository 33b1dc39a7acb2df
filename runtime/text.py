"""Text from outsiders made safe to write where a terminal may show it (logs, ``/health``)."""

from __future__ import annotations

import re

__all__ = ["escape_controls"]

# C0 (but tab and, unless asked, the line break) and C1 controls, DEL, and the bidirectional
# embeddings, overrides and isolates: a line break would forge a log line, an ANSI escape or a
# bidi control would be obeyed by the terminal tailing the log.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROLS_AND_LINE_BREAKS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str, *, line_breaks: bool = True) -> str:
    """``text`` with its control characters written as Python escapes (``\\x1b``, ``\\u202e``);
    ``line_breaks=False`` escapes ``\\n`` too (one line)."""
    pattern = _CONTROLS if line_breaks else _CONTROLS_AND_LINE_BREAKS
    return pattern.sub(lambda match: ascii(match.group())[1:-1], text)
