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
    if args.seeds is not None:
        return train_seeds(recipe, args, run_dir, data_dir, options)
    result = train(recipe.task(cfg, data_dir, **options), run_dir, cfg, resume=args.resume,
                   branch_from=None if args.resume else branch_source(args.branch_from, args.branch_stage))
    best = result["best_valid"]
    print(f"training finished in {result['seconds']:.0f} s"
          + (f"; best validation loss {best:.4f}" if best != float("inf") else "") + f"; run folder {run_dir}")
    return 0


def parse_seeds(text: str) -> list[int]:
    """``"3"`` → seeds 0, 1, 2; ``"0,4,7"`` → those seeds (distinct, ≥ 0).

    Raises:
        ValueError: not a count or a comma-separated list of non-negative integers, or repeated seeds.
    """
    try:
        parts = [int(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"--seeds takes a count (3) or a list (0,1,2), got {text!r}") from None
    seeds = list(range(parts[0])) if len(parts) == 1 and "," not in str(text) else parts
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds needs at least one seed, all distinct and ≥ 0, got {text!r}")
    return seeds


def branch_source(run: str | None, stage: str, seed: int | None = None) -> Path | None:
    """The checkpoint ``--branch-from RUN --branch-stage STAGE`` names: ``RUN/checkpoints/STAGE.pt``, or with
    ``seed`` that of ``RUN/seed-<seed>/``; ``None`` without ``run``.

    Raises:
        FileNotFoundError: no such checkpoint (names the stages the run saved).
    """
    from deepafx.runs import RunLayout

    if run is None:
        return None
    layout = RunLayout(Path(run)) if seed is None else RunLayout(Path(run)).seed(seed)
    path = layout.stage(stage)
    if not path.is_file():
        saved = sorted(p.stem for p in layout.checkpoints.glob("*.pt")) if layout.checkpoints.is_dir() else []
        raise FileNotFoundError(f"--branch-from: no checkpoint {path} (stage {stage!r}); that run folder holds "
                                f"{', '.join(saved) or 'no checkpoints'}")
    return path


def train_seeds(recipe, args: argparse.Namespace, run_dir: Path, data_dir: Path, options: dict) -> int:
    """Train the config once per seed (``train.seed``) into ``RUN/seed-<k>/``, one seed after another.

    With ``--resume`` a seed whose run finished is skipped, a seed with a checkpoint continues
    exactly where it stopped, and a seed not started yet starts; so a stopped multi-seed run
    continues where it stopped, also in a later session. Without ``--resume`` an earlier run
    in ``RUN`` is first moved aside whole (``RUN.previous-<date-time>``).
    """
    import os

    from deepafx.runs import RunLayout, keep_earlier_run, load_checkpoint
    from deepafx.trainer import train

    seeds = parse_seeds(args.seeds)
    layout = RunLayout(run_dir)
    if not args.resume and int(os.environ.get("RANK", "0")) == 0:
        keep_earlier_run(run_dir)
    total = 0.0
    for seed in seeds:
        _, cfg = load_recipe_config(args.config, [*args.set, f"train.seed={seed}"])
        one = layout.seed(seed)
        resume = args.resume and one.last.is_file()
        if resume and load_checkpoint(one.last).get("state", {}).get("finished"):
            print(f"seed {seed}: finished earlier, kept ({one.root})")
            continue
        print(f"seed {seed}: {'resuming' if resume else 'training'} in {one.root}", flush=True)
        source = None if resume else branch_source(args.branch_from, args.branch_stage, seed)
        result = train(recipe.task(cfg, data_dir, **options), one.root, cfg, resume=resume, branch_from=source)
        total += result["seconds"]
    print(f"training of seeds {', '.join(map(str, seeds))} finished in {total:.0f} s; run folder {run_dir} "
          f"(evaluate all seeds with `deepafx evaluate --checkpoint {run_dir}`)")
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
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.pt exactly where it stopped "
                                                         "(with --seeds: every seed not finished yet)")
    p.add_argument("--seeds", default=None, metavar="N|S,S,...",
                   help="train once per seed, one after another, into RUN_DIR/seed-<k>/: a count (3: seeds 0, 1, 2) "
                        "or a list (0,5,9); overrides train.seed. `deepafx evaluate --checkpoint RUN_DIR` then "
                        "evaluates every seed and pools them (mean, seed std, per seed, paired differences)")
    p.add_argument("--branch-from", default=None, metavar="RUN",
                   help="start a new run from another run's stage checkpoint RUN/checkpoints/<--branch-stage>.pt "
                        "(with --seeds: RUN/seed-<k>/...): its model, optimizer, RNG and history, then the remaining "
                        "stages under this config, which may change anything but data and model (an ablation of "
                        "the later stages from a shared start; the changes go to RUN_DIR/branch.json). "
                        "With --resume a branched run continues from its own last.pt")
    p.add_argument("--branch-stage", default="ploss", metavar="STAGE",
                   help="the stage checkpoint --branch-from starts at (default ploss)")
    p.add_argument("--pairs", nargs=2, metavar=("UNMASTERED_DIR", "MASTERED_DIR"),
                   help="mastering: train on your own pairs matched by file name (aligned by cross-correlation, resampled as needed)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (YAML syntax), e.g. --set train.epochs=2; repeatable; "
                        "an unknown section or key is an error that names it")
    p.add_argument("-v", "--verbose", action="store_true", help="log worker restarts and other details")
    p.set_defaults(func=run)
