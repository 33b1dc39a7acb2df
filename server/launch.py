"""Entry points whose imports run with the collector paused.

Kept apart from :mod:`server.cli` and :mod:`server.workers` so that nothing heavy is imported
before the pause begins (see :func:`runtime.gc_tuning.collector_paused`: 0.2-0.6 s less CPU per
start of a server or worker). ``python -m server.launch`` is one worker of ``serve --workers N``:
the command the parent runs for each.
"""

from __future__ import annotations

from typing import NoReturn

from runtime.gc_tuning import collector_paused

__all__ = ["run", "run_worker"]


def run() -> NoReturn:
    """The ``mcp-backend`` command (and ``python -m server``): :func:`server.cli.run`."""
    with collector_paused():
        from server import cli
    cli.run()


def run_worker() -> NoReturn:
    """One worker of ``serve --workers N``: :func:`server.workers.main`, then exit with its code."""
    with collector_paused():
        from server import app, cli, workers  # noqa: F401  (app: the worker builds it at once)
    cli.exit_now(workers.main())


if __name__ == "__main__":
    run_worker()
