"""``deepafx train``: train a recipe from its config (plain or under torchrun)."""

from __future__ import annotations

import argparse
import importlib
import logging
from pathlib import Path

from deepafx.config import load_config


def _run_mastering(cfg, args) -> None:
    from deepafx.recipes.mastering.train import train_from_config

    pairs = tuple(args.pairs) if args.pairs else None
    result = train_from_config(cfg, Path(args.run_dir), Path(args.data_dir), resume=args.resume, pairs=pairs)
    print(f"training finished in {result['seconds']:.0f} s; best validation loss {result['best_valid']:.4f}; "
          f"checkpoints in {args.run_dir}")


def _run_dexed(cfg, args) -> None:
    if args.pairs:
        raise SystemExit("--pairs applies to the mastering recipe only")
    train = importlib.import_module("deepafx.recipes.dexed_matching.train").train_from_config
    out = train(cfg, Path(args.run_dir), resume=args.resume, data_dir=Path(args.data_dir))
    print(f"checkpoints in {out}")


RECIPES = {"mastering": _run_mastering, "dexed_matching": _run_dexed}


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.set)
    recipe = cfg["recipe"]
    if recipe not in RECIPES:
        raise SystemExit(f"unknown recipe {recipe!r} in {args.config}; known: {', '.join(RECIPES)}")
    args.run_dir = args.run_dir or f"runs/{recipe}/{Path(args.config).stem}"
    args.data_dir = args.data_dir or f"data/{recipe}/{Path(args.config).stem}"
    RECIPES[recipe](cfg, args)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a recipe (mastering, dexed_matching) from its config",
        description="Train a recipe from its YAML config. Runs plain or under "
                    "`torchrun --nproc_per_node N deepafx train ...` (DDP: gloo on CPU, NCCL on GPU; rank 0 writes files).",
    )
    p.add_argument("--config", required=True, help="recipe YAML, e.g. recipes/mastering/quick.yaml")
    p.add_argument("--run-dir", default=None, help="folder for checkpoints (last.pt, best.pt), history.json and TensorBoard logs "
                                                   "(default runs/<recipe>/<config name>)")
    p.add_argument("--data-dir", default=None, help="dataset cache folder (default data/<recipe>/<config name>); "
                                                    "rendered once, reused while the data settings are unchanged")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt exactly where it stopped")
    p.add_argument("--pairs", nargs=2, metavar=("UNMASTERED_DIR", "MASTERED_DIR"),
                   help="train on your own pairs matched by file name (aligned by cross-correlation, resampled as needed)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (YAML syntax), e.g. --set train.epochs=2; repeatable")
    p.add_argument("-v", "--verbose", action="store_true", help="log worker restarts and other details")
    p.set_defaults(func=run)
