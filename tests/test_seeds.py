"""Runs over seeds: pooled statistics (hand-computed), and `deepafx train --seeds` / `evaluate` end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deepafx.cli import main
from deepafx.commands.train import parse_seeds
from deepafx.metrics import bootstrap_ci
from deepafx.recipes import get_recipe
from deepafx.seeds import aggregate, markdown, track_scores

QUICK = Path(__file__).resolve().parent.parent / "recipes" / "mastering" / "quick_scores.yaml"


def test_parse_seeds():
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("0,4,7") == [0, 4, 7]
    assert parse_seeds("5,") == [5]
    for bad in ("0", "x", "1,1", "-1,2", ""):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_aggregate_matches_hand_computation():
    # two seeds, three items; method "b" is a baseline, item "z" has a missing value for "b" in seed 1
    per_seed = {
        0: {"model": {"m": {"x": 1.0, "y": 2.0, "z": 3.0}}, "b": {"m": {"x": 2.0, "y": 2.0, "z": 5.0}}},
        1: {"model": {"m": {"x": 3.0, "y": 4.0, "z": 5.0}}, "b": {"m": {"x": 2.0, "y": 2.0, "z": None}}},
    }
    agg = aggregate(per_seed, resamples=500)
    model = agg["methods"]["model"]["m"]
    assert model["per_seed"] == {"0": 2.0, "1": 4.0}
    assert model["mean"] == 3.0 and model["seed_std"] == pytest.approx(np.std([2.0, 4.0], ddof=1))
    assert model["num_items"] == 3 and model["dropped_items"] == 0
    # the interval resamples items, each with the mean of its seeds: (2, 3, 4)
    assert tuple(model["ci"]) == bootstrap_ci([2.0, 3.0, 4.0], 500, 0, 0.95)
    base = agg["methods"]["b"]["m"]
    assert base["num_items"] == 2 and base["dropped_items"] == 1 and base["per_seed"] == {"0": 2.0, "1": 2.0}
    assert base["seed_std"] == 0.0
    # paired model − b over (seed, item) on the items both score: x, y → d = (-1, 0), (1, 2)
    paired = agg["paired"]["b"]["m"]
    assert paired["mean"] == pytest.approx(0.5) and paired["per_seed"] == {"0": -0.5, "1": 1.5}
    assert paired["pairs"] == 4 and paired["reference_lower"] == 1
    assert tuple(paired["ci"]) == bootstrap_ci([0.0, 1.0], 500, 0, 0.95)
    text = markdown(agg, {"m": "M ↓"})
    assert "| model | 3 ± 1.41 [" in text and "| b | 2 ± 0 [2, 2] |" in text
    assert "| b | M ↓ | +0.5 [" in text and "| 1/4 | -0.5, +1.5 |" in text
    with pytest.raises(ValueError):
        aggregate({})


def test_track_scores_reads_every_method_and_piece():
    results = {"tracks": [{"piece": "p1", "methods": {"model": {"a": 1.0, "b": 2.0}, "x": {"a": 3.0}}},
                          {"piece": "p2", "methods": {"model": {"a": 5.0, "b": None}, "x": {"a": 4.0}}}]}
    assert track_scores(results, "test", ("a", "b")) == {"model": {"a": {"p1": 1.0, "p2": 5.0}, "b": {"p1": 2.0, "p2": None}},
                                                         "x": {"a": {"p1": 3.0, "p2": 4.0}}}
    with pytest.raises(ValueError, match="tracks"):
        track_scores({"test": {}}, "test", ("a",))


def _cli(*args) -> int:
    return main([str(a) for a in args])


def test_train_over_seeds_resumes_and_evaluate_pools(tmp_path, capsys):
    """Seeds stopped part way continue exactly, a new seed starts, finished ones are kept; evaluate pools them."""
    tiny = get_recipe("mastering").tiny({})
    sets = [a for o in tiny for a in ("--set", o)]
    data = tmp_path / "data"
    # reference: seed 1 alone, uninterrupted
    assert _cli("train", "--config", QUICK, "--run-dir", tmp_path / "ref", "--data-dir", data, *sets, "--seeds", "1,") == 0
    # seeds 0 and 1 stopped at the end of their first SPSA epoch (2 + 3 steps), then resumed with a third seed added
    run = tmp_path / "run"
    assert _cli("train", "--config", QUICK, "--run-dir", run, "--data-dir", data, *sets, "--set", "train.max_steps=5",
                "--seeds", "2") == 0
    assert [torch.load(run / f"seed-{s}" / "checkpoints" / "last.pt", weights_only=False)["state"]["global_step"]
            for s in (0, 1)] == [5, 5]
    # a branch of each stopped seed (--branch-from, its last.pt) with the same config finishes as the uninterrupted run
    br = tmp_path / "branch"
    assert _cli("train", "--config", QUICK, "--run-dir", br, "--data-dir", data, *sets, "--seeds", "2",
                "--branch-from", run, "--branch-stage", "last") == 0
    for s in (0, 1):
        info = json.loads((br / f"seed-{s}" / "branch.json").read_text())
        assert info["from"] == str(run / f"seed-{s}" / "checkpoints" / "last.pt") and info["global_step"] == 5
        assert info["changed"] == {"train.max_steps": [5, 0]}
    branched = torch.load(br / "seed-1" / "checkpoints" / "last.pt", weights_only=False)
    assert _cli("train", "--config", QUICK, "--run-dir", run, "--data-dir", data, *sets, "--seeds", "3", "--resume") == 0
    ref = torch.load(tmp_path / "ref" / "seed-1" / "checkpoints" / "last.pt", weights_only=False)
    got = torch.load(run / "seed-1" / "checkpoints" / "last.pt", weights_only=False)
    assert got["state"]["finished"] and all(torch.equal(ref["model"][k], got["model"][k]) for k in ref["model"])
    assert got["config"]["train"]["seed"] == 1
    assert all(torch.equal(ref["model"][k], branched["model"][k]) for k in ref["model"])
    seed0 = torch.load(run / "seed-0" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert not all(torch.equal(seed0[k], got["model"][k]) for k in seed0)  # another seed, another model
    before = (run / "seed-2" / "checkpoints" / "last.pt").read_bytes()
    capsys.readouterr()
    assert _cli("train", "--config", QUICK, "--run-dir", run, "--data-dir", data, *sets, "--seeds", "3", "--resume") == 0
    assert capsys.readouterr().out.count("finished earlier, kept") == 3
    assert (run / "seed-2" / "checkpoints" / "last.pt").read_bytes() == before

    assert _cli("evaluate", "--config", QUICK, "--checkpoint", run, "--data-dir", data, *sets) == 0
    pooled = json.loads((run / "eval" / "results.json").read_text())
    assert pooled["seeds"] == [0, 1, 2] and pooled["reference"] == "model"
    for s in (0, 1, 2):
        one = json.loads((run / f"seed-{s}" / "eval" / "results.json").read_text())
        for metric in ("mfcc_cosine", "lufs_error"):
            assert pooled["methods"]["model"][metric]["per_seed"][str(s)] == pytest.approx(one["test"]["model"][metric])
    cell = pooled["methods"]["model"]["mfcc_cosine"]
    values = list(cell["per_seed"].values())
    assert cell["mean"] == pytest.approx(np.mean(values)) and cell["seed_std"] == pytest.approx(np.std(values, ddof=1))
    assert cell["seed_std"] > 0  # the seeds gave different models
    assert set(pooled["paired"]) >= {"unprocessed", "default"}
    md = (run / "eval" / "results.md").read_text()
    assert "Seeds 0, 1, 2" in md and "Paired differences model − method" in md
    # pooled per group too (an excerpt's album; a score piece's corpus source)
    groups = {t["piece"]: t["album"] for t in one["tracks"]}
    assert set(pooled["groups"]) == set(groups.values()) and all(groups.values())
    for group, agg in pooled["groups"].items():
        assert agg["methods"]["model"]["mfcc_cosine"]["num_items"] == sum(g == group for g in groups.values())
        assert f"## {group} (" in md
    # a second evaluate keeps every seed's results (newer than its checkpoints) and pools the same numbers
    capsys.readouterr()
    assert _cli("evaluate", "--config", QUICK, "--checkpoint", run, "--data-dir", data, *sets) == 0
    assert capsys.readouterr().out.count("results kept from") == 3
    assert json.loads((run / "eval" / "results.json").read_text()) == pooled


def test_pooled_pairs_of_a_recipe_are_pooled_over_seeds(tmp_path, capsys):
    """Dexed's pooled_pairs (a stage against its start): a − b over (seed, sound), from each seed's details.json."""
    from deepafx.commands.evaluate import evaluate_seeds

    recipe = get_recipe("dexed_matching")
    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    diffs, gains = [], []
    for s in range(3):
        ck = run / f"seed-{s}" / "checkpoints"
        ck.mkdir(parents=True)
        (ck / "last.pt").write_bytes(b"")
        details = {}
        ploss = rng.uniform(15, 25, 5)
        synth = ploss - rng.uniform(-1, 3, 5)
        diffs.append(synth - ploss)
        refined = ploss - rng.uniform(0, 2, 5)  # refinement keeps its start when nothing is lower
        gains.append(refined - ploss)
        for m, v in (("ploss", ploss), ("synth", synth), ("real", synth + 1), ("retrieval", ploss + 0.5),
                     ("ploss+refine", refined)):
            details[m] = {"in_domain": [{"lsd": float(x), "mss": 1.0, "mfcc_l1": 1.0, "novelty_bin": "low"} for x in v],
                          "out_of_domain": [{"lsd": float(x), "mss": 1.0, "mfcc_l1": 1.0} for x in v]}
        ev = run / f"seed-{s}" / "eval_valid"
        ev.mkdir()
        (ev / "details.json").write_text(json.dumps(details))
        (ev / "results.json").write_text("{}")
    assert evaluate_seeds(recipe, None, run, run / "eval_valid", "valid", tmp_path / "data") == 0
    pooled = json.loads((run / "eval_valid" / "results.json").read_text())
    cell = pooled["pairs"]["synth - ploss"]["lsd_in_domain"]
    assert cell["mean"] == pytest.approx(np.mean(diffs)) and cell["pairs"] == 15
    assert cell["reference_lower"] == int((np.array(diffs) < 0).sum())
    assert cell["per_seed"] == {str(s): pytest.approx(float(np.mean(d))) for s, d in enumerate(diffs)}
    assert "lsd_in_domain_novelty_low" in pooled["pairs"]["synth - ploss"]  # per novelty tercile too
    assert pooled["pairs"]["real - synth"]["lsd_out_of_domain"]["mean"] == pytest.approx(1.0)
    assert "voice - retrieval" not in pooled["pairs"]  # no seed scored a voice row
    # a refined network against its start
    assert pooled["pairs"]["ploss+refine - ploss"]["lsd_in_domain"]["mean"] == pytest.approx(np.mean(gains))
    assert "synth+refine - synth" not in pooled["pairs"]
    assert "Paired differences synth − method" in (run / "eval_valid" / "results.md").read_text()
