"""``python -m server``: the same as the ``mcp-backend`` command."""

from server.cli import run

run()
