"""Dexed corpus: the sampler, the cached store (bit-equal to the on-the-fly features, atomic), the IF-Mel input,
training from cached features and the evaluation rows built on the corpus (corpus retrieval, CIs, NDB, pitch)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from deepafx.recipes.dexed_matching.data import build_dataset
from deepafx.recipes.dexed_matching.presets import load_factory_presets

REPO = Path(__file__).resolve().parent.parent
MEDIUM = REPO / "recipes" / "dexed_matching" / "medium.yaml"

TINY = [
    "data.max_factory_presets=14",
    "data.ood_programs=[0, 24, 40, 56, 71, 73]",
    "data.ood_test_programs=2",
    "data.ood_valid_programs=1",
    "data.test_fraction=0.2",
    "data.corpus_size=40",
    "data.num_workers=1",
    "model.cnn_channels=[8, 16]",
    "model.hidden=32",
    "train.batch_size=4",
    "train.spectral_batch_size=2",
    "train.voice_steps=2",
    "train.ploss_steps=3",
    "train.crossfade_steps=1",
    "train.synth_steps=1",
    "train.real_steps=1",
    "render.num_workers=1",
    "train.num_threads=1",
    "train.log_every=1",
    "evaluate.num_in_domain=3",
    "evaluate.num_out_of_domain=2",
    "evaluate.refine_renders=4",
    "evaluate.refine_methods=[retrieval_corpus, ploss]",
    "evaluate.num_workers=1",
]


def _cfg(bank_dir, *extra):
    from deepafx.config import load_config
    from deepafx.recipes import get_recipe

    return get_recipe("dexed_matching").bind(load_config(MEDIUM, TINY + [f"data.hexter_dir={bank_dir}", *extra]))


#: Distance (rad) from the IF's ±π branch cut within which a bin's phase increment is treated as undefined.
IF_CUT_MARGIN = 1e-3


def _if_off_cut(spec: np.ndarray, weights: np.ndarray, margin: float = IF_CUT_MARGIN) -> np.ndarray:
    """Where the mel-scaled instantaneous frequency is defined: ``(..., n_mels, frames)`` bool for a complex STFT
    ``(..., bins, frames)`` and mel weights ``(n_mels, bins)``.

    A bin's IF is its phase increment from the previous frame (in the first frame, its phase) wrapped to
    [−π, π) and divided by π. At ±π the wrap jumps by 2π: an increment within rounding of the cut is +1 or −1
    (its band moves by twice the bin's weight) depending on the last bit of atan2 and of the difference, which
    differ between CPUs, vector widths, numpy and torch, and where an element falls between threads. Such
    increments are not rare: a frame centred on an onset holds near-real bins, the DC and Nyquist bins are real,
    and a partial at an odd multiple of sample_rate / (2 · hop) advances by π per hop. A band/frame counts only
    if every bin of its mel triangle is at least ``margin`` from the cut: 1e-3 rad is over 1000 times the float32
    rounding of an increment (a few ulps of π, 2.4e-7 each), so no kept bin can change side on any CPU. No
    magnitude mask is needed when both sides take the phase of the same complex STFT values: a near-zero bin's
    phase is then the same number on both sides, and away from the cut its IF is as well conditioned as any."""
    inc = np.diff(np.angle(spec).astype(np.float64), axis=-1, prepend=0.0)
    to_cut = np.pi - np.abs(np.remainder(inc + np.pi, 2 * np.pi) - np.pi)
    support = (np.asarray(weights) > 0).astype(np.float64)
    return np.einsum("mf,...ft->...mt", support, (to_cut < margin).astype(np.float64)) == 0


@pytest.fixture(scope="module")
def tiny(bank_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("dexed_corpus")
    build_dataset({"data": _cfg(bank_dir).to_dict()["data"]}, d, progress=False)
    return d


def test_sampler_uses_training_voices_only(bank_dir):
    from deepafx.hosts.dexed_host import dexed_param_table, quantize_normalized
    from deepafx.recipes.dexed_matching.corpus import sample_corpus

    fx = np.stack([v.x for v in load_factory_presets(bank_dir)[:10]])
    x, src, kind, rad = sample_corpus(fx, 100, [0.02, 0.2], 0.3, np.random.default_rng(0))
    assert x.shape == (100, 145) and (kind == 0).sum() == 10 and (kind == 2).sum() == 30 and (kind == 1).sum() == 60
    np.testing.assert_allclose(quantize_normalized(x), x, atol=1e-6)  # on the DX7 grid (stored as float32)
    assert set(src[kind != 2]) <= set(range(10)) and (src[kind == 2] == -1).all()
    assert set(np.round(rad[kind == 1].astype(float), 3).tolist()) == {0.02, 0.2}
    # a marginal draw takes every parameter's value from some training voice
    t = dexed_param_table().index("transpose_semitones")
    for row in x[kind == 2]:
        for j in range(145):
            if j != t:
                assert np.isclose(row[j], fx[:, j]).any()
    # larger radii move further from the source voice
    d = np.abs(x[kind == 1] - fx[src[kind == 1]]).mean(1)
    assert d[rad[kind == 1] > 0.1].mean() > 2 * d[rad[kind == 1] < 0.1].mean()
    with pytest.raises(ValueError, match="corpus_size"):
        sample_corpus(fx, 5, [0.1], 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="corpus_radii"):
        sample_corpus(fx, 20, [0.0], 0.0, np.random.default_rng(0))


def test_corpus_features_equal_the_models_and_split_holds(bank_dir, tiny):
    from deepafx.hosts.dexed_host import MULTI_NOTES, DexedRenderer
    from deepafx.recipes.dexed_matching.corpus import Corpus
    from deepafx.recipes.dexed_matching.model import DexedEstimator

    c = Corpus(tiny / "corpus")
    meta = json.loads((tiny / "corpus" / "meta.json").read_text())
    assert len(c) == 40 and meta["notes"] == [list(n) for n in MULTI_NOTES] and c.features("ifmel").shape[1] == 6
    ind = np.load(tiny / "in_domain.npz")
    held_out = set(ind["source_test"]) | set(ind["source_valid"])
    assert not held_out & set(c.source[c.source >= 0])  # split by source voice
    # every corpus item derived from a voice derives from a training voice, of a group held out nowhere
    src = c.source[c.source >= 0]
    groups = ind["factory_cluster"]
    assert set(src.tolist()) <= set(ind["source_train"].tolist()) and (c.kind[c.source < 0] == 2).all()
    assert set(groups[src].tolist()).isdisjoint(groups[sorted(held_out)].tolist())
    idx = np.array([7, 0, 39])
    audio = torch.from_numpy(DexedRenderer(16000.0, MULTI_NOTES, 3.0, 4.0).render_batch(c.params[idx].astype(np.float64)))
    model = DexedEstimator(6, 16000.0, n_mels=64, hop_length=512, features="ifmel")
    cached = c.batch(idx, ["logmel", "ifmel"]).astype(np.float64)
    front = model.front
    with torch.no_grad():
        ours32 = front(audio.float()).numpy().astype(np.float64)
    assert cached.shape == ours32.shape == (3, 12, 64, 126)
    np.testing.assert_array_equal(model.features(audio).numpy(), ours32.astype(np.float16))  # the same call
    # The corpus computed its features in other batches (and threads) than this call. The STFT and the mel
    # products give each row the same values in any batch, but float32 elementwise kernels may round an element
    # by an ulp differently at vector and thread boundaries (torch.angle does), so bit-equality after the
    # float16 rounding is not guaranteed where a value lies within rounding of a float16 midpoint, nor in an IF
    # band at the branch cut (_if_off_cut). Asserted instead, and exactly that: every cached value is the
    # float16 rounding of a float32 within 1e-6 of ours (an ulp-level difference is below 1e-7 in these units)
    # — the same float16 value wherever its rounding is decided by more than 1e-6, a neighbour otherwise; a
    # wrong normalization, hop or note order is off by orders of magnitude more.
    spec = torch.stft(audio.float().reshape(-1, audio.shape[-1]), front.n_fft, front.hop_length, window=front.window,
                      center=True, pad_mode=front.pad_mode, return_complex=True).numpy()
    off_cut = _if_off_cut(spec.reshape(*audio.shape[:2], *spec.shape[-2:]), front.if_basis.numpy())
    assert off_cut.mean() > 0.9
    compared = np.concatenate([np.ones_like(off_cut), off_cut], axis=1)  # log-mel everywhere, IF off the cut
    half_step = np.spacing(np.abs(cached).astype(np.float16)).astype(np.float64) / 2  # of the float16 grid
    assert (np.abs(ours32 - cached) - half_step)[compared].max() <= 1e-6
    # up to date: a second build does not render again; changed settings rebuild
    mtime = (tiny / "corpus" / "params.npy").stat().st_mtime_ns
    build_dataset({"data": _cfg(bank_dir).to_dict()["data"]}, tiny, progress=False)
    assert (tiny / "corpus" / "params.npy").stat().st_mtime_ns == mtime


def test_interrupted_build_leaves_no_corpus(bank_dir, tmp_path, monkeypatch):
    from deepafx.recipes.dexed_matching import corpus as corpus_mod

    def boom(bounds):
        raise RuntimeError("render failed")

    monkeypatch.setattr(corpus_mod, "_render_chunk", boom)
    fx = np.stack([v.x for v in load_factory_presets(bank_dir)[:4]])
    with pytest.raises(RuntimeError, match="render failed"):
        corpus_mod.build_corpus(tmp_path / "corpus", fx, size=8, radii=[0.05], random_fraction=0.0, seed=0,
                                sample_rate=16000.0, notes=[(60, 85)], note_duration_seconds=0.5, duration_seconds=1.0,
                                feature=corpus_mod.FeatureSettings(), min_level_db=-60, num_workers=1, progress=False)
    assert not (tmp_path / "corpus").exists() and not (tmp_path / "corpus.tmp").exists()


def test_ifmel_channels():
    import librosa

    from deepafx.features import IFMel, LogMel

    # a 1 kHz sine (FFT bin 64) and seeded noise, made in float64 and rounded once: the input depends neither on
    # the CPU's float32 sin nor on the torch generator's state
    n = np.arange(32000)
    x64 = np.stack([np.sin(2 * np.pi * 1000 * n / 16000), 0.1 * np.random.default_rng(0).standard_normal(32000)])
    x = torch.from_numpy(x64.astype(np.float32))[None]
    front = IFMel(16000.0, n_fft=1024, hop_length=512, n_mels=64)
    f = front(x)
    assert f.shape == (1, 4, 64, 63)
    torch.testing.assert_close(f[:, :2], LogMel(16000.0, n_fft=1024, hop_length=512, n_mels=64)(x), rtol=0, atol=0)
    assert f[:, 2:].abs().max() <= 1.0
    # GANSynth's construction, computed independently: unwrap the phase along time, project on the mel scale
    # (triangles normalized to sum 1), differentiate in time, divide by π; in float64 from the same complex STFT
    spec = torch.stft(x.reshape(2, -1), 1024, 512, window=front.window, center=True, pad_mode="constant",
                      return_complex=True).numpy()
    phase = np.angle(spec).astype(np.float64)
    fb = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, norm=None).astype(np.float64)
    fb = fb / fb.sum(1, keepdims=True)
    ref = np.diff(np.einsum("mf,cft->cmt", fb, np.unwrap(phase, axis=-1)), axis=-1, prepend=0.0) / math.pi
    # compared where the IF is defined: off the ±π branch cut (see _if_off_cut). The sine's first frame is
    # centred on its onset: its spectrum is real up to rounding, with negative bins (phase ±π to within 1e-6
    # rad) in every band above the first, so those are excluded — bands 62 and 63 there differed by 0.087 on
    # some CPUs (the sign of a rounding-sized imaginary part picks +1 or −1).
    ok = _if_off_cut(spec, fb)
    assert not ok[0, 1:, 0].any() and ok.mean() > 0.97
    np.testing.assert_allclose(f[0, 2:].numpy()[ok], ref[ok], rtol=0, atol=1e-5)  # measured ≤ 2e-7
    # the comparison catches a wrong IF: without the unwrapping (raw phase differences) or with the wrong hop
    # (256: half the phase advance per frame) it is off by more than 0.5 where compared
    raw = np.diff(np.einsum("mf,cft->cmt", fb, phase), axis=-1, prepend=0.0) / math.pi
    hop_256 = IFMel(16000.0, n_fft=1024, hop_length=256, n_mels=64)(x)[0, 2:, :, ::2].numpy()  # same frame centres
    for wrong in (raw, hop_256):
        assert np.abs(wrong - ref)[ok].max() > 0.5


def test_training_from_the_corpus_and_evaluation_rows(bank_dir, tiny, tmp_path):
    from deepafx.recipes.dexed_matching.evaluate import evaluate_from_config, results_table
    from deepafx.recipes.dexed_matching.train import train_from_config

    cfg = _cfg(bank_dir)
    out = train_from_config(cfg, tmp_path / "run", tiny)
    assert [h["stage"] for h in out["history"]] == ["voice"] * 2 + ["ploss"] * 3 + ["crossfade", "synth", "real"]
    res = json.loads(evaluate_from_config(cfg, tmp_path / "run", tmp_path / "eval", data_dir=tiny, progress=False)
                     .read_text())
    m = res["models"]
    assert {"retrieval", "retrieval_corpus", "voice", "ploss", "synth", "real", "retrieval_corpus+refine",
            "ploss+refine"} == set(m)  # the medium config's voice classifier is on
    for method in m:
        i = m[method]["in_domain"]
        assert i["n"] == 3 and i["lsd_ci"][0] <= i["lsd"] <= i["lsd_ci"][1]
        assert 0 <= i["pitch_correct"] <= 1 and i["ndb_k"] == 2 and 0 <= i["ndb"] <= 2
    # the corpus holds the training voices, so corpus retrieval is at least as close as factory retrieval in its metric
    assert res["paired"] and {p["b"] for p in res["paired"]} >= {"retrieval", "retrieval_corpus"}
    # each stage trained through the synth is paired with the network it starts from, in both domains
    stages = {(p["a"], p["b"], p["domain"]) for p in res["paired"]}
    assert {("synth", "ploss", "in_domain"), ("real", "synth", "out_of_domain")} <= stages
    table = results_table(res)
    assert "| retrieval_corpus |" in table and "95 % CI" in table and "paired LSD difference" in table
    _check_param_drift(tmp_path / "run", tiny)
    _check_stage_gain(tmp_path / "run", tiny)
    _check_calibration_sweep(tmp_path / "run", tiny)
    _check_neighbour_spread(tmp_path / "run", tiny)


def _check_param_drift(run: Path, data_dir: Path) -> None:
    """benchmarks/dexed_param_drift.py on a trained run: every (domain, stage) row, changes on [0, 1],
    the test split refused."""
    import contextlib
    import io

    from conftest import load_script

    mod = load_script("dexed_param_drift")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert mod.main([str(run), "--data-dir", str(data_dir), "--top", "3"]) == 0
    out = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert {(r["domain"], r["stage"]) for r in out["rows"]} == {
        (d, s) for d in ("in_domain", "out_of_domain") for s in ("synth", "real")}
    for r in out["rows"]:
        assert 0 <= r["mean_abs_change"] <= 1 and len(r["largest"]) == 3 and r["n"] >= 1
        assert r["discrete_params"] == 54 and 0 <= r["discrete_changed_per_sound"] <= 54
    with pytest.raises(SystemExit, match="validation"):
        mod.main([str(run), "--data-dir", str(data_dir), "--split", "test"])
    with pytest.raises(SystemExit, match="checkpoints"):
        mod.main([str(run.parent), "--data-dir", str(data_dir)])


def _check_stage_gain(run: Path, data_dir: Path) -> None:
    """benchmarks/dexed_stage_gain.py: a stage against itself is 0 on every pair; synth against ploss on training
    and validation voices, per seed; the test split refused."""
    import contextlib
    import io

    from conftest import load_script

    mod = load_script("dexed_stage_gain")

    def rows(*extra):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert mod.main([str(run), "--data-dir", str(data_dir), "--voices", "2", *extra]) == 0
        return json.loads(buf.getvalue().strip().splitlines()[-1])["rows"]

    same = rows("--a", "ploss", "--b", "ploss")
    assert [r["split"] for r in same] == ["train", "valid"] and all(r["mean"] == 0 and r["a_lower"] == 0 for r in same)
    out = rows()
    assert out[0]["voices"] == 2 and out[0]["seeds"] == 1 and all(np.isfinite(r["mean"]) for r in out)
    assert any(r["mean"] != 0 for r in out)  # the spectral stages moved the estimates
    with pytest.raises(SystemExit, match="validation"):
        mod.main([str(run), "--data-dir", str(data_dir), "--splits", "test"])
    with pytest.raises(SystemExit, match="checkpoints"):
        mod.main([str(run), "--data-dir", str(data_dir), "--a", "nothing"])


def _check_calibration_sweep(run: Path, data_dir: Path) -> None:
    """benchmarks/dexed_calibration_sweep.py: scale 1 is the estimate itself (0 on every pair); a shrink to half
    changes it; in-domain training rows and in- and out-of-domain validation rows; the test split refused."""
    import contextlib
    import io

    from conftest import load_script

    mod = load_script("dexed_calibration_sweep")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert mod.main([str(run), "--data-dir", str(data_dir), "--voices", "2", "--scales", "1", "0.5"]) == 0
    rows = json.loads(buf.getvalue().strip().splitlines()[-1])["rows"]
    assert [(r["split"], r["domain"]) for r in rows[::2]] == [("train", "in_domain"), ("valid", "in_domain"),
                                                             ("valid", "out_of_domain")]
    assert all(r["mean"] == 0 and r["lower"] == 0 for r in rows if r["scale"] == 1)
    assert any(r["mean"] != 0 for r in rows if r["scale"] == 0.5)
    with pytest.raises(SystemExit, match="validation"):
        mod.main([str(run), "--data-dir", str(data_dir), "--splits", "test"])
    with pytest.raises(SystemExit, match="positive"):
        mod.main([str(run), "--data-dir", str(data_dir), "--scales", "0"])


def _check_neighbour_spread(run: Path, data_dir: Path) -> None:
    """benchmarks/dexed_neighbour_spread.py: training and validation rows; keeping the best of more neighbours
    never gains less (the start kept), and never raises the LSD; its summary on made-up values is exact; bad
    arguments and the test split refused."""
    import contextlib
    import io

    from conftest import load_script

    mod = load_script("dexed_neighbour_spread")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert mod.main([str(run), "--data-dir", str(data_dir), "--voices", "2", "--draws", "4"]) == 0
    rows = json.loads(buf.getvalue().strip().splitlines()[-1])["rows"]
    assert [r["split"] for r in rows] == ["train", "valid"]
    for r in rows:
        best = [r["best_of_n"][n]["mean"] for n in ("1", "4")]
        assert best[1] <= best[0] <= 0 and r["spread"] >= 0 and r["odd_rms"] >= 0 and 0 <= r["odd_share"] <= 1
    # one seed, one voice at 10 dB; neighbours +Δ1, +Δ2 at 9 and 12 dB, −Δ1, −Δ2 at 11 and 12 dB
    out = mod.summarize(np.array([[10.0]]), np.array([[[9.0, 12.0, 11.0, 12.0]]]), (1, 2, 4))
    assert out["odd_rms"] == pytest.approx(np.sqrt((1.0 + 0.0) / 2), abs=1e-3) and out["even"] == pytest.approx(1.0)
    assert out["odd_share"] == pytest.approx(0.5 / (0.5 + 2.0), abs=1e-3)  # o = −1, 0; e = 0, 2 (variance 2)
    assert [out["best_of_n"][n]["mean"] for n in ("1", "2", "4")] == [-1.0, -1.0, -1.0]
    assert out["best_of_n"]["4"]["per_seed"] == [-1.0] and out["odd_share_per_seed"] == [pytest.approx(0.2, abs=1e-3)]
    worse = mod.summarize(np.array([[8.0]]), np.array([[[9.0, 12.0, 11.0, 12.0]]]), (4,))
    assert worse["best_of_n"]["4"]["mean"] == 0.0  # nothing lower than the start: it is kept
    with pytest.raises(SystemExit, match="validation"):
        mod.main([str(run), "--data-dir", str(data_dir), "--splits", "test"])
    with pytest.raises(SystemExit, match="even"):
        mod.main([str(run), "--data-dir", str(data_dir), "--draws", "3"])


def test_all_categorical_heads_decode_modes_on_the_dx7_grid():
    from deepafx.hosts.dexed_host import dexed_param_table
    from deepafx.recipes.dexed_matching.model import DexedEstimator

    table = dexed_param_table()
    kw = dict(architecture="cnn2d", n_mels=16, hop_length=512, cnn_channels=[4, 8], hidden=16)
    nc = DexedEstimator(6, 16000.0, **kw)
    assert nc.layout.num_numeric == 91  # NumCat++: the 0..99 parameters (and the 49-value transpose) are numeric
    model = DexedEstimator(6, 16000.0, max_categories=100, **kw)
    assert model.layout.num_numeric == 0 and len(model.layout.discrete_counts) == len(table)
    torch.manual_seed(0)
    out = model(torch.randn(3, 6, 16, 20))
    x_true = torch.rand(3, len(table))
    loss, parts = model.p_loss(out, x_true)
    assert torch.isfinite(loss) and parts["l1"] == 0.0
    # the transpose head is not trained: changing its target leaves the loss unchanged
    t = table.index("transpose_semitones")
    x2 = x_true.clone()
    x2[:, t] = 1.0 - x2[:, t]
    torch.testing.assert_close(model.p_loss(out, x2)[0], loss)
    x = model.to_normalized(out, torch.tensor([60.0, 62.0, 48.0])).numpy()
    levels = np.array([p.num_values or 100 for p in table])
    np.testing.assert_allclose(x * (levels - 1), np.rint(x * (levels - 1)), atol=1e-4)  # on the integer grid
    with pytest.raises(ValueError, match="max_categories"):
        DexedEstimator(6, 16000.0, max_categories=1, **kw)


def test_all_categorical_model_trains_ploss_and_refuses_spectral_stages(bank_dir, tiny, tmp_path):
    from deepafx.recipes.dexed_matching.model import predict
    from deepafx.recipes.dexed_matching.train import load_estimator, train_from_config

    with pytest.raises(ValueError, match="max_categories=100 leaves none"):
        train_from_config(_cfg(bank_dir, "model.max_categories=100", "train.ploss_steps=1"), tmp_path / "bad", tiny)
    cfg = _cfg(bank_dir, "model.max_categories=100", "train.crossfade_steps=0", "train.synth_steps=0",
               "train.real_steps=0")
    out = train_from_config(cfg, tmp_path / "run", tiny)
    assert [h["stage"] for h in out["history"]] == ["voice"] * 2 + ["ploss"] * 3
    model, _ = load_estimator(tmp_path / "run" / "checkpoints" / "ploss.pt")
    assert model.layout.num_numeric == 0
    x = predict(model, np.zeros((1, 6, 64000), np.float32) + 1e-3, np.array([60]))
    assert x.shape == (1, 145) and np.isfinite(x).all()


def test_nearest_voice_labels_are_retrievals_choice(tiny):
    from deepafx.recipes.dexed_matching.corpus import Corpus

    c = Corpus(tiny / "corpus")
    rows, labels = c.nearest_voices(chunk=7)  # several chunks
    assert np.array_equal(rows, np.flatnonzero(c.kind == 0)) and labels.shape == (len(c),)
    feats = np.asarray(c.features("logmel"), dtype=np.float64).reshape(len(c), -1)
    for i in range(len(c)):
        if i not in set(c.valid_index):
            assert labels[i] == -1
            continue
        d = np.linalg.norm(feats[rows] - feats[i], axis=1)
        assert d[labels[i]] <= d.min() + 1e-6 * max(d.min(), 1.0), i
    assert np.array_equal(labels[rows], np.arange(len(rows)))  # a voice is its own nearest voice


def test_lsd_voice_labels_are_the_evaluation_metric_cached_atomically(tiny):
    from deepafx.hosts.dexed_host import DexedRenderer
    from deepafx.metrics import lsd_db
    from deepafx.recipes.dexed_matching.corpus import Corpus
    from deepafx.recipes.dexed_matching.train import TrainConfig

    c = Corpus(tiny / "corpus")
    (tiny / "corpus" / "voice_lsd.npy").unlink(missing_ok=True)
    rows, labels, table = c.nearest_voices(metric="lsd", distances=True, num_workers=1, progress=False)
    assert table.shape == (len(c), len(rows))
    m = c.meta
    renderer = DexedRenderer(m["sample_rate"], tuple(tuple(p) for p in m["notes"]), m["note_duration_s"], m["duration_s"])
    audio = renderer.render_batch(np.asarray(c.params, dtype=np.float64))
    valid = set(c.valid_index.tolist())
    for i in range(len(c)):
        if i not in valid:
            assert labels[i] == -1 and np.isnan(table[i]).all()
            continue
        exact = np.array([lsd_db(audio[v], audio[i]) for v in rows])  # the evaluation's metric, float64
        np.testing.assert_allclose(table[i], exact, atol=0.03)
        assert exact[labels[i]] <= exact.min() + 0.03, i
    assert np.array_equal(labels[rows], np.arange(len(rows)))  # 0 dB to itself
    # cached: read back, not recomputed; the process pool computes the same table; no temporary file left
    cache = tiny / "corpus" / "voice_lsd.npy"
    stamp = cache.stat().st_mtime_ns
    np.testing.assert_array_equal(c.voice_lsd(num_workers=1, progress=False), table)
    assert cache.stat().st_mtime_ns == stamp
    cache.unlink()
    np.testing.assert_array_equal(c.voice_lsd(num_workers=2, progress=False), table)
    assert sorted(p.name for p in cache.parent.glob("voice_lsd*")) == ["voice_lsd.npy"]
    with pytest.raises(ValueError, match="voice-label metric"):
        c.nearest_voices(metric="mfcc")
    with pytest.raises(ValueError, match="voice_labels must be one of"):
        TrainConfig.from_dict({"voice_labels": "euclid"})


def test_voice_classifier_learns_trains_with_the_schedule_and_is_an_evaluation_row(bank_dir, tiny, tmp_path):
    from deepafx.recipes.dexed_matching.corpus import Corpus
    from deepafx.recipes.dexed_matching.evaluate import evaluate_from_config
    from deepafx.recipes.dexed_matching.model import DexedEstimator, predict_voice
    from deepafx.recipes.dexed_matching.presets import set_transpose
    from deepafx.recipes.dexed_matching.train import load_estimator, train_from_config

    kw = dict(architecture="cnn2d", n_mels=64, hop_length=512, cnn_channels=[8, 16], hidden=32, voice_classifier=True)
    with pytest.raises(ValueError, match="voice_classifier needs"):
        DexedEstimator(6, 16000.0, 5, **{**kw, "architecture": "gru"})
    with pytest.raises(ValueError, match="at least 2 voices"):
        DexedEstimator(6, 16000.0, 0, **kw)
    # the head learns: the classifier memorizes the nearest-voice labels of the tiny corpus
    c = Corpus(tiny / "corpus")
    rows, labels = c.nearest_voices()
    torch.manual_seed(0)
    model = DexedEstimator(6, 16000.0, len(rows), **kw)
    feats = torch.from_numpy(c.batch(c.valid_index, ["logmel"]).astype(np.float32))
    y = torch.from_numpy(labels[c.valid_index])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(80):
        loss = model.voice_ce(model(feats), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    acc = float((model(feats).class_logits.argmax(1) == y).float().mean())
    assert acc >= 0.9, acc
    # in the schedule: its own first stage, saved with the voices, evaluated as the "voice" row
    with pytest.raises(ValueError, match="voice_steps >= 1"):
        train_from_config(_cfg(bank_dir, "train.voice_steps=0"), tmp_path / "bad", tiny)
    cfg = _cfg(bank_dir, "model.voice_classifier=true", "evaluate.refine_methods=[voice]")
    out = train_from_config(cfg, tmp_path / "run", tiny)
    assert [h["stage"] for h in out["history"]][:3] == ["voice"] * 2 + ["ploss"]
    assert all("voice_ce" in h for h in out["history"] if h["stage"] == "voice")
    est, ckpt = load_estimator(tmp_path / "run" / "checkpoints" / "voice.pt")
    voices = np.asarray(ckpt["voice_x"])
    assert est.num_voices == len(rows) and np.array_equal(voices, c.params[rows])
    audio = np.random.default_rng(0).standard_normal((2, 6, 64000)).astype(np.float32) * 0.1
    x = predict_voice(est, voices, audio, np.array([60, 62]))
    with torch.no_grad():
        pick = est(torch.from_numpy(audio)).class_logits.argmax(1).numpy()
    np.testing.assert_array_equal(x, set_transpose(voices[pick], np.array([0, 2])))
    with torch.no_grad():  # a stage computes only the heads its loss uses (DDP: no output without a gradient)
        full, only_params, only_voice = (est(torch.from_numpy(audio), heads=h) for h in ("all", "params", "voice"))
    assert only_params.class_logits is None and torch.equal(only_params.numeric, full.numeric)
    assert only_voice.numeric.shape == (2, 0) and not only_voice.discrete_logits
    assert torch.equal(only_voice.class_logits, full.class_logits)
    with pytest.raises(ValueError, match="heads must be one of"):
        est(torch.from_numpy(audio), heads="numeric")
    res = json.loads(evaluate_from_config(cfg, tmp_path / "run", tmp_path / "eval", data_dir=tiny, progress=False)
                     .read_text())
    assert {"voice", "voice+refine"} <= set(res["models"])
    assert res["models"]["voice"]["in_domain"]["n"] == 3
    # deepafx match offers the classifier's voice as a start point
    import subprocess
    import sys

    import soundfile as sf

    from deepafx.hosts.dexed_host import MULTI_NOTES, DexedRenderer

    target = DexedRenderer(16000.0, MULTI_NOTES, 3.0, 4.0).render(voices[1].astype(np.float64))
    sf.write(tmp_path / "six.wav", target.T, 16000)
    proc = subprocess.run([sys.executable, "-m", "deepafx.cli", "match", "--checkpoint",
                           str(tmp_path / "run" / "checkpoints" / "voice.pt"), str(tmp_path / "six.wav"),
                           str(tmp_path / "m"), "--refine-renders", "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    starts = next(line for line in proc.stdout.splitlines() if line.startswith("start points"))
    assert "network " in starts and "voice " in starts and "retrieval " in starts, starts
    # the start is the candidate with the lowest LSD (the metric reported), not the lowest spectral loss
    info = json.loads((tmp_path / "m" / "preset.json").read_text())
    assert set(info["start_lsd_db"]) == {"network", "voice", "retrieval"}
    assert info["start"] == min(info["start_lsd_db"], key=info["start_lsd_db"].get)


def test_ddp_voice_stage_with_lsd_labels(bank_dir, tiny, tmp_path):
    """Two gloo ranks through the voice stage (its unused parameter heads need ``find_unused_parameters``);
    rank 0 builds the LSD label cache while rank 1 waits, and both hold the same weights after every step."""
    from conftest import torchrun_train

    (tiny / "corpus" / "voice_lsd.npy").unlink(missing_ok=True)
    overrides = TINY + [f"data.hexter_dir={bank_dir}", "model.voice_classifier=true", "train.voice_labels=lsd"]
    proc = torchrun_train(MEDIUM, tmp_path / "ddp", tiny, overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tiny / "corpus" / "voice_lsd.npy").exists() and (tmp_path / "ddp" / "checkpoints" / "voice.pt").exists()
    lines = [json.loads(x) for x in (tmp_path / "ddp" / "history.jsonl").read_text().splitlines()]
    assert [h["stage"] for h in lines][:3] == ["voice", "voice", "ploss"]
    for line in lines:
        assert len(line["param_checksums"]) == 2 and line["param_checksums"][0] == line["param_checksums"][1]


def test_proxy_learns_dexed_features_and_its_loss():
    """mel_lsd is the per-frame RMS over mel bands of the dB difference; the proxy's shapes and errors."""
    from deepafx.recipes.dexed_matching.proxy import FEATURE_DB, DexedProxy, mel_lsd

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 6, 64, 10, generator=g), torch.rand(2, 6, 64, 10, generator=g)
    d = ((a - b) * FEATURE_DB).double()
    want = d.square().mean(2).sqrt().mean((1, 2))
    torch.testing.assert_close(mel_lsd(a, b).double(), want, rtol=1e-5, atol=1e-4)
    assert float(mel_lsd(a, a).max()) < 1e-3
    with pytest.raises(ValueError, match="one shape"):
        mel_lsd(a, b[:, :3])
    p = DexedProxy(145, 6, 64, 126, hidden=16, layers=1, proxy_frames=8)
    assert p(torch.rand(3, 145)).shape == (3, 6, 64, 126)
    with pytest.raises(ValueError, match="expected presets"):
        p(torch.rand(3, 144))
    with pytest.raises(ValueError, match=">= 1"):
        DexedProxy(145, 6, 64, 126, hidden=0)
    from deepafx.recipes.dexed_matching.train import GRADIENTS, TrainConfig

    assert {"spsa", "proxy"} <= set(GRADIENTS.names())
    with pytest.raises(ValueError, match="known: " + ", ".join(GRADIENTS.names())):  # every estimator listed
        TrainConfig.from_dict({"spectral_gradient": "reinforce"})
    with pytest.raises(ValueError, match="proxy_hidden must be >= 1"):
        TrainConfig.from_dict({"proxy_hidden": 0})


