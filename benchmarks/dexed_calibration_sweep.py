"""Would a global rescaling of a Dexed network's estimates about the training voices' mean help?

A diagnostic for ``train.spectral_train: global_calibration``: for each seed of a run, the estimates of one
checkpoint (default ``ploss``) are rescaled about the training factory voices' mean,
``c + s (x − c)`` on every calibrated numeric parameter (:class:`~deepafx.recipes.dexed_matching.model.OutputCalibration`
with shift 0 and log-scale ``log s``; the transpose and the held parameters as they are), for each scale
``s`` of ``--scales``, rendered at the dataset's notes and scored against the targets by the evaluation's
log-spectral distortion (:func:`deepafx.metrics.lsd_db`, dB).

Reported per split and domain (``train``: ``--voices`` training voices drawn with seed 0, in domain only;
``valid``: every validation voice and every validation out-of-domain note): for each scale, the paired
difference LSD(s) − LSD(1) over (seed, sound) pairs, its 95 % bootstrap interval over sounds (each sound's
mean over seeds), the pairs where the rescaled estimate is lower, and each seed's mean. ``s < 1`` shrinks the
estimates toward the training voices, ``s > 1`` spreads them. The test split is refused.

Usage:
    python benchmarks/dexed_calibration_sweep.py RUN --data-dir data/dexed_matching/medium [--scales 0.8 0.9 1.1 1.2]

Prints one line per (split, domain, scale), then one JSON line.

Raises (exits with the message): a run without the checkpoint, the test split, a scale that is not positive.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch


def rescaled(model, center: np.ndarray, scale: float):
    """``model`` (a :class:`DexedEstimator`) with a global calibration of log-scale ``log scale``, shift 0."""
    from deepafx.recipes.dexed_matching.model import DexedEstimator

    out = DexedEstimator.from_description({**model.describe(), "calibrate": "global"})
    out.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("calibration.")})
    out.activate_calibration(center)
    with torch.no_grad():
        out.calibration.log_scale.fill_(math.log(scale))
    return out.eval()


def main(argv: list[str] | None = None) -> int:
    from deepafx.metrics import bootstrap_ci, lsd_db
    from deepafx.recipes.dexed_matching.data import load_dataset
    from deepafx.recipes.dexed_matching.model import predict
    from deepafx.recipes.dexed_matching.train import load_estimator
    from deepafx.runs import RunLayout, stage_folders

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--data-dir", type=Path, default=Path("data/dexed_matching/medium"))
    ap.add_argument("--splits", nargs="+", default=["train", "valid"], choices=("train", "valid", "test"))
    ap.add_argument("--voices", type=int, default=38, help="training voices scored (drawn with seed 0)")
    ap.add_argument("--stage", default="ploss")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.8, 0.9, 1.1, 1.2])
    args = ap.parse_args(argv)
    if any(not s > 0 for s in args.scales):
        raise SystemExit(f"scales must be positive, got {args.scales}")
    try:
        folders = stage_folders(args.run, [args.stage], args.splits)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(str(exc)) from None
    data = load_dataset(args.data_dir)
    renderer = data.config.renderer()
    center = data.x["train"].mean(0)
    picks = np.sort(np.random.default_rng(0).choice(len(data.x["train"]), min(args.voices, len(data.x["train"])),
                                                    replace=False))
    sets = []
    for split in args.splits:
        idx = picks if split == "train" else np.arange(len(data.x[split]))
        sets.append((split, "in_domain", renderer.render_batch(data.x[split][idx]), data.pitch[split][idx]))
        if split != "train":
            sets.append((split, "out_of_domain", data.ood_audio[split], data.ood_pitch[split]))
    models = [load_estimator(RunLayout(folder).stage(args.stage))[0] for folder in folders]
    rows = []
    for split, domain, target, pitch in sets:
        lsd = {}
        for scale in [1.0, *args.scales]:
            per_seed = []
            for model in models:
                est = renderer.render_batch(predict(rescaled(model, center, scale), target, pitch))
                per_seed.append([lsd_db(e, t) for e, t in zip(est, target)])
            lsd[scale] = np.array(per_seed)  # (seeds, sounds)
        for scale in args.scales:
            d = lsd[scale] - lsd[1.0]
            lo, hi = bootstrap_ci(d.mean(0))
            row = {"split": split, "domain": domain, "scale": scale, "sounds": int(d.shape[1]), "seeds": int(d.shape[0]),
                   "lsd_at_1": round(float(lsd[1.0].mean()), 3), "mean": round(float(d.mean()), 3),
                   "ci": [round(float(lo), 3), round(float(hi), 3)], "lower": int((d < 0).sum()), "pairs": int(d.size),
                   "per_seed": [round(float(v), 3) for v in d.mean(1)]}
            rows.append(row)
            print(f"{split} {domain} s={scale:g}: {row['mean']:+.2f} dB [{lo:+.2f}, {hi:+.2f}] against s=1 "
                  f"({row['lsd_at_1']:.2f} dB), lower on {row['lower']}/{row['pairs']}; per seed "
                  + " / ".join(f"{v:+.2f}" for v in row["per_seed"]), flush=True)
    print(json.dumps({"benchmark": "dexed_calibration_sweep", "run": str(args.run), "stage": args.stage, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
