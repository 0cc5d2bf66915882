"""Load settings: the embedded conf/local.yml, overlaid by conf files, then `--set key=value` overrides."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import ValidationError

from mlabatch.pipelines.errors import SettingsError
from mlabatch.pipelines.settings import Settings


def _read_yaml(text: str, origin: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise SettingsError(f"{origin} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{origin} must hold a mapping of sections (source:, target:, ...)")
    return data


def _conf_text(name_or_path: str) -> tuple[str, str]:
    """Return (text, origin) for a packaged conf name (dev, prod) or a YAML file path."""
    path = Path(name_or_path)
    if path.suffix in (".yml", ".yaml") or path.exists():
        if not path.is_file():
            raise SettingsError(f"conf file {name_or_path} does not exist")
        return path.read_text(), str(path)
    packaged = resources.files("mlabatch.conf") / f"{name_or_path}.yml"
    if not packaged.is_file():
        known = sorted(p.name[:-4] for p in resources.files("mlabatch.conf").iterdir() if p.name.endswith(".yml"))
        raise SettingsError(f"unknown conf {name_or_path!r}: give a .yml path or one of {known}")
    return packaged.read_text(), f"conf/{name_or_path}.yml"


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(data: dict[str, Any], override: str) -> None:
    key, sep, raw = override.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise SettingsError(f"--set {override!r}: write section.key=value, e.g. --set embed.max_tokens=128")
    section, name = parts
    value = yaml.safe_load(raw) if raw.strip() else None
    target = data.setdefault(section, {})
    if not isinstance(target, dict):
        raise SettingsError(f"--set {override!r}: {section!r} is not a section")
    target[name] = value


def _explain(err: ValidationError) -> str:
    lines = []
    for problem in err.errors():
        where = ".".join(str(p) for p in problem["loc"]) or "settings"
        if problem["type"] == "extra_forbidden":
            section = problem["loc"][0] if len(problem["loc"]) > 1 else None
            model = Settings.model_fields[section].annotation if section in Settings.model_fields else Settings
            known = ", ".join(getattr(model, "model_fields", {}))
            lines.append(f"  {where}: unknown key (known here: {known})")
        elif problem["type"] == "missing":
            lines.append(f"  {where}: required; set it in a conf file or with --set {where}=...")
        elif isinstance(problem.get("input"), dict):  # a check across keys: its message names them
            lines.append(f"  {where}: {problem['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {where}: {problem['msg']} (got {problem.get('input')!r})")
    return "invalid settings:\n" + "\n".join(lines) + "\nfix the conf file or the --set override named above"


def load_settings(confs: Iterable[str] = (), overrides: Iterable[str] = ()) -> Settings:
    """Merge conf/local.yml, then each conf in order, then overrides; validate once."""
    text, origin = _conf_text("local")
    data = _read_yaml(text, origin)
    for conf in confs:
        data = _merge(data, _read_yaml(*_conf_text(conf)))
    for override in overrides:
        _apply_override(data, override)
    try:
        return Settings.model_validate(data)
    except ValidationError as err:
        raise SettingsError(_explain(err)) from None
