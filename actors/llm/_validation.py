"""One wording for pydantic validation errors: the config file, a provider's config, a frame.

Input values are never echoed (a frame or a config may carry a pasted secret): each problem is
``where: what``, ``where`` a path like ``llm.providers[0].model``.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Sequence
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

__all__ = ["describe_validation_error"]


def describe_validation_error(
    exc: ValidationError,
    *,
    model: Any = None,
    prefix: Sequence[int | str] = (),
    drop: int = 0,
) -> list[str]:
    """The problems of ``exc``, one ``"path: message"`` string each.

    ``drop`` leading parts of each location are left out (a tagged union's tag), then ``prefix``
    is put in front. An unknown key is named with the close match among the keys allowed there
    when ``model`` (the validated type, at the root of ``prefix``) is given; a missing one is
    ``required``.
    """
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = (*prefix, *error["loc"][drop:])
        if error["type"] == "extra_forbidden":
            where = _path(loc[:-1]) or "the top level"
            message = f"unknown key {str(loc[-1])!r} is not allowed in {where}"
            close = difflib.get_close_matches(str(loc[-1]), _keys_at(model, loc[:-1]), n=1)
            if close:
                message += f" (did you mean {close[0]!r}?)"
        elif error["type"] == "missing":
            message = "required"
        else:
            message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{_path(loc) or '(top level)'}: {message}")
    return problems


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _keys_at(model: Any, loc: Sequence[int | str]) -> list[str]:
    """The keys allowed at ``loc`` in ``model`` ([] if no model is there)."""
    annotation: Any = model
    for part in loc:
        annotation = _container(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields = {f.alias or name: f for name, f in annotation.model_fields.items()}
            fields.update(annotation.model_fields)
            field = fields.get(str(part))
            if field is None:
                return []
            annotation = field.annotation
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        elif get_origin(annotation) is list:
            annotation = get_args(annotation)[0]
        else:
            return []
    annotation = _container(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [f.alias or name for name, f in annotation.model_fields.items()]
    return []


def _container(annotation: Any) -> Any:
    """``X`` for ``X | None``; other annotations unchanged."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation
