"""Recipe configs: YAML files that override dataclass defaults defined in code.

A recipe config is a YAML mapping with a top-level ``recipe`` key and sections
(``data``, ``chain``, ``model``, ``train``, ``evaluate``). Each section binds to
a dataclass whose defaults live in code (:func:`bind`): unknown keys are an
error naming the allowed ones. Command lines override single values with
``--set section.key=value`` (values parsed as YAML). A config is a file path or
a packaged name such as ``mastering/quick`` (:func:`deepafx.assets.resolve_config`).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from deepafx.assets import resolve_config

T = TypeVar("T")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a recipe YAML and apply ``section.key=value`` overrides.

    Args:
        path: A config file (absolute or relative to the working directory), or a
            packaged config name: ``mastering/quick``, ``mastering/quick.yaml`` or
            ``recipes/mastering/quick.yaml`` (:func:`deepafx.assets.resolve_config`).
        overrides: ``section.key=value`` items, values parsed as YAML.

    Returns:
        The config mapping with overrides applied and ``_path`` set to the
        absolute path of the file read.

    Raises:
        FileNotFoundError: no such file or packaged config; the one-line message
            lists the places tried and the packaged configs.
        ValueError: malformed YAML, no ``recipe`` key, or a malformed override.
    """
    p = resolve_config(path)
    cfg = yaml.safe_load(p.read_text()) or {}
    if not isinstance(cfg, dict) or "recipe" not in cfg:
        raise ValueError(f"{p}: a recipe config is a mapping with a top-level 'recipe' key")
    cfg = apply_overrides(cfg, overrides)
    cfg["_path"] = str(p.resolve())
    return cfg


def apply_overrides(cfg: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``cfg`` with each ``a.b.c=value`` set (value parsed as YAML)."""
    out = copy.deepcopy(dict(cfg))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def bind(cls: type[T], values: Mapping[str, Any] | None, section: str) -> T:
    """Instantiate dataclass ``cls`` from ``values`` (missing keys keep code defaults).

    Raises:
        ValueError: unknown keys (the allowed ones are listed).
    """
    values = dict(values or {})
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - fields
    if unknown:
        raise ValueError(f"[{section}] unknown key(s) {sorted(unknown)}; allowed: {sorted(fields)}")
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in values and isinstance(values[f.name], list):
            default = f.default if f.default is not dataclasses.MISSING else None
            if isinstance(default, tuple):
                values[f.name] = tuple(values[f.name])
    return cls(**values)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
