"""The short chaos profile: the runtime under every fault at once, every invariant accounted for."""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import SHORT, run_chaos


@pytest.mark.timeout(180)
async def test_short_profile_keeps_every_invariant(chaos_seed: int, tmp_path: Path) -> None:
    report = await run_chaos(chaos_seed, SHORT, tmp_path)
    print(report.markdown())
    assert report.problems == [], f"seed {chaos_seed}:\n" + "\n".join(report.problems)
