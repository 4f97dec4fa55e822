"""Does a Dexed-matching stage improve on its start on the voices it trained on, and on held-out ones?

The evaluation (``deepafx evaluate``) scores held-out sounds only. This diagnostic also scores
the *training* factory voices, whose corpus neighbourhoods the spectral stages train on: a stage
that descends its loss should at least lower the LSD there. For each seed of a run (a folder
with ``checkpoints/``, or one with ``seed-K`` folders as ``deepafx train --seeds`` makes), the
estimates of the ``--a`` and ``--b`` checkpoints (default ``synth`` and ``ploss``) for each voice
are rendered at the dataset's notes and scored against the voice's render by the evaluation's
log-spectral distortion (:func:`deepafx.metrics.lsd_db`, dB).

Reported per split (``train``: ``--voices`` training voices drawn with seed 0; ``valid``: every
validation voice): the paired difference a − b, mean over (seed, voice) pairs, its 95 % bootstrap
interval over voices (each voice's mean over seeds), the pairs where a is lower, and each seed's
mean. The test split is refused: a diagnostic used to choose a method reads validation only.

Usage:
    python benchmarks/dexed_stage_gain.py RUN [RUN ...] --data-dir data/dexed_matching/medium [--voices 38]

Prints one line per (run, split), then one JSON line.

Raises (exits with the message): a run without the two checkpoints, the test split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from deepafx.metrics import bootstrap_ci, lsd_db
    from deepafx.recipes.dexed_matching.data import load_dataset
    from deepafx.recipes.dexed_matching.model import predict
    from deepafx.recipes.dexed_matching.train import load_estimator
    from deepafx.runs import RunLayout, stage_folders

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--data-dir", type=Path, default=Path("data/dexed_matching/medium"))
    ap.add_argument("--splits", nargs="+", default=["train", "valid"], choices=("train", "valid", "test"))
    ap.add_argument("--voices", type=int, default=38, help="training voices scored (drawn with seed 0)")
    ap.add_argument("--a", default="synth")
    ap.add_argument("--b", default="ploss")
    args = ap.parse_args(argv)
    try:
        folders = {run: stage_folders(run, (args.a, args.b), args.splits) for run in args.runs}
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(str(exc)) from None
    data = load_dataset(args.data_dir)
    renderer = data.config.renderer()
    picks = {"train": np.sort(np.random.default_rng(0).choice(len(data.x["train"]),
                                                                min(args.voices, len(data.x["train"])), replace=False)),
             "valid": np.arange(len(data.x["valid"]))}
    rows = []
    for split in args.splits:
        idx = picks[split]
        target = renderer.render_batch(data.x[split][idx])
        pitch = data.pitch[split][idx]
        for run in args.runs:
            diffs = []
            for folder in folders[run]:
                lsd = {}
                for stage in (args.a, args.b):
                    model, _ = load_estimator(RunLayout(folder).stage(stage))
                    est = renderer.render_batch(predict(model, target, pitch))
                    lsd[stage] = np.array([lsd_db(e, t) for e, t in zip(est, target)])
                diffs.append(lsd[args.a] - lsd[args.b])
            d = np.array(diffs)  # (seeds, voices)
            lo, hi = bootstrap_ci(d.mean(0))
            row = {"run": str(run), "split": split, "voices": int(len(idx)), "seeds": int(len(d)),
                   "a": args.a, "b": args.b, "mean": round(float(d.mean()), 3), "ci": [round(float(lo), 3), round(float(hi), 3)],
                   "a_lower": int((d < 0).sum()), "pairs": int(d.size), "per_seed": [round(float(v), 3) for v in d.mean(1)]}
            rows.append(row)
            print(f"{run} {split} ({len(idx)} voices x {len(d)} seeds): {args.a} - {args.b} {row['mean']:+.2f} dB "
                  f"[{lo:+.2f}, {hi:+.2f}], lower on {row['a_lower']}/{row['pairs']}; per seed "
                  + " / ".join(f"{v:+.2f}" for v in row["per_seed"]), flush=True)
    print(json.dumps({"benchmark": "dexed_stage_gain", "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
