"""Results over several training seeds: mean, seed-to-seed spread, per-seed values, paired differences.

One seed on one machine is not a result (Bouthillier et al., "Accounting for
variance in machine learning benchmarks", MLSys 2021; Henderson et al., "Deep
reinforcement learning that matters", AAAI 2018). ``deepafx train --seeds``
trains a config once per seed into ``RUN/seed-<k>/``; ``deepafx evaluate`` on
``RUN`` evaluates every seed and pools the per-item scores here.

The input is, per seed, the recipe's per-item scores (:attr:`Recipe.item_scores
<deepafx.recipes.Recipe>`): ``{method: {metric: {item: value}}}``. For every
method and metric :func:`aggregate` gives

* ``per_seed``: the mean over items of each seed;
* ``mean``: the mean over seeds of those (= the mean over every (seed, item) pair);
* ``seed_std``: the standard deviation of ``per_seed`` across seeds (``ddof=1``; 0 for one seed);
* ``ci``: a percentile bootstrap interval of ``mean`` that resamples *items* (each item
  keeps all its seeds), i.e. the uncertainty from the choice of test items
  (:func:`deepafx.metrics.bootstrap_ci` over the items' seed-means; Efron &
  Tibshirani 1993, ch. 13);

and for every method other than the reference (the trained model), the paired
difference ``reference − method`` over (seed, item) pairs: its mean, per-seed
means, bootstrap interval (items resampled, as above) and the number of pairs
where the reference is lower.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

#: Per-seed scores: ``{seed: {method: {metric: {item: value}}}}``.
SeedScores = Mapping[int, Mapping[str, Mapping[str, Mapping[str, float | None]]]]


def track_scores(results: Mapping[str, Any] | str | Path, split: str,
                 metrics: tuple[str, ...]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per-item scores of results shaped ``{"tracks": [{"piece", "methods": {method: {metric: value}}}]}``.

    The layout written by the mastering and amp-emulation evaluators.

    Args:
        results: A recipe's ``results.json`` content, or the evaluation folder holding it.
        split: The evaluated split (unused: tracks are the split's).
        metrics: Metric keys to take.

    Returns:
        ``{method: {metric: {piece: value or None}}}``.

    Raises:
        ValueError: no ``tracks`` in ``results``.
    """
    if isinstance(results, (str, Path)):
        results = json.loads((Path(results) / "results.json").read_text())
    tracks = results.get("tracks")
    if not tracks:
        raise ValueError("results hold no per-track scores ('tracks'): cannot pool them over seeds")
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for t in tracks:
        for method, row in t["methods"].items():
            for metric in metrics:
                if metric in row:
                    out.setdefault(method, {}).setdefault(metric, {})[str(t["piece"])] = row[metric]
    return out


def aggregate(per_seed: SeedScores, reference: str = "model", resamples: int = 2000, level: float = 0.95,
              bootstrap_seed: int = 0) -> dict[str, Any]:
    """Pool per-item scores of several seeds (see the module docstring).

    Args:
        per_seed: ``{seed: {method: {metric: {item: value}}}}``; every seed must score the
            same items for a method and metric (an item missing or ``None`` in any seed is
            left out of that method and metric for all seeds, and counted).
        reference: The method the paired differences are taken against (``reference − other``).
        resamples, level, bootstrap_seed: Percentile bootstrap settings.

    Returns:
        ``{"seeds": [...], "reference": str, "methods": {method: {metric: {"mean", "seed_std",
        "per_seed": {seed: mean}, "ci": [low, high], "num_items", "dropped_items"}}},
        "paired": {method: {metric: {"mean", "per_seed", "ci", "reference_lower", "pairs"}}}}``.

    Raises:
        ValueError: no seeds.
    """
    from deepafx.metrics import bootstrap_ci

    seeds = sorted(int(s) for s in per_seed)
    if not seeds:
        raise ValueError("no seeds to aggregate")
    methods: list[str] = []
    for s in seeds:
        methods += [m for m in per_seed[s] if m not in methods]

    def matrix(method: str, metric: str) -> tuple[list[str], np.ndarray, int]:
        """Items scored (finite) by every seed, and the (seeds, items) values."""
        tables = [per_seed[s].get(method, {}).get(metric, {}) for s in seeds]
        items = sorted(set().union(*[set(t) for t in tables]))
        keep = [i for i in items if all(_finite(t.get(i)) for t in tables)]
        return keep, np.array([[float(t[i]) for i in keep] for t in tables], dtype=np.float64).reshape(len(seeds), -1), \
            len(items) - len(keep)

    out: dict[str, Any] = {"seeds": seeds, "reference": reference, "methods": {}, "paired": {},
                           "bootstrap": {"resamples": int(resamples), "level": float(level), "seed": int(bootstrap_seed),
                                         "unit": "items (each with all its seeds)"}}
    scored: dict[tuple[str, str], tuple[list[str], np.ndarray]] = {}  # (method, metric) → kept items, values
    for m in methods:
        metrics = []
        for s in seeds:
            metrics += [k for k in per_seed[s].get(m, {}) if k not in metrics]
        for metric in metrics:
            items, v, dropped = matrix(m, metric)
            if not items:
                continue
            scored[m, metric] = items, v
            seed_means = v.mean(axis=1)
            lo, hi = bootstrap_ci(v.mean(axis=0), resamples, bootstrap_seed, level)
            out["methods"].setdefault(m, {})[metric] = {
                "mean": float(seed_means.mean()),
                "seed_std": _seed_std(seed_means),
                "per_seed": {str(s): float(x) for s, x in zip(seeds, seed_means)},
                "ci": [lo, hi], "num_items": len(items), "dropped_items": dropped,
            }
    for (m, metric), (items_m, values_m) in scored.items():
        if m == reference or (reference, metric) not in scored:
            continue
        items_r, values_r = scored[reference, metric]
        common = sorted(set(items_r) & set(items_m))
        if not common:
            continue
        col_r, col_m = {i: k for k, i in enumerate(items_r)}, {i: k for k, i in enumerate(items_m)}
        d = values_r[:, [col_r[i] for i in common]] - values_m[:, [col_m[i] for i in common]]
        lo, hi = bootstrap_ci(d.mean(axis=0), resamples, bootstrap_seed, level)
        out["paired"].setdefault(m, {})[metric] = {
            "mean": float(d.mean()), "per_seed": {str(s): float(x) for s, x in zip(seeds, d.mean(axis=1))},
            "ci": [lo, hi], "reference_lower": int((d < 0).sum()), "pairs": int(d.size),
        }
    return out


