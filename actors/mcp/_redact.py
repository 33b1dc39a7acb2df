"""Secrets out of what an MCP server says: its stderr tail reaches ``/health`` and tool errors.

A server's stderr is written by code we do not control: it may print its own configuration (the
``env`` and ``headers`` we gave it) or a token it read elsewhere. Whatever text of a server can
become client-visible passes through :func:`redact_server_text` first. Its cost must not be the
server's choice: the patterns take linear time (a name starts where a run of name characters
does, at most 128 of them around the keyword) and text beyond 64 Ki characters is cut.
"""

from __future__ import annotations

import re
from typing import Final

from ._config import McpServerConfig

__all__ = ["REDACTED", "redact_server_text"]

REDACTED: Final = "[REDACTED]"

# Shapes of credentials we were not told about: OpenAI-style keys, bearer tokens, GitHub and
# Slack tokens, AWS access key ids, and the value of any ``NAME=value`` / ``name: value`` whose
# name says it is a secret (``API_KEY=...``, ``password: ...``, ``"token": "..."``).
_KEY_SHAPED: Final = re.compile(
    r"\bsk-[A-Za-z0-9_\-]{6,}"
    r"|\b(?i:bearer)\s+[A-Za-z0-9_\-.=~+/]{8,}"
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}"
    r"|\bxox[abpr]-[A-Za-z0-9\-]{10,}"
    r"|\bAKIA[0-9A-Z]{16}\b"
)
_NAMED_SECRET: Final = re.compile(
    r"""(?ix)
    ((?<![\w.\-])[\w.\-]{0,128}(?:key|token|secret|passw(?:or)?d|credential|auth)[\w.\-]{0,128}
     ["']?\s*[:=]\s*["']?)
    ([^\s"',;|]{4,})
    """
)
#: Longer server text is cut (an error message of megabytes says nothing more to anyone).
MAX_TEXT_CHARS: Final = 65536


def redact_server_text(text: str, config: McpServerConfig) -> str:
    """``text`` with the entry's ``env`` and ``headers`` values and anything key-shaped masked.

    Values shorter than 4 characters are left alone (``1``, ``yes``: masking them would garble
    the text and they are not credentials). Text longer than :data:`MAX_TEXT_CHARS` is cut
    (before the word the cut falls in) and ends in ``…[cut]``.
    """
    values = [*config.env.values(), *config.headers.values()]
    for value in sorted((v for v in values if len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    if len(text) > MAX_TEXT_CHARS:
        text = _cut(text)
    text = _KEY_SHAPED.sub(REDACTED, text)
    return _NAMED_SECRET.sub(lambda match: match.group(1) + REDACTED, text)


def _cut(text: str) -> str:
    """The first :data:`MAX_TEXT_CHARS` of ``text`` without the word the cut falls in (the cut
    could leave a secret too short for the patterns to recognise)."""
    end = MAX_TEXT_CHARS
    while end > 0 and not text[end - 1].isspace():
        end -= 1
    return text[:end] + "…[cut]"
