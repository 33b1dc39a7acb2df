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
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from dotenv import load_dotenv
from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError

from actors.cluster import ClusterConfig
from actors.llm import LLMConfig, describe_validation_error, infer_kind, mask_secrets, redact
from actors.mcp import McpServerConfig

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


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the file and each failing key."""


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
    max_concurrent_turns: int = Field(default=4, ge=1)
    max_conversations: int = Field(
        default=1000, ge=1, description="live conversations in total; idle ones make room"
    )
    max_conversations_per_socket: int = Field(
        default=8, ge=2, description="conversations one socket may use at once, the one it is on"
        " included (switching holds the previous one until its running requests end)"
    )
    shutdown_timeout: float = Field(default=10.0, gt=0)
    workers: int = Field(
        default=1, ge=1, le=64,
        description="worker processes serving host:port (more than 1 needs cluster.redis_url)",
    )

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
    max_tool_result_chars: int = Field(
        default=20000, ge=100, description="a tool result beyond this is cut, with a note"
    )
    max_cost_per_turn: float | None = Field(
        default=None, gt=0, description="USD one turn may spend over all its model calls"
    )


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
        # MCP server entries may carry tokens in ``env`` or ``headers``: show them masked.
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
        _load_env_files([Path.cwd() / ".env"])
        return AppConfig()
    label = str(path)
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{label}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{label}: cannot read the file ({_reason(exc)})") from None
    base = file.resolve().parent
    _load_env_files([base / ".env", Path.cwd() / ".env"])

    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"{label}: {_yaml_problem(exc)}") from None
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
    raw = _resolve_paths(raw, base, label)
    raw = _override_base_urls(raw)
    if isinstance(raw.get("mcp_servers_file"), str):
        raw = _merge_mcp_servers_file(raw, label)
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(label, exc)) from None


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping.

    Plain ``safe_load`` keeps the last value silently; a duplicated section in a long file would
    then discard half of the user's settings without a word.
    """


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key: construct_mapping reports it properly
            break
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _load_env_files(files: Sequence[Path]) -> None:
    for env_file in dict.fromkeys(f.resolve() for f in files):
        if env_file.is_file():
            try:
                load_dotenv(env_file, override=False, encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(
                    f"{env_file}: not UTF-8 text (byte {exc.start + 1} cannot be decoded)"
                ) from None
            except OSError as exc:
                raise ConfigError(f"{env_file}: cannot read the file ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = exc.problem or exc.context or "syntax error"
    return f"{where}invalid YAML: {problem}"


def _resolve_paths(raw: dict[str, Any], base: Path, label: str) -> dict[str, Any]:
    """Expand ``~`` and make relative paths relative to ``base`` (malformed input untouched).

    Raises ``ConfigError`` for a ``~user`` path whose user does not exist.
    """

    def resolved(value: Any, key: str) -> Any:
        return _resolve_path(value, base, label, key)

    raw = dict(raw)
    if "mcp_servers_file" in raw:
        raw["mcp_servers_file"] = resolved(raw["mcp_servers_file"], "mcp_servers_file")
    chat = raw.get("chat")
    if isinstance(chat, dict) and "history_db" in chat:
        raw["chat"] = {**chat, "history_db": resolved(chat["history_db"], "chat.history_db")}
    llm = raw.get("llm")
    if isinstance(llm, dict):
        llm = dict(llm)
        cost = llm.get("cost")
        if isinstance(cost, dict) and "db_path" in cost:
            llm["cost"] = {**cost, "db_path": resolved(cost["db_path"], "llm.cost.db_path")}
        providers = llm.get("providers")
        if isinstance(providers, dict):
            llm["providers"] = {
                name: {
                    **p,
                    "api_key_file": resolved(
                        p["api_key_file"], f"llm.providers.{name}.api_key_file"
                    ),
                }
                if isinstance(p, dict) and "api_key_file" in p
                else p
                for name, p in providers.items()
            }
        raw["llm"] = llm
    for key in ("mcpServers", "mcp_servers"):
        if isinstance(raw.get(key), dict):
            raw[key] = _resolve_mcp_paths(raw[key], base, label, key)
    return raw


def base_url_variable(provider: str) -> str:
    """The environment variable that overrides ``provider``'s ``base_url``.

    ``MCP_BACKEND_<NAME>_BASE_URL``, the name upper-cased with every other character than a
    letter or a digit made ``_`` (``openai`` -> ``MCP_BACKEND_OPENAI_BASE_URL``).
    """
    return f"MCP_BACKEND_{re.sub(r'[^A-Za-z0-9]', '_', provider).upper()}_BASE_URL"


def _override_base_urls(raw: dict[str, Any]) -> dict[str, Any]:
    """Apply the ``MCP_BACKEND_<NAME>_BASE_URL`` variables (a proxy, a local stand-in).

    The ``kind`` is settled first from the written ``base_url``, so pointing ``openrouter.ai`` at
    a local address keeps OpenRouter's behaviour.
    """
    llm = raw.get("llm")
    providers = llm.get("providers") if isinstance(llm, dict) else None
    if not isinstance(llm, dict) or not isinstance(providers, dict):
        return raw
    changed = {}
    for name, entry in providers.items():
        url = os.environ.get(base_url_variable(str(name)), "").strip()
        if url and isinstance(entry, dict):
            written = entry.get("base_url")
            kind = entry.get("kind") or infer_kind(
                str(name), written if isinstance(written, str) else None
            )
            changed[name] = {**entry, "kind": kind, "base_url": url}
    if not changed:
        return raw
    return {**raw, "llm": {**llm, "providers": {**providers, **changed}}}


def _resolve_mcp_paths(
    servers: dict[str, Any], base: Path, label: str, key: str
) -> dict[str, Any]:
    """Resolve each stdio entry's ``cwd`` and a ``command`` that is a path (not a bare name).

    A bare name such as ``npx`` is looked up on ``PATH`` when the server starts; ``./server.py``
    or ``bin/tool`` means a file next to the configuration, whatever the working directory.
    """
    out: dict[str, Any] = {}
    for name, entry in servers.items():
        if isinstance(entry, dict):
            entry = dict(entry)
            command = entry.get("command")
            if isinstance(command, str) and (os.sep in command or command.startswith("~")):
                entry["command"] = _resolve_path(command, base, label, f"{key}.{name}.command")
            if "cwd" in entry:
                entry["cwd"] = _resolve_path(entry["cwd"], base, label, f"{key}.{name}.cwd")
        out[name] = entry
    return out


def _resolve_path(value: Any, base: Path, label: str, key: str) -> Any:
    if not isinstance(value, str) or not value:
        return value
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # "~someone" who does not exist, or no home directory at all
        user = value.split("/", 1)[0]
        raise ConfigError(f"{label}: {key}: cannot expand {user!r}: no such user") from None
    return str(path if path.is_absolute() else base / path)


def _merge_mcp_servers_file(raw: dict[str, Any], label: str) -> dict[str, Any]:
    """Merge the JSON file's ``mcpServers`` under the YAML's; the YAML wins on a shared name."""
    json_path = Path(raw["mcp_servers_file"])
    json_label = str(json_path)
    try:
        text = json_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{label}: mcp_servers_file: cannot read {json_label} ({_reason(exc)})"
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
    servers_raw = _resolve_mcp_paths(
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