def markdown(agg: Mapping[str, Any], metrics: Mapping[str, str] | None = None, title: str = "",
             labels: Mapping[str, str] | None = None) -> str:
    """The pooled results as Markdown: one table of mean ± seed std [CI], per-seed values, paired differences.

    Args:
        agg: :func:`aggregate`'s result.
        metrics: Metric key → display name (and order); default every metric found.
        title: A heading line (omitted when empty).
        labels: Method key → the label shown (default the key).
    """
    labels = dict(labels or {})
    seeds = agg["seeds"]
    names = dict(metrics) if metrics else {}
    for cells in agg["methods"].values():
        for k in cells:
            names.setdefault(k, k)
    keys = [k for k in names if any(k in c for c in agg["methods"].values())]
    pct = int(round(100 * agg["bootstrap"]["level"]))
    lines = [f"## {title}", ""] if title else []
    lines += [f"Seeds {', '.join(map(str, seeds))}: mean over seeds ± seed-to-seed standard deviation "
              f"[{pct} % bootstrap interval over items]; per-seed means below.", ""]
    lines.append("| method | " + " | ".join(names[k] for k in keys) + " |")
    lines.append("|---|" + "---|" * len(keys))
    for m, cells in agg["methods"].items():
        row = []
        for k in keys:
            c = cells.get(k)
            row.append("–" if c is None else f"{_fmt(c['mean'])} ± {_fmt(c['seed_std'])} [{_fmt(c['ci'][0])}, {_fmt(c['ci'][1])}]")
        lines.append(f"| {labels.get(m, m)} | " + " | ".join(row) + " |")
    lines += ["", "Per seed (mean over items):", ""]
    lines.append("| method | metric | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    lines.append("|---|---|" + "---|" * len(seeds))
    for m, cells in agg["methods"].items():
        for k in keys:
            if k in cells:
                lines.append(f"| {labels.get(m, m)} | {names[k]} | "
                             + " | ".join(_fmt(cells[k]["per_seed"][str(s)]) for s in seeds) + " |")
    lines += paired_lines(agg, names, labels)
    return "\n".join(lines) + "\n"


def paired_lines(agg: Mapping[str, Any], metrics: Mapping[str, str] | None = None,
                 labels: Mapping[str, str] | None = None) -> list[str]:
    """Markdown lines of :func:`aggregate`'s paired differences ``reference − method`` (none when there are none).

    Args:
        agg: :func:`aggregate`'s result.
        metrics: Metric key → display name (and order); default every metric found.
        labels: Method key → the label shown (default the key).
    """
    if not agg["paired"]:
        return []
    labels = dict(labels or {})
    names = dict(metrics) if metrics else {}
    for cells in agg["paired"].values():
        for k in cells:
            names.setdefault(k, k)
    seeds, ref = agg["seeds"], agg["reference"]
    pct = int(round(100 * agg["bootstrap"]["level"]))
    lines = ["", f"Paired differences {labels.get(ref, ref)} − method over (seed, item) pairs: mean [{pct} % interval, "
                 f"items resampled]; pairs where {labels.get(ref, ref)} is lower; per-seed means.", ""]
    lines.append("| method | metric | mean difference | lower | per seed |")
    lines.append("|---|---|---|---|---|")
    for m, cells in agg["paired"].items():
        for k in names:
            if k in cells:
                c = cells[k]
                lines.append(f"| {labels.get(m, m)} | {names[k]} | {_fmt(c['mean'], sign=True)} [{_fmt(c['ci'][0], sign=True)}, "
                             f"{_fmt(c['ci'][1], sign=True)}] | {c['reference_lower']}/{c['pairs']} | "
                             + ", ".join(_fmt(c["per_seed"][str(s)], sign=True) for s in seeds) + " |")
    return lines


def _seed_std(seed_means: np.ndarray) -> float:
    """Standard deviation across seeds (``ddof=1``); exactly 0 when every seed gave the same value."""
    if len(seed_means) < 2 or np.all(seed_means == seed_means[0]):
        return 0.0
    return float(seed_means.std(ddof=1))


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v))


def _fmt(v: float, sign: bool = False) -> str:
    """Three significant digits (whole numbers from 1000 on); ``+`` before positive differences."""
    text = f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return ("+" + text) if sign and v > 0 else text


__all__ = ["SeedScores", "aggregate", "markdown", "track_scores"]
