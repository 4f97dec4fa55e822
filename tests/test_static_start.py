"""``train.start: static``: one static preset for all training tracks (CMA-ES, segment-mean ESR) as the
encoder's start, saved in the run folder and reused on resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import music_like
from deepafx.automation.model import pretrain_target
from deepafx.automation.oracle import EsrObjective, static_preset
from deepafx.automation.task import STATIC_START_FILE, AutomationTrainConfig
from deepafx.recipes.amp_emulation.esr import esr


def test_segmented_esr_is_the_mean_of_each_segments_esr():
    rng = np.random.default_rng(2)
    loud = 0.5 * rng.standard_normal((1, 3000))
    quiet = 0.01 * rng.standard_normal((1, 2000))
    t = np.concatenate([loud, quiet], axis=1)
    y = np.concatenate([0.9 * loud, 0.5 * quiet], axis=1)
    per = [esr(y[:, :3000], t[:, :3000], 0.95), esr(y[:, 3000:], t[:, 3000:], 0.95)]
    score = EsrObjective(t, segments=[0, 3000])([y])[0]
    assert score == pytest.approx(np.mean(per), rel=1e-9)  # each segment emphasised from zero state
    whole = EsrObjective(t)([y])[0]
    assert whole == pytest.approx(esr(y, t, 0.95), rel=1e-9)
    assert score > 5 * whole  # the quiet segment's large error counts, not only its energy
    for bad in ([1, 3000], [0, 3000, 3000], [0, 5000], []):
        with pytest.raises(ValueError, match="segments"):
            EsrObjective(t, segments=bad)
    with pytest.raises(ValueError, match="silent"):
        EsrObjective(np.concatenate([t, np.zeros((1, 500))], axis=1), segments=[0, 5000])


def test_static_preset_finds_one_setting_for_tracks_at_several_levels():
    from deepafx.automation.oracle import CmaesOracle
    from deepafx.chain import chain

    spec = chain({"backend": "testing.waveshaper", "name": "ws"}, sample_rate=44100, name="ws")
    truth = spec.param_table.normalize([3.0, 0.1, 0.8, 7.0])
    rng = np.random.default_rng(5)
    tracks = []
    with CmaesOracle(spec, renders=1, excerpt_seconds=None, num_workers=1) as oracle:
        for level in (0.2, 1.0, 2.0):
            x = level * music_like(rng, channels=1, samples=33075)
            tracks.append((x, oracle.render_track(x, truth)))
    kw = dict(renders=33, seconds=1.5, seed=1, num_workers=1)
    res = static_preset(spec, tracks, objective="esr_pre", **kw)
    assert res.renders == 33 and res.excerpt_seconds == pytest.approx(1.5)
    assert res.objective < 0.5 * res.default_objective
    again = static_preset(spec, tracks, objective="esr_pre", **kw)
    assert np.array_equal(res.params, again.params)  # seeded
    assert static_preset(spec, tracks, objective="mrstft", **kw).objective < res.default_objective + 10
    with pytest.raises(ValueError, match="track"):
        static_preset(spec, [], **kw)
    with pytest.raises(ValueError, match="seconds"):
        static_preset(spec, tracks, **{**kw, "seconds": 0})


@pytest.mark.parametrize("bad, match", [({"start": "random"}, "train.start"), ({"start_renders": 0}, "start_renders")])
def test_bad_start_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        AutomationTrainConfig(**bad)


def test_a_run_starts_from_the_static_preset_and_reuses_it_on_resume(tmp_path):
    from test_recipe_contract import last_checkpoint, tiny

    t = tiny("amp_emulation/quick", tmp_path / "data")
    extra = ("train.start=static", "train.start_renders=10", "train.start_seconds=2")
    run_dir = tmp_path / "run"
    cfg = t.bound(*extra, "train.max_steps=2")
    task = t.recipe.task(cfg, t.data_dir)
    from deepafx.trainer import train

    train(task, run_dir, cfg)
    doc = json.loads((run_dir / STATIC_START_FILE).read_text())
    assert doc["renders"] == 10 and doc["objective"] <= doc["default_objective"]
    assert set(doc["values"]) == set(task.chain.param_table.names)
    assert torch.allclose(task.defaults, torch.tensor(pretrain_target(doc["params"]), dtype=torch.float32))
    assert not np.allclose(doc["params"], task.chain.param_table.defaults_normalized())
    assert task.start_seconds > 0 and last_checkpoint(run_dir)["task"]["train_seconds"] > task.start_seconds
    stamp = (run_dir / STATIC_START_FILE).stat().st_mtime_ns

    cfg = t.bound(*extra)
    resumed = t.recipe.task(cfg, t.data_dir)
    train(resumed, run_dir, cfg, resume=True)
    assert resumed.start_seconds == 0.0 and (run_dir / STATIC_START_FILE).stat().st_mtime_ns == stamp
    assert torch.equal(resumed.defaults, task.defaults)


def test_the_static_start_benchmark_reads_training_pieces_only(tmp_path):
    """benchmarks/static_start.py: one line per search, seeded, on the training split of a tiny dataset."""
    import subprocess
    import sys
    from pathlib import Path

    from deepafx.recipes.amp_emulation.data import AmpDataConfig

    from conftest import load_script

    mod = load_script("static_start")
    assert mod.parse_search("0.25,600,2") == (0.25, 600, 2)
    for bad in ("0.25,600", "a,1,0", "0,10,0", "0.1,0,0"):
        with pytest.raises(SystemExit):
            mod.parse_search(bad)
    if not Path(AmpDataConfig().soundfont).is_file():
        pytest.skip("FluidR3_GM SoundFont not installed (Debian: fluid-soundfont-gm)")
    sets = ["data.train_minutes=0.3", "data.max_piece_seconds=6", "data.min_piece_seconds=3", "render.num_workers=1"]
    args = [sys.executable, mod.__file__, "--config", "amp_emulation/quick", "--data-dir", str(tmp_path / "data"),
            "--seconds", "2", "--search", "0.25,8,0", "--search", "0.25,8,0"]
    out = subprocess.run(args + [x for s in sets for x in ("--set", s)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.strip().splitlines()]
    a, b, summary = lines[-3:]
    assert summary["benchmark"] == "static_start" and summary["searches"] == [a, b]
    assert a["objective"] == b["objective"] <= a["default_objective"]  # the same seed finds the same preset
    assert summary["training_pieces"] >= 1


def test_the_evaluation_reads_the_runs_own_static_start(tmp_path):
    """A run trained from a static start is scored against that very preset (no search at evaluation)."""
    from deepafx.recipes.amp_emulation.evaluate import _static_train

    run = tmp_path / "seed-0"
    (run / "checkpoints").mkdir(parents=True)
    doc = {"settings": {"renders": 5}, "params": [0.25, 0.75], "values": {"a": 1.0, "b": 2.0}, "objective": 0.5,
           "default_objective": 0.9, "renders": 5, "search_seconds": 1.0}
    (run / STATIC_START_FILE).write_text(json.dumps(doc))
    # config and chain are not touched when the file is there
    got = _static_train(None, None, {}, run / "checkpoints" / "best.pt", tmp_path / "data")
    assert got["params"] == [0.25, 0.75] and got["source"] == str(run / STATIC_START_FILE)
    assert "settings" not in got
    (run / STATIC_START_FILE).write_text("{truncated")
    with pytest.raises(ValueError, match="static_start.json"):
        _static_train(None, None, {}, run / "checkpoints" / "best.pt", tmp_path / "data")
