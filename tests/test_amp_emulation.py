"""Amp-emulation recipe: ESR against hand-computed numbers, the DI data, the target amp, the LSTM baseline
and the real CLI end to end. Exact resume, DDP agreement, tiny training and evaluation: test_recipe_contract.py."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from deepafx.config import load_config
from deepafx.recipes.amp_emulation.data import (AMP_SETTINGS, AmpDataConfig, _piece_order, build_dataset,
                                                draw_performance, load_split, piece_split, target_chain)
from deepafx.recipes.amp_emulation.esr import EsrLoss, esr, esr_loss, pre_emphasis
from deepafx.recipes.amp_emulation.evaluate import bootstrap_ci

QUICK = Path(__file__).resolve().parent.parent / "recipes" / "amp_emulation" / "quick.yaml"
SR = 44100
TINY_DATA = ["data.train_minutes=0.3", "data.max_piece_seconds=6", "data.min_piece_seconds=3"]
TINY = TINY_DATA + [
    "model.context_seconds=0.5", "model.frame_seconds=0.25", "model.hop_length=2048", "model.n_mels=32",
    "model.encoder_kwargs={width_mult: 0.25}",
    "train.batch_size=2", "render.num_workers=1", "train.epochs=2", "train.steps_per_epoch=3",
    "train.valid_steps=2", "train.pretrain_steps=2", "train.num_threads=1", "train.seed=3",
    "train.start_renders=8", "train.start_seconds=2",
]


def _soundfont_or_skip():
    if not Path(AmpDataConfig().soundfont).is_file():
        pytest.skip("FluidR3_GM SoundFont not installed: apt-get install fluid-soundfont-gm")
    try:
        import fluidsynth  # noqa: F401
    except (ImportError, OSError):
        pytest.skip("pyfluidsynth/libfluidsynth not installed: apt-get install fluidsynth; pip install pyfluidsynth")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    _soundfont_or_skip()
    out = tmp_path_factory.mktemp("amp_data")
    cfg = AmpDataConfig.from_dict({"train_minutes": 0.3, "max_piece_seconds": 6, "min_piece_seconds": 3})
    build_dataset(cfg, out)
    return cfg, out


# --------------------------------------------------------------------------- ESR
def test_pre_emphasis_by_hand():
    assert np.allclose(pre_emphasis(np.array([1.0, 2.0, 3.0])), [1.0, 1.05, 1.1])
    assert np.allclose(pre_emphasis(np.array([[0.5, -0.5]]), 0.5), [[0.5, -0.75]])


def test_esr_by_hand():
    ref, est = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 2.0])
    assert esr(est, ref) == pytest.approx(1.0 / 14.0, rel=1e-12)
    # pre-emphasised: ref → [1, 1.05, 1.1], est → [1, 1.05, 0.1]: 1² / (1 + 1.05² + 1.1²)
    assert esr(est, ref, 0.95) == pytest.approx(1.0 / 3.3125, rel=1e-12)
    assert esr(ref, ref) == 0.0
    assert esr(np.zeros(3), ref) == pytest.approx(1.0)
    assert esr(-ref, ref) == pytest.approx(4.0)
    assert esr(np.zeros(3), np.zeros(3)) == 0.0 and esr(ref, np.zeros(3)) == float("inf")
    with pytest.raises(ValueError, match="same shape"):
        esr(ref[:2], ref)


def test_esr_loss_matches_numpy_and_has_gradients():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((3, 1, 500)).astype(np.float32)
    est = (ref + 0.3 * rng.standard_normal(ref.shape)).astype(np.float32)
    t_est = torch.from_numpy(est).requires_grad_()
    with torch.no_grad():
        pre = esr_loss(t_est, torch.from_numpy(ref), floor=0.0)
        plain = esr_loss(t_est, torch.from_numpy(ref), None, floor=0.0)
    for i in range(3):
        assert float(pre[i]) == pytest.approx(esr(est[i], ref[i], 0.95), rel=1e-5)
        assert float(plain[i]) == pytest.approx(esr(est[i], ref[i]), rel=1e-5)
    EsrLoss(reduction="mean")(t_est, torch.from_numpy(ref)).backward()
    assert t_est.grad is not None and float(t_est.grad.abs().sum()) > 0


def test_bootstrap_interval():
    assert bootstrap_ci([0.3]) == (0.3, 0.3)
    assert bootstrap_ci([2.0] * 5) == (2.0, 2.0)
    v = np.random.default_rng(1).normal(1.0, 0.2, 20)
    lo, hi = bootstrap_ci(v, 4000, seed=2)
    assert lo < v.mean() < hi and hi - lo < 0.3
    assert bootstrap_ci(v, 4000, seed=2) == (lo, hi)


# --------------------------------------------------------------------------- data
def test_levels_spread_over_20_db_and_are_pure_draws():
    cfg = AmpDataConfig()
    order = _piece_order(cfg)[:60]
    levels = [draw_performance(p, cfg).level_dbfs for p in order]
    assert max(levels) - min(levels) >= 20.0
    assert all(cfg.level_dbfs_range[0] <= v <= cfg.level_dbfs_range[1] for v in levels)
    assert [draw_performance(p, cfg).level_dbfs for p in order] == levels
    assert {p.role for p in order} == {"melody", "chords", "bass"}
    progs = {draw_performance(p, cfg).program for p in order}
    assert progs <= set(cfg.guitar_programs) | set(cfg.bass_programs) and len(progs) >= 4


def test_split_by_piece(tiny_data):
    cfg, out = tiny_data
    manifest = json.loads((out / "manifest.json").read_text())
    seen = {}
    for p in manifest["pieces"]:
        corpus = f"{p['corpus_path']}#{p['number'] or ''}"
        assert piece_split(corpus, cfg) == p["split"]
        assert seen.setdefault(corpus, p["split"]) == p["split"]
    assert all(manifest["splits"][s]["pieces"] for s in ("train", "valid", "test"))
    assert piece_split("bach/bwv66.6.mxl#", replace(cfg, train_minutes=50.0)) == piece_split("bach/bwv66.6.mxl#", cfg)


def test_di_levels_and_targets(tiny_data):
    cfg, out = tiny_data
    manifest = json.loads((out / "manifest.json").read_text())
    ids, pairs = load_split(out, "train")
    by_id = {p["piece_id"]: p for p in manifest["pieces"]}
    for pid, (x, y) in zip(ids, pairs):
        assert x.shape[0] == 1 and x.shape == y.shape
        assert 20 * np.log10(np.abs(x).max()) == pytest.approx(by_id[pid]["level_dbfs"], abs=0.01)
        # the target is the DI through the amp: strongly correlated but not a scaled copy
        g = float(np.dot(x[0], y[0]) / np.dot(x[0], x[0]))
        assert esr(g * x, y) > 0.2
    assert manifest["target_chain"]["processors"][0]["options"]["dsp"] == "tube_amp.dsp"


def test_dataset_is_deterministic_and_cached(tiny_data, tmp_path):
    cfg, out = tiny_data
    again = build_dataset(cfg, tmp_path / "again")
    for split in ("train", "test"):
        for f in sorted((out / split).glob("*.wav")):
            assert (again / split / f.name).read_bytes() == f.read_bytes(), f.name
    before = (again / "manifest.json").read_text()
    build_dataset(cfg, again)  # up to date: nothing rewritten
    assert (again / "manifest.json").read_text() == before
    clean = replace(cfg, amp="clean")
    build_dataset(clean, again)  # only the targets change
    render = json.loads((again / "manifest.json").read_text())["render"]
    assert render["rendered"] == 0 and render["targets_rendered"] == render["cached"] > 0
    _, clean_pairs = load_split(again, "train")
    build_dataset(replace(clean, invert_target=True), again)  # flipped polarity, targets only
    _, flipped = load_split(again, "train")
    assert all(np.array_equal(f[1], -c[1]) and np.array_equal(f[0], c[0]) for f, c in zip(flipped, clean_pairs))


# --------------------------------------------------------------------------- target amp
def test_tube_amp_is_non_inverting_and_drive_dependent():
    spec = target_chain(AmpDataConfig())
    amp = spec.build()
    assert len(amp.param_table) == 0  # nothing of the target is learned
    t = np.arange(SR // 2) / SR
    thd = []
    for level in (0.01, 0.3):
        x = (level * np.sin(2 * np.pi * 110 * t))[None].astype(np.float32)
        amp.reset()
        y = amp.process(x)[0, SR // 4 :]
        mag = np.abs(np.fft.rfft(y * np.hanning(len(y))))
        k = len(y) * 110 // SR
        fund = mag[k - 2 : k + 3].max()
        thd.append(np.sqrt(sum(mag[h * k - 2 : h * k + 3].max() ** 2 for h in (2, 3, 4, 5))) / fund)
    assert thd[1] > 3 * thd[0]  # louder input, more distortion
    # polarity: band-limited noise comes out positively correlated with it, within a few samples
    from scipy.signal import butter, sosfilt

    noise = sosfilt(butter(4, [200, 2000], btype="band", fs=SR, output="sos"),
                    np.random.default_rng(0).standard_normal(SR // 2))
    x = (0.01 * noise / np.abs(noise).max())[None].astype(np.float32)
    lags = np.arange(-100, 101)
    outputs = []
    for preset in ("driven", "clean"):
        live = target_chain(AmpDataConfig(amp=preset)).build()
        y = live.process(x)[0]
        outputs.append(y)
        c = np.array([np.dot(np.roll(y, -lag)[2000:-200], x[0, 2000:-200]) for lag in lags])
        k = int(np.argmax(np.abs(c)))
        assert c[k] > 0 and abs(lags[k]) <= 5, (preset, lags[k], c[k])
    assert esr(outputs[0], outputs[1]) > 0.1  # the two settings differ
    with pytest.raises(ValueError, match="amp preset"):
        AmpDataConfig(amp="brown")
    assert set(AMP_SETTINGS) == {"clean", "driven"}


def test_target_latency_is_removed():
    from deepafx.recipes.amp_emulation.data import _render_aligned

    lim = {"name": "lim", "processors": [{"backend": "pedalboard.BrickwallLimiter", "name": "lim"}]}
    live = target_chain(AmpDataConfig(target=lim)).build()
    assert live.latency_samples == 220  # 5 ms look-ahead at 44.1 kHz
    x = (0.05 * np.random.default_rng(0).standard_normal((1, 20000))).astype(np.float32)
    assert np.array_equal(_render_aligned(live, x), x)  # below the ceiling: the DI, sample-aligned


def test_builtin_chain_is_mono():
    cfg = load_config(QUICK)
    from deepafx.recipes import get_recipe

    chain = get_recipe("amp_emulation").bind(cfg).chain
    live = chain.build()
    x = (0.1 * np.random.default_rng(0).standard_normal((1, 4096))).astype(np.float32)
    y = live.process(x, np.full(len(live.param_table), 0.5))
    assert y.shape == (1, 4096) and live.latency_samples == 0


@pytest.mark.parametrize("name", ["quick", "quick_gx", "quick_zamtube", "quick_gx_zamtube", "full", "full_zam"])
def test_configs_bind_and_their_chains_render_mono(name):
    from deepafx.hosts.base import PluginError
    from deepafx.recipes import get_recipe

    cfg = get_recipe("amp_emulation").bind(load_config(f"amp_emulation/{name}"))
    assert cfg.model.channels == 1 and cfg.train.loss == "esr" and cfg.data.amp == "driven"
    paths = [p.options["path"] for p in cfg.chain.processors if "path" in p.options]
    missing = [path for path in paths if not Path(path).exists()]
    if missing:
        pytest.skip(f"{missing} not installed: apt-get install zam-plugins")
    try:
        live = cfg.chain.build()
    except PluginError as exc:
        pytest.skip(f"a plugin of {name} is not installed (guitarix: apt-get install guitarix-lv2): {exc}")
    try:
        x = (0.05 * np.random.default_rng(0).standard_normal((1, 8192))).astype(np.float32)
        y = live.process(x, np.full(len(live.param_table), 0.5))
        assert y.shape == (1, 8192) and np.all(np.isfinite(y))
        assert len(live.param_table) == {"quick": 23, "quick_gx": 9, "quick_zamtube": 23, "quick_gx_zamtube": 9, "full": 29, "full_zam": 22}[name]
        if name.endswith("zamtube"):  # an independent amp as the target, flipped back to the chain's polarity
            assert cfg.data.target["processors"][0]["options"]["path"].endswith("ZamTube.vst3") and cfg.data.invert_target
    finally:
        live.close()


def test_esr_loss_after_a_chains_latency():
    """A plugin chain's output is late by its reported latency (guitarix's amp: 128 samples); the training
    loss compares it after that shift, as the oracle and the evaluation do."""
    from deepafx.losses import build_loss

    ref = torch.from_numpy((0.3 * np.random.default_rng(7).standard_normal((2, 1, 4000))).astype(np.float32))
    late = torch.nn.functional.pad(ref, (128, 0))[..., :4000]
    loss = build_loss("esr", latency_samples=128, sample_rate=44100)
    assert torch.allclose(loss(late, ref), torch.zeros(2), atol=1e-6)
    assert (build_loss("esr", sample_rate=44100)(late, ref) > 0.5).all()
    with pytest.raises(ValueError, match="latency"):
        loss(late[..., :100], ref[..., :100])


# --------------------------------------------------------------------------- neural amp
def test_lstm_residual_and_streaming():
    from deepafx.recipes.amp_emulation.neural_amp import LstmAmp

    torch.manual_seed(0)
    m = LstmAmp(8)
    x = (0.1 * np.random.default_rng(0).standard_normal((1, 3000))).astype(np.float32)
    assert np.allclose(m.process(x, chunk_samples=700), m.process(x), atol=1e-6)
    with torch.no_grad():
        m.out.weight.zero_()
        m.out.bias.zero_()
    assert np.array_equal(m.process(x), x)  # residual skip: a zero head is the identity
    assert m.num_parameters == 4 * (8 * (1 + 8) + 2 * 8) + 8 + 1


def test_lstm_training_keeps_its_budget_and_learns():
    from deepafx.recipes.amp_emulation.neural_amp import NeuralAmpConfig, train_neural_amp

    rng = np.random.default_rng(0)
    x = (0.2 * rng.standard_normal((1, 3 * 8000))).astype(np.float32)
    y = np.tanh(4 * x).astype(np.float32) * 0.5
    cfg = NeuralAmpConfig(hidden_size=8, segment_samples=1200, warmup_samples=200, tbptt_samples=500, batch_size=8,
                          lr=1e-2)
    torch.manual_seed(0)
    before = esr(train_neural_amp([(x, y)], cfg, 1e-3).model.process(x), y)
    trained = train_neural_amp([(x, y)], cfg, 6.0)
    assert trained.seconds < 6.0 + 2.0 and trained.updates > 5 and trained.stopped == "budget"
    assert esr(trained.model.process(x), y) < 0.7 * before
    with pytest.raises(ValueError, match="nothing would stop"):
        train_neural_amp([(x, y)], NeuralAmpConfig(budget_seconds=None))


def test_lstm_early_stopping_keeps_the_best_validation_weights():
    from deepafx.recipes.amp_emulation.neural_amp import NeuralAmpConfig, _segment_loss, _draw_segments, \
        train_neural_amp

    rng = np.random.default_rng(1)
    x = (0.2 * rng.standard_normal((1, 4 * 8000))).astype(np.float32)
    y = (np.tanh(4 * x) * 0.5).astype(np.float32)
    train, valid = [(x[:, :24000], y[:, :24000])], [(x[:, 24000:], y[:, 24000:])]
    base = dict(hidden_size=8, segment_samples=1200, warmup_samples=200, tbptt_samples=500, batch_size=8, lr=1e-2,
                budget_seconds=60.0, valid_every_updates=4, valid_segments=6)
    # an improvement must cut the loss tenfold: after the first check none counts, so training stops `patience` checks later
    stuck = train_neural_amp(train, NeuralAmpConfig(**base, patience=2, min_improvement=0.9), valid_tracks=valid)
    assert stuck.stopped == "early_stop" and stuck.best_update == 4 and stuck.updates == 12
    assert [u for u, _ in stuck.valid_history] == [4, 8, 12]
    # the weights kept are the first check's: their validation loss is the one recorded
    cfg = NeuralAmpConfig(**base)
    vx, vy = _draw_segments(valid, np.random.default_rng([cfg.seed, 202]), cfg.valid_segments, cfg.segment_samples,
                            cfg.min_segment_rms)
    with torch.no_grad():
        kept = float(_segment_loss(stuck.model, torch.from_numpy(vx), torch.from_numpy(vy), cfg.warmup_samples)[0])
    assert kept == pytest.approx(stuck.valid_history[0][1], rel=1e-5) == pytest.approx(stuck.best_valid_loss)
    # to convergence it learns: the validation loss falls well below the first check's
    conv = train_neural_amp(train, NeuralAmpConfig(**base, patience=4, max_updates=400), valid_tracks=valid)
    assert conv.stopped in ("early_stop", "max_updates") and conv.best_valid_loss < 0.7 * conv.valid_history[0][1]
    assert conv.best_valid_loss == min(v for _, v in conv.valid_history)


def test_the_lstm_sees_training_and_validation_pieces_only(tiny_data):
    from deepafx.recipes.amp_emulation.evaluate import EvaluateConfig, _neural_amp

    _, ddir = tiny_data
    ec = EvaluateConfig(neural_amp={"hidden_size": 4, "segment_samples": 2000, "warmup_samples": 200,
                                    "batch_size": 2, "budget_seconds": 1.0})
    _, info = _neural_amp(ec, {}, Path("none.pt"), ddir)
    ids = {s: set(load_split(ddir, s)[0]) for s in ("train", "valid", "test")}
    assert ids["valid"] and ids["test"]
    assert set(info["train_piece_ids"]) == ids["train"] and set(info["valid_piece_ids"]) == ids["valid"]
    assert not (ids["train"] | ids["valid"]) & ids["test"]


def test_the_trained_lstm_is_kept_with_the_data_and_reused(tiny_data):
    """Another chain's evaluation on the same data (or a rerun) reuses the LSTM of the same settings and
    seed; another seed trains its own."""
    import torch

    from deepafx.recipes.amp_emulation.evaluate import EvaluateConfig, _neural_amp

    _, ddir = tiny_data
    ec = EvaluateConfig(neural_amp={"hidden_size": 4, "segment_samples": 2000, "warmup_samples": 200,
                                    "batch_size": 2, "max_updates": 3, "valid_every_updates": 2})
    first, info = _neural_amp(ec, {"config": {"train": {"seed": 11}}}, Path("none.pt"), ddir)
    again, info2 = _neural_amp(ec, {"config": {"train": {"seed": 11}}}, Path("none.pt"), ddir)
    assert not info["reused"] and info2["reused"] and info2["cache"] == info["cache"]
    assert Path(info["cache"]).parent == Path(ddir) / "baselines" and info2["seconds"] == info["seconds"]
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    other, info3 = _neural_amp(ec, {"config": {"train": {"seed": 12}}}, Path("none.pt"), ddir)
    assert not info3["reused"] and info3["cache"] != info["cache"] and info3["settings"]["seed"] == 12
    off = EvaluateConfig(neural_amp=ec.neural_amp, neural_amp_cache=False)
    assert _neural_amp(off, {"config": {"train": {"seed": 11}}}, Path("none.pt"), ddir)[1]["cache"] is None


# --------------------------------------------------------------------------- fair oracle (CMA-ES on ESR)
def test_esr_objective_by_hand_and_after_latency():
    from deepafx.automation.oracle import EsrObjective

    rng = np.random.default_rng(4)
    t = (0.3 * rng.standard_normal((1, 4000))).astype(np.float32)
    obj = EsrObjective(t, latency_samples=0)
    y = (0.8 * t).astype(np.float32)
    assert obj([t, y]) == pytest.approx([0.0, esr(y, t, 0.95)], abs=1e-12)
    assert EsrObjective(t, pre_emphasis=None)([y])[0] == pytest.approx(esr(y, t), rel=1e-9)
    # output sample n + 128 is compared with target sample n; the target's last 128 samples are not scored
    late = np.pad(t, ((0, 0), (128, 0)))[:, : t.shape[1]]
    assert EsrObjective(t, latency_samples=128)([late])[0] == pytest.approx(0.0, abs=1e-12)
    assert EsrObjective(t, latency_samples=0)([late])[0] > 0.5
    with pytest.raises(ValueError, match="silent"):
        EsrObjective(np.zeros((1, 100)))
    with pytest.raises(ValueError, match="latency_samples"):
        EsrObjective(t, latency_samples=4000)


def test_metrics_shift_a_chain_by_its_latency_as_the_oracle_does():
    """A chain method is scored after its reported latency, exactly as :class:`EsrObjective` scores it,
    so the fair oracle's rows are what its search minimised."""
    from deepafx.automation.oracle import EsrObjective
    from deepafx.recipes.amp_emulation.evaluate import EvaluateConfig, track_metrics

    rng = np.random.default_rng(7)
    t = (0.3 * rng.standard_normal((1, 44100))).astype(np.float32)
    y = (0.7 * t + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
    late = np.pad(y, ((0, 0), (128, 0)))[:, : t.shape[1]]  # what a chain with 128 samples of latency returns
    m = track_metrics(late, t, 44100, shift=128)
    assert m["lag_samples"] == 128
    assert m["esr_pre"] == pytest.approx(EsrObjective(t, latency_samples=128)([late])[0], rel=1e-9)
    assert m["esr_pre"] == pytest.approx(esr(y[:, :-128], t[:, :-128], 0.95), rel=1e-9)
    assert track_metrics(late, t, 44100)["esr_pre"] > 2 * m["esr_pre"]  # unshifted: far worse
    with pytest.raises(ValueError, match="shift"):
        track_metrics(late, t, 44100, shift=-1)
    with pytest.raises(ValueError, match="align"):
        EvaluateConfig(align="nearest")


def test_esr_oracle_records_its_budget_curve_on_whole_tracks():
    from conftest import music_like

    from deepafx.automation.oracle import CmaesOracle
    from deepafx.chain import chain

    spec = chain({"backend": "testing.waveshaper", "name": "ws"}, sample_rate=44100, name="ws")
    x = music_like(np.random.default_rng(5), samples=22050)
    truth = spec.param_table.normalize([3.0, 0.1, 0.8, 7.0])
    with CmaesOracle(spec, renders=29, popsize=8, excerpt_seconds=None, num_workers=1, seed=3,
                     objective="esr_pre") as oracle:
        target = oracle.render_track(x, truth)
        res = oracle.fit(x, target, checkpoints=(1, 9, 29))
        with pytest.raises(ValueError, match="checkpoints"):
            oracle.fit(x, target, checkpoints=(30,))
    assert res.objective_name == "esr_pre" and res.excerpt_seconds == pytest.approx(0.5)
    curve = [res.checkpoints[c]["objective"] for c in (1, 9, 29)]
    assert curve[0] == res.default_objective and curve[-1] == res.objective
    assert curve[0] >= curve[1] >= curve[2] and res.objective < 0.5 * res.default_objective
    assert np.allclose(res.checkpoints[29]["params"], res.params)
    assert res.checkpoints[9]["objective"] == res.history[1]  # defaults + one generation of 8
    with pytest.raises(ValueError, match="objective"):
        CmaesOracle(spec, objective="mse")


def test_esr_oracle_from_a_start_is_never_worse_than_it_or_the_defaults():
    from conftest import music_like

    from deepafx.automation.oracle import CmaesOracle
    from deepafx.chain import chain
    from deepafx.recipes.amp_emulation.evaluate import EvaluateConfig

    spec = chain({"backend": "testing.waveshaper", "name": "ws"}, sample_rate=44100, name="ws")
    x = music_like(np.random.default_rng(5), samples=22050)
    truth = spec.param_table.normalize([3.0, 0.1, 0.8, 7.0])
    near = np.clip(truth + 0.05, 0, 1)  # a start close to the answer, far from the defaults
    with CmaesOracle(spec, renders=18, popsize=8, excerpt_seconds=None, num_workers=1, seed=3,
                     objective="esr_pre") as oracle:
        target = oracle.render_track(x, truth)
        res = oracle.fit(x, target, checkpoints=(1, 2, 18), start=near)
        with pytest.raises(ValueError, match="start"):
            oracle.fit(x, target, start=np.full(4, 1.5))
        with pytest.raises(ValueError, match="start"):
            oracle.fit(x, target, start=np.zeros(3))
    from deepafx.automation.oracle import EsrObjective

    at_near = float(EsrObjective(target, 0, 0.95)([oracle_render(spec, x, near)])[0])
    assert res.checkpoints[1]["objective"] == res.default_objective  # the defaults first
    assert res.checkpoints[2]["objective"] == pytest.approx(min(res.default_objective, at_near), rel=1e-6)
    assert res.objective <= min(res.default_objective, at_near)
    assert EvaluateConfig(esr_oracle_start="static").esr_oracle_start == "static"
    with pytest.raises(ValueError, match="static_train"):
        EvaluateConfig(esr_oracle_start="static", static_train=False)
    with pytest.raises(ValueError, match="esr_oracle_start"):
        EvaluateConfig(esr_oracle_start="best")


def oracle_render(spec, x, params):
    from deepafx.automation.oracle import CmaesOracle

    with CmaesOracle(spec, renders=1, num_workers=1) as o:
        return o.render_track(x, params)


def test_esr_oracle_honours_a_real_plugins_latency():
    """guitarix's amp reports 128 samples of latency (fixed runs): at the settings that made the target,
    the ESR objective is 0 only once the output is shifted by it."""
    from deepafx.automation.oracle import CmaesOracle
    from deepafx.chain import ChainSpec
    from deepafx.hosts.base import PluginError

    try:
        spec = ChainSpec.from_file(Path(__file__).resolve().parents[1] / "plugins" / "chains" / "guitarix_amp.yaml")
        spec.build().close()
    except PluginError as exc:
        pytest.skip(f"guitarix LV2 amp not installed (Debian: guitarix-lv2): {exc}")
    x = (0.2 * np.sin(2 * np.pi * 110 * np.arange(22050) / 44100))[None].astype(np.float32)
    with CmaesOracle(spec, renders=1, excerpt_seconds=None, num_workers=1, objective="esr") as oracle:
        lat = oracle.pool.latency_samples
        out = oracle.render_track(x, oracle.defaults)
        aligned = np.pad(out[:, lat:], ((0, 0), (0, lat)))  # the target a DI/amp recording pair gives
        res = oracle.fit(x, aligned)
    assert lat == 128 and res.default_objective < 1e-6


# --------------------------------------------------------------------------- CLI
def _cli(*args):
    proc = subprocess.run([sys.executable, "-m", "deepafx.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"deepafx {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_cli_data_train_process_evaluate(tmp_path):
    _soundfont_or_skip()
    extra = ["train.epochs=1", "evaluate.cmaes_renders=8", "evaluate.esr_oracle_renders=[4, 8]",
             "evaluate.excerpt_seconds=2",
             "evaluate.neural_amp={budget_seconds: 4, segment_samples: 4000, batch_size: 4}"]
    sets = [x for o in TINY + extra for x in ("--set", o)]
    run, data = tmp_path / "run", tmp_path / "data"
    _cli("data", "--config", "amp_emulation/quick", "--out", data, *sets)
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["recipe"] == "amp_emulation" and manifest["splits"]["test"]["pieces"]
    _cli("train", "--config", "amp_emulation/quick", "--run-dir", run, "--data-dir", data, *sets)
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["recipe"] == "amp_emulation" and ckpt["task"]["train_seconds"] > 0

    # process a held-out DI at another rate, in stereo: converted to the model's mono and back to 48 kHz
    di = sorted((data / "test").glob("*_input.wav"))[0]
    x, sr = sf.read(di, dtype="float32")
    import soxr

    x48 = soxr.resample(x[: 2 * sr], sr, 48000)
    stereo = tmp_path / "di48.wav"
    sf.write(stereo, np.stack([x48, x48], 1), 48000)
    out = tmp_path / "amp.wav"
    proc = _cli("process", "--checkpoint", run, stereo, out, "--automation", tmp_path / "a.json", "--plot",
                tmp_path / "a.png")
    y, sr_out = sf.read(out, always_2d=True)
    assert sr_out == 48000 and y.shape == (len(x48), 1)
    assert "48000" in proc.stdout + proc.stderr
    auto = json.loads((tmp_path / "a.json").read_text())
    assert "dist.drive_db" in auto["parameters"] and len(auto["time_s"]) >= 2
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # bad input: a clear error and no partial output
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk")
    proc = subprocess.run([sys.executable, "-m", "deepafx.cli", "process", "--checkpoint", str(run), str(bad),
                           str(tmp_path / "bad_out.wav")], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "bad.wav" in proc.stderr and not (tmp_path / "bad_out.wav").exists()

    _cli("evaluate", "--config", "amp_emulation/quick", "--checkpoint", run, "--data-dir", data, *sets)
    results = json.loads((run / "eval" / "results.json").read_text())
    rows = results["test"]
    assert list(rows) == ["unprocessed", "default", "static_train", "oracle_spectral", "oracle_esr_4", "oracle_esr_8",
                          "model", "neural_amp"]
    # quick.yaml starts from the static preset: the evaluation scores the run's own (8 renders in TINY)
    static = results["settings"]["static_train"]
    assert static["source"] == str(run / "static_start.json") and static["renders"] == 8
    assert static["objective"] <= static["default_objective"]
    for method, row in rows.items():
        for key in ("esr", "esr_pre", "mrstft", "mfcc_cosine"):
            lo, hi = row[key]["ci95"]
            assert np.isfinite(row[key]["mean"]) and lo <= row[key]["mean"] <= hi, (method, key)
    assert rows["neural_amp"]["parameters"] == 4 * (32 * 33 + 64) + 33
    assert results["settings"]["neural_amp"]["budget_seconds"] == 4
    assert results["settings"]["neural_amp"]["stopped"] in ("budget", "early_stop")
    # the baselines draw with the run's training seed (train.seed=3 in the tiny overrides): a seed spread of their own
    assert results["settings"]["neural_amp"]["settings"]["seed"] == 3 and results["settings"]["oracle"]["seed"] == 3
    # the fair oracle's rows score what its search minimised (whole pieces, ESR after pre-emphasis), and more
    # renders never do worse
    for k, track in enumerate(results["tracks"]):
        for b in (4, 8):
            assert rows[f"oracle_esr_{b}"]["esr_pre"]["per_piece"][k] == pytest.approx(
                track["oracles"][f"oracle_esr_{b}"]["objective"], rel=1e-4)
        assert rows["oracle_esr_8"]["esr_pre"]["per_piece"][k] <= rows["oracle_esr_4"]["esr_pre"]["per_piece"][k]
        # the search starts from the defaults and keeps its best: never worse than them on what it minimises
        assert rows["oracle_esr_4"]["esr_pre"]["per_piece"][k] <= rows["default"]["esr_pre"]["per_piece"][k] + 1e-9
    # the DI row is the DI itself: its ESR is recomputable from the files
    ids, pairs = load_split(data, "test")
    assert rows["unprocessed"]["esr"]["per_piece"][0] == pytest.approx(esr(*pairs[0]), rel=1e-9)
    for png in ("comparison.png", "automation.png"):
        assert (run / "eval" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "eval" / "results.md").read_text().count("| neural_amp |") == 2
