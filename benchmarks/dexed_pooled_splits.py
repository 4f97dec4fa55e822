"""Paired LSD differences of a Dexed evaluation pooled over the test and validation splits.

``deepafx evaluate`` writes ``details.json`` (per-sound metrics of every method) in
``RUN/eval`` (test split) and ``RUN/eval_valid`` (``--split valid``). This pools
the per-sound six-note LSD of both splits and reports, per domain, the mean
paired difference ``a − b`` with its 95 % percentile-bootstrap interval, as
``deepafx evaluate`` reports it for one split
(:func:`deepafx.recipes.dexed_matching.evaluate.paired_lsd_differences`, seed 0).
A pooled figure is not a headline result: the validation split is where choices
are made and the test split reports each config once (recipes/dexed_matching/README.md).

Usage:
    python benchmarks/dexed_pooled_splits.py [--run runs/dexed_matching/medium]
        [--pairs voice:retrieval,voice+refine:retrieval+refine,voice:retrieval_corpus]
Prints one line per pair and domain and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/dexed_matching/medium")
    ap.add_argument("--pairs", default="voice:retrieval,voice+refine:retrieval+refine,voice:retrieval_corpus")
    args = ap.parse_args()
    from deepafx.recipes.dexed_matching.evaluate import paired_lsd_differences

    run = Path(args.run)
    files = [run / "eval" / "details.json", run / "eval_valid" / "details.json"]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run `deepafx evaluate --checkpoint {run}` "
                         "with and without `--split valid` first")
    details = [json.loads(f.read_text()) for f in files]
    pairs = [tuple(pair.split(":")) for pair in args.pairs.split(",")]
    names = {m for pair in pairs for m in pair}
    pooled = {m: {dom: [r for d in details for r in d[m][dom]] for dom in details[0][m]} for m in names}
    out = paired_lsd_differences(pooled, pairs, seed=0)
    for c in out:
        print(f"{c['a']} − {c['b']}  {c['domain']:14s} n={c['n']:3d}  {c['mean_diff_lsd']:+.2f} dB "
              f"[{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}]  a better on {c['a_wins']}", flush=True)
    print(json.dumps({"benchmark": "dexed_pooled_splits", "run": str(run), "pairs": out}))


if __name__ == "__main__":
    main()
