"""The ``mcp`` SDK's client half, imported without its server half.

The SDK's package ``__init__`` (and ``mcp.client``'s) import ``mcp.client.client``, which
imports the whole server side for in-process servers: starlette apps, sse_starlette,
opentelemetry, the OAuth server and cryptography's Rust library (~11 MiB resident, 0.2 s of
imports). A client over stdio or HTTP needs none of it. So, unless the SDK is already imported,
the two packages are registered in ``sys.modules`` *before* their ``__init__`` runs (the module
object the import system would make, from the installed package's own spec, with its
``__path__``), and their ``__init__`` runs on the first access to a name they do not have yet
(PEP 562 ``__getattr__``): ``from mcp import Client`` elsewhere in the process still gets the
whole package, in the same module object. The submodules used here (``mcp.client.session``,
``.stdio``, ``.streamable_http``, ``mcp.shared.*``, ``mcp_types``) import nothing of the server
half; ``tests/mcp/test_sdk.py`` checks that against the installed SDK.

``negotiate_auto`` is the SDK's own connect-time version negotiation (what ``mcp.Client`` runs in
its default ``mode="auto"``); it lives in a private module of the SDK (``mcp>=2.3,<3``). So do
the stdio helpers :mod:`actors.mcp._stdio` reuses around its own line reader (spawning the
process in its own group, the shutdown sequence), and the streamable-HTTP transport class and
context streams :mod:`actors.mcp._http` builds its transport from.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any


def _defer_package_init(name: str) -> None:
    """Register package ``name`` without running its ``__init__`` until a missing name is read."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not an installed package")
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def __getattr__(attribute: str) -> Any:
        # Once: the real __init__ runs in this very module object, then the lookup is retried.
        module.__dict__.pop("__getattr__", None)
        loader.exec_module(module)
        return getattr(module, attribute)

    module.__dict__["__getattr__"] = __getattr__
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        # As the import system binds a submodule it loads to its parent package.
        setattr(sys.modules[parent], child, module)


_defer_package_init("mcp")
_defer_package_init("mcp.client")

from mcp.client._probe import negotiate_auto  # noqa: E402
from mcp.client.session import ClientSession  # noqa: E402
from mcp.client.stdio import (  # noqa: E402
    _WRITER_FLUSH_TIMEOUT as writer_flush_timeout,
)
from mcp.client.stdio import (  # noqa: E402
    StdioServerParameters,
    get_default_environment,
)
from mcp.client.stdio import (  # noqa: E402
    _create_platform_compatible_process as create_stdio_process,
)
from mcp.client.stdio import _drain_stdout as drain_stdout  # noqa: E402
from mcp.client.stdio import _get_executable_command as get_executable_command  # noqa: E402
from mcp.client.stdio import _stop_server_process as stop_server_process  # noqa: E402
from mcp.client.streamable_http import (  # noqa: E402
    DEFAULT_RECONNECTION_DELAY_MS,
    LAST_EVENT_ID,
    MCP_SESSION_ID,
    StreamableHTTPTransport,
)
from mcp.shared._context_streams import create_context_streams  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402
from mcp.shared.jsonrpc_dispatcher import (  # noqa: E402
    JSONRPCDispatcher,
    cancelled_request_id_from_params,
)
from mcp.shared.message import SessionMessage  # noqa: E402

__all__ = [
    "DEFAULT_RECONNECTION_DELAY_MS",
    "LAST_EVENT_ID",
    "MCP_SESSION_ID",
    "ClientSession",
    "JSONRPCDispatcher",
    "MCPError",
    "SessionMessage",
    "StdioServerParameters",
    "StreamableHTTPTransport",
    "cancelled_request_id_from_params",
    "create_context_streams",
    "create_stdio_process",
    "drain_stdout",
    "get_default_environment",
    "get_executable_command",
    "negotiate_auto",
    "stop_server_process",
    "writer_flush_timeout",
]
