"""``deepafx evaluate``: evaluate a trained recipe on its held-out split.

The recipe is found through :data:`deepafx.recipes.RECIPES` from the config's
``recipe:`` key; its ``evaluate`` entry point writes ``OUT/results.json`` and
``OUT/results.md`` (default ``OUT``: the run folder's ``eval/``, or
``eval_<split>/`` for a split other than ``test``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from deepafx.commands.train import load_recipe_config
from deepafx.recipes import default_data_dir
from deepafx.runs import RunLayout


def default_out_dir(checkpoint: str | Path, split: str) -> Path:
    """``<run folder>/eval`` for the test split, ``<run folder>/eval_<split>`` otherwise.

    The run folder is ``checkpoint`` when it is a folder, else the folder above
    the checkpoint file's ``checkpoints/``.
    """
    p = Path(checkpoint)
    run = p if p.is_dir() else (p.parent.parent if p.parent.name == "checkpoints" else p.parent)
    run = run.parent if run.name == "checkpoints" else run
    base = RunLayout(run).eval
    return base if split == "test" else base.with_name(f"eval_{split}")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    recipe, cfg = load_recipe_config(args.config, args.set)
    out_dir = Path(args.out) if args.out else default_out_dir(args.checkpoint, args.split)
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir(cfg)
    results = recipe.evaluate(cfg, Path(args.checkpoint), out_dir, split=args.split, data_dir=data_dir)
    md = out_dir / "results.md"
    if results and md.is_file():
        print(md.read_text())
    print(f"results written to {out_dir}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="evaluate a trained recipe on its held-out split",
        description="Evaluate a checkpoint on the config's held-out data and write OUT/results.json and "
                    "OUT/results.md. The evaluator is the one of the config's `recipe`.",
    )
    p.add_argument("--config", required=True, help="recipe config: a packaged name (mastering/quick) or a YAML path")
    p.add_argument("--checkpoint", required=True, help="run folder (checkpoints/best.pt, else last.pt) or checkpoint file")
    p.add_argument("--out", default=None, help="output folder (default RUN/eval, or RUN/eval_<split>)")
    p.add_argument("--split", default="test", choices=("test", "valid", "train"), help="data split (default test)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default data/<recipe>/<config name>, as `deepafx train`)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (YAML syntax), e.g. --set evaluate.cmaes_renders=400; repeatable")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    p.set_defaults(func=run)
