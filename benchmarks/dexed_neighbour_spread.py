"""Where refinement's gain comes from: the LSD of a Dexed estimate's random one-step neighbours.

Test-time SPSA refinement (``spsa_refine``, 40 renders) keeps the best preset it rendered, and from the
P-loss network's estimates it gains about 1.6 dB on the validation voices. Two things can give that
gain: a slope the SPSA steps follow, or the spread of the loss among nearby presets, from which keeping
the best of many draws gains even without a slope. This diagnostic separates them without any descent:
for each seed's ``--stage`` checkpoint (default ``ploss``), each voice's estimate ``θ`` (``--voices``
training voices drawn with seed 0, and every validation voice) is perturbed ``--draws`` times by
``ε Δ`` (``Δ`` Rademacher on the free numeric parameters, clipped to [0, 1]: the refinement's own
draws, ε = 0.01, about one DX7 step); each neighbour is rendered at the dataset's notes and scored by
the evaluation's log-spectral distortion (:func:`deepafx.metrics.lsd_db`, dB).

Reported per split, over (seed, voice) pairs:

* ``odd_rms``: root mean square of ``(L(θ + εΔ) − L(θ − εΔ)) / 2``, dB: the part of a step's change that
  is odd in ``Δ``, which a slope along ``Δ`` gives and SPSA measures;
* ``even``: mean of ``(L(θ + εΔ) + L(θ − εΔ)) / 2 − L(θ)``, dB: the part that is the same on both sides
  (curvature and roughness of the quantized loss), which no gradient step can use;
* ``spread``: the neighbours' standard deviation about their mean, dB;
* ``odd_share``: per (seed, voice), ``mean(o²) / (mean(o²) + var(e))`` with ``o``, ``e`` each pair's odd and even
  part, averaged: the share of the neighbours' variation that changes sign with ``Δ``. A loss linear at this
  scale gives 1, a loss whose neighbours are independent draws about a level gives 0.5, curvature alone 0;
* ``best_of_n``: best of the first ``n`` neighbours − start (the start kept when lower, as refinement
  keeps it), mean and 95 % bootstrap interval over voices (each voice's mean over seeds), for
  ``n`` = 1, 4, 16 and ``--draws``: what keeping the best of ``n`` random presets gains with no gradient;
  each seed's mean (``per_seed``) for it and for the odd share.

The test split is refused (a diagnostic that informs choices reads training and validation voices only).

Usage:
    python benchmarks/dexed_neighbour_spread.py runs/dexed_matching/medium --data-dir data/dexed_matching/medium
        [--stage ploss] [--voices 38] [--draws 38] [--epsilon 0.01]

Prints one line per split, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np



def neighbours(theta: np.ndarray, free: np.ndarray, epsilon: float, draws: int, rng: np.random.Generator) -> np.ndarray:
    """``(draws, P)``: ``θ + εΔ`` then ``θ − εΔ`` for ``draws // 2`` Rademacher ``Δ`` on ``free`` (clipped to [0, 1])."""
    half = draws // 2
    delta = np.where(free, rng.choice((-1.0, 1.0), (half, len(theta))), 0.0)
    return np.clip(np.concatenate([theta + epsilon * delta, theta - epsilon * delta]), 0.0, 1.0)


def summarize(start: np.ndarray, lsd: np.ndarray, ns: tuple[int, ...]) -> dict:
    """Figures over ``start (seeds, voices)`` and neighbour LSD ``lsd (seeds, voices, draws)`` (plus first, minus second)."""
    from deepafx.metrics import bootstrap_ci

    half = lsd.shape[-1] // 2
    plus, minus = lsd[..., :half], lsd[..., half:]
    order = np.stack([plus, minus], -1).reshape(lsd.shape)  # pairs adjacent: +Δ1, −Δ1, +Δ2 …
    odd, even = (plus - minus) / 2, (plus + minus) / 2 - start[..., None]
    o2 = (odd**2).mean(-1)
    share = o2 / np.maximum(o2 + (even.var(-1, ddof=1) if half > 1 else 0.0), 1e-12)
    out = {"pairs": int(start.size), "start": round(float(start.mean()), 3),
           "odd_rms": round(float(np.sqrt((odd**2).mean())), 3), "even": round(float(even.mean()), 3),
           "odd_share": round(float(share.mean()), 3), "odd_share_per_seed": [round(float(v), 3) for v in share.mean(1)],
           "spread": round(float(lsd.std(-1, ddof=1).mean()), 3), "best_of_n": {}}
    for n in ns:
        gain = np.minimum(order[..., :n].min(-1), start) - start  # (seeds, voices), ≤ 0
        lo, hi = bootstrap_ci(gain.mean(0))
        out["best_of_n"][str(n)] = {"mean": round(float(gain.mean()), 3), "ci": [round(float(lo), 3), round(float(hi), 3)],
                                    "per_seed": [round(float(v), 3) for v in gain.mean(1)]}
    return out


