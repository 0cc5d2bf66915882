"""The settings part of each subcommand's `--help`, generated from the settings model so it cannot go stale."""
from __future__ import annotations

import json
import types
import typing
from typing import Any, Iterable

from mlabatch.jobs.config import load_settings


def settings_help(sections: Iterable[str]) -> str:
    """Every key of `sections`: `section.key (type) = default`, then what it does.

    Defaults are those of the packaged conf/local.yml (what a run without --conf gets); types, limits
    and descriptions come from the pydantic models in pipelines/settings.py. A section's own keys come
    before those it inherits (generate's table keys before its sampling and engine keys).
    """
    defaults = load_settings()
    lines = ["settings (conf/local.yml, overlaid by --conf files, then --set SECTION.KEY=VALUE):"]
    for section in sections:
        values = getattr(defaults, section)
        own = vars(type(values)).get("__annotations__", {})
        fields = sorted(type(values).model_fields.items(), key=lambda item: item[0] not in own)
        for name, field in fields:
            lines.append(f"  {section}.{name} ({_type_name(field.annotation)}) = {_value(getattr(values, name))}")
            if field.description:
                lines.append(f"      {field.description}")
    return "\n".join(lines)


def _type_name(annotation: Any) -> str:
    """int, float, str, bool; `chunks|pool` for a Literal; `int or null`; `list of str`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin in (tuple, list):
        return f"list of {_type_name(args[0])}"
    return getattr(annotation, "__name__", str(annotation))


def _value(value: Any) -> str:
    """A value as it is written in YAML or after --set."""
    if value is None or isinstance(value, (bool, tuple, list)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return str(value)
