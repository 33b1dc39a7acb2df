"""``python -m server``: the same as the ``mcp-backend`` command."""

import sys

from server.cli import main

sys.exit(main())
