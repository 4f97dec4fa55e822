"""Tests for the evaluation metrics: identities, known values, monotonicity, symmetry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepafx import metrics as M

SR = 22050


def _noise(channels: int = 2, seconds: float = 1.0, sr: int = SR, seed: int = 0, scale: float = 0.1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((channels, int(seconds * sr))) * scale


def _tones(sr: int = SR, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 660 * t) + 0.1 * np.sin(2 * np.pi * 1760 * t)
    return np.stack([x, 0.8 * x])


PAIRWISE = {
    "mfcc_cosine_distance": lambda e, r: M.mfcc_cosine_distance(e, r, SR),
    "mfcc_l1": lambda e, r: M.mfcc_l1(e, r, SR),
    "mrstft_distance": M.mrstft_distance,
    "lsd_db": M.lsd_db,
    "lufs_error": lambda e, r: M.lufs_error(e, r, SR),
}


@pytest.mark.parametrize("name", sorted(PAIRWISE))
def test_identity_is_zero(name):
    x = _tones()
    assert PAIRWISE[name](x, x) == 0.0
    assert PAIRWISE[name](x[0], x[0]) == 0.0


@pytest.mark.parametrize("name", sorted(PAIRWISE))
def test_symmetric(name):
    x = _tones()
    y = x + _noise(scale=0.02, seed=1)
    assert PAIRWISE[name](x, y) == pytest.approx(PAIRWISE[name](y, x), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", ["mfcc_cosine_distance", "mfcc_l1", "mrstft_distance", "lsd_db"])
def test_monotonic_in_added_noise(name):
    x = _tones()
    noise = _noise(seed=2)
    values = [PAIRWISE[name](x + a * noise, x) for a in (0.003, 0.03, 0.3, 3.0)]
    assert all(b > a for a, b in zip(values, values[1:])), values
    assert values[0] > 0


def test_monotonic_in_clipping_distortion():
    x = _tones()
    values = [M.mfcc_cosine_distance(np.clip(x, -c, c), x, SR) for c in (0.5, 0.3, 0.1, 0.02)]
    assert all(b > a for a, b in zip(values, values[1:])), values


def test_known_values_for_a_gain_change():
    x = _noise(seed=3)
    half = 0.5 * x
    ratio_db = 20 * math.log10(2)  # 6.0206 dB
    # A constant dB offset moves only c0 of an orthonormal DCT, by offset * sqrt(n_mels).
    assert M.mfcc_l1(half, x, SR) == pytest.approx(ratio_db * math.sqrt(128) / 20, rel=1e-4)
    assert M.lsd_db(half, x) == pytest.approx(ratio_db, rel=1e-5)
    assert M.mrstft_distance(half, x, linear_weight=0.0) == pytest.approx(math.log(2), rel=1e-4)
    # A polarity flip leaves the magnitude-based metrics at zero.
    assert M.mfcc_cosine_distance(-x, x, SR) == 0.0
    assert M.mrstft_distance(-x, x) == 0.0


def test_mfcc_cosine_distance_range_and_shape():
    x, y = _noise(seed=4), _tones()
    d = M.mfcc_cosine_distance(x, y, SR)
    assert 0.0 < d <= 2.0
    c = M.mfcc(x, SR, n_mfcc=13)
    assert c.shape == (2, 13, 1 + x.shape[1] // 512)


def test_mrstft_sizes_and_errors():
    x, y = _tones(), _tones() * 0.9
    single = [M.mrstft_distance(x, y, fft_sizes=(n,)) for n in M.MRSTFT_FFT_SIZES]
    assert M.mrstft_distance(x, y) == pytest.approx(np.mean(single), rel=1e-9)
    with pytest.raises(ValueError, match="overlap"):
        M.mrstft_distance(x, y, overlap=1.0)
    with pytest.raises(ValueError, match="fft_sizes"):
        M.mrstft_distance(x, y, fft_sizes=())


@pytest.mark.parametrize("sr", [44100, 48000])
def test_lufs_gain_error_and_sine_reference(sr):
    x = _noise(seconds=3.0, sr=sr, seed=5)
    assert M.lufs_error(x * 10 ** (-6 / 20), x, sr) == pytest.approx(6.0, abs=0.05)
    assert M.lufs(x * 2.0, sr) - M.lufs(x, sr) == pytest.approx(20 * math.log10(2), abs=0.01)
    # BS.1770: a full-scale 997 Hz sine on one channel reads -3.01 LUFS.
    t = np.arange(3 * sr) / sr
    assert M.lufs(np.sin(2 * np.pi * 997 * t), sr) == pytest.approx(-3.01, abs=0.1)


def test_lufs_edge_cases():
    assert M.lufs(np.zeros(SR), SR) == float("-inf")
    assert M.lufs_error(np.zeros(SR), np.zeros(SR), SR) == 0.0
    assert M.lufs_error(np.zeros(SR), _noise(1, seed=6)[0], SR) == float("inf")
    with pytest.raises(ValueError, match="400 ms"):
        M.lufs(_noise(1, seconds=0.3), SR)
    with pytest.raises(ValueError, match="up to 5 channels"):
        M.lufs(_noise(6), SR)
    with pytest.raises(ValueError, match="channel count"):
        M.lufs_error(_noise(1), _noise(2), SR)


@pytest.mark.parametrize("sr", [44100, 48000])
def test_true_peak_of_off_peak_sine(sr):
    # Sine at sample_rate / 4 with 45 degrees phase: every sample is at ±0.707,
    # the waveform itself reaches ±1.0. Short fades avoid the onset overshoot.
    n = sr
    x = np.sin(2 * np.pi * (sr / 4) * np.arange(n) / sr + np.pi / 4)
    fade = 0.5 - 0.5 * np.cos(np.pi * np.arange(sr // 100) / (sr // 100))
    x[: fade.size] *= fade
    x[-fade.size :] *= fade[::-1]
    assert M.sample_peak_dbfs(x) == pytest.approx(-3.0103, abs=0.01)
    assert M.true_peak_dbtp(x, sr) == pytest.approx(0.0, abs=0.05)
    assert M.true_peak_dbtp(x, sr, oversample=4) == pytest.approx(0.0, abs=0.05)
    assert M.true_peak_dbtp(0.5 * x, sr) == pytest.approx(M.true_peak_dbtp(x, sr) - 6.0206, abs=1e-6)
    # Without oversampling the true peak equals the sample peak.
    assert M.true_peak_dbtp(x, sr, oversample=1) == pytest.approx(M.sample_peak_dbfs(x), abs=1e-9)


def test_true_peak_edge_cases():
    assert M.true_peak_dbtp(np.zeros((2, 1000)), SR) == float("-inf")
    assert M.sample_peak_dbfs(np.zeros(10)) == float("-inf")
    assert M.true_peak_dbtp(np.full((1, 1000), 0.5), SR, oversample=4) >= 20 * math.log10(0.5)
    with pytest.raises(ValueError, match="oversample"):
        M.true_peak_dbtp(np.ones(100), SR, oversample=0)
    # At 192 kHz no oversampling is applied: true peak equals sample peak.
    x = _noise(1, seconds=0.1, sr=192000, seed=7)
    assert M.true_peak_dbtp(x, 192000) == pytest.approx(M.sample_peak_dbfs(x), abs=1e-12)


def test_input_validation():
    x = _tones()
    with pytest.raises(ValueError, match="same shape"):
        M.lsd_db(x, x[:, :-1])
    with pytest.raises(ValueError, match=r"\(channels, samples\)"):
        M.mrstft_distance(x[None], x[None])
    bad = x.copy()
    bad[0, 10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        M.mfcc_cosine_distance(bad, x, SR)
    with pytest.raises(ValueError, match="sample_rate"):
        M.mfcc_l1(x, x, 0)
    with pytest.raises(ValueError, match="empty"):
        M.true_peak_dbtp(np.zeros((1, 0)), SR)


def test_pitch_error_cents_of_a_semitone_and_a_cached_reference():
    from deepafx.metrics import note_pitch_hz, pitch_error_cents

    sr = 16000
    t = np.arange(3 * sr) / sr
    ref = np.stack([np.sin(2 * np.pi * 220.0 * t), np.zeros_like(t)])  # a note and a silent channel
    est = np.stack([np.sin(2 * np.pi * 220.0 * 2 ** (1 / 12) * t), np.sin(2 * np.pi * 220.0 * t)])
    cents = pitch_error_cents(est, ref, sr)
    assert abs(cents[0] - 100.0) < 5.0 and np.isnan(cents[1])
    ref_hz = np.array([note_pitch_hz(ch, sr) for ch in ref])
    np.testing.assert_array_equal(pitch_error_cents(est, ref, sr, ref_hz=ref_hz), cents)
    with pytest.raises(ValueError, match="one pitch per channel"):
        pitch_error_cents(est, ref, sr, ref_hz=ref_hz[:1])


def test_json_safe_gives_strict_json():
    import json

    res = M.json_safe({"a": (1.5, np.float32(np.nan), np.inf), "b": [np.int64(3), np.bool_(True), "x", None],
                       "c": {"d": -np.inf, "e": np.float64(2.0)}})
    assert res == {"a": [1.5, None, None], "b": [3, True, "x", None], "c": {"d": None, "e": 2.0}}
    assert type(res["b"][0]) is int and type(res["b"][1]) is bool and type(res["c"]["e"]) is float
    json.dumps(res, allow_nan=False)


def test_bootstrap_allow_nonfinite_keeps_finite_intervals_and_propagates_the_rest():
    v = np.random.default_rng(4).normal(1.0, 0.3, 12)
    assert M.bootstrap_ci(v, 500, seed=2, allow_nonfinite=True) == M.bootstrap_ci(v, 500, seed=2)
    bad = np.append(v, np.nan)
    with pytest.raises(ValueError, match="NaN/Inf"):
        M.bootstrap_ci(bad)
    lo, hi = M.bootstrap_ci(bad, 500, seed=2, allow_nonfinite=True)
    assert math.isnan(lo) and math.isnan(hi)


def test_align_to_target_recovers_a_delay_and_keeps_polarity():
    x = _noise(2, 0.5)
    delayed = np.concatenate([np.zeros((2, 30)), -x[:, :-30]], axis=1)  # 30 samples late, inverted
    out, tgt, lag = M.align_to_target(delayed, x, SR, max_delay_ms=5.0)
    assert lag == 30 and out.shape == tgt.shape == (2, x.shape[1] - 30)
    np.testing.assert_allclose(out, -tgt)
    assert M.align_to_target(delayed, x, SR, max_delay_ms=0.0)[2] == 0
