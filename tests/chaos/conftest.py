"""The chaos suite's seed: ``pytest tests/chaos --seed N`` or ``CHAOS_SEED=N`` replays a run.

Without either, a fresh seed is drawn; every chaos test prints the seed it ran under when it
fails (``-rA`` shows it for passing tests too).
"""

from __future__ import annotations

import os
import random
from collections.abc import Generator

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--seed", type=int, default=None,
                     help="seed of the chaos suite (default: $CHAOS_SEED, else random)")


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> int:
    """The run's seed, recorded in the test report (shown on failure)."""
    seed: int | None = None
    try:
        seed = request.config.getoption("--seed")
    except ValueError:  # the option is registered only when this conftest is loaded early
        seed = None
    if seed is None and os.environ.get("CHAOS_SEED"):
        seed = int(os.environ["CHAOS_SEED"])
    if seed is None:
        seed = random.SystemRandom().randrange(1, 2**31)
    request.node.user_properties.append(("chaos_seed", seed))
    return seed


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    seeds = [value for name, value in item.user_properties if name == "chaos_seed"]
    if seeds and report.when == "call":
        report.sections.append((
            "chaos seed",
            f"seed {seeds[0]}: replay with `pytest {item.nodeid} --seed {seeds[0]}`"
            f" or CHAOS_SEED={seeds[0]}",
        ))
    return report
