"""benchmarks/paired_runs.py: two runs' model rows on the same items, paired over seeds and items."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _results(path: Path, values: dict[str, float]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    tracks = [{"piece": p, "methods": {"model": {"mrstft": v, "lufs_error": None if v is None else 2 * v}, "loudnorm": {"mrstft": 9.0}}}
              for p, v in values.items()]
    (path / "results.json").write_text(json.dumps({"tracks": tracks}))
    return path


def _pooled(path: Path, seeds: dict[int, Path]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({"per_seed_results": {str(s): str(p / "results.json")
                                                                           for s, p in seeds.items()}}))
    return path


def _run(*args: str) -> dict:
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "paired_runs.py"), *map(str, args)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_paired_difference_over_common_seeds_and_items(tmp_path):
    rng = np.random.default_rng(0)
    items = [f"p{i}" for i in range(6)]
    a_vals = {s: {p: float(v) for p, v in zip(items, rng.uniform(0.2, 0.6, 6))} for s in (0, 1, 2)}
    b_vals = {s: {p: v + 0.1 for p, v in a_vals[s].items()} for s in (0, 1)}  # B: worse by 0.1, seeds 0-1 only
    b_vals[1]["p5"] = None  # an item one seed failed: left out of both
    a = _pooled(tmp_path / "a", {s: _results(tmp_path / f"a{s}", v) for s, v in a_vals.items()})
    b = _pooled(tmp_path / "b", {s: _results(tmp_path / f"b{s}", v) for s, v in b_vals.items()})
    r = _run(a, b, "--names", "A", "B")
    assert r["seeds"] == [0, 1]
    m = r["metrics"]["mrstft"]
    assert m["pairs"] == 10 and m["a_lower"] == 10
    assert m["a_minus_b"] == pytest.approx(-0.1) and m["ci"][0] == pytest.approx(-0.1)
    assert r["metrics"]["lufs_error"]["a_minus_b"] == pytest.approx(-0.2)
    one = _run(tmp_path / "a0", tmp_path / "b0")  # one seed's results count as seed 0
    assert one["seeds"] == [0] and one["metrics"]["mrstft"]["pairs"] == 6
    # another row of B: the model against the same run's loudnorm row (9.0 on every item)
    row = _run(tmp_path / "a0", tmp_path / "a0", "--method-b", "loudnorm")
    assert row["method_b"] == "loudnorm" and list(row["metrics"]) == ["mrstft"]
    assert row["metrics"]["mrstft"]["a_minus_b"] == pytest.approx(np.mean(list(a_vals[0].values())) - 9.0)


def test_missing_results_or_no_common_seed_is_an_error(tmp_path):
    a = _results(tmp_path / "a", {"p": 0.1})
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "paired_runs.py"), str(a), str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "no results.json" in out.stderr
    b = _pooled(tmp_path / "b", {3: _results(tmp_path / "b3", {"p": 0.2})})
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "paired_runs.py"), str(a), str(b)],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "no common seed" in out.stderr
