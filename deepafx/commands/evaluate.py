"""``deepafx evaluate``: evaluate a trained recipe on its held-out split.

Dispatches on the config's top-level ``recipe`` through :data:`EVALUATORS`
(``"recipe": "module:function"``, imported only when used). Each evaluator is
called as ``function(config, checkpoint, out_dir, split=...)`` and writes
``OUT/results.json`` and ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import sys
from pathlib import Path

from deepafx.config import load_config

#: Recipe name → ``"module:function"`` of its evaluator.
EVALUATORS = {
    "mastering": "deepafx.recipes.mastering.evaluate:evaluate_from_config",
    "dexed_matching": "deepafx.recipes.dexed_matching.evaluate:evaluate_from_config",
}


def get_evaluator(recipe: str):
    """The evaluator function of ``recipe``.

    Raises:
        ValueError: unknown recipe (the known ones are listed).
        ImportError: the evaluator's module is not installed in this build.
    """
    if recipe not in EVALUATORS:
        raise ValueError(f"no evaluator for recipe {recipe!r}; known: {', '.join(sorted(EVALUATORS))}")
    module, func = EVALUATORS[recipe].split(":")
    return getattr(importlib.import_module(module), func)


def default_out_dir(checkpoint: str | Path, split: str) -> Path:
    """``<run folder>/eval_<split>`` (the run folder is the checkpoint's folder, or the checkpoint if a folder)."""
    p = Path(checkpoint)
    run_dir = p if p.is_dir() else p.parent
    return run_dir / f"eval_{split}"


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.set)
        fn = get_evaluator(cfg["recipe"])
        out_dir = Path(args.out) if args.out else default_out_dir(args.checkpoint, args.split)
        kwargs = {"split": args.split}
        if args.data_dir is not None:
            if "data_dir" not in inspect.signature(fn).parameters:
                raise ValueError(f"--data-dir is not supported by the {cfg['recipe']!r} evaluator")
            kwargs["data_dir"] = Path(args.data_dir)
        results = fn(cfg, Path(args.checkpoint), out_dir, **kwargs)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        print(f"deepafx evaluate: error: {exc}", file=sys.stderr)
        return 1
    md = out_dir / "results.md"
    if results and md.is_file():
        print(md.read_text())
    print(f"results written to {out_dir}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="evaluate a trained recipe on its held-out split",
        description="Evaluate a checkpoint on the config's held-out data and write OUT/results.json and "
                    "OUT/results.md. The evaluator is chosen by the config's `recipe`.",
    )
    p.add_argument("--config", required=True, help="recipe YAML, e.g. recipes/mastering/quick.yaml")
    p.add_argument("--checkpoint", required=True, help="run folder (best.pt, else last.pt) or checkpoint file")
    p.add_argument("--out", default=None, help="output folder (default <run folder>/eval_<split>)")
    p.add_argument("--split", default="test", choices=("test", "valid", "train"), help="data split (default test)")
    p.add_argument("--data-dir", default=None,
                   help="dataset folder (mastering default: data.out_dir, else data/<recipe>/<config name>, as `deepafx train`)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (YAML syntax), e.g. --set evaluate.cmaes_renders=400; repeatable")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    p.set_defaults(func=run)
