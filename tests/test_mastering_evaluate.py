"""`deepafx evaluate` for the mastering recipe: its CMA-ES oracle, the matchering baseline, bootstrap
intervals, targets and the summary figure (real chain, real rendered music)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import music_like
from test_mastering_process import save_tiny_checkpoint

from deepafx.chain import chain
from deepafx.cli import main
from deepafx.losses import MultiResolutionSTFTLoss
from deepafx.recipes.mastering.evaluate import (
    METHODS, EvaluateConfig, _summarize, bootstrap_ci, bootstrap_ratio_ci, matchering_master, oracle_rows,
    paired_bootstrap_ci, results_markdown, short_term_loudness, track_metrics, align_to_target,
)
from deepafx.automation.oracle import FAILED_RENDER_SCORE, CmaesOracle, OracleObjective, middle_excerpt
from deepafx.metrics import lufs, mrstft_distance

SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
DATA_OVERRIDES = [
    "data.num_pieces=4", "data.test_fraction=0.4", "data.valid_fraction=0.1",
    "data.max_piece_seconds=3.0", "data.min_piece_seconds=3.0",
]
# Two oracle budgets with population 8: 13 = defaults + 1 generation + a partial one of 4; 17 = defaults + 2.
EVAL_OVERRIDES = [
    "evaluate.cmaes_renders=[13, 17]", "evaluate.cmaes_popsize=8", "evaluate.excerpt_seconds=2.0",
    "evaluate.preroll_seconds=0.5", "evaluate.num_examples=1", "render.num_workers=2",
]


def test_align_to_target_recovers_a_known_delay(rng):
    x = music_like(rng, samples=22050)
    delayed = np.concatenate([np.zeros((2, 37), np.float32), x[:, :-37]], axis=1)
    out, tgt, lag = align_to_target(delayed, x, 44100, max_delay_ms=5.0)
    assert lag == 37
    np.testing.assert_array_equal(out, tgt)
    m = track_metrics(delayed, x, 44100, max_delay_ms=5.0)
    assert m["lag_samples"] == 37 and m["mrstft"] == pytest.approx(0.0, abs=1e-9)
    assert m["mfcc_cosine"] == pytest.approx(0.0, abs=1e-9) and m["lufs_error"] < 0.05  # 37 samples of 0.5 s are missing
    # Without alignment room the same pair is scored as different.
    assert track_metrics(delayed, x, 44100, max_delay_ms=0.0)["mrstft"] > 0.01


def test_oracle_objective_is_the_mrstft_loss_plus_loudness(rng):
    target = music_like(rng, samples=44100)
    outs = [0.5 * target, music_like(np.random.default_rng(1), samples=44100)]
    obj = OracleObjective(target, 44100, loudness_weight=0.0, fft_sizes=(2048, 512, 128), overlap=0.5)
    ref = MultiResolutionSTFTLoss((2048, 512, 128), overlap=0.5, reduction="none")(
        torch.from_numpy(np.stack(outs)), torch.from_numpy(target)[None].expand(2, -1, -1)
    ).numpy() / 3
    np.testing.assert_allclose(obj(outs), ref, rtol=1e-5)
    # The MR-STFT metric (6 sizes, 75 % overlap) ranks the pair the same way.
    assert (obj(outs)[0] < obj(outs)[1]) == (mrstft_distance(outs[0], target) < mrstft_distance(outs[1], target))
    loud = OracleObjective(target, 44100, loudness_weight=0.1)
    # -6.02 dB of gain is a 6.02 LU loudness error.
    assert loud([0.5 * target])[0] - obj([0.5 * target])[0] == pytest.approx(0.602, abs=0.01)
    assert middle_excerpt(100, 40, 10) == (20, 30, 70)
    assert middle_excerpt(100, 400, 10) == (0, 0, 100)


def test_oracle_finds_a_known_setting_within_budget(rng):
    spec = chain({"backend": "testing.waveshaper", "name": "ws"}, sample_rate=44100, name="ws")
    x = music_like(rng, samples=44100)
    table = spec.param_table
    truth = table.normalize([3.0, 0.1, 0.8, 7.0])
    with CmaesOracle(spec, renders=29, popsize=8, excerpt_seconds=0.5, preroll_seconds=0.0, num_workers=1,
                     seed=3) as oracle:
        target = oracle.render_track(x, truth)
        res = oracle.fit(x, target)
        again = oracle.fit(x, target)
    assert res.renders == 29 and res.generations == 3 and res.failed_renders == 0  # 1 + 3 x 8 + 4
    assert len(res.history) == 5 and all(b <= a for a, b in zip(res.history, res.history[1:]))
    assert res.objective < 0.5 * res.default_objective
    assert res.objective == again.objective  # seeded
    assert np.all((res.params >= 0) & (res.params <= 1))


def test_oracle_survives_failing_renders(rng):
    spec = chain({"backend": "testing.fault", "name": "f", "options": {"mode": "raise"}},
                 {"backend": "testing.waveshaper", "name": "ws"}, sample_rate=44100)
    x = music_like(rng, samples=44100)
    with CmaesOracle(spec, renders=5, popsize=2, excerpt_seconds=1.0, num_workers=1) as oracle:
        res = oracle.fit(x, x)
    assert res.renders == 5 and res.failed_renders == 5
    assert res.objective == FAILED_RENDER_SCORE and res.default_objective == FAILED_RENDER_SCORE
    one = chain({"backend": "testing.fault", "name": "f"}, sample_rate=44100)
    with pytest.raises(ValueError, match="at least 2 parameters"):
        CmaesOracle(one, renders=5)


@pytest.fixture(scope="module")
def tiny_evaluation(tmp_path_factory):
    """One `deepafx evaluate` run on a tiny rendered dataset with an untrained tiny model, shared by the tests below."""
    if not os.path.exists(SOUNDFONT):
        pytest.skip(f"General MIDI SoundFont {SOUNDFONT} absent (apt-get install fluid-soundfont-gm)")
    tmp_path = tmp_path_factory.mktemp("tiny_eval")
    run_dir = tmp_path / "run"
    save_tiny_checkpoint(run_dir / "best.pt", spread=False)
    out = tmp_path / "eval"
    overrides = [a for o in DATA_OVERRIDES + EVAL_OVERRIDES for a in ("--set", o)]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(["evaluate", "--config", "recipes/mastering/quick_scores.yaml", "--checkpoint", str(run_dir),
                   "--out", str(out), "--data-dir", str(tmp_path / "data"), *overrides])
    assert rc == 0
    return {"out": out, "data": tmp_path / "data", "printed": stdout.getvalue(),
            "results": json.loads((out / "results.json").read_text())}


ROWS = ["unprocessed", "default", "loudnorm", "matchering", "oracle_cmaes_13", "oracle_cmaes_17", "model",
        "model_loudness"]


def test_evaluate_cli_on_a_tiny_dataset(tiny_evaluation):
    out, res = tiny_evaluation["out"], tiny_evaluation["results"]
    assert set(res) == {"test", "tracks", "settings", "paired", "targets", "albums", "saturation"}
    assert set(res["albums"]) == {t["album"] for t in res["tracks"]}  # score pieces: their corpus source
    assert len(res["saturation"]["tracks"]) == 2
    assert res["settings"]["methods"] == ROWS
    # Every row, plus `oracle_cmaes` repeating the largest budget's row under the single-budget name.
    assert set(res["test"]) == set(ROWS) | {"oracle_cmaes"} and set(METHODS) <= set(res["test"])
    assert res["test"]["oracle_cmaes"] == res["test"]["oracle_cmaes_17"]
    assert len(res["tracks"]) == 2 and res["settings"]["num_tracks"] == 2
    for m in ROWS:
        row = res["test"][m]
        for key in ("mfcc_cosine", "mrstft", "lufs_error", "true_peak_dbtp", "true_peak_dbtp_max"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (m, key)
        assert row["num_tracks"] == 2 and row["failed_tracks"] == 0
        # The mean over pieces, its interval and the maximum true peak agree with the per-track values.
        for key in ("mfcc_cosine", "mrstft", "lufs_error", "true_peak_dbtp"):
            vals = [t["methods"][m][key] for t in res["tracks"]]
            assert row[key] == pytest.approx(np.mean(vals), rel=1e-12)
            lo, hi = row[f"{key}_ci"]
            assert min(vals) <= lo <= row[key] <= hi <= max(vals), (m, key)
        assert row["true_peak_dbtp_max"] == max(t["methods"][m]["true_peak_dbtp"] for t in res["tracks"])
        if m == "unprocessed":
            assert row["seconds_per_track"] is None and row["realtime_factor"] is None
        else:
            assert row["seconds_per_track"] > 0 and row["realtime_factor"] > 0
    for t in res["tracks"]:
        o = t["oracle"]
        assert o == t["oracles"]["oracle_cmaes_17"]
        assert o["renders"] == 17 and o["objective"] <= o["default_objective"]
        assert o["renders_per_second"] > 0
        assert set(o["values"]) == set(res["settings"]["param_names"])
        # The oracle, fitted against the target, beats the unprocessed input on MR-STFT on every track.
        assert t["methods"]["oracle_cmaes_17"]["mrstft"] < t["methods"]["unprocessed"]["mrstft"]
        assert abs(t["methods"]["oracle_cmaes_17"]["lag_samples"]) <= round(0.020 * 44100)
        assert t["methods"]["unprocessed"]["lag_samples"] == 0
    assert res["test"]["oracle_cmaes"]["mrstft"] < res["test"]["unprocessed"]["mrstft"]
    # The untrained model (≈ the default parameters) matches the default chain closely.
    assert res["test"]["model"]["lufs_error"] == pytest.approx(res["test"]["default"]["lufs_error"], abs=1.0)
    md = (out / "results.md").read_text()
    assert "| method | MFCC cosine ↓ | MR-STFT ↓ | LUFS error [LU] ↓ | true peak [dBTP] |" in md
    assert all(f"| {m} |" in md for m in ROWS if m != "model") and "| **model** |" in md
    assert "| oracle_cmaes |" not in md  # the repeated row is shown once
    assert md in tiny_evaluation["printed"]
    piece = res["tracks"][0]["piece"]
    assert sorted(p.name for p in (out / "examples" / piece).iterdir()) == sorted(
        [f"{m}.wav" for m in ROWS] + ["target.wav"]
    )


def test_oracle_budgets_give_one_row_each_and_more_renders_never_lose(tiny_evaluation):
    """Budgets are separate CMA-ES runs with one seed: the larger one replays the smaller one's full
    generations exactly, so it is never worse than the smaller run's best after those generations. Only a
    candidate of the smaller run's last, partial generation (evaluated, never told to CMA-ES) is absent from
    the larger run, so the larger budget's objective can exceed the smaller's when that candidate won."""
    res = tiny_evaluation["results"]
    costs = res["settings"]["oracle"]["budgets"]
    assert {k: v["renders"] for k, v in costs.items()} == {"oracle_cmaes_13": 13, "oracle_cmaes_17": 17}
    assert all(v["mean_seconds_per_track"] > 0 and v["mean_renders_per_second"] > 0 for v in costs.values())
    assert res["settings"]["oracle"]["alias"] == {"oracle_cmaes": "oracle_cmaes_17"}
    for t in res["tracks"]:
        small, large = t["oracles"]["oracle_cmaes_13"], t["oracles"]["oracle_cmaes_17"]
        assert (small["renders"], small["generations"]) == (13, 1) and (large["renders"], large["generations"]) == (17, 2)
        assert small["default_objective"] == large["default_objective"]
        assert large["history"][1] == small["history"][1]  # the same first generation, bit for bit
        assert large["objective"] <= small["history"][small["generations"]]
        assert large["objective"] <= large["default_objective"] and small["objective"] <= small["default_objective"]


def test_model_loudness_row_meets_the_loudness_target_with_the_models_own_automation(tiny_evaluation):
    """quick.yaml sets evaluate.loudness_lufs = -14 (the engineer's loudness): the row model_loudness is the
    model's render with only gain.gain_db offset, so its loudness error is the target's own distance from
    -14 LUFS (within the 0.1 LU tolerance) on every piece where it was reached, and its other renders'
    cost is counted in its time."""
    res = tiny_evaluation["results"]
    ld = res["settings"]["loudness"]
    assert ld["target_lufs"] == -14.0 and ld["param"] == "gain.gain_db" and ld["reached"] == len(res["tracks"])
    for t in res["tracks"]:
        info, m = t["model_loudness"], t["methods"]
        assert info["reached"] and abs(info["lufs"] + 14) <= 0.1 and info["renders"] >= 1
        assert m["model_loudness"]["lufs_error"] <= abs(t["target_lufs"] + 14) + 0.1 + 1e-9
        assert m["model_loudness"]["seconds"] > m["model"]["seconds"]
    assert res["test"]["model_loudness"]["lufs_error"] < res["test"]["model"]["lufs_error"]
    assert set(res["paired"]) >= {"model_loudness_minus_model", "model_loudness_minus_matchering"}
    md = (tiny_evaluation["out"] / "results.md").read_text()
    assert "model_loudness: the model's automation with `gain.gain_db` offset" in md


def test_oracle_rows_for_one_or_several_budgets():
    assert oracle_rows(60) == [("oracle_cmaes", 60)]
    assert oracle_rows([1000, 60, 300]) == [("oracle_cmaes_60", 60), ("oracle_cmaes_300", 300),
                                            ("oracle_cmaes_1000", 1000)]
    assert oracle_rows([60]) == [("oracle_cmaes_60", 60)]
    for bad, msg in [([], "empty list"), ([60, 60], "twice"), (0, ">= 1"), ([60, 2.5], "integer"), (True, "integer")]:
        with pytest.raises(ValueError, match=msg):
            oracle_rows(bad)


def test_matchering_row_uses_one_training_reference(tiny_evaluation):
    res = tiny_evaluation["results"]
    mg = res["settings"]["matchering"]
    manifest = json.loads((tiny_evaluation["data"] / "manifest.json").read_text())
    ref = mg["reference"]
    assert ref["piece"] in manifest["splits"]["train"]["pieces"] and ref["split"] == "train"
    assert ref["piece"] not in manifest["splits"]["test"]["pieces"]
    assert mg["failures"] == 0 and mg["errors"] == {} and mg["version"]
    assert all("matchering_error" not in t for t in res["tracks"])
    # Matchering matches the reference's RMS level: its loudness lands close to the master's (−14 LUFS)
    # and much closer to the targets than the unprocessed input.
    row = res["test"]["matchering"]
    assert row["lufs_error"] < 2.0 and row["lufs_error"] < 0.5 * res["test"]["unprocessed"]["lufs_error"]
    assert row["seconds_per_track"] > 0
    assert "Matchering" in (tiny_evaluation["out"] / "results.md").read_text()
    # No temporary files are left in the output folder.
    assert not [p for p in tiny_evaluation["out"].rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def test_paired_differences_and_targets_follow_the_per_track_values(tiny_evaluation):
    res = tiny_evaluation["results"]
    for (a, b) in [("model", "unprocessed"), ("model", "matchering")]:
        for key in ("mfcc_cosine", "lufs_error"):
            d = res["paired"][f"{a}_minus_{b}"][key]
            diffs = [t["methods"][a][key] - t["methods"][b][key] for t in res["tracks"]]
            assert d["mean"] == pytest.approx(np.mean(diffs), abs=1e-12) and d["num_tracks"] == 2
            assert d["ci"][0] <= d["mean"] <= d["ci"][1]
    for m in ROWS:
        t = res["targets"]["methods"][m]
        row = res["test"][m]
        assert t["lufs_error"]["value"] == row["lufs_error"]
        assert t["lufs_error"]["met"] == (row["lufs_error"] <= 1.0)
        assert t["true_peak_dbtp_max"]["value"] == row["true_peak_dbtp_max"]
        assert t["true_peak_dbtp_max"]["met"] == (row["true_peak_dbtp_max"] <= -1.0)
        assert t["true_peak_dbtp_max"]["tracks_over"] == sum(x["methods"][m]["true_peak_dbtp"] > -1.0
                                                            for x in res["tracks"])
        ratio = row["mfcc_cosine"] / res["test"]["unprocessed"]["mfcc_cosine"]
        assert t["mfcc_cosine_ratio"]["value"] == pytest.approx(ratio, rel=1e-9)
        assert t["mfcc_cosine_ratio"]["met"] == (ratio <= 0.5)
    assert res["targets"]["methods"]["unprocessed"]["mfcc_cosine_ratio"]["value"] == pytest.approx(1.0)
    md = (tiny_evaluation["out"] / "results.md").read_text()
    assert "## Targets" in md and "## Paired differences" in md
    model_line = next(line for line in md.splitlines() if line.startswith("| **model** |") and "LU [" in line)
    assert ("yes: " if res["targets"]["methods"]["model"]["lufs_error"]["met"] else "no: ") + \
        f"{res['test']['model']['lufs_error']:.2f} LU" in model_line


def test_summary_png_is_a_valid_png(tiny_evaluation):
    import matplotlib.image

    png = tiny_evaluation["out"] / "summary.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(str(png))
    assert image.shape[:2] == (1300, 1600)  # 16 x 13 inches at 100 dpi
    assert float(image[..., :3].std()) > 0.05  # drawn, not blank
    assert tiny_evaluation["results"]["settings"]["summary_png"] == "summary.png"
    assert "![summary](summary.png)" in (tiny_evaluation["out"] / "results.md").read_text()


def test_evaluate_cli_rejects_unknown_recipe_and_bad_keys(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("recipe: nonsense\n")
    assert main(["evaluate", "--config", str(cfg), "--checkpoint", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "unknown recipe 'nonsense'; known: mastering, dexed_matching" in err and len(err.strip().splitlines()) == 1
    run_dir = tmp_path / "run"
    save_tiny_checkpoint(run_dir / "best.pt", spread=False)
    rc = main(["evaluate", "--config", "recipes/mastering/quick_scores.yaml", "--checkpoint", str(run_dir),
               "--out", str(tmp_path / "o"), "--set", "evaluate.cmaes_budget=5"])
    assert rc == 1 and "unknown key(s) ['cmaes_budget']" in capsys.readouterr().err


def test_unknown_sections_and_keys_are_named(tmp_path, capsys):
    """Every recipe binds its sections: an unknown section or key is a one-line error naming it."""
    for recipe, bad, expected in [
        ("mastering", "train.epochz=3", "unknown key(s) ['epochz']"),
        ("dexed_matching", "synth.backend=amsynth", "unknown synth backend 'amsynth'; known: dexed"),
        ("dexed_matching", "train.spectral_loss=l2", "unknown loss 'l2'; known: delay_invariant, mss, mrstft"),
        ("mastering", "synth.backend=dexed", "unknown config section(s) ['synth'] for recipe 'mastering'"),
    ]:
        rc = main(["train", "--config", f"{recipe}/quick", "--run-dir", str(tmp_path / "r"), "--set", bad])
        err = capsys.readouterr().err
        assert rc == 1 and expected in err and len(err.strip().splitlines()) == 1, (bad, err)
    assert not (tmp_path / "r").exists()


def test_bootstrap_interval_contains_the_mean_and_is_seeded():
    rng = np.random.default_rng(7)
    for n in (2, 4, 9, 30):
        for values in (rng.normal(3.0, 1.0, n), rng.exponential(1.0, n), rng.lognormal(0.0, 1.5, n)):
            lo, hi = bootstrap_ci(values, resamples=2000, seed=0)
            assert lo <= values.mean() <= hi and values.min() <= lo and hi <= values.max()
            assert bootstrap_ci(values, resamples=2000, seed=0) == (lo, hi)  # seeded: bit for bit
    values = rng.normal(0.0, 1.0, 12)
    assert bootstrap_ci(values, seed=0) != bootstrap_ci(values, seed=1)
    # The percentile interval itself: quantiles of resampled means with numpy's seeded generator.
    idx = np.random.default_rng(5).integers(0, 12, size=(500, 12))
    means = values[idx].mean(axis=1)
    assert bootstrap_ci(values, resamples=500, seed=5, level=0.9) == pytest.approx(
        tuple(np.quantile(means, [0.05, 0.95])), abs=0)
    # Wider coverage, wider interval; 30 normal values: close to the t interval.
    lo90, hi90 = bootstrap_ci(values, level=0.9)
    lo99, hi99 = bootstrap_ci(values, level=0.99)
    assert lo99 < lo90 and hi90 < hi99
    big = np.random.default_rng(3).normal(10.0, 2.0, 30)
    lo, hi = bootstrap_ci(big, resamples=4000)
    half = 2.045 * big.std(ddof=1) / math.sqrt(30)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    assert bootstrap_ci([0.25]) == (0.25, 0.25)
    for bad, msg in [([], "at least one"), ([1.0, float("nan")], "NaN")]:
        with pytest.raises(ValueError, match=msg):
            bootstrap_ci(bad)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 2.0], level=95)


def test_paired_and_ratio_bootstrap_resample_pieces_together():
    rng = np.random.default_rng(1)
    hard = rng.uniform(1.0, 10.0, 8)  # piece difficulty shared by both methods
    a, b = hard + 0.5 + 0.05 * rng.standard_normal(8), hard
    mean, lo, hi = paired_bootstrap_ci(a, b, seed=0)
    assert mean == pytest.approx(np.mean(a - b)) and (lo, hi) == bootstrap_ci(a - b, seed=0)
    assert 0.0 < lo <= mean <= hi  # the shared difficulty cancels: a is clearly worse than b
    lo_a, hi_a = bootstrap_ci(a, seed=0)
    assert lo_a < b.mean() < hi_a  # while the unpaired intervals overlap
    r, rlo, rhi = bootstrap_ratio_ci(0.5 * b, b, seed=0)
    assert (r, rlo, rhi) == pytest.approx((0.5, 0.5, 0.5))
    r, rlo, rhi = bootstrap_ratio_ci(a, b, seed=0)
    assert r == pytest.approx(a.mean() / b.mean()) and rlo <= r <= rhi
    with pytest.raises(ValueError, match="same pieces"):
        paired_bootstrap_ci([1.0, 2.0], [1.0])


def test_a_failed_piece_leaves_the_row_missing_there_and_the_report_says_so():
    def track(piece, values):
        return {"piece": piece, "seconds": 10.0, "methods": {m: dict(v) for m, v in values.items()}}

    ok = {"mfcc_cosine": 0.01, "mrstft": 0.5, "lufs_error": 2.0, "true_peak_dbtp": -1.5, "lag_samples": 0,
          "seconds": 1.0}
    failed = {"mfcc_cosine": None, "mrstft": None, "lufs_error": None, "true_peak_dbtp": None, "lag_samples": None,
              "seconds": None}
    tracks = [track("a", {"unprocessed": {**ok, "seconds": None}, "matchering": ok}),
              track("b", {"unprocessed": {**ok, "lufs_error": 4.0, "seconds": None}, "matchering": failed})]
    s = _summarize(tracks, ["unprocessed", "matchering"], 20.0, EvaluateConfig())
    assert s["matchering"]["lufs_error"] == 2.0 and s["matchering"]["lufs_error_ci"] == [2.0, 2.0]
    assert (s["matchering"]["num_tracks"], s["matchering"]["failed_tracks"]) == (1, 1)
    assert s["matchering"]["seconds_per_track"] == 1.0 and s["matchering"]["realtime_factor"] == 10.0
    assert s["unprocessed"]["lufs_error"] == 3.0 and s["unprocessed"]["seconds_per_track"] is None
    results = {"test": s, "tracks": tracks, "settings": {
        "num_tracks": 2, "total_seconds": 20.0, "chain": "c", "num_params": 2, "checkpoint": "x",
        "methods": ["unprocessed", "matchering"], "target_mean_lufs": -14.0, "target_max_true_peak_dbtp": -1.0,
        "max_delay_ms": 20.0, "cpu_count": 2,
        "oracle": {"renders": 60, "excerpt_seconds": 10.0, "loudness_weight": 0.1, "mean_renders_per_second": 3.0}}}
    assert "| matchering (1 of 2 pieces) |" in results_markdown(results)


def test_matchering_master_matches_a_reference_and_reports_its_errors(tmp_path, rng):
    x = 0.1 * music_like(rng, samples=3 * 44100)
    ref = music_like(np.random.default_rng(2), samples=4 * 44100)
    sf.write(str(tmp_path / "ref.wav"), ref.T, 44100, subtype="FLOAT")
    out = matchering_master(x, 44100, tmp_path / "ref.wav")
    assert out.shape == x.shape and out.dtype == np.float32
    # Matchering brings the quiet input up to the reference's level (RMS matching).
    assert abs(lufs(out, 44100) - lufs(ref, 44100)) < 1.5 < abs(lufs(x, 44100) - lufs(ref, 44100))
    sf.write(str(tmp_path / "short.wav"), ref[:, :1000].T, 44100, subtype="FLOAT")
    with pytest.raises(Exception, match="(?i)reference"):
        matchering_master(x, 44100, tmp_path / "short.wav")


def test_short_term_loudness_is_bs1770_over_3_s_windows():
    sr = 44100
    t = np.arange(8 * sr) / sr
    tone = np.stack([0.25 * np.sin(2 * np.pi * 997 * t)] * 2).astype(np.float32)
    times, loud = short_term_loudness(tone, sr)
    assert times[0] == pytest.approx(3.0) and np.allclose(np.diff(times), 0.1, atol=1e-4)
    # A steady tone: every 3 s window reads the integrated loudness (BS.1770 gating changes nothing).
    np.testing.assert_allclose(loud[5:], lufs(tone, sr), atol=0.02)
    # A 997 Hz sine at full scale in one channel reads -3.01 LKFS (BS.1770-4); here -12.04 dB in two: -9.0.
    assert loud[-1] == pytest.approx(-3.01 + 20 * math.log10(0.25) + 10 * math.log10(2), abs=0.05)
    half = tone.copy()
    half[:, 4 * sr:] *= 0.5  # -6.02 dB after 4 s
    _, loud2 = short_term_loudness(half, sr)
    assert loud2[-1] - loud[-1] == pytest.approx(-6.02, abs=0.02) and loud2[0] == pytest.approx(loud[0], abs=1e-9)
    one_window = short_term_loudness(tone[:, : sr], sr)
    assert len(one_window[0]) == 1 and one_window[0][0] == pytest.approx(1.0)


def test_matchering_reference_is_the_most_typical_training_master_by_spectrum(tmp_path):
    from deepafx.recipes.mastering.evaluate import choose_matchering_reference

    rng = np.random.default_rng(0)
    n = 3 * 44100
    spectrum = np.fft.rfftfreq(n, 1 / 44100)

    def tilted(db_per_octave, gain):
        """Stereo noise with a spectral tilt of `db_per_octave` around 1 kHz, scaled by `gain`."""
        shape = 10 ** (db_per_octave * np.log2(np.maximum(spectrum, 20.0) / 1000.0) / 20)
        noise = np.fft.irfft(np.fft.rfft(rng.standard_normal((2, n))) * shape, n)
        return (gain * 0.1 * noise / np.abs(noise).max()).astype(np.float32)

    def at(audio, target_lufs):
        return (audio * 10 ** ((target_lufs - lufs(audio, 44100)) / 20)).astype(np.float32)

    masters = {"dark": at(tilted(-4.5, 1.0), -14), "middle": at(tilted(-3.0, 1.0), -34), "near": at(tilted(-2.5, 1.0), -14),
               "bright": at(tilted(3.0, 1.0), -14)}
    (tmp_path / "train").mkdir()
    for pid, audio in masters.items():
        sf.write(str(tmp_path / "train" / f"{pid}_target.wav"), audio.T, 44100, subtype="FLOAT")
    (tmp_path / "manifest.json").write_text(json.dumps({"splits": {"train": {"pieces": list(masters)}}}))
    ref = choose_matchering_reference(tmp_path)
    # The band-wise median lies between "middle" and "near", but matchering copies the reference's level, so
    # only the masters at the loudest level (within 0.1 LU) are candidates: "middle", 20 dB quieter, is not.
    assert ref["piece"] == "near" and ref["candidates"] == 4 and ref["split"] == "train"
    assert ref["lufs"] == pytest.approx(lufs(masters["near"], 44100)) and "3 train masters within 0.1 LU" in ref["rule"]
    assert ref["spectral_distance_db"] < 1.0
    (tmp_path / "manifest.json").write_text(json.dumps({"splits": {"train": {"pieces": []}}}))
    with pytest.raises(ValueError, match="no pieces"):
        choose_matchering_reference(tmp_path)
