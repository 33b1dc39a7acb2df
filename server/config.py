"""The whole ``config.yaml``: its models, and ``load_config`` which reads, merges and validates it.

Loading order: ``.env`` next to the config file, then ``.env`` in the working directory (neither
overrides a variable already set), then the YAML, then the ``mcpServers`` JSON file it names.
Paths written in the file (``api_key_file``, ``mcp_servers_file``, ``cost.db_path``,
``chat.history_db``, and each MCP server's ``cwd`` and a ``command`` that is a path rather than a
bare name) have ``~`` expanded and, when relative, are relative to the file's directory (the
JSON file's for entries of ``mcp_servers_file``), so the service behaves the same whatever
directory it is started from.
``MCP_BACKEND_<NAME>_BASE_URL`` overrides the ``base_url`` of provider ``<NAME>`` (see
:func:`base_url_variable`), so a file may be pointed elsewhere (a proxy, the simulator) without
editing it.

Every problem is one ``ConfigError`` naming the file and the path of each failing key, e.g.
``config.yaml: llm.providers.openai.temperature: Input should be less than or equal to 2``. Input
values are never copied into the message: a misplaced API key must not end up in a log.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from actors.cluster import ClusterConfig
from actors.llm import LLMConfig, describe_validation_error, mask_secrets, redact
from actors.mcp import McpServerConfig
from server._config_file import (
    ConfigError,
    StrictLoader,
    base_url_variable,
    error_reason,
    load_env_files,
    override_base_urls,
    resolve_mcp_paths,
    resolve_paths,
    yaml_problem,
)
from server._ws_protocol import PROCESS_READ_PER_SECOND

__all__ = [
    "AppConfig",
    "ChatConfig",
    "ConfigError",
    "MetricsConfig",
    "ServerConfig",
    "SimulatorDefaults",
    "base_url_variable",
    "load_config",
]


class ServerConfig(BaseModel):
    """The ``server:`` section: where to listen, who may connect, how much they may send."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    auth_token_env: str | None = Field(
        default="MCP_BACKEND_TOKEN", description="environment variable holding the bearer token"
    )
    auth_token: SecretStr | None = Field(
        default=None, description="the token itself; prefer auth_token_env"
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="origins of pages allowed to open a WebSocket besides loopback pages, such as"
        " 'https://chat.example.com'; '*' allows all",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="host names clients use to reach the server besides IP addresses, localhost"
        " and server.host ('*.example.com' for subdomains); '*' allows any name, which disables"
        " the DNS-rebinding defence",
    )
    max_message_bytes: int = Field(default=65536, ge=1)
    max_messages_per_minute: int = Field(default=120, ge=1)
    max_read_bytes_per_second: int = Field(
        default=PROCESS_READ_PER_SECOND, ge=65536, description="what a worker process reads"
        " from all its chat sockets together, each frame counted as at least 256 bytes and each"
        " message 16 KiB more (at most one second's worth at once); past it sockets are read in"
        " turn, the one given least first, and none is closed for it"
    )
    max_concurrent_turns: int = Field(default=4, ge=1)
    max_connections: int = Field(
        default=2048, ge=1, description="chat sockets a worker process keeps open at once (each"
        " holds a file descriptor, its buffers and up to max_concurrent_turns turns); more are"
        " closed with 1013, try again later"
    )
    max_open_connections: int = Field(
        default=4096, ge=2, description="TCP connections a worker process holds open at once"
        " (requests, kept-alive ones, chat sockets); past it the one waiting longest for its"
        " request is closed, or, with none waiting, the new one is answered 503; must be more"
        " than max_connections"
    )
    max_turns_in_flight: int = Field(
        default=2048, ge=1, description="turns a worker process runs or queues at once, over all"
        " its sockets (each holds its message until it ends); more are refused at once with"
        " error_type overloaded"
    )
    max_conversations: int = Field(
        default=1000, ge=1, description="live conversations in total; those with no request"
        " running make room, least recently used first"
    )
    max_conversations_per_socket: int = Field(
        default=8, ge=2, description="conversations one socket's running requests may use at"
        " once (the one it is on, when idle, holds nothing)"
    )
    shutdown_timeout: float = Field(default=10.0, gt=0)
    request_read_timeout: float = Field(
        default=10.0, gt=0, description="seconds a client may take to send a request (headers"
        " and body, a WebSocket's handshake), counted from its first byte or, for a connection's"
        " first request, from connecting; a slower connection is closed"
    )
    workers: int = Field(
        default=1, ge=1, le=64,
        description="worker processes serving host:port (more than 1 needs cluster.redis_url)",
    )

    @field_validator("max_open_connections")
    @classmethod
    def _room_for_the_chat_sockets(cls, value: int, info: ValidationInfo) -> int:
        chats = info.data.get("max_connections")
        if chats is not None and value <= chats:
            raise ValueError(f"must be more than max_connections ({chats}): the chat sockets"
                             " and room for the requests besides them")
        return value

    def read_auth_token(self) -> SecretStr | None:
        """The token clients must present: ``auth_token``, else ``auth_token_env`` read now.

        ``None`` means no authentication is configured.
        """
        if self.auth_token is not None and self.auth_token.get_secret_value():
            return self.auth_token
        if self.auth_token_env is not None:
            value = os.environ.get(self.auth_token_env, "").strip()
            if value:
                return SecretStr(value)
        return None


