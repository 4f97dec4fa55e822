"""``deepafx data``: render or refresh a recipe's dataset from its config.

The recipe YAML names its recipe (``recipe: mastering``) and holds a ``data:``
section; the builder of that recipe is looked up in :data:`BUILDERS` (a
``"module:function"`` string, imported only when used) and called as
``build(data_section, out_dir, force=force)``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import time
from pathlib import Path
from typing import Any, Callable

#: Recipe name → dataset builder ``"module:function"`` (imported lazily).
BUILDERS: dict[str, str] = {
    "mastering": "deepafx.recipes.mastering.music:build_dataset",
    "dexed_matching": "deepafx.recipes.dexed_matching.data:build_dataset",
}


def resolve_builder(recipe: str) -> Callable[..., Any]:
    """Import and return the dataset builder of ``recipe``.

    Raises:
        SystemExit: unknown recipe (lists the known ones) or a builder that cannot be imported.
    """
    if recipe not in BUILDERS:
        raise SystemExit(f"unknown recipe {recipe!r}; recipes with datasets: {', '.join(sorted(BUILDERS))}")
    module_name, func_name = BUILDERS[recipe].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"cannot import the {recipe!r} dataset builder {BUILDERS[recipe]}: {exc}") from exc
    return getattr(module, func_name)


def default_out_dir(recipe: str, config_path: str | Path) -> Path:
    """``data/<recipe>/<config file stem>``: the folder ``deepafx train`` reads by default."""
    return Path("data") / recipe / Path(config_path).stem


def run(args: argparse.Namespace) -> int:
    """Entry point of ``deepafx data``."""
    from deepafx.config import load_config

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    cfg = load_config(args.config, args.set)
    recipe = cfg["recipe"]
    data = cfg.get("data") or {}
    if not isinstance(data, dict):
        raise SystemExit(f"{args.config}: the 'data' section must be a mapping, got {type(data).__name__}")
    out = Path(args.out) if args.out else default_out_dir(recipe, args.config)
    build = resolve_builder(recipe)
    t0 = time.perf_counter()
    result = build(data, out, force=args.force)
    print(f"{recipe} dataset ready in {Path(result) if result else out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``data`` sub-command."""
    p = sub.add_parser(
        "data",
        help="render a recipe's dataset (cached; deterministic)",
        description=(
            "Render the dataset of a recipe from the 'data:' section of its YAML config. "
            "mastering: real scores from music21's corpus rendered through FluidSynth (FluidR3_GM) into "
            "unmastered 44.1 kHz stereo mixes plus the reference engineer's masters (-14 LUFS, -1 dBTP), "
            "split by piece into train/valid/test. dexed_matching: Dexed presets and notes. "
            "Pieces already rendered with the same settings are reused."
        ),
    )
    p.add_argument("--config", required=True, metavar="CONFIG.yaml",
                   help="recipe YAML with a top-level 'recipe:' key and a 'data:' section "
                        "(e.g. recipes/mastering/quick.yaml); for mastering, data.preset: quick|full picks "
                        "built-in sizes (about 4 or 36 minutes of training audio)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="dataset folder (default data/<recipe>/<config file name>, where `deepafx train` looks)")
    p.add_argument("--force", action="store_true",
                   help="re-render everything even when cached files match the settings")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (YAML syntax), e.g. --set data.train_minutes=10 "
                        "(minutes of training audio) or --set data.max_piece_seconds=20 (seconds); repeatable")
    p.add_argument("-v", "--verbose", action="store_true", help="log per-piece details")
    p.set_defaults(func=run)