def test_proxy_gradient_branch_and_resume(bank_dir, tiny, tmp_path, monkeypatch):
    """train.spectral_gradient=proxy: the proxy is trained on the corpus (its held-out error beside that of
    the mean features), its gradient reaches only the free parameters, the reported loss is real Dexed's,
    and a run resumed inside a spectral stage repeats the uninterrupted one. --branch-from: a branch of that
    run at its P-loss checkpoint with the same config repeats it; one that changes the gradient estimator
    keeps the shared start and records the change; one that changes the data is refused."""
    from deepafx.config import apply_overrides
    from deepafx.recipes.dexed_matching import train as dtrain
    from deepafx.recipes.dexed_matching.corpus import Corpus
    from deepafx.recipes.dexed_matching.proxy import DexedProxy, mel_lsd, train_proxy
    from deepafx.trainer import train

    corpus = Corpus(tiny / "corpus")
    proxy, info = train_proxy(corpus, steps=40, batch_size=8, learning_rate=3e-3, seed=0, holdout=4, hidden=32,
                              layers=1, proxy_frames=8)
    assert not any(q.requires_grad for q in proxy.parameters()) and not proxy.training
    assert 0 < info["holdout_mel_lsd_db"] and 0 < info["holdout_mean_mel_lsd_db"]
    torch.manual_seed(0)  # the untrained proxy of the same seed scores worse on the training items
    fresh = DexedProxy(145, *corpus.features("logmel").shape[1:], hidden=32, layers=1, proxy_frames=8)
    rows = corpus.valid_index
    x = torch.from_numpy(corpus.params[rows].astype(np.float32))
    y = torch.from_numpy(np.asarray(corpus.features("logmel")[rows], dtype=np.float32))
    with torch.no_grad():
        assert float(mel_lsd(proxy(x), y).mean()) < float(mel_lsd(fresh(x), y).mean())
    with pytest.raises(ValueError, match="holdout"):
        train_proxy(corpus, steps=1, holdout=len(rows))

    grads = []
    orig = dtrain.GRADIENTS.get("proxy")

    def spy(task, xn, target, gstep, **kw):
        spec, surrogate, dropped = orig(task, xn, target, gstep, **kw)
        (g,) = torch.autograd.grad(surrogate, xn, retain_graph=True)
        grads.append((g, task.free.clone(), float(spec)))
        return spec, surrogate, dropped

    monkeypatch.setitem(dtrain.GRADIENTS._items, "proxy", spy)
    sets = ["train.spectral_gradient=proxy", "train.proxy_steps=6", "train.proxy_batch_size=4", "train.synth_steps=2"]
    cfg = _cfg(bank_dir, *sets)
    full = dtrain.train_from_config(cfg, tmp_path / "run", tiny)
    assert [h["stage"] for h in full["history"]][-4:] == ["crossfade", "synth", "synth", "real"]
    assert len(grads) == 4
    for g, free, spec in grads:
        assert bool((g[:, ~free] == 0).all()) and float(g[:, free].abs().sum()) > 0
        assert np.isfinite(spec) and spec > 0  # LSD of real renders, dB
    meta = json.loads((tmp_path / "run" / "proxy.json").read_text())
    assert meta["steps"] == 6 and meta["holdout_mel_lsd_db"] > 0
    strip = lambda h: [{k: v for k, v in r.items() if "second" not in k} for r in h]  # noqa: E731
    # stopped inside the synth stage and resumed: the same run (the proxy travels in the checkpoint)
    run2 = tmp_path / "run2"
    dtrain.train_from_config(_cfg(bank_dir, *sets, "train.max_steps=7"), run2, tiny)
    resumed = dtrain.train_from_config(cfg, run2, tiny, resume=True)
    assert strip(resumed["history"]) == strip(full["history"])
    last = lambda run: torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]  # noqa: E731
    a = last(tmp_path / "run")
    assert all(torch.equal(a[k], v) for k, v in last(run2).items())
    # branches from the P-loss checkpoint
    ploss = tmp_path / "run" / "checkpoints" / "ploss.pt"
    same = train(dtrain.DexedTask(cfg, tiny), tmp_path / "same", cfg, branch_from=ploss)
    assert strip(same["history"]) == strip(full["history"])
    assert all(torch.equal(a[k], v) for k, v in last(tmp_path / "same").items())
    assert json.loads((tmp_path / "same" / "branch.json").read_text())["changed"] == {}
    # a checkpoint written before a key existed: the key counts at its default, not as a change
    old = torch.load(ploss, weights_only=False)
    del old["config"]["train"]["proxy_hidden"]
    torch.save(old, tmp_path / "old.pt")
    train(dtrain.DexedTask(cfg, tiny), tmp_path / "old", cfg, branch_from=tmp_path / "old.pt")
    assert json.loads((tmp_path / "old" / "branch.json").read_text())["changed"] == {}
    spsa = _cfg(bank_dir, *sets[1:], "train.spectral_gradient=spsa")
    other = train(dtrain.DexedTask(spsa, tiny), tmp_path / "spsa", spsa, branch_from=ploss)
    n = len([h for h in full["history"] if h["stage"] in ("voice", "ploss")])
    assert strip(other["history"])[:n] == strip(full["history"])[:n]
    assert strip(other["history"])[n:] != strip(full["history"])[n:]
    branch = json.loads((tmp_path / "spsa" / "branch.json").read_text())
    assert branch["stage"] == "ploss" and branch["changed"] == {"train.spectral_gradient": ["proxy", "spsa"]}
    # the shared stages' checkpoints come along (an evaluation of the branch has their rows); its own follow
    assert branch["carried"] == ["voice", "ploss"]
    for name in ("voice", "ploss"):
        a_, b_ = (torch.load(r / "checkpoints" / f"{name}.pt", weights_only=False) for r in (tmp_path / "run", tmp_path / "spsa"))
        assert a_["state"]["global_step"] == b_["state"]["global_step"]
        assert all(torch.equal(a_["model"][k], v) for k, v in b_["model"].items())
    assert not all(torch.equal(v, last(tmp_path / "spsa")[k]) for k, v in a.items())
    with pytest.raises(ValueError, match="model.dropout"):
        bad = _cfg(bank_dir, *sets, "model.dropout=0.2")
        train(dtrain.DexedTask(bad, tiny), tmp_path / "bad", bad, branch_from=ploss)
    with pytest.raises(ValueError, match="pass one of them"):
        train(dtrain.DexedTask(cfg, tiny), tmp_path / "both", cfg, resume=True, branch_from=ploss)
    from deepafx.commands.train import branch_source

    with pytest.raises(FileNotFoundError, match="holds .*ploss"):
        branch_source(str(tmp_path / "run"), "synthh")
    assert branch_source(str(tmp_path / "run"), "ploss") == ploss


