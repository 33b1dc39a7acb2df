"""Token log probabilities as OpenAI sends them: deterministic, a function of the token alone."""

from __future__ import annotations

import zlib
from typing import Any

__all__ = ["token_logprob"]

_ALTERNATIVES = ("the", "a", "and", "of", "to", "in", "is", "that", "it", "for", "on", "with",
                 "as", "was", "at", "by", "this", "be", "or", "from", "but")


def _logprob(token: str) -> float:
    return -((zlib.crc32(token.encode()) % 2000) + 1) / 10_000


def token_logprob(token: str, top: int) -> dict[str, Any]:
    """One entry of ``choices[0].logprobs.content``: the token, its log probability in
    [-0.2001, -0.0001], its UTF-8 bytes and ``top`` alternatives, most likely first (the token
    itself, then words each 1.5 less likely than the one before).
    """
    chosen = _logprob(token)
    alternatives = [{"token": token, "logprob": chosen, "bytes": list(token.encode())}]
    space = " " if token.startswith(" ") else ""
    candidates = (space + word for word in _ALTERNATIVES)
    for candidate in candidates:
        if len(alternatives) >= top:
            break
        if candidate != token:
            logprob = round(chosen - 1.5 * len(alternatives), 4)
            alternatives.append(
                {"token": candidate, "logprob": logprob, "bytes": list(candidate.encode())}
            )
    return {"token": token, "logprob": chosen, "bytes": list(token.encode()),
            "top_logprobs": alternatives[:top]}
