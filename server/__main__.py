"""``python -m server``: the same as the ``mcp-backend`` command."""

from server.launch import run

run()
