"""Which Dexed parameters the stages trained through the synth move, against the network they start from.

For a Dexed-matching run folder, the presets that the ``ploss``, ``synth`` and ``real``
checkpoints estimate for the sounds of ``--split`` (in domain: the held-out factory voices
rendered at their pitch; out of domain: the held-out instrument notes) are compared
parameter by parameter: mean |Δ| of the normalized value (0–1 over each parameter's range,
so 0.01 is one step of a 0–99 DX7 parameter) of ``synth`` and ``real`` against ``ploss``,
and how many of the discrete parameters (algorithm, waveforms, coarse ratios, curves …) take
another value per sound: SPSA does not perturb them, so a change there comes from the shared
body under their heads, held only by the cross-entropy anchor (or by ``train.frozen_params``).
A spectral stage that loses the pitch shows here as a moving pitch-envelope level or
operator frequency; a discrete parameter that moves shows the anchor not holding.

Usage:
    python benchmarks/dexed_param_drift.py RUN [--data-dir DIR] [--split valid] [--top 8]

Prints one line per (domain, stage), then one JSON line. The test split is refused (a
diagnostic made to choose a method is a choice: validation only).

Raises (exits with the message): a run without the three checkpoints, the test split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

STAGES = ("ploss", "synth", "real")


def main(argv: list[str] | None = None) -> int:
    from deepafx.hosts.dexed_host import dexed_param_table
    from deepafx.recipes.dexed_matching.data import load_dataset
    from deepafx.recipes.dexed_matching.model import predict
    from deepafx.recipes.dexed_matching.train import load_estimator

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--data-dir", type=Path, default=Path("data/dexed_matching/quick"))
    ap.add_argument("--split", default="valid", choices=("train", "valid", "test"))
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args(argv)
    if args.split == "test":
        raise SystemExit("a diagnostic used to choose a method reads the validation split; the test split is "
                         "scored once per config")
    missing = [s for s in STAGES if not (args.run / "checkpoints" / f"{s}.pt").is_file()]
    if missing:
        raise SystemExit(f"{args.run}: no checkpoints/{{{','.join(missing)}}}.pt (train all stages first)")
    data = load_dataset(args.data_dir)
    names = dexed_param_table().names
    domains = {"in_domain": (data.config.renderer().render_batch(data.x[args.split]), data.pitch[args.split]),
               "out_of_domain": (data.ood_audio[args.split], data.ood_pitch[args.split])}
    est = {}
    for stage in STAGES:
        model, _ = load_estimator(args.run / "checkpoints" / f"{stage}.pt")
        discrete = list(model.layout.discrete_indices)
        for dom, (audio, pitch) in domains.items():
            est[stage, dom] = predict(model, audio, pitch)
    rows = []
    for dom in domains:
        for stage in STAGES[1:]:
            delta = np.abs(est[stage, dom] - est["ploss", dom])
            d = delta.mean(0)
            changed = (delta[:, discrete] > 1e-6).sum(1)
            top = [(names[i], round(float(d[i]), 4)) for i in np.argsort(-d)[: args.top]]
            row = {"domain": dom, "stage": stage, "against": "ploss", "n": int(len(est[stage, dom])),
                   "mean_abs_change": round(float(d.mean()), 4),
                   "discrete_changed_per_sound": round(float(changed.mean()), 2), "discrete_params": len(discrete),
                   "largest": top}
            print(f"{dom:13s} {stage} - ploss: mean |change| {row['mean_abs_change']:.4f}, discrete values changed "
                  f"{row['discrete_changed_per_sound']:.1f} of {len(discrete)} a sound; largest "
                  + ", ".join(f"{n} {v:.3f}" for n, v in top), flush=True)
            rows.append(row)
    print(json.dumps({"benchmark": "dexed_param_drift", "run": str(args.run), "split": args.split, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