class ChatConfig(BaseModel):
    """The ``chat:`` section: conversation behaviour and history."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    system_prompt: str = (
        "You are a helpful assistant. Use the available tools when they help answer the user."
    )
    max_tool_hops: int = Field(default=8, ge=0)
    tool_timeout: float = Field(default=30.0, gt=0)
    history_db: str = "data/history.sqlite3"
    context_budget_tokens: int | None = Field(
        default=None, gt=0, description="history budget; default: the model's context window"
    )
    max_history_messages: int = Field(default=200, ge=1)
    max_history_bytes: int = Field(
        default=512 * 1024, ge=1024,
        description="memory a live conversation's history may hold (Python's size of its"
        " messages: 1 to 4 bytes a character); the oldest messages are dropped past it (they"
        " stay in history_db); live conversations x this bounds the server's history memory",
    )
    max_queued_turns: int = Field(
        default=16, ge=1,
        description="turns and clears that may wait for one conversation (from any sockets);"
        " more are refused at once with error_type unavailable",
    )
    max_stored_messages: int = Field(
        default=1000, ge=1,
        description="messages a conversation keeps in history_db; older ones are deleted",
    )
    retention_days: float | None = Field(
        default=None, gt=0,
        description="a conversation not written for this long is deleted; default: kept",
    )
    max_tool_result_chars: int = Field(
        default=20000, ge=100, description="a tool result beyond this is cut, with a note"
    )
    max_cost_per_turn: float | None = Field(
        default=None, gt=0, description="USD one turn may spend over all its model calls"
    )


    @model_validator(mode="after")
    def _stores_what_turns_read(self) -> ChatConfig:
        if self.max_stored_messages < self.max_history_messages:
            raise ValueError(
                f"max_stored_messages ({self.max_stored_messages}) must be at least"
                f" max_history_messages ({self.max_history_messages}): a turn reads that many")
        return self


class MetricsConfig(BaseModel):
    """The ``metrics:`` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mailbox_size: int = Field(default=10000, ge=1)


