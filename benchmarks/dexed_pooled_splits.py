"""Paired LSD differences of a Dexed evaluation pooled over the test and validation splits.

``deepafx evaluate`` writes ``details.json`` (per-sound metrics of every method) in
``RUN/eval`` (test split) and ``RUN/eval_valid`` (``--split valid``). This pools
the per-sound six-note LSD of both splits and reports, per domain, the mean
paired difference ``a − b`` with its 95 % percentile-bootstrap interval
(:func:`deepafx.metrics.paired_bootstrap_ci`, seed 0).

Usage:
    python benchmarks/dexed_pooled_splits.py [--run runs/dexed_matching/medium]
        [--pairs voice:retrieval,voice+refine:retrieval+refine,voice:retrieval_corpus]
Prints one line per pair and domain and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/dexed_matching/medium")
    ap.add_argument("--pairs", default="voice:retrieval,voice+refine:retrieval+refine,voice:retrieval_corpus")
    args = ap.parse_args()
    from deepafx.metrics import paired_bootstrap_ci

    run = Path(args.run)
    files = [run / "eval" / "details.json", run / "eval_valid" / "details.json"]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run `deepafx evaluate --checkpoint {run}` "
                         "with and without `--split valid` first")
    details = [json.loads(f.read_text()) for f in files]
    out = []
    for pair in args.pairs.split(","):
        a, b = pair.split(":")
        for dom in ("in_domain", "out_of_domain"):
            da = np.concatenate([[r["lsd"] for r in d[a][dom]] for d in details])
            db = np.concatenate([[r["lsd"] for r in d[b][dom]] for d in details])
            m, lo, hi = paired_bootstrap_ci(da, db, seed=0)
            print(f"{a} − {b}  {dom:14s} n={len(da):3d}  {m:+.2f} dB [{lo:+.2f}, {hi:+.2f}]  "
                  f"a better on {int(np.sum(da < db - 0.005))}", flush=True)
            out.append({"a": a, "b": b, "domain": dom, "n": int(len(da)), "mean_diff_lsd": round(float(m), 3),
                        "ci": [round(float(lo), 3), round(float(hi), 3)]})
    print(json.dumps({"benchmark": "dexed_pooled_splits", "run": str(run), "pairs": out}))


if __name__ == "__main__":
    main()
