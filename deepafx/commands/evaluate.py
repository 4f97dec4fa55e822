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
from deepafx.runs import RunLayout, seed_runs


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
    if seed_runs(args.checkpoint):
        return evaluate_seeds(recipe, cfg, Path(args.checkpoint), out_dir, args.split, data_dir, force=args.force,
                              per_seed_root=Path(args.out) if args.out else None)
    results = recipe.evaluate(cfg, Path(args.checkpoint), out_dir, split=args.split, data_dir=data_dir)
    md = out_dir / "results.md"
    if results and md.is_file():
        print(md.read_text())
    print(f"results written to {out_dir}")
    return 0


def evaluate_seeds(recipe, cfg, run_dir: Path, out_dir: Path, split: str, data_dir: Path, force: bool = False,
                   per_seed_root: Path | None = None) -> int:
    """Evaluate every seed of a multi-seed run, then pool them into ``OUT/results.json`` and ``results.md``.

    Each seed is evaluated into its own ``seed-<k>/eval`` (``eval_<split>``), or into
    ``per_seed_root/seed-<k>`` when given (``--out``: e.g. a run evaluated on another
    config's data, which must not overwrite the run's own evaluation); a seed whose
    results are already there and newer than its checkpoints is not evaluated again (``force``
    redoes it), so a stopped evaluation continues where it stopped. The pooled results
    (:func:`deepafx.seeds.aggregate`) give, per method and metric, the mean over seeds, the
    seed-to-seed standard deviation, the per-seed means, a bootstrap interval over items, and
    paired differences against the model over (seed, item) pairs (and ``pooled["pairs"]["a - b"]``
    for the recipe's :attr:`~deepafx.recipes.Recipe.pooled_pairs`).

    Raises:
        ValueError: the recipe's results cannot be pooled (no ``item_scores``).
    """
    import json

    from deepafx.runs import atomic_write_text
    from deepafx.seeds import aggregate, markdown, paired_lines

    if recipe.item_scores is None:
        raise ValueError(f"the {recipe.name!r} recipe's results cannot be pooled over seeds; evaluate each "
                         f"{run_dir}/seed-<k> folder on its own")
    per_seed, files = {}, {}
    for seed, folder in seed_runs(run_dir):
        one = default_out_dir(folder, split) if per_seed_root is None else per_seed_root / folder.name
        result_file = one / "results.json"
        ckpts = list(RunLayout(folder).checkpoints.glob("*.pt"))
        if not ckpts:
            raise FileNotFoundError(f"{folder} holds no checkpoint yet: finish training with "
                                    f"`deepafx train --seeds ... --resume`")
        fresh = result_file.is_file() and result_file.stat().st_mtime >= max(p.stat().st_mtime for p in ckpts)
        if fresh and not force:
            print(f"seed {seed}: results kept from {result_file}")
        else:
            print(f"seed {seed}: evaluating {folder}", flush=True)
            recipe.evaluate(cfg, folder, one, split=split, data_dir=data_dir)
        per_seed[seed] = recipe.item_scores(one, split)
        files[str(seed)] = str(result_file)
    pooled = aggregate(per_seed, reference=recipe.reference_method)
    pooled.update(split=split, recipe=recipe.name, run=str(run_dir), per_seed_results=files)
    text = markdown(pooled, recipe.metric_names, title=f"{recipe.name}: split `{split}`, {len(per_seed)} seeds",
                    labels=recipe.method_labels)
    for a, b in recipe.pooled_pairs:  # a − b over (seed, item) pairs: aggregate with a as the reference
        if all(a in scores and b in scores for scores in per_seed.values()):
            pair = aggregate({s: {a: scores[a], b: scores[b]} for s, scores in per_seed.items()}, reference=a)
            pooled.setdefault("pairs", {})[f"{a} - {b}"] = pair["paired"].get(b, {})
            text += "\n".join(paired_lines(pair, recipe.metric_names, recipe.method_labels)) + "\n"
    if recipe.item_groups is not None:
        groups = recipe.item_groups(Path(files[str(seed_runs(run_dir)[0][0])]).parent, split)
        pooled["groups"] = {}
        for group in dict.fromkeys(groups.values()):
            items = {i for i, g in groups.items() if g == group}
            sub = {seed: {m: {k: {i: v for i, v in vals.items() if i in items} for k, vals in cells.items()}
                          for m, cells in scores.items()} for seed, scores in per_seed.items()}
            pooled["groups"][group] = aggregate(sub, reference=recipe.reference_method)
            text += "\n" + markdown(pooled["groups"][group], recipe.metric_names, labels=recipe.method_labels,
                                    title=f"{group} ({len(items)} items), {len(per_seed)} seeds")
    atomic_write_text(out_dir / "results.json", json.dumps(pooled, indent=1, allow_nan=False))
    atomic_write_text(out_dir / "results.md", text)
    print(text)
    print(f"pooled results written to {out_dir}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="evaluate a trained recipe on its held-out split",
        description="Evaluate a checkpoint on the config's held-out data and write OUT/results.json and "
                    "OUT/results.md. The evaluator is the one of the config's `recipe`.",
    )
    p.add_argument("--config", required=True, help="recipe config: a packaged name (mastering/quick) or a YAML path")
    p.add_argument("--checkpoint", required=True,
                   help="run folder (checkpoints/best.pt, else last.pt) or checkpoint file; a multi-seed run folder "
                        "(seed-<k>/ inside, from `deepafx train --seeds`) evaluates every seed and pools them")
    p.add_argument("--out", default=None, help="output folder (default RUN/eval, or RUN/eval_<split>)")
    p.add_argument("--split", default="test", choices=("test", "valid", "train"), help="data split (default test)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default data/<recipe>/<config name>, as `deepafx train`)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (YAML syntax), e.g. --set evaluate.cmaes_renders=400; repeatable")
    p.add_argument("--force", action="store_true",
                   help="multi-seed run: evaluate every seed again, even those whose results are newer than their checkpoints")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    p.set_defaults(func=run)