def test_voice_start_fine_tunes_a_residual_from_the_classifiers_choice(bank_dir, tiny, tmp_path):
    """train.spectral_start=voice: a branch of a run at its P-loss checkpoint (saved without the residual head)
    starts its spectral stages exactly at the voice classifier's choice (the ``voice`` row); SPSA trains only
    the residual, so the discrete and held parameters stay the chosen voice's; the evaluation pairs the Synth
    stage with the ``voice`` row; settings that cannot work are refused."""
    from deepafx.recipes.dexed_matching import train as dtrain
    from deepafx.recipes.dexed_matching.evaluate import evaluate_from_config
    from deepafx.recipes.dexed_matching.model import DexedEstimator, predict, predict_voice
    from deepafx.runs import load_checkpoint
    from deepafx.trainer import train

    cfg = _cfg(bank_dir)
    dtrain.train_from_config(cfg, tmp_path / "run", tiny)
    ckpts = tmp_path / "run" / "checkpoints"
    sets = ["train.spectral_start=voice", "train.crossfade_steps=0", "train.synth_steps=2",
            "train.spectral_learning_rate=0.01", "evaluate.refine_renders=0"]
    vcfg = _cfg(bank_dir, *sets)
    # from a checkpoint written before the key existed: it counts at its default, shown as default → value
    old = torch.load(ckpts / "ploss.pt", weights_only=False)
    del old["config"]["train"]["spectral_start"]
    torch.save(old, ckpts / "ploss_old.pt")
    train(dtrain.DexedTask(vcfg, tiny), tmp_path / "v", vcfg, branch_from=ckpts / "ploss_old.pt")
    branch = json.loads((tmp_path / "v" / "branch.json").read_text())
    assert branch["changed"]["train.spectral_start"] == ["ploss", "voice"]
    assert branch["new_parameters"] == 2  # the residual head's
    # at activation the estimate is the classifier's voice, intact
    voice_est, vck = dtrain.load_estimator(ckpts / "voice.pt")
    voices = np.asarray(vck["voice_x"])
    ploss = load_checkpoint(ckpts / "ploss.pt")
    start = DexedEstimator.from_description({**ploss["model_description"], "start": "voice"})
    start.load_state_dict(ploss["model"])  # a checkpoint from before the voice start loads (residual at zero)
    assert not start.holding
    start.activate_voice_start(vck["model"], voices)
    start.eval()
    audio = np.random.default_rng(1).standard_normal((3, 6, 64000)).astype(np.float32) * 0.1
    pitch = np.array([60, 62, 55])
    # (float32 network output against the float64 transpose of predict_voice: equal to well within a DX7 step)
    np.testing.assert_allclose(predict(start, audio, pitch), predict_voice(voice_est, voices, audio, pitch), atol=1e-6)
    # after the spectral stages only the residual's parameters differ from the voice
    tuned, _ = dtrain.load_estimator(tmp_path / "v" / "checkpoints" / "synth.pt")
    assert tuned.start == "voice" and tuned.holding and float(tuned.residual_head.weight.detach().abs().sum()) > 0
    x, xv = predict(tuned, audio, pitch), predict_voice(voice_est, voices, audio, pitch)
    fixed = ~np.isin(np.arange(x.shape[1]), np.asarray(tuned.layout.numeric_indices)[tuned.residual_mask.numpy()])
    np.testing.assert_allclose(x[:, fixed], xv[:, fixed], atol=1e-6)
    assert np.abs(x - xv).max() > 1e-3
    res = json.loads(evaluate_from_config(vcfg, tmp_path / "v", tmp_path / "eval", data_dir=tiny, progress=False)
                     .read_text())
    assert ("synth", "voice") in {(p["a"], p["b"]) for p in res["paired"]}
    assert ("synth", "ploss") not in {(p["a"], p["b"]) for p in res["paired"]}
    with pytest.raises(ValueError, match="crossfade_steps: 0"):
        _cfg(bank_dir, "train.spectral_start=voice")
    with pytest.raises(ValueError, match="spectral_start must be one of"):
        _cfg(bank_dir, "train.spectral_start=retrieval")
    with pytest.raises(ValueError, match="voice_classifier"):
        dtrain.train_from_config(_cfg(bank_dir, *sets, "model.voice_classifier=false"), tmp_path / "bad", tiny)
    with pytest.raises(ValueError, match="activate_voice_start needs"):
        voice_est.activate_voice_start(vck["model"], voices)


