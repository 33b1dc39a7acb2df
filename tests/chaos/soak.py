"""The long chaos profile: ``python -m tests.chaos.soak [--minutes N] [--seed N]`` (``make soak``).

Runs :func:`tests.chaos.harness.run_chaos` with :func:`~tests.chaos.harness.soak_profile`, prints
the Markdown summary table (the one ``RELIABILITY.md`` keeps) and exits 1 if any invariant was
violated; the seed is printed first so that a failing soak can be replayed.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
from pathlib import Path

import anyio

from .harness import ChaosReport, run_chaos, soak_profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of load (10)")
    parser.add_argument("--seed", type=int, default=None, help="seed to replay (default: random)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    print(f"chaos soak: seed {seed}, {args.minutes:g} minutes of load", flush=True)
    # Warnings and errors on stderr; the run itself watches every record from INFO up.
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    with tempfile.TemporaryDirectory(prefix="chaos-soak-") as directory:
        report: ChaosReport = anyio.run(run_chaos, seed, soak_profile(args.minutes),
                                        Path(directory))
    print(report.markdown())
    if report.problems:
        print(f"\nFAILED: replay with python -m tests.chaos.soak --minutes {args.minutes:g}"
              f" --seed {seed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
