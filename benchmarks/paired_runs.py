"""Two trained configs on the same evaluation items, paired: is A better than B?

``deepafx evaluate`` pairs the model with the baselines of one run. This compares the
``model`` rows of two runs evaluated on the same items (same data folder, same split),
e.g. ``mastering/medium`` against ``mastering/medium_both``, pooled over their common
seeds with :func:`deepafx.seeds.aggregate`: per metric the mean of A − B over (seed, item)
pairs, its per-seed means, a 95 % percentile bootstrap interval resampling items (each with
all its seeds), and how many pairs A wins. An evaluation of one seed (``results.json`` with
``tracks``) counts as seed 0.

Usage:
    python benchmarks/paired_runs.py EVAL_A EVAL_B [--method model] [--method-b ROW] [--names A B]

``--method-b`` compares another row of B (e.g. the same run's ``neural_amp``: pass one folder twice).

``EVAL_A``/``EVAL_B``: evaluation folders holding ``results.json`` (pooled over seeds, with
``per_seed_results``, or one seed's). Prints a Markdown table, then one JSON line.

Raises (exits with the message): a missing ``results.json``, no common seed, or no common
item for a metric.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deepafx.seeds import aggregate, track_scores

#: Metrics compared when both runs score them (mastering's, then amp emulation's).
METRICS = ("mfcc_cosine", "mrstft", "lufs_error", "true_peak_dbtp", "esr", "esr_pre")


def per_seed_results(eval_dir: Path) -> dict[int, dict]:
    """``{seed: results}`` of an evaluation folder (one seed's results count as seed 0)."""
    path = eval_dir / "results.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no results.json (run deepafx evaluate first)")
    results = json.loads(path.read_text())
    if "tracks" in results:
        return {0: results}
    out = {}
    for seed, p in results["per_seed_results"].items():
        p = Path(p)
        for cand in (p, eval_dir / p, Path.cwd() / p):
            if cand.is_file():
                out[int(seed)] = json.loads(cand.read_text())
                break
        else:
            raise SystemExit(f"{eval_dir}: seed {seed}'s results {p} not found")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eval_a", type=Path)
    ap.add_argument("eval_b", type=Path)
    ap.add_argument("--method", default="model", help="row compared in both (default model)")
    ap.add_argument("--method-b", default=None, help="row of B when it differs (e.g. neural_amp, oracle_esr_300)")
    ap.add_argument("--names", nargs=2, default=None, metavar=("A", "B"))
    args = ap.parse_args(argv)
    name_a, name_b = args.names or (str(args.eval_a), str(args.eval_b))
    a, b = per_seed_results(args.eval_a), per_seed_results(args.eval_b)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise SystemExit(f"no common seed: {sorted(a)} against {sorted(b)}")
    pooled = {}
    for s in seeds:
        sa = track_scores(a[s], "", METRICS).get(args.method, {})
        sb = track_scores(b[s], "", METRICS).get(args.method_b or args.method, {})
        pooled[s] = {"A": sa, "B": sb}
    agg = aggregate(pooled, reference="A")
    rows = args.method if not args.method_b else f"{args.method} against {args.method_b}"
    lines = [f"A = {name_a}, B = {name_b}; seeds {seeds}; row {rows!r}", "",
             "| metric | A | B | A − B [95 % CI] | A lower in |", "|---|---:|---:|---:|---:|"]
    out = {}
    for metric in METRICS:
        pa, pb = agg["methods"].get("A", {}).get(metric), agg["methods"].get("B", {}).get(metric)
        d = agg["paired"].get("B", {}).get(metric)
        if not (pa and pb and d):
            continue
        out[metric] = {"a": pa["mean"], "b": pb["mean"], "a_minus_b": d["mean"], "ci": d["ci"],
                       "per_seed": d["per_seed"], "a_lower": d["reference_lower"], "pairs": d["pairs"]}
        lines.append(f"| {metric} | {pa['mean']:.4g} | {pb['mean']:.4g} | {d['mean']:+.4g} "
                     f"[{d['ci'][0]:+.4g}, {d['ci'][1]:+.4g}] | {d['reference_lower']}/{d['pairs']} |")
    if not out:
        raise SystemExit("no metric scored by both on common items")
    print("\n".join(lines))
    result = {"benchmark": "paired_runs", "a": name_a, "b": name_b, "method": args.method,
              "method_b": args.method_b or args.method, "seeds": seeds,
              "metrics": out}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
