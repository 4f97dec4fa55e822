"""``deepafx train``: train a recipe from its config on the shared engine (plain or under torchrun)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from deepafx.recipes import RECIPES, default_data_dir, default_run_dir


def load_recipe_config(config: str, overrides: list[str]):
    """``(recipe, bound config)`` for a config path or packaged name with ``--set`` overrides.

    Raises:
        FileNotFoundError: no such config (the packaged ones are listed).
        ValueError: unknown recipe, section or key (named), malformed override.
    """
    from deepafx.config import load_config
    from deepafx.recipes import get_recipe

    raw = load_config(config, overrides)
    recipe = get_recipe(str(raw["recipe"]))
    return recipe, recipe.bind(raw)


def run(args: argparse.Namespace) -> int:
    from deepafx.trainer import train

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    recipe, cfg = load_recipe_config(args.config, args.set)
    options = {}
    if args.pairs:
        if "pairs" not in recipe.train_options:
            raise ValueError(f"--pairs does not apply to the {recipe.name!r} recipe")
        options["pairs"] = tuple(args.pairs)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(cfg)
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir(cfg)
    result = train(recipe.task(cfg, data_dir, **options), run_dir, cfg, resume=args.resume)
    best = result["best_valid"]
    print(f"training finished in {result['seconds']:.0f} s"
          + (f"; best validation loss {best:.4f}" if best != float("inf") else "") + f"; run folder {run_dir}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help=f"train a recipe ({', '.join(RECIPES.names())}) from its config",
        description="Train a recipe from its YAML config on the shared training engine. Runs plain or under "
                    "`torchrun --nproc_per_node N deepafx train ...` (DDP: gloo on CPU, NCCL on GPU; rank 0 writes files). "
                    "Automation recipes render in worker processes on this machine, or on a Ray cluster with "
                    "--set render.engine=ray --set render.address=auto (README: Rendering on a Ray cluster). "
                    "Run folder: config.yaml, checkpoints/{last,best,<stage>}.pt, history.jsonl, tensorboard/.",
    )
    p.add_argument("--config", required=True,
                   help="recipe config: a packaged name such as mastering/quick or dexed_matching/quick, or a YAML path")
    p.add_argument("--run-dir", default=None, help="run folder (default runs/<recipe>/<config name>)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default data/<recipe>/<config name>); "
                                                    "rendered once, reused while the data settings are unchanged")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.pt exactly where it stopped")
    p.add_argument("--pairs", nargs=2, metavar=("UNMASTERED_DIR", "MASTERED_DIR"),
                   help="mastering: train on your own pairs matched by file name (aligned by cross-correlation, resampled as needed)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (YAML syntax), e.g. --set train.epochs=2; repeatable; "
                        "an unknown section or key is an error that names it")
    p.add_argument("-v", "--verbose", action="store_true", help="log worker restarts and other details")
    p.set_defaults(func=run)
