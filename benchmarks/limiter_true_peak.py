"""How far above its ceiling does the mastering chain's sample-peak limiter let the *true* peak go?

``pedalboard.BrickwallLimiter`` holds the sample peak at its ceiling; between samples the
reconstructed signal can peak higher (inter-sample peaks, ITU-R BS.1770-4 true peak, 4x
oversampled). The mastering targets are held at −1 dBTP, so the limiter's ceiling must sit
below −1 dB by the largest overshoot the music produces. This measures it on the training and
validation excerpts of a soundtrack dataset (never the test albums): every target master is
driven 0, 6 and 12 dB into a ceiling of ``--ceiling`` dB and its true peak is measured.

Usage:
    python benchmarks/limiter_true_peak.py [--data-dir data/mastering/quick] [--ceiling -1.5]
Prints the five worst cases and, last, one JSON line (``max_overshoot_db``: true peak minus
ceiling, dB; ``ceiling_for_minus_1_dbtp``: −1 minus that, rounded down to 0.1 dB).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pedalboard
import soundfile as sf

from deepafx import metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="data/mastering/quick")
    ap.add_argument("--ceiling", type=float, default=-1.5, help="limiter ceiling, dB (sample peak)")
    ap.add_argument("--drives", type=float, nargs="+", default=[0.0, 6.0, 12.0], help="dB into the ceiling")
    args = ap.parse_args()
    cases = []
    for split in ("train", "valid"):
        for path in sorted((Path(args.data_dir) / split).glob("*_target.wav")):
            y, sr = sf.read(str(path), dtype="float32", always_2d=True)
            y = np.ascontiguousarray(y.T)
            for drive in args.drives:
                gain = drive + args.ceiling - metrics.sample_peak_dbfs(y)
                out = pedalboard.BrickwallLimiter(ceiling_db=args.ceiling)(y * np.float32(10 ** (gain / 20)), sr)
                cases.append((metrics.true_peak_dbtp(out, sr) - args.ceiling, split, path.name, drive))
    cases.sort(reverse=True)
    for over, split, name, drive in cases[:5]:
        print(f"{split:5s} {name:50s} drive {drive:4.1f} dB: true peak {over:+.2f} dB over the ceiling")
    worst = cases[0][0]
    print(json.dumps({"benchmark": "limiter_true_peak", "data_dir": args.data_dir, "ceiling_db": args.ceiling,
                      "cases": len(cases), "max_overshoot_db": round(worst, 3),
                      "median_overshoot_db": round(float(np.median([c[0] for c in cases])), 3),
                      "ceiling_for_minus_1_dbtp": math.floor((-1.0 - worst) * 10) / 10}))


if __name__ == "__main__":
    main()