def test_spectral_items_from_the_marginal_draws(bank_dir, tiny, tmp_path, monkeypatch):
    """train.spectral_items: marginal: every in-domain item of the spectral stages is one of the corpus's
    marginal draws (kind 2), while the P-loss stage still draws from the whole corpus; a corpus without
    marginal draws is refused with a clear error."""
    from deepafx.recipes.dexed_matching import train as dtrain
    from deepafx.recipes.dexed_matching.corpus import Corpus

    kind = Corpus(tiny / "corpus").kind
    drawn = {"ploss": [], "spectral": []}
    orig = dtrain.DexedTask._in_domain_items

    def spy(self, rng, n, alpha):
        out = orig(self, rng, n, alpha)
        drawn["spectral" if alpha > 0 else "ploss"].extend(int(i) for i in out[-1])
        return out

    monkeypatch.setattr(dtrain.DexedTask, "_in_domain_items", spy)
    cfg = _cfg(bank_dir, "train.spectral_items=marginal", "train.crossfade_steps=0", "train.synth_steps=2")
    dtrain.train_from_config(cfg, tmp_path / "run", tiny)
    assert drawn["spectral"] and set(kind[drawn["spectral"]]) == {2}
    assert len(set(kind[drawn["ploss"]])) > 1
    with pytest.raises(ValueError, match="spectral_items"):
        dtrain.TrainConfig.from_dict({"spectral_items": "far"})
    init = Corpus.__init__

    def without_marginal_draws(self, *a, **k):
        init(self, *a, **k)
        self.kind = np.where(self.kind == 2, 1, self.kind).astype(np.int8)

    monkeypatch.setattr(Corpus, "__init__", without_marginal_draws)
    with pytest.raises(ValueError, match="marginal draws"):
        dtrain.train_from_config(cfg, tmp_path / "none", tiny)
