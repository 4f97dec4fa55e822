"""`deepafx evaluate` for the mastering recipe and its CMA-ES oracle (real chain, real rendered music)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import music_like

from deepafx.chain import ChainSpec, chain
from deepafx.cli import main
from deepafx.config import load_config
from deepafx.losses import MultiResolutionSTFTLoss
from deepafx.recipes.mastering.evaluate import METHODS, align_to_target, track_metrics
from deepafx.automation.model import AutomationModel, ModelConfig
from deepafx.automation.oracle import FAILED_RENDER_SCORE, CmaesOracle, OracleObjective, middle_excerpt
from deepafx.metrics import mrstft_distance
from deepafx.trainer import atomic_save

SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
TINY_MODEL = {
    "encoder": "mobilenetv2",
    "context_seconds": 1.0,
    "frame_seconds": 0.25,
    "n_mels": 32,
    "encoder_kwargs": {"width_mult": 0.25, "stages": [[1, 8, 1, 2], [2, 16, 1, 2]], "last_channels": 32, "hidden": 16},
}
DATA_OVERRIDES = [
    "data.num_pieces=4", "data.test_fraction=0.4", "data.valid_fraction=0.1",
    "data.max_piece_seconds=3.0", "data.min_piece_seconds=3.0",
]
EVAL_OVERRIDES = [
    "evaluate.cmaes_renders=17", "evaluate.cmaes_popsize=8", "evaluate.excerpt_seconds=2.0",
    "evaluate.preroll_seconds=0.5", "evaluate.num_examples=1", "evaluate.workers=2",
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


def _tiny_checkpoint(run_dir: Path) -> Path:
    cfg = load_config("recipes/mastering/quick.yaml")
    cfg.pop("_path")
    cfg["model"] = dict(TINY_MODEL)
    spec = ChainSpec.from_dict(cfg["chain"])
    table = spec.param_table
    torch.manual_seed(0)
    model = AutomationModel(ModelConfig(**TINY_MODEL), spec, len(table), table.defaults_normalized())
    return atomic_save({"recipe": "mastering", "config": cfg, "chain": spec.to_dict(), "num_params": len(table),
                        "param_names": table.names, "model": model.state_dict()}, run_dir / "best.pt")


def test_evaluate_cli_on_a_tiny_dataset(tmp_path, capsys):
    if not os.path.exists(SOUNDFONT):
        pytest.skip(f"General MIDI SoundFont {SOUNDFONT} absent (apt-get install fluid-soundfont-gm)")
    run_dir = tmp_path / "run"
    _tiny_checkpoint(run_dir)
    out = tmp_path / "eval"
    overrides = [a for o in DATA_OVERRIDES + EVAL_OVERRIDES for a in ("--set", o)]
    rc = main(["evaluate", "--config", "recipes/mastering/quick.yaml", "--checkpoint", str(run_dir), "--out", str(out),
               "--data-dir", str(tmp_path / "data"), *overrides])
    printed = capsys.readouterr().out
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res) == {"test", "tracks", "settings"}
    assert set(res["test"]) == set(METHODS)
    assert len(res["tracks"]) == 2 and res["settings"]["num_tracks"] == 2
    for m in METHODS:
        row = res["test"][m]
        for key in ("mfcc_cosine", "mrstft", "lufs_error", "true_peak_dbtp"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (m, key)
        if m == "unprocessed":
            assert row["seconds_per_track"] is None and row["realtime_factor"] is None
        else:
            assert row["seconds_per_track"] > 0 and row["realtime_factor"] > 0
    for t in res["tracks"]:
        o = t["oracle"]
        assert o["renders"] == 17 and o["objective"] <= o["default_objective"]
        assert o["renders_per_second"] > 0
        assert set(o["values"]) == set(res["settings"]["param_names"])
        # The oracle, fitted against the target, beats the unprocessed input on MR-STFT on every track.
        assert t["methods"]["oracle_cmaes"]["mrstft"] < t["methods"]["unprocessed"]["mrstft"]
        assert abs(t["methods"]["oracle_cmaes"]["lag_samples"]) <= round(0.020 * 44100)
        assert t["methods"]["unprocessed"]["lag_samples"] == 0
    assert res["test"]["oracle_cmaes"]["mrstft"] < res["test"]["unprocessed"]["mrstft"]
    # The untrained model (≈ the default parameters) matches the default chain closely.
    assert res["test"]["model"]["lufs_error"] == pytest.approx(res["test"]["default"]["lufs_error"], abs=1.0)
    md = (out / "results.md").read_text()
    assert "| method | MFCC cosine ↓ | MR-STFT ↓ | LUFS error [LU] ↓ | true peak [dBTP] |" in md
    assert all(f"| {m} |" in md for m in METHODS) and md in printed
    piece = res["tracks"][0]["piece"]
    assert sorted(p.name for p in (out / "examples" / piece).iterdir()) == sorted(
        [f"{m}.wav" for m in METHODS] + ["target.wav"]
    )


def test_evaluate_cli_rejects_unknown_recipe_and_bad_keys(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("recipe: nonsense\n")
    assert main(["evaluate", "--config", str(cfg), "--checkpoint", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "unknown recipe 'nonsense'; known: mastering, dexed_matching" in err and len(err.strip().splitlines()) == 1
    run_dir = tmp_path / "run"
    _tiny_checkpoint(run_dir)
    rc = main(["evaluate", "--config", "recipes/mastering/quick.yaml", "--checkpoint", str(run_dir),
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
