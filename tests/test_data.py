"""Tests of the data layer: corpus rendering, reference engineer, user pairs, stateful batching."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
import soxr

from deepafx.data import stateful
from deepafx.recipes.mastering import engineer, music, pairs
from deepafx.hosts.base import AudioError

SR = 44100
TINY = {
    "num_pieces": 3,
    "sources": ["bach_chorales"],
    "max_piece_seconds": 8.0,
    "min_piece_seconds": 4.0,
    "seed": 1,
    "valid_fraction": 0.2,
    "test_fraction": 0.2,
}


def _require_soundfont() -> None:
    if not Path(music.DEFAULT_SOUNDFONT).is_file():
        pytest.skip(f"SoundFont {music.DEFAULT_SOUNDFONT} absent (apt-get install fluid-soundfont-gm)")


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.glob("*/*.wav"))
    }


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    _require_soundfont()
    out = tmp_path_factory.mktemp("music") / "ds"
    music.build_dataset(TINY, out)
    return out


@pytest.fixture(scope="module")
def real_mix(tiny_dataset) -> np.ndarray:
    """A rendered unmastered mix ``(2, samples)`` from the tiny dataset."""
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    piece = manifest["splits"]["train"]["pieces"][0]
    x, sr = sf.read(tiny_dataset / "train" / f"{piece}_input.wav", dtype="float32", always_2d=True)
    assert sr == SR
    return np.ascontiguousarray(x.T)


# --------------------------------------------------------------------------- music
def test_dataset_layout_and_split_by_piece(tiny_dataset):
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    splits = manifest["splits"]
    assert sum(len(splits[s]["pieces"]) for s in music.SPLITS) == 3
    seen = [p for s in music.SPLITS for p in splits[s]["pieces"]]
    assert len(seen) == len(set(seen)), "a piece appears in two splits"
    assert all(len(splits[s]["pieces"]) == 1 for s in music.SPLITS)
    cfg = music.MusicDataConfig.from_dict(TINY)
    for s in music.SPLITS:
        files = sorted(p.name for p in (tiny_dataset / s).glob("*.wav"))
        assert files == sorted(f"{p}_{k}.wav" for p in splits[s]["pieces"] for k in ("input", "target"))
        for piece in splits[s]["pieces"]:
            assert music.piece_split(piece, cfg) == s
            info = sf.info(str(tiny_dataset / s / f"{piece}_input.wav"))
            assert info.samplerate == SR and info.channels == 2
            assert 4.0 <= info.duration <= 8.0 + 1e-6
    total = sum(p["seconds"] for p in manifest["pieces"])
    assert total == pytest.approx(sum(splits[s]["seconds"] for s in music.SPLITS), abs=1e-3)


def test_same_seed_same_bytes_and_cache(tiny_dataset, tmp_path):
    other = tmp_path / "again"
    music.build_dataset(TINY, other)
    assert _digest(other) == _digest(tiny_dataset)
    assert len(_digest(other)) == 6
    # Up to date: nothing is rewritten.
    mtimes = {p: p.stat().st_mtime_ns for p in other.glob("*/*.wav")}
    music.build_dataset(TINY, other)
    assert {p: p.stat().st_mtime_ns for p in other.glob("*/*.wav")} == mtimes
    # A target-only setting reuses the rendered inputs and re-masters.
    music.build_dataset(dict(TINY, target_lufs=-16.0), other)
    manifest = json.loads((other / "manifest.json").read_text())
    assert manifest["render"]["pieces_rendered"] == 0
    assert manifest["render"]["pieces_cached"] == 3
    assert {k: v for k, v in _digest(other).items() if k.endswith("_input.wav")} == {
        k: v for k, v in _digest(tiny_dataset).items() if k.endswith("_input.wav")
    }
    piece = manifest["pieces"][0]
    y, _ = sf.read(other / piece["split"] / f"{piece['piece_id']}_target.wav", always_2d=True)
    assert pyloudnorm.Meter(SR).integrated_loudness(y) == pytest.approx(-16.0, abs=0.5)


def test_different_seed_changes_audio():
    _require_soundfont()
    spec = next(p for p in music.list_candidates(["bach_chorales"]) if p.piece_id == "bach_bwv66.6")
    cfg0 = music.MusicDataConfig.from_dict(dict(TINY, max_piece_seconds=5.0))
    a = music.render_piece(spec, cfg0)
    b = music.render_piece(spec, cfg0)
    c = music.render_piece(spec, music.MusicDataConfig.from_dict(dict(TINY, max_piece_seconds=5.0, seed=2)))
    assert a.audio.shape == (2, b.audio.shape[1])
    assert np.array_equal(a.audio, b.audio)
    assert not np.array_equal(a.audio[:, : c.audio.shape[1]], c.audio[:, : a.audio.shape[1]])
    lo, hi = cfg0.input_lufs_range
    assert lo - 0.1 <= a.input_lufs <= hi + 0.1
    assert 20 * np.log10(np.max(np.abs(a.audio))) <= cfg0.input_peak_dbfs + 1e-3


def test_loading_fluidsynth_keeps_stdout_clean():
    """pyfluidsynth prints where it found the library when $CI is set; stdout must stay JSON-only."""
    import os
    import subprocess
    import sys

    _require_soundfont()
    code = ("from deepafx.data.soundfont import load_synth; from deepafx.recipes.mastering import music; "
            "s, _ = load_synth(music.DEFAULT_SOUNDFONT, 16000.0); s.delete()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CI": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == ""


def test_config_errors():
    with pytest.raises(ValueError, match=r"\[data\] unknown key\(s\) \['train_minute'\]"):
        music.MusicDataConfig.from_dict({"train_minute": 3})
    with pytest.raises(ValueError, match="unknown data preset"):
        music.MusicDataConfig.from_dict({"preset": "huge"})
    with pytest.raises(ValueError, match="valid_fraction"):
        music.MusicDataConfig.from_dict({"valid_fraction": 0.7})
    quick = music.MusicDataConfig.from_dict({"preset": "quick"})
    full = music.MusicDataConfig.from_dict({"preset": "full"})
    assert 3.0 <= quick.train_minutes <= 5.0
    assert full.train_minutes >= 30.0


# --------------------------------------------------------------------------- engineer
def test_engineer_meets_loudness_and_true_peak_on_real_music(real_mix):
    y, info = engineer.master(real_mix, SR, return_info=True)
    assert y.shape == real_mix.shape and y.dtype == np.float32
    assert pyloudnorm.Meter(SR).integrated_loudness(y.T.astype(np.float64)) == pytest.approx(-14.0, abs=0.5)
    assert engineer.true_peak_dbtp(y, SR) <= -1.0 + 0.02
    assert info.output_lufs == pytest.approx(-14.0, abs=0.1)
    assert np.all(np.abs(info.eq_gains_db) <= 6.0 + 1e-9)
    # Zero latency: the master is time-aligned with the input.
    lag, polarity, corr = pairs.estimate_lag(real_mix, y, max_lag_samples=2000)
    assert lag == 0 and polarity == 1 and corr > 0.9


def test_engineer_limits_a_hot_quiet_mix(real_mix):
    # Very quiet mix with one hot transient: needs large make-up gain and real limiting.
    x = real_mix * 10 ** (-12 / 20)
    x[:, SR] = 0.99
    y, info = engineer.master(x, SR, return_info=True)
    assert info.max_gain_reduction_db > 3.0
    assert engineer.true_peak_dbtp(y, SR) <= -1.0 + 0.02
    assert engineer.integrated_loudness(y, SR) == pytest.approx(-14.0, abs=0.5)


def test_engineer_eq_depends_on_input(real_mix):
    import pedalboard

    def shelf(gain_db):
        board = pedalboard.Pedalboard([pedalboard.HighShelfFilter(cutoff_frequency_hz=3000.0, gain_db=gain_db)])
        return board(real_mix, float(SR))

    bright, dark = shelf(+6.0), shelf(-6.0)
    centers, corr_bright = engineer.spectral_correction(bright, SR)
    _, corr_dark = engineer.spectral_correction(dark, SR)
    hi = (centers >= 5000) & (centers <= 10000)
    lo = (centers >= 100) & (centers <= 400)
    # The dark mix gets more high-frequency boost (or less cut) than the bright one.
    assert np.mean(corr_dark[hi] - corr_bright[hi]) > 3.0
    assert np.max(np.abs(corr_dark[lo] - corr_bright[lo])) < 1.5
    y_bright, y_dark = engineer.master(bright, SR), engineer.master(dark, SR)
    _, spec_b = engineer.long_term_spectrum_db(y_bright, SR)
    _, spec_d = engineer.long_term_spectrum_db(y_dark, SR)
    _, in_b = engineer.long_term_spectrum_db(bright, SR)
    _, in_d = engineer.long_term_spectrum_db(dark, SR)
    # Mastering narrows the 12 dB spectral gap between the two versions.
    assert np.mean((in_b - in_d)[hi]) - np.mean((spec_b - spec_d)[hi]) > 3.0


def test_engineer_errors():
    with pytest.raises(AudioError, match="silent"):
        engineer.master(np.zeros((2, SR)), SR)
    with pytest.raises(AudioError, match="NaN"):
        engineer.master(np.full((2, SR), np.nan), SR)
    with pytest.raises(AudioError, match=r"\(channels, samples\)"):
        engineer.master(np.zeros(SR), SR)
    with pytest.raises(ValueError, match="true_peak_dbtp"):
        engineer.master(np.ones((1, SR)) * 0.1, SR, true_peak_dbtp=1.0)


# --------------------------------------------------------------------------- pairs
def _write(path: Path, audio: np.ndarray, sr: int = SR) -> None:
    sf.write(str(path), audio.T, sr, subtype="PCM_24" if path.suffix == ".flac" else "FLOAT")


def _delayed(x: np.ndarray, lag: int) -> np.ndarray:
    return np.concatenate([np.zeros((x.shape[0], lag), np.float32), x], axis=1)


def test_pairs_recover_lag_resample_and_channels(real_mix, tmp_path, caplog):
    un, ma = tmp_path / "un", tmp_path / "ma"
    un.mkdir(), ma.mkdir()
    mastered = engineer.master(real_mix, SR)
    _write(un / "a.wav", real_mix)
    _write(ma / "a.flac", _delayed(mastered, 123))
    # b: mastered at 48 kHz, delayed by 480 samples at 48 kHz (= 441 at 44.1 kHz).
    _write(un / "b.wav", real_mix)
    m48 = np.ascontiguousarray(soxr.resample(mastered.T, SR, 48000, quality="VHQ").T)
    _write(ma / "b.wav", _delayed(m48, 480), 48000)
    # c: mono unmastered, stereo mastered, mastered early (negative lag).
    mono = real_mix.mean(axis=0, keepdims=True)
    _write(un / "c.wav", mono)
    _write(ma / "c.wav", np.repeat(mono, 2, axis=0)[:, 200:])
    with pytest.warns(UserWarning, match="48000 Hz -> 44100 Hz"):
        got = pairs.load_pairs(un, ma, SR)
    by = {p.name: p for p in got}
    assert sorted(by) == ["a", "b", "c"]
    assert abs(by["a"].lag_samples - 123) <= 2
    assert abs(by["b"].lag_samples - 441) <= 2
    assert abs(by["c"].lag_samples - (-200)) <= 2
    assert any("resampled 48000 Hz" in n for n in by["b"].notes)
    assert by["c"].input.shape[0] == 2 and any("mono duplicated" in n for n in by["c"].notes)
    for p in got:
        assert p.input.shape == p.target.shape and p.input.dtype == np.float32
        assert p.correlation > 0.8
    # Alignment is right: after it, input and (un-mastered-by-gain) target line up.
    a = by["a"]
    n = min(a.input.shape[1], 20000)
    c0 = np.corrcoef(a.input[0, SR : SR + n], a.target[0, SR : SR + n])[0, 1]
    assert c0 > 0.8


def test_pairs_errors_name_the_file(real_mix, tmp_path):
    un, ma = tmp_path / "un", tmp_path / "ma"
    un.mkdir(), ma.mkdir()
    _write(un / "song1.wav", real_mix)
    _write(un / "only_here.wav", real_mix)
    _write(ma / "song1.wav", real_mix)
    _write(ma / "only_there.wav", real_mix)
    with pytest.raises(ValueError, match=r"only_here.*only_there"):
        pairs.load_pairs(un, ma, SR)
    (un / "only_here.wav").unlink(), (ma / "only_there.wav").unlink()

    bad = real_mix.copy()
    bad[0, 100] = np.nan
    _write(ma / "song1.wav", bad)
    with pytest.raises(AudioError, match=r"song1\.wav contains NaN"):
        pairs.load_pairs(un, ma, SR)
    _write(ma / "song1.wav", np.zeros_like(real_mix))
    with pytest.raises(AudioError, match=r"song1\.wav is silent"):
        pairs.load_pairs(un, ma, SR)
    (ma / "song1.wav").write_bytes(b"RIFF not really a wave file")
    with pytest.raises(AudioError, match=r"cannot read .*song1\.wav"):
        pairs.load_pairs(un, ma, SR)
    _write(ma / "song1.wav", np.concatenate([real_mix, real_mix], axis=1))
    with pytest.raises(ValueError, match="song1.*apart"):
        pairs.load_pairs(un, ma, SR)
    rng = np.random.default_rng(0)
    _write(ma / "song1.wav", 0.1 * rng.standard_normal(real_mix.shape).astype(np.float32))
    with pytest.raises(ValueError, match="same music"):
        pairs.load_pairs(un, ma, SR)


# --------------------------------------------------------------------------- stateful batching
def _tracks(lengths, channels=2, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        x = rng.standard_normal((channels, n)).astype(np.float32)
        out.append((x, -x))
    return out


@pytest.mark.parametrize("mode", ["wrap", "drain"])
@pytest.mark.parametrize("random_offset", [False, True])
def test_batcher_consecutive_frames_and_resets(mode, random_offset):
    F, X, B = 64, 256, 3
    tracks = _tracks([1000, 64 * 9, 300, 2000, 700])
    b = stateful.StatefulBatcher(tracks, B, F, X, seed=3, epoch_mode=mode, random_offset=random_offset)
    last = [None] * B  # (track, position) of the previous frame in each slot
    before = (X - F) // 2
    for step in range(80):
        batch = b.next_batch()
        assert batch.context.shape == (B, 2, X) and batch.frame.shape == (B, 2, F)
        assert batch.context.dtype == np.float32 and batch.reset.dtype == bool
        if step == 0:
            assert batch.reset.all()
        for i in range(B):
            if not batch.active[i]:
                assert batch.track_ids[i] == -1 and not batch.frame[i].any()
                last[i] = None
                continue
            t, pos = int(batch.track_ids[i]), int(batch.positions[i])
            x, y = tracks[t]
            np.testing.assert_array_equal(batch.frame[i], x[:, pos : pos + F])
            np.testing.assert_array_equal(batch.target[i], y[:, pos : pos + F])
            lo = pos - before
            ctx = np.zeros((2, X), np.float32)
            a, e = max(lo, 0), min(lo + X, x.shape[1])
            ctx[:, a - lo : e - lo] = x[:, a:e]
            np.testing.assert_array_equal(batch.context[i], ctx)
            if batch.reset[i]:
                assert pos < F  # a new track starts at its (random) offset
            else:
                assert last[i] is not None and last[i] == (t, pos - F), "slot did not get the next frame"
            last[i] = (t, pos)
        if mode == "wrap":
            assert batch.active.all()


def test_batcher_drain_epoch_visits_every_frame_once():
    F, X, B = 50, 150, 4
    tracks = _tracks([510, 260, 1000, 120, 333, 780])
    b = stateful.StatefulBatcher(tracks, B, F, X, seed=1, epoch_mode="drain")
    expected = {(t, k * F) for t, n in enumerate(b.frames_per_track) for k in range(n)}
    for epoch in range(2):
        expected_batches = b.num_batches_per_epoch
        assert b.batches_until_epoch_end() == expected_batches
        seen = []
        batches = list(b)
        assert len(batches) == expected_batches
        assert batches[0].reset[batches[0].active].all()
        assert batches[-1].end_of_epoch and batches[-1].epoch == epoch
        for batch in batches:
            assert batch.epoch == epoch
            seen += [(int(t), int(p)) for t, p, a in zip(batch.track_ids, batch.positions, batch.active) if a]
        assert len(seen) == len(set(seen)) and set(seen) == expected


def test_batcher_wrap_epochs_and_estimate():
    F, X, B = 50, 150, 3
    tracks = _tracks([510, 260, 1000, 120, 333, 780, 90, 400])
    b = stateful.StatefulBatcher(tracks, B, F, X, seed=5, epoch_mode="wrap")
    total = 0
    n_epochs = 6
    for epoch in range(n_epochs):
        exact = b.batches_until_epoch_end()
        batches = list(b)
        assert len(batches) == exact
        assert batches[-1].end_of_epoch and batches[-1].epochs_completed == epoch + 1
        total += len(batches)
    # Batches are always full, so the per-epoch average converges to total_frames / B.
    assert abs(total / n_epochs - b.total_frames / B) <= 1 + max(b.frames_per_track) / B / n_epochs
    assert b.num_batches_per_epoch == -(-b.total_frames // B)


@pytest.mark.parametrize("mode", ["wrap", "drain"])
def test_batcher_resume_yields_the_same_batches(mode):
    F, X, B = 32, 96, 3
    tracks = _tracks([400, 130, 700, 90, 260])
    kw = dict(seed=11, epoch_mode=mode, random_offset=True, pad_last_frame=True)
    a = stateful.StatefulBatcher(tracks, B, F, X, **kw)
    for _ in range(37):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))
    b = stateful.StatefulBatcher(tracks, B, F, X, **kw)
    b.load_state_dict(state)
    for _ in range(60):
        x, y = a.next_batch(), b.next_batch()
        for name in ("context", "frame", "target", "reset", "active", "track_ids", "positions", "valid_samples"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=name)
        assert (x.epoch, x.end_of_epoch, x.step) == (y.epoch, y.end_of_epoch, y.step)
    c = stateful.StatefulBatcher(tracks, B, F, X, **dict(kw, seed=12))
    with pytest.raises(ValueError, match="seed"):
        c.load_state_dict(state)


def test_batcher_pad_last_frame_and_errors():
    tracks = _tracks([100])
    b = stateful.StatefulBatcher(tracks, 1, 64, 64, pad_last_frame=True, shuffle=False)
    first, second = b.next_batch(), b.next_batch()
    assert (first.valid_samples[0], second.valid_samples[0]) == (64, 36)
    assert not second.frame[0, :, 36:].any() and second.end_of_epoch
    with pytest.raises(ValueError, match="track 0 has 100 samples"):
        stateful.StatefulBatcher(tracks, 1, 128, 256)
    with pytest.raises(ValueError, match="channel"):
        stateful.StatefulBatcher(_tracks([300]) + _tracks([300], channels=1), 2, 64, 64)
    with pytest.raises(ValueError, match="target shape"):
        stateful.StatefulBatcher([(np.zeros((2, 300)), np.zeros((2, 299)))], 1, 64, 64)
    with pytest.raises(ValueError, match="context_samples"):
        stateful.StatefulBatcher(tracks, 1, 64, 32)


def test_batch_to_torch():
    torch = pytest.importorskip("torch")
    b = stateful.StatefulBatcher(_tracks([500, 600]), 2, 100, 300).next_batch()
    t = b.to_torch()
    assert t["context"].shape == (2, 2, 300) and t["context"].dtype == torch.float32
    assert t["reset"].dtype == torch.bool and bool(t["reset"].all())


# --------------------------------------------------------------------------- command
def test_data_command(tmp_path, capsys):
    _require_soundfont()
    from deepafx.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["data", "--help"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--config", "--out", "--force", "--set"):
        assert option in help_text
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "recipe: mastering\n"
        "data:\n  num_pieces: 3\n  sources: [bach_chorales]\n  max_piece_seconds: 5.0\n"
        "  min_piece_seconds: 4.0\n  seed: 4\n  valid_fraction: 0.2\n  test_fraction: 0.2\n"
    )
    out = tmp_path / "ds"
    assert main(["data", "--config", str(cfg), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["seed"] == 4 and len(manifest["pieces"]) == 3
    assert "ready" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: nonsense\ndata: {}\n")
    assert main(["data", "--config", str(bad), "--out", str(out)]) == 1
    assert "unknown recipe 'nonsense'; known: mastering" in capsys.readouterr().err


def test_load_split_feeds_the_batcher(tiny_dataset):
    tracks = music.load_split(tiny_dataset, "train")
    assert len(tracks) == 1 and tracks[0][0].shape == tracks[0][1].shape and tracks[0][0].shape[0] == 2
    b = stateful.StatefulBatcher(tracks, 2, 1024, 4096, seed=0)
    batch = b.next_batch()
    assert batch.frame.shape == (2, 2, 1024) and batch.reset.all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="split must be"):
            music.load_split(tiny_dataset, "training")
