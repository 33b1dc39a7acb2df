"""Every setting a user can write in config.yaml is documented in config.yaml or the README."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from server.config import AppConfig

ROOT = Path(__file__).resolve().parent.parent
# Set from Python only (exception classes): YAML cannot name them.
_NOT_IN_YAML = {"llm.providers.breaker.ignored_exceptions"}


def _models_in(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) is None and not isinstance(annotation, types.UnionType):
        return []
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def _settings(model: type[BaseModel], path: str,
              seen: set[type[BaseModel]]) -> list[tuple[str, set[str]]]:
    if model in seen:
        return []
    seen.add(model)
    found = []
    for name, field in model.model_fields.items():
        where = f"{path}.{name}" if path else name
        found.append((where, {name} | ({field.alias} if field.alias else set())))
        for inner in _models_in(field.annotation):
            found.extend(_settings(inner, where, seen))
    return found


def test_every_setting_is_documented_in_config_yaml_or_the_readme() -> None:
    text = (ROOT / "config.yaml").read_text() + (ROOT / "README.md").read_text()
    settings = _settings(AppConfig, "", set())
    assert len(settings) > 100  # the walk reached the nested models
    undocumented = [
        where for where, names in settings
        if where not in _NOT_IN_YAML
        and not any(re.search(rf"\b{re.escape(name)}\b", text) for name in names)
    ]
    assert undocumented == []
