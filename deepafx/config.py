"""Recipe configs: YAML files that override dataclass defaults defined in code.

A recipe config is a YAML mapping with a top-level ``recipe`` key and sections
(``data``, ``chain``, ``model``, ``train``, ``evaluate``). Each section binds to
a dataclass whose defaults live in code (:func:`bind`): unknown keys are an
error naming the allowed ones, and a key that was renamed or removed
(:data:`RENAMED_KEYS`) is an error naming what to write instead. Command lines override single values with
``--set section.key=value`` (values parsed as YAML). A config is a file path or
a packaged name such as ``mastering/quick`` (:func:`deepafx.assets.resolve_config`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence, TypeVar

import yaml

from deepafx.assets import resolve_config

T = TypeVar("T")

#: Config keys that were renamed or removed: ``(section, old key) → "section.key"`` that replaces it,
#: or several candidates in order when recipes differ (a candidate in the same section applies to a
#: section that has that key). Binding a section that still holds an old key (in a YAML file or a
#: ``--set`` override) fails with one line naming the replacement and the value to write there
#: (:func:`renamed_key_error`); settings this package stored itself are read with their keys renamed
#: (:func:`upgrade_keys`).
RENAMED_KEYS: dict[tuple[str, str], str | tuple[str, ...]] = {
    # render workers: the render section owns their count
    ("train", "workers"): "render.num_workers",
    ("train", "render_workers"): "render.num_workers",
    # other worker counts: num_workers of the section whose work they do
    ("data", "corpus_workers"): "data.num_workers",
    ("evaluate", "workers"): ("evaluate.num_workers", "render.num_workers"),  # Dexed's searches; the CMA-ES oracle
    # one name per concept: the SPSA perturbation of training and its draws
    ("train", "spsa_epsilon"): "train.epsilon",
    ("train", "spsa_perturbations"): "train.num_perturbations",
    # seconds are _seconds
    ("data", "duration_s"): "data.duration_seconds",
    ("data", "note_duration_s"): "data.note_duration_seconds",
    ("options", "note_duration_s"): "options.note_duration_seconds",
    ("train", "timeout_s"): "train.timeout_seconds",
    ("evaluate", "timeout_s"): "evaluate.timeout_seconds",
    ("options", "context_s"): "options.context_seconds",  # dawdreamer and faust chain entries
    ("options", "min_decay_s"): "options.min_decay_seconds",  # ddsp.reverb chain entries
}


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


def replacement_key(section: str, key: str, fields: Collection[str] | None = None) -> str | None:
    """What replaces the old key ``section.key`` (:data:`RENAMED_KEYS`), as ``"section.key"``; ``None`` if it is not old.

    Args:
        fields: The keys the section has now; a candidate in the same section applies only if
            it is one of them (``None``: any).
    """
    found = RENAMED_KEYS.get((section, key))
    for new in (found,) if isinstance(found, str) else found or ():
        new_section, _, new_key = new.rpartition(".")
        if new_section != section or fields is None or new_key in fields:
            return new
    return None


def renamed_key_error(section: str, values: Mapping[str, Any], fields: Collection[str] | None = None) -> str | None:
    """The one-line error for the first old key (:data:`RENAMED_KEYS`) in a ``section`` holding ``values``.

    Returns:
        ``"[train] 'workers' was removed: write render.num_workers: 2"`` (moved to another
        section), ``"[data] 'duration_s' was renamed: write data.duration_seconds: 4.0"`` (same
        section), or ``None`` when ``values`` holds no old key.
    """
    for key in sorted(values, key=str):
        new = None if fields is not None and key in fields else replacement_key(section, str(key), fields)
        if new is not None:
            how = "renamed" if new.rpartition(".")[0] == section else "removed"
            return f"[{section}] {str(key)!r} was {how}: write {new}: {json.dumps(values[key], default=str)}"
    return None


def upgrade_keys(values: Mapping[str, Any], section: str, fields: Collection[str] | None = None) -> dict[str, Any]:
    """``values`` with the old keys of ``section`` renamed to their replacements in the same section.

    For settings this package stored itself (a dataset manifest) before a key was renamed; user
    configs are checked by :func:`bind` instead. Old keys whose replacement lives in another
    section are dropped.
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        new = replacement_key(section, str(key), fields)
        if new is None:
            out[key] = value
        elif new.rpartition(".")[0] == section:
            out[new.rpartition(".")[2]] = value
    return out


def upgrade_config(config: Mapping[str, Any], like: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A whole config this package stored (a checkpoint's, a run's ``config.yaml``) with the old keys of
    every section renamed (:func:`upgrade_keys`), e.g. to compare it with today's bound config.

    Args:
        like: Today's config as a plain mapping (``RecipeConfig.to_dict()``): its sections' keys choose
            between the replacements of a key that differs by recipe (``evaluate.workers``).
    """
    def keys(section: str) -> Collection[str] | None:
        have = (like or {}).get(section)
        return list(have) if isinstance(have, Mapping) else None

    return {k: upgrade_keys(v, str(k), keys(str(k))) if isinstance(v, Mapping) else v for k, v in config.items()}


def bind(cls: type[T], values: Mapping[str, Any] | None, section: str) -> T:
    """Instantiate dataclass ``cls`` from ``values`` (missing keys keep code defaults).

    Raises:
        ValueError: a renamed or removed key (:data:`RENAMED_KEYS`; one line naming its
            replacement), or unknown keys (the allowed ones are listed).
    """
    values = dict(values or {})
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    old = renamed_key_error(section, values, fields)
    if old:
        raise ValueError(old)
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
