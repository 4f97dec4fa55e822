"""Dexed sound-matching recipe: dataset splits and an end-to-end smoke test through the real CLI.

Exact resume, DDP agreement, tiny training and evaluation of every recipe: tests/test_recipe_contract.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deepafx.recipes.dexed_matching.data import DEFAULT_SOUNDFONT, build_dataset, load_dataset, rms_db
from deepafx.recipes.dexed_matching.presets import read_voices
from deepafx.hosts.dexed_host import DexedRenderer

REPO = Path(__file__).resolve().parent.parent
QUICK = REPO / "recipes" / "dexed_matching" / "quick.yaml"

TINY_DATA = [
    "data.max_factory_presets=14",
    "data.samples_per_preset=1",
    "data.pitches=[60, 64]",
    "data.ood_programs=[0, 24, 40, 56, 71, 73]",
    "data.ood_test_programs=2",
    "data.ood_valid_programs=1",
    "data.ood_pitches=[60]",
    "data.test_fraction=0.2",
    "data.valid_fraction=0.1",
]
TINY_TRAIN = [
    "model.conv_channels=[8, 16]",
    "model.frame_dim=32",
    "model.gru_hidden=32",
    "train.batch_size=2",
    "train.ploss_steps=3",
    "train.crossfade_steps=2",
    "train.synth_steps=1",
    "train.real_steps=2",
    "render.num_workers=1",
    "train.num_threads=1",
    "train.log_every=1",
    "evaluate.num_in_domain=1",
    "evaluate.num_out_of_domain=1",
    "evaluate.refine_renders=6",
    "evaluate.num_workers=1",
]


def _overrides(items):
    out = {}
    import yaml

    for s in items:
        k, v = s.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def test_dataset_splits_by_preset_and_instrument(bank_dir, tmp_path):
    import yaml

    from deepafx.config import apply_overrides

    cfg = apply_overrides(yaml.safe_load(QUICK.read_text()), TINY_DATA + [f"data.hexter_dir={bank_dir}"])
    out = build_dataset(cfg, tmp_path / "d", progress=False)
    d = load_dataset(out)
    # splits by factory preset: no test/valid voice appears (even perturbed) in training
    train_src = set(d.source["train"].tolist())
    assert train_src.isdisjoint(d.source["test"].tolist()) and train_src.isdisjoint(d.source["valid"].tolist())
    # 14 voices: 3 test, 1 valid, 10 train each with one sampled neighbour
    assert len(d.source["test"]) == 3 and len(d.x["train"]) == 20
    assert set(np.unique(d.pitch["train"])) <= {60, 64}
    # splits by instrument (GM program)
    progs = {s: set(d.ood_program[s].tolist()) for s in ("train", "valid", "test")}
    assert len(progs["test"]) == 2 and progs["test"].isdisjoint(progs["train"]) and progs["valid"].isdisjoint(progs["train"])
    a = d.ood_audio["test"]
    assert a.shape == (2, 1, 64000) and a.dtype == np.float32
    for item in a:  # levels set to the factory voices' median RMS
        assert rms_db(item) == pytest.approx(d.reference_level_db, abs=0.05)
    # cached: a second build with the same settings is a no-op
    mtime = (out / "in_domain.npz").stat().st_mtime
    build_dataset(cfg, tmp_path / "d", progress=False)
    assert (out / "in_domain.npz").stat().st_mtime == mtime


def _cli(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "deepafx.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"deepafx {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


# about 30 s on an idle 2-core machine (four CLI runs, render workers); 2 min under heavy load
def test_quick_config_end_to_end_through_cli(bank_dir, tmp_path):
    data_dir = tmp_path / "data"
    sets = []
    for s in TINY_DATA + TINY_TRAIN + [f"data.hexter_dir={bank_dir}"]:
        sets += ["--set", s]
    _cli("data", "--config", str(QUICK), "--out", str(data_dir), *sets, cwd=tmp_path)
    _cli("train", "--config", str(QUICK), "--run-dir", str(tmp_path / "run"), "--data-dir", str(data_dir), *sets,
         cwd=tmp_path)
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert ckpts == ["last.pt", "ploss.pt", "real.pt", "synth.pt"]
    log = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == ["ploss"] * 3 + ["crossfade"] * 2 + ["synth"] + ["real"] * 2
    assert all(np.isfinite(r["spectral"]) and r["spectral"] > 0 for r in log if r["stage"] != "ploss")
    assert (tmp_path / "run" / "config.yaml").is_file()
    _cli("evaluate", "--config", str(QUICK), "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "eval"),
         "--data-dir", str(data_dir), *sets, cwd=tmp_path)
    res = json.loads((tmp_path / "eval" / "results.json").read_text())["models"]
    expected = {"retrieval", "ploss", "synth", "real", "cmaes"} | {f"{m}+refine" for m in ("retrieval", "ploss", "synth", "real")}
    assert set(res) == expected
    for m, doms in res.items():
        for dom in ("in_domain", "out_of_domain"):
            for k in ("lsd", "mss", "mfcc_l1", "seconds_per_sound"):
                assert np.isfinite(doms[dom][k]) and doms[dom][k] >= 0, (m, dom, k)
        assert 0 <= doms["in_domain"]["discrete_accuracy"] <= 1 and "param_l1" in doms["in_domain"]
    # refinement keeps the best point seen by LSD (evaluate.refine_keep), so it never loses on the table's LSD
    for m in ("retrieval", "ploss", "synth", "real"):
        for dom in ("in_domain", "out_of_domain"):
            assert res[f"{m}+refine"][dom]["lsd"] <= res[m][dom]["lsd"] + 1e-4
    assert "| retrieval |" in (tmp_path / "eval" / "results.md").read_text()
    # every held-out sound carries its novelty (LSD to the nearest training voice) and a tercile
    full = json.loads((tmp_path / "eval" / "results.json").read_text())
    details = json.loads((tmp_path / "eval" / "details.json").read_text())
    ind = np.load(data_dir / "in_domain.npz")
    row = details["retrieval"]["in_domain"][0]
    assert row["novelty_db"] in ind["novelty_test"].tolist() and row["novelty_bin"] in ("low", "mid", "high")
    assert set(full["novelty"]) == {"in_domain", "out_of_domain"} and full["settings"]["data_split"] == "grouped"
    assert full["settings"]["refine_keep"] == "lsd" and "by_novelty" in res["retrieval"]["in_domain"]

    # deepafx match on a 44.1 kHz stereo note of an instrument never seen in training
    from deepafx.data.soundfont import render_notes as render_soundfont_notes

    note = render_soundfont_notes(DEFAULT_SOUNDFONT, [(68, 65, 100)], 44100, 2.0, 1.5)[0]
    sf.write(tmp_path / "oboe.wav", np.stack([note, note], 1), 44100)
    out = _cli("match", "--checkpoint", str(tmp_path / "run"), str(tmp_path / "oboe.wav"), str(tmp_path / "m"),
               "--refine-renders", "8", cwd=tmp_path)
    assert "resampled from 44100 Hz to 16000 Hz" in out and "averaged to mono" in out and "zero-padded" in out
    m = tmp_path / "m"
    assert (m / "preset.syx").stat().st_size == 163 and (m / "preset_bank.syx").stat().st_size == 4104
    assert (m / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the exported .syx round-trips: load -> same parameters -> same audio
    voice = read_voices(m / "preset.syx")[0]
    bank = read_voices(m / "preset_bank.syx")[0]
    np.testing.assert_array_equal(voice.x, bank.x)
    matched, sr = sf.read(m / "match.wav", dtype="float32", always_2d=True)
    assert sr == 16000
    np.testing.assert_array_equal(DexedRenderer(16000, [(60, 100)], 3.0, 4.0).render(voice.x)[0], matched[:, 0])
    info = json.loads((m / "preset.json").read_text())
    assert info["pitch_midi"] == 65 and 1 <= info["parameters"]["algorithm"] <= 32


def test_match_rejects_silence_noise_and_short_input(bank_dir, tmp_path):
    from deepafx.recipes.dexed_matching.match import MatchInputError, estimate_pitch, prepare_input

    sf.write(tmp_path / "silence.wav", np.zeros(22050, np.float32), 22050)
    with pytest.raises(MatchInputError, match="silent"):
        prepare_input(tmp_path / "silence.wav", 16000, 1, 4.0, -8.5, say=lambda *a: None)
    note = np.sin(2 * np.pi * 440 * np.arange(1000) / 44100).astype(np.float32)
    sf.write(tmp_path / "short.wav", np.concatenate([np.zeros(4000, np.float32), note]), 44100)
    with pytest.raises(MatchInputError, match="ms of sound"):
        prepare_input(tmp_path / "short.wav", 16000, 1, 4.0, -8.5, say=lambda *a: None)
    noise = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    with pytest.raises(MatchInputError, match="noise only"):
        estimate_pitch(noise[None], 16000)
    tone = np.sin(2 * np.pi * 440 * np.arange(32000) / 16000).astype(np.float32)[None]
    assert estimate_pitch(tone, 16000)[0] == 69
    with pytest.raises(MatchInputError, match="6 notes as channels"):
        sf.write(tmp_path / "mono.wav", tone[0], 16000)
        prepare_input(tmp_path / "mono.wav", 16000, 6, 4.0, -8.5, say=lambda *a: None)


def test_frozen_params_mask_and_errors():
    from deepafx.hosts.dexed_host import dexed_param_table
    from deepafx.recipes.dexed_matching.search import discrete_mask
    from deepafx.recipes.dexed_matching.train import TrainConfig, frozen_mask

    names = dexed_param_table().names
    m = frozen_mask(["pitch_env_level*", "op?_frequency_fine"])
    assert sorted(n for n, f in zip(names, m) if f) == sorted(
        [f"pitch_env_level{i}" for i in range(1, 5)] + [f"op{i}_frequency_fine" for i in range(1, 7)])
    d = frozen_mask([":discrete"])
    assert d.sum() == discrete_mask().sum() - 1 and not d[names.index("transpose_semitones")]  # the note sets it
    assert not frozen_mask([]).any()
    for bad, msg in (([":numeric"], "matches no"), (["pich_env_*"], "matches no"), (["transpose_semitones"], "transpose"),
                     ("pitch_env_*", "list")):
        with pytest.raises(ValueError, match=msg):
            TrainConfig.from_dict({"frozen_params": bad})
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="real_in_domain_fraction"):
            TrainConfig.from_dict({"real_in_domain_fraction": bad})
    # SPSA on the loss perturbs only the 0-99 parameters: ε may exceed one DX7 step there, not with the Fx layer's
    assert TrainConfig.from_dict({"epsilon": 0.05}).epsilon == 0.05
    for bad in (0.0, 0.6):
        with pytest.raises(ValueError, match="epsilon must be in"):
            TrainConfig.from_dict({"epsilon": bad})
    with pytest.raises(ValueError, match="spsa_mode 'vjp'"):
        TrainConfig.from_dict({"epsilon": 0.02, "spsa_mode": "vjp"})


def test_lsd_loss_is_the_metric():
    import torch

    from deepafx.losses import build_loss
    from deepafx.metrics import lsd_db

    rng = np.random.default_rng(0)
    a = (0.1 * rng.standard_normal((3, 2, 8000))).astype(np.float32)
    b = (0.5 * a + 0.05 * rng.standard_normal(a.shape)).astype(np.float32)
    got = build_loss("lsd", sample_rate=16000.0)(torch.from_numpy(a), torch.from_numpy(b))
    assert got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), [lsd_db(a[i], b[i]) for i in range(3)], rtol=1e-5)
    with pytest.raises(ValueError, match="equal shape"):
        build_loss("lsd", sample_rate=16000.0)(torch.from_numpy(a), torch.from_numpy(b[:, :1]))


def test_frozen_params_render_the_start_estimate_and_resume(bank_dir, tmp_path):
    """train.frozen_params: training renders and the trained network both give them at the P-loss network's
    estimate, the others move, and a run resumed inside a spectral stage repeats the uninterrupted run."""
    import torch
    import yaml

    from deepafx.config import apply_overrides
    from deepafx.recipes.dexed_matching import train as dtrain

    frozen_names = [":discrete", "pitch_env_*"]
    sets = TINY_DATA + TINY_TRAIN + [f"data.hexter_dir={bank_dir}", f"train.frozen_params={frozen_names}",
                                     "train.spectral_loss=lsd", "train.synth_steps=3", "train.real_in_domain_fraction=0.5"]
    cfg = apply_overrides(yaml.safe_load(QUICK.read_text()), sets)
    data_dir = tmp_path / "data"
    seen = []
    orig = dtrain.spsa_loss_gradient

    def spy(fx, theta, target, *a, **k):
        seen.append((theta.detach().clone(), target.detach().clone()))
        return orig(fx, theta, target, *a, **k)

    dtrain.spsa_loss_gradient = spy
    try:
        full = dtrain.train_from_config(cfg, tmp_path / "run", data_dir)
    finally:
        dtrain.spsa_loss_gradient = orig
    spectral = [r for r in full["history"] if r["stage"] != "ploss"]
    assert spectral and all(np.isfinite(r["spectral"]) and r["spectral"] > 0 for r in spectral)  # LSD, dB
    # every spectral step rendered the frozen parameters at the P-loss checkpoint's estimate of its batch
    start, _ = dtrain.load_estimator(tmp_path / "run" / "checkpoints" / "ploss.pt")
    frozen = torch.from_numpy(dtrain.frozen_mask(frozen_names))
    assert len(seen) == 2 + 3 + 2
    moved = 0.0
    for theta, target in seen:
        with torch.no_grad():
            x0 = start.to_normalized(start(target, heads="params"), torch.full((len(target),), 60.0))
        torch.testing.assert_close(theta[:, frozen], x0[:, frozen].to(theta.dtype), atol=1e-5, rtol=0)
        moved = max(moved, float((theta[:, ~frozen] - x0[:, ~frozen].to(theta.dtype)).abs().max()))
    assert moved > 0  # the other parameters are trained
    # real_in_domain_fraction 0.5: each real-stage batch of 2 is one rendered training preset, then one OOD note
    ood = load_dataset(data_dir).ood_audio["train"]
    for _, target in seen[-2:]:
        assert not any(np.array_equal(target[0].numpy(), o) for o in ood)
        assert any(np.array_equal(target[1].numpy(), o) for o in ood)
    # the trained network gives the held parameters exactly as the P-loss network did, the others its own
    trained, ckpt = dtrain.load_estimator(tmp_path / "run" / "checkpoints" / "real.pt")
    assert ckpt["model_description"]["held"] == frozen_names and trained.holding and not start.holding
    audio = seen[0][1]
    with torch.no_grad():
        a = trained.to_normalized(trained(audio), torch.full((len(audio),), 60.0))
        b = start.to_normalized(start(audio), torch.full((len(audio),), 60.0))
    torch.testing.assert_close(a[:, frozen], b[:, frozen], atol=0, rtol=0)
    assert float((a[:, ~frozen] - b[:, ~frozen]).abs().max()) > 0
    trained.train()
    assert trained.training and not trained.held.training  # the twin never trains (dropout, BatchNorm)
    with pytest.raises(ValueError, match="holds no parameters"):
        dtrain.DexedEstimator(1, 16000.0).activate_held()
    # stopped inside the synth stage and resumed: the same run
    run2 = tmp_path / "run2"
    stop = 3 + 2 + 1
    dtrain.train_from_config(apply_overrides(cfg, [f"train.max_steps={stop}"]), run2, data_dir)
    resumed = dtrain.train_from_config(cfg, run2, data_dir, resume=True)
    strip = lambda h: [{k: v for k, v in r.items() if "second" not in k} for r in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(full["history"])
    a = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(run2 / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_spectral_calibration_trains_only_the_calibration(bank_dir, tmp_path):
    """train.spectral_train: calibration: the spectral stages train the per-parameter log-scale and shift of
    the numeric estimates alone. Branched from the P-loss checkpoint of a run without it (its weights come
    after the checkpoint's, Adam's state extended), every weight and BatchNorm statistic of the network stays
    that checkpoint's, the calibration moves and is saved (centred on the training voices' mean), the
    estimate differs from the P-loss network's only on the free numeric parameters, and bad settings are
    refused."""
    import numpy as np
    import torch
    import yaml

    from deepafx.config import apply_overrides
    from deepafx.recipes.dexed_matching import train as dtrain
    from deepafx.recipes.dexed_matching.data import load_dataset
    from deepafx.recipes.dexed_matching.model import predict

    from deepafx.recipes import get_recipe
    from deepafx.trainer import train

    base = TINY_DATA + TINY_TRAIN + [f"data.hexter_dir={bank_dir}", "train.spectral_loss=lsd", "train.crossfade_steps=0"]
    cfg = apply_overrides(yaml.safe_load(QUICK.read_text()), base)
    dtrain.train_from_config(cfg, tmp_path / "run", tmp_path / "data")  # a run without the calibration
    source = tmp_path / "run" / "checkpoints" / "ploss.pt"
    start = torch.load(source, weights_only=False)["model"]
    assert not any(k.startswith("calibration.") for k in start)
    cal = get_recipe("dexed_matching").bind(apply_overrides(cfg, ["train.spectral_train=calibration",
                                                                  "train.spectral_learning_rate=0.01"]))
    train(dtrain.DexedTask(cal, tmp_path / "data"), tmp_path / "cal", cal, branch_from=source)  # its P-loss network
    ckpts = tmp_path / "cal" / "checkpoints"
    end = torch.load(ckpts / "real.pt", weights_only=False)["model"]
    net = [k for k in start if not k.startswith("held")]
    assert net and all(torch.equal(start[k], end[k]) for k in net)  # weights and BatchNorm statistics
    assert bool(end["calibration.active"])
    assert end["calibration.log_scale"].abs().max() > 0 and end["calibration.shift"].abs().max() > 0
    data = load_dataset(tmp_path / "data")
    model, _ = dtrain.load_estimator(ckpts / "real.pt")
    assert model.calibrate == "parameter" and model.calibration.log_scale.shape == (model.layout.num_numeric,)
    centre = data.x["train"].mean(0)[model.numeric_columns.numpy()]
    np.testing.assert_allclose(model.calibration.center.numpy(), centre, rtol=1e-6)
    ploss, _ = dtrain.load_estimator(source)  # the same network without the calibration
    audio = data.config.renderer().render_batch(data.x["valid"][:2])
    pitch = data.pitch["valid"][:2]
    a, b = predict(model, audio, pitch), predict(ploss, audio, pitch)
    changed = np.any(a != b, axis=0)
    assert changed.any() and not changed[model.transpose_index]
    assert not (changed & ~np.isin(np.arange(a.shape[1]), model.numeric_columns.numpy())).any()  # discrete kept
    with pytest.raises(ValueError, match="crossfade_steps"):
        dtrain.TrainConfig.from_dict({"spectral_train": "calibration", "crossfade_steps": 2})
    with pytest.raises(ValueError, match="spectral_train"):
        dtrain.TrainConfig.from_dict({"spectral_train": "heads"})
    with pytest.raises(ValueError, match="no output calibration"):
        ploss.activate_calibration(data.x["train"].mean(0))
    # global_calibration: one log-scale and one shift for every calibrated parameter
    shared = dtrain.DexedEstimator.from_description({**ploss.describe(), "calibrate": "global"})
    shared.load_state_dict(start)
    assert [tuple(p.shape) for p in shared.calibration_parameters()] == [(1,), (1,)]
    shared.activate_calibration(data.x["train"].mean(0))
    with torch.no_grad():
        shared.calibration.log_scale.fill_(float(np.log(0.5)))
    shrunk = predict(shared, audio, pitch)
    cols = shared.numeric_columns.numpy()[shared.calibration.mask.numpy()]
    centre = data.x["train"].mean(0)[cols]
    assert np.abs(shrunk[:, cols] - centre).mean() < 0.75 * np.abs(b[:, cols] - centre).mean()
    with pytest.raises(ValueError, match="calibrate"):
        dtrain.DexedEstimator.from_description({**ploss.describe(), "calibrate": "layer"})
    # SPSA on the calibration's own weights: the global log-scale and shift move, the network does not
    glob = get_recipe("dexed_matching").bind(apply_overrides(cfg, [
        "train.spectral_train=global_calibration", "train.spectral_gradient=calibration_spsa",
        "train.spectral_learning_rate=0.01", "train.calibration_epsilon=0.2"]))
    train(dtrain.DexedTask(glob, tmp_path / "data"), tmp_path / "glob", glob, branch_from=source)
    end = torch.load(tmp_path / "glob" / "checkpoints" / "real.pt", weights_only=False)["model"]
    assert all(torch.equal(start[k], end[k]) for k in net)
    assert end["calibration.log_scale"].shape == (1,) and end["calibration.log_scale"].abs().item() > 0
    with pytest.raises(ValueError, match="calibration_spsa"):
        dtrain.TrainConfig.from_dict({"spectral_gradient": "calibration_spsa", "crossfade_steps": 0})
    with pytest.raises(ValueError, match="calibration_epsilon"):
        dtrain.TrainConfig.from_dict({"calibration_epsilon": 0})


def test_spectral_eval_mode_and_fresh_optimizer(bank_dir, tmp_path):
    """train.spectral_eval_mode: the spectral stages train the weights with the network in eval mode, so
    BatchNorm's running statistics stay those of the P-loss checkpoint; in train mode (the default) a
    forward pass replaces them. train.spectral_fresh_optimizer: Adam's state restarts at the cross-fade
    (its step count is the spectral stages' alone), and a run resumed inside a spectral stage repeats the
    uninterrupted one."""
    import torch
    import yaml

    from deepafx.config import apply_overrides
    from deepafx.recipes.dexed_matching import train as dtrain

    sets = TINY_DATA + TINY_TRAIN + [f"data.hexter_dir={bank_dir}", "train.spectral_loss=lsd",
                                     "train.spectral_eval_mode=true", "train.spectral_fresh_optimizer=true"]
    cfg = apply_overrides(yaml.safe_load(QUICK.read_text()), sets)
    full = dtrain.train_from_config(cfg, tmp_path / "run", tmp_path / "data")
    ckpts = tmp_path / "run" / "checkpoints"
    steps = lambda name: {float(v["step"]) for v in torch.load(ckpts / name, weights_only=False)["optimizer"]["state"].values()}  # noqa: E731
    assert steps("ploss.pt") == {3.0} and steps("real.pt") == {2.0 + 1 + 2}  # not 3 + 5: the P-loss moments dropped
    run2 = tmp_path / "run2"
    dtrain.train_from_config(apply_overrides(cfg, ["train.max_steps=6"]), run2, tmp_path / "data")  # inside synth
    resumed = dtrain.train_from_config(cfg, run2, tmp_path / "data", resume=True)
    strip = lambda h: [{k: v for k, v in r.items() if "second" not in k} for r in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(full["history"])
    start = torch.load(ckpts / "ploss.pt", weights_only=False)["model"]
    end = torch.load(ckpts / "real.pt", weights_only=False)["model"]
    stats = [k for k in start if k.endswith(("running_mean", "running_var")) and not k.startswith("held")]
    weights = [k for k in start if k.endswith("weight") and start[k].is_floating_point()]
    assert stats and all(torch.equal(start[k], end[k]) for k in stats)
    assert any(not torch.equal(start[k], end[k]) for k in weights)  # SPSA trained the weights
    model, _ = dtrain.load_estimator(ckpts / "real.pt")
    norms = [m for m in model.net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    model.fixed_statistics = True
    model.train()
    assert norms and not any(m.training for m in norms)
    model.fixed_statistics = False
    model.train()
    assert all(m.training for m in norms)
    before = [m.running_mean.clone() for m in norms]
    with torch.no_grad():
        model(torch.randn(2, model.in_channels, 16000))
    assert any(not torch.equal(b, m.running_mean) for b, m in zip(before, norms))
    with pytest.raises(ValueError, match="spectral_eval_mode"):
        dtrain.TrainConfig.from_dict({"spectral_eval_mode": "yes"})


def test_search_gradient_trains_toward_what_the_search_found(bank_dir, tmp_path):
    """train.spectral_gradient: search (expert iteration through Dexed): every spectral step's searches gain
    (search_gain ≥ 0, logged), the network moves from its P-loss checkpoint, the run repeats exactly for a
    seed, and bad search settings are refused."""
    import yaml
    import torch

    from deepafx.config import apply_overrides
    from deepafx.recipes.dexed_matching import train as dtrain

    sets = TINY_DATA + TINY_TRAIN + [f"data.hexter_dir={bank_dir}", "train.spectral_loss=lsd",
                                     "train.spectral_gradient=search", "train.search_iterations=2",
                                     "train.num_perturbations=1", "train.real_steps=1"]
    cfg = apply_overrides(yaml.safe_load(QUICK.read_text()), sets)
    dtrain.train_from_config(cfg, tmp_path / "run", tmp_path / "data")
    run = tmp_path / "run"
    log = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    spectral = [r for r in log if r["stage"] != "ploss"]
    assert len(spectral) == 4 and all(np.isfinite(r["search_gain"]) and r["search_gain"] >= 0 for r in spectral)
    assert all(np.isfinite(r["spectral"]) and r["spectral"] > 0 for r in spectral)
    ploss = torch.load(run / "checkpoints" / "ploss.pt", weights_only=False)["model"]
    real = torch.load(run / "checkpoints" / "real.pt", weights_only=False)["model"]
    assert not torch.equal(ploss["net.numeric_head.weight"], real["net.numeric_head.weight"])
    dtrain.train_from_config(cfg, tmp_path / "again", tmp_path / "data")
    again = torch.load(tmp_path / "again" / "checkpoints" / "real.pt", weights_only=False)["model"]
    assert all(torch.equal(real[k], again[k]) for k in real)
    for bad in ({"search_iterations": 0}, {"search_learning_rate": 0.0}):
        with pytest.raises(ValueError, match="search_"):
            dtrain.TrainConfig.from_dict(bad)
