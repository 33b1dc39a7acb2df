"""What ``load_config`` reads around the models: strict YAML, ``.env`` files, paths, overrides.

Each helper takes the raw data read from the file and returns a new mapping, leaving malformed
input untouched for validation to report (with its path) against the models of
:mod:`server.config`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from dotenv import load_dotenv

from actors.llm import infer_kind

__all__ = [
    "ConfigError",
    "StrictLoader",
    "base_url_variable",
    "error_reason",
    "load_env_files",
    "override_base_urls",
    "resolve_mcp_paths",
    "resolve_paths",
    "yaml_problem",
]


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the file and each failing key."""


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping.

    Plain ``safe_load`` keeps the last value silently; a duplicated section in a long file would
    then discard half of the user's settings without a word.
    """


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
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


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_env_files(files: Sequence[Path]) -> None:
    """Load each of ``files`` that exists into ``os.environ``, never overriding a variable."""
    for env_file in dict.fromkeys(f.resolve() for f in files):
        if env_file.is_file():
            try:
                load_dotenv(env_file, override=False, encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(
                    f"{env_file}: not UTF-8 text (byte {exc.start + 1} cannot be decoded)"
                ) from None
            except OSError as exc:
                raise ConfigError(
                    f"{env_file}: cannot read the file ({error_reason(exc)})"
                ) from None


def error_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = exc.problem or exc.context or "syntax error"
    return f"{where}invalid YAML: {problem}"


def resolve_paths(raw: dict[str, Any], base: Path, label: str) -> dict[str, Any]:
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
            raw[key] = resolve_mcp_paths(raw[key], base, label, key)
    return raw


def base_url_variable(provider: str) -> str:
    """The environment variable that overrides ``provider``'s ``base_url``.

    ``MCP_BACKEND_<NAME>_BASE_URL``, the name upper-cased with every other character than a
    letter or a digit made ``_`` (``openai`` -> ``MCP_BACKEND_OPENAI_BASE_URL``).
    """
    return f"MCP_BACKEND_{re.sub(r'[^A-Za-z0-9]', '_', provider).upper()}_BASE_URL"


def override_base_urls(raw: dict[str, Any]) -> dict[str, Any]:
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


def resolve_mcp_paths(
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