def main(argv: list[str] | None = None) -> int:
    from deepafx.metrics import lsd_db
    from deepafx.recipes.dexed_matching.data import load_dataset
    from deepafx.recipes.dexed_matching.model import predict
    from deepafx.recipes.dexed_matching.search import numeric_free_mask
    from deepafx.recipes.dexed_matching.train import load_estimator
    from deepafx.runs import RunLayout, stage_folders

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--data-dir", type=Path, default=Path("data/dexed_matching/medium"))
    ap.add_argument("--stage", default="ploss")
    ap.add_argument("--splits", nargs="+", default=["train", "valid"], choices=("train", "valid", "test"))
    ap.add_argument("--voices", type=int, default=38, help="training voices (drawn with seed 0)")
    ap.add_argument("--draws", type=int, default=38, help="neighbours per estimate (an even number)")
    ap.add_argument("--epsilon", type=float, default=0.01)
    args = ap.parse_args(argv)
    if args.draws < 2 or args.draws % 2 or not 0 < args.epsilon < 0.5:
        raise SystemExit(f"--draws must be an even number >= 2 and 0 < --epsilon < 0.5, got {args.draws}, {args.epsilon}")
    try:
        folders = stage_folders(args.run, [args.stage], args.splits)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(str(exc)) from None
    data = load_dataset(args.data_dir)
    renderer = data.config.renderer()
    free = numeric_free_mask()
    picks = {"train": np.sort(np.random.default_rng(0).choice(len(data.x["train"]),
                                                                min(args.voices, len(data.x["train"])), replace=False)),
             "valid": np.arange(len(data.x["valid"]))}
    ns = tuple(sorted({1, 4, 16, args.draws} & set(range(1, args.draws + 1))))
    rows = []
    for split in args.splits:
        idx = picks[split]
        target = renderer.render_batch(data.x[split][idx])
        pitch = data.pitch[split][idx]
        starts, lsds = [], []
        for s, folder in enumerate(folders):
            model, _ = load_estimator(RunLayout(folder).stage(args.stage))
            est = predict(model, target, pitch)
            rng = np.random.default_rng([s, len(idx)])
            start, lsd = [], []
            for theta, t in zip(est, target):
                cand = neighbours(theta, free, args.epsilon, args.draws, rng)
                ys = renderer.render_batch(np.concatenate([theta[None], cand]))
                scores = np.array([lsd_db(y, t) for y in ys])
                start.append(scores[0])
                lsd.append(scores[1:])
            starts.append(start)
            lsds.append(lsd)
        row = {"split": split, "stage": args.stage, "voices": int(len(idx)), "seeds": len(folders),
               "epsilon": args.epsilon, **summarize(np.array(starts), np.array(lsds), ns)}
        rows.append(row)
        best = ", ".join(f"{n}: {v['mean']:+.2f} [{v['ci'][0]:+.2f}, {v['ci'][1]:+.2f}]" for n, v in row["best_of_n"].items())
        print(f"{split} ({len(idx)} voices x {len(folders)} seeds, {args.stage}, start {row['start']:.2f} dB): "
              f"odd rms {row['odd_rms']:.2f}, even {row['even']:+.2f}, spread {row['spread']:.2f} dB, odd share "
              f"{row['odd_share']:.2f}; "
              f"best of n − start: {best}", flush=True)
    print(json.dumps({"benchmark": "dexed_neighbour_spread", "run": str(args.run), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