class SimulatorDefaults(BaseModel):
    """The ``simulator:`` section: when to serve the built-in simulator instead of real APIs.

    ``auto`` uses it when no provider has its API key available.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: Literal["auto", "always", "never"] = "auto"
    port: int = Field(default=0, ge=0, le=65535, description="0: any free port")


def _builtin_mcp_servers() -> dict[str, McpServerConfig]:
    # The running interpreter rather than "python": without a file the demo server must start
    # from whatever environment the service was installed in.
    return {
        "demo": McpServerConfig(command=sys.executable, args=["-m", "server.demo_mcp_server"]),
        "time": McpServerConfig(command="mcp-server-time", enabled=False),
    }


class AppConfig(BaseModel):
    """The whole configuration. ``AppConfig()`` is the built-in default (needs no API key)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True
    )

    llm: LLMConfig = Field(default_factory=LLMConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    chat: ChatConfig = Field(default_factory=ChatConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    mcp_servers: dict[str, McpServerConfig] = Field(
        default_factory=_builtin_mcp_servers, alias="mcpServers"
    )
    mcp_servers_file: str | None = Field(
        default=None, description='a JSON file {"mcpServers": {...}} merged under mcpServers'
    )
    simulator: SimulatorDefaults = Field(default_factory=SimulatorDefaults)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # MCP server entries may carry tokens in ``env`` or ``headers``: show them masked (a
        # provider's base_url masks itself).
        for name, value in super().__repr_args__():
            if name == "mcp_servers":
                value = {
                    server: entry.model_copy(
                        update={
                            "env": mask_secrets(entry.env),
                            "headers": mask_secrets(entry.headers),
                        }
                    )
                    for server, entry in value.items()
                }
            yield name, value

    def model_dump_safe(self) -> dict[str, Any]:
        """The configuration as JSON-ready data for display, with every secret masked."""
        data = self.model_dump(mode="json", by_alias=True, fallback=_describe)
        masked: dict[str, Any] = _mask(data)
        return masked


def _describe(value: Any) -> Any:
    # Only exception classes (the breaker's ignored_exceptions) are not JSON-serializable.
    return value.__name__ if isinstance(value, type) else repr(value)


_SECRET_MAPS = frozenset({"env", "headers", "extra_headers"})


def _mask(value: Any, parent: str = "") -> Any:
    if isinstance(value, dict):
        if parent in _SECRET_MAPS:
            return mask_secrets({k: str(v) for k, v in value.items()})
        return {k: _mask(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, parent) for v in value]
    if isinstance(value, str):
        return redact(value)
    return value


def load_config(path: str | Path | None) -> AppConfig:
    """Read, merge and validate the configuration file; ``None`` gives the built-in defaults.

    Loads ``.env`` files into ``os.environ`` first (never overriding). Raises ``ConfigError``.
    """
    if path is None:
        load_env_files([Path.cwd() / ".env"])
        return AppConfig()
    label = str(path)
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{label}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{label}: cannot read the file ({error_reason(exc)})") from None
    base = file.resolve().parent
    load_env_files([base / ".env", Path.cwd() / ".env"])

    try:
        raw = yaml.load(text, Loader=StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"{label}: {yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}: invalid YAML ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{label}: invalid YAML: nested too deeply") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{label}: the top level must be a mapping of sections, not {type(raw).__name__}"
        )
    raw = resolve_paths(raw, base, label)
    raw = override_base_urls(raw)
    if isinstance(raw.get("mcp_servers_file"), str):
        raw = _merge_mcp_servers_file(raw, label)
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(label, exc)) from None



def _merge_mcp_servers_file(raw: dict[str, Any], label: str) -> dict[str, Any]:
    """Merge the JSON file's ``mcpServers`` under the YAML's; the YAML wins on a shared name."""
    json_path = Path(raw["mcp_servers_file"])
    json_label = str(json_path)
    try:
        text = json_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{label}: mcp_servers_file: cannot read {json_label} ({error_reason(exc)})"
        ) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{json_label}: line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"
        ) from None
    except RecursionError:
        raise ConfigError(f"{json_label}: invalid JSON: nested too deeply") from None
    if not isinstance(document, dict) or not isinstance(document.get("mcpServers"), dict):
        raise ConfigError(f'{json_label}: expected an object with an "mcpServers" object')
    servers_raw = resolve_mcp_paths(
        document["mcpServers"], json_path.resolve().parent, json_label, "mcpServers"
    )
    try:
        servers = TypeAdapter(dict[str, McpServerConfig]).validate_python(servers_raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(json_label, exc, prefix=("mcpServers",))) from None

    key = "mcp_servers" if "mcp_servers" in raw and "mcpServers" not in raw else "mcpServers"
    own = raw.get(key)
    if own is None:
        merged: Any = servers
    elif isinstance(own, dict):
        merged = {**servers, **own}
    else:
        merged = own  # not a mapping: let validation report it against the YAML file
    return {**raw, key: merged}


def _format_errors(label: str, exc: ValidationError, prefix: tuple[str, ...] = ()) -> str:
    problems = describe_validation_error(exc, model=AppConfig, prefix=prefix)
    return "\n".join(f"{label}: {problem}" for problem in problems)
