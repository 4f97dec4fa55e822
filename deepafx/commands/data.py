"""``deepafx data``: render or refresh a recipe's dataset from its config.

The recipe is found through :data:`deepafx.recipes.RECIPES` from the config's
``recipe:`` key; its ``data`` entry point renders into ``--out`` (default
``data/<recipe>/<config name>``, where ``deepafx train`` and ``evaluate`` look).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from deepafx.commands.train import load_recipe_config
from deepafx.recipes import RECIPES, default_data_dir


def run(args: argparse.Namespace) -> int:
    """Entry point of ``deepafx data``."""
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    recipe, cfg = load_recipe_config(args.config, args.set)
    out = Path(args.out) if args.out else default_data_dir(cfg)
    t0 = time.perf_counter()
    result = recipe.data(cfg, out, force=args.force)
    print(f"{recipe.name} dataset ready in {Path(result) if result else out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``data`` sub-command."""
    p = sub.add_parser(
        "data",
        help="render a recipe's dataset (cached; deterministic)",
        description=(
            "Render the dataset of a recipe from the 'data:' section of its config (recipes: "
            + ", ".join(RECIPES.names())
            + "). mastering: real scores from music21's corpus rendered through FluidSynth (FluidR3_GM) into "
            "unmastered 44.1 kHz stereo mixes plus the reference engineer's masters (-14 LUFS, -1 dBTP), "
            "split by piece into train/valid/test. dexed_matching: Dexed presets and notes. amp_emulation: "
            "DI guitar and bass parts and their tube-amp renders. Pieces already rendered with the same "
            "settings are reused."
        ),
    )
    p.add_argument("--config", required=True, metavar="CONFIG",
                   help="recipe config: a packaged name (mastering/quick) or a YAML path; for mastering, "
                        "data.preset: quick|full picks built-in sizes (about 4 or 36 minutes of training audio)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="dataset folder (default data/<recipe>/<config name>, where `deepafx train` looks)")
    p.add_argument("--force", action="store_true",
                   help="re-render everything even when cached files match the settings")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (YAML syntax), e.g. --set data.train_minutes=10 "
                        "(minutes of training audio) or --set data.max_piece_seconds=20 (seconds); repeatable")
    p.add_argument("-v", "--verbose", action="store_true", help="log per-piece details")
    p.set_defaults(func=run)
