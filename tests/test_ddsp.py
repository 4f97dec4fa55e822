"""DDSP processors against references: FFT peaks, band energies, RT60, scipy biquads, autograd."""

import numpy as np
import pytest
import torch
from scipy.signal import hilbert, sosfilt, welch

from deepafx import ddsp
from deepafx.hosts.base import AudioError, ProcessorSpec
from deepafx.params import Param, ParamTable, ParameterError


def _norm(table: ParamTable, values) -> torch.Tensor:
    """Plugin values → normalized tensor ``(batch, P)`` float64 (through the numpy table)."""
    return torch.from_numpy(table.normalize(np.asarray(values, dtype=np.float64)))


def _with(proc: ddsp.DDSPProcessor, **values) -> np.ndarray:
    """The processor's defaults with some values replaced, in units ``(P,)``."""
    return proc.param_table.values_from_mapping(values)


# ----------------------------------------------------------------------------- parameters and registry
def test_denormalize_matches_the_numpy_table_and_names_bad_parameters():
    table = ParamTable((Param("gain_db", -24, 24, 0, "dB"), Param("freq_hz", 20, 20000, 1000, "Hz", "log"),
                        Param("band_db", -80, 0, -20, "dB")))
    x = torch.rand(5, 3, dtype=torch.float64)
    np.testing.assert_allclose(ddsp.denormalize(table, x).numpy(), table.denormalize(x.numpy()), rtol=1e-12)
    xg = x.clone().requires_grad_(True)
    ddsp.denormalize(table, xg).sum().backward()
    assert torch.isfinite(xg.grad).all() and (xg.grad > 0).all()
    bad = x.clone()
    bad[2, 1] = 1.3
    with pytest.raises(ParameterError, match="freq_hz"):
        ddsp.denormalize(table, bad)
    bad[2, 1] = float("nan")
    with pytest.raises(ParameterError, match="freq_hz"):
        ddsp.denormalize(table, bad)
    with pytest.raises(ParameterError, match="expected 3"):
        ddsp.denormalize(table, x[:, :2])


def test_registry_builds_by_name_and_errors_list_the_choices():
    assert ddsp.DDSP_PROCESSORS.names() == ["ddsp.gain", "ddsp.harmonic", "ddsp.filtered_noise",
                                            "ddsp.harmonic_plus_noise", "ddsp.reverb", "ddsp.peq"]
    assert ddsp.is_differentiable("ddsp.peq") and not ddsp.is_differentiable("pedalboard.Gain")
    eq = ddsp.build_ddsp(ProcessorSpec("ddsp.peq", "eq", options={"num_peaks": 1}), 48000)
    assert eq.param_table.names == ["low_shelf_gain_db", "low_shelf_freq_hz", "low_shelf_q", "peak1_gain_db",
                                    "peak1_freq_hz", "peak1_q", "high_shelf_gain_db", "high_shelf_freq_hz",
                                    "high_shelf_q"]
    assert eq.param_table["peak1_freq_hz"].scale == "log" and eq.param_table["peak1_freq_hz"].unit == "Hz"
    with pytest.raises(ValueError, match="ddsp.peq"):
        ddsp.build_ddsp(ProcessorSpec("ddsp.nope", "x"), 44100)
    with pytest.raises(ValueError, match="accepted: min_db, max_db"):
        ddsp.build_ddsp(ProcessorSpec("ddsp.gain", "g", options={"gain": 3}), 44100)
    with pytest.raises(ParameterError, match="num_params 1"):
        ddsp.Gain()(torch.zeros(1, 1, 8), torch.zeros(1, 2))
    with pytest.raises(AudioError, match="batch, channels, samples"):
        ddsp.Gain()(torch.zeros(1, 8), torch.zeros(1, 1))


def test_gain_is_exact_in_db_and_time_varying_gain_is_interpolated():
    g = ddsp.Gain()
    x = torch.randn(2, 2, 100, dtype=torch.float64)
    y = g(x, _norm(g.param_table, [[-6.0], [12.0]]))
    gains = torch.tensor([10 ** (-6 / 20), 10 ** (12 / 20)], dtype=torch.float64)
    torch.testing.assert_close(y, x * gains[:, None, None])
    frames = _norm(g.param_table, [[[0.0], [20.0]]])  # (1, 2 frames, 1): 0 dB at sample 0 → 20 dB at the last
    y = g(torch.ones(1, 1, 101, dtype=torch.float64), frames)
    np.testing.assert_allclose(20 * np.log10(y[0, 0].numpy()), np.linspace(0, 20, 101), atol=1e-9)


# ----------------------------------------------------------------------------- harmonic synthesizer
def _peak(spectrum: np.ndarray, freqs: np.ndarray, centre: float, half_width: float) -> tuple[float, float]:
    """Frequency (parabolic interpolation) and magnitude of the largest bin within ``centre ± half_width`` Hz."""
    idx = np.nonzero(np.abs(freqs - centre) <= half_width)[0]
    i = idx[np.argmax(spectrum[idx])]
    a, b, c = np.log(spectrum[i - 1 : i + 2])
    d = 0.5 * (a - c) / (a - 2 * b + c)
    return freqs[i] + d * (freqs[1] - freqs[0]), float(spectrum[i])


def test_harmonic_partials_sit_at_multiples_of_f0_with_the_given_distribution():
    sr, n, f0 = 16000, 16000, 220.0
    synth = ddsp.Harmonic(sr, num_harmonics=8)
    dist = {f"harmonic_{k}": w for k, w in zip(range(1, 9), (1.0, 0.5, 0.0, 0.25, 0.8, 0.1, 0.0, 0.4))}
    vals = _with(synth, f0_hz=f0, amplitude=0.6, **dist)
    y = synth(torch.zeros(1, 2, n), _norm(synth.param_table, vals[None]))
    assert y.shape == (1, 2, n) and torch.equal(y[0, 0], y[0, 1])  # mono copied to every channel
    sig = y[0, 0].double().numpy()
    spec = np.abs(np.fft.rfft(sig * np.hanning(n), 8 * n))
    freqs = np.fft.rfftfreq(8 * n, 1 / sr)
    weights = np.array(list(dist.values()))
    weights = weights / weights.sum()
    ref = None
    for k, w in enumerate(weights, start=1):
        f, mag = _peak(spec, freqs, k * f0, f0 / 3)
        if w == 0:
            assert 20 * np.log10(mag / ref) < -80  # absent partial: only window leakage
            continue
        assert abs(f - k * f0) < 0.05, (k, f)
        ref = ref or mag / weights[0]
        assert 20 * np.log10(mag / ref / w) == pytest.approx(0.0, abs=0.05), k
    assert np.abs(sig).max() <= 0.6 + 1e-6


def test_harmonics_above_nyquist_are_removed_and_f0_glides_linearly():
    sr, n = 16000, 16000
    synth = ddsp.Harmonic(sr, num_harmonics=4)
    # f0 = 3000 Hz: harmonics 3 (9 kHz) and 4 (12 kHz) are above Nyquist and must not alias (to 7 kHz, 4 kHz)
    y = synth(torch.zeros(1, 1, n), _norm(synth.param_table, _with(synth, f0_hz=3000.0, amplitude=1.0,
                                                                    harmonic_1=1, harmonic_2=1, harmonic_3=1,
                                                                    harmonic_4=1)[None]))
    spec = np.abs(np.fft.rfft(y[0, 0].double().numpy() * np.hanning(n)))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    top = spec.max()
    for f in (4000.0, 7000.0):
        assert 20 * np.log10(spec[np.abs(freqs - f) < 50].max() / top) < -80
    # two frames: f0 glides from 200 to 400 Hz across the signal (frame 0 on sample 0, frame 1 on the last)
    frames = np.stack([_with(synth, f0_hz=f, amplitude=1.0, harmonic_1=1, harmonic_2=0, harmonic_3=0,
                             harmonic_4=0) for f in (200.0, 400.0)])[None]
    y = synth(torch.zeros(1, 1, n), _norm(synth.param_table, frames))[0, 0].double().numpy()
    inst = np.diff(np.unwrap(np.angle(hilbert(y)))) * sr / (2 * np.pi)
    t = np.arange(1, n)
    mid = slice(n // 10, 9 * n // 10)
    np.testing.assert_allclose(inst[mid], 200 + 200 * (t[mid] - 0.5) / (n - 1), atol=0.5)


# ----------------------------------------------------------------------------- filtered noise
def test_filtered_noise_band_energies_follow_the_magnitudes():
    sr, n = 16000, 4 * 16000
    noise = ddsp.FilteredNoise(sr, num_bands=17)
    k = np.arange(17)
    db = -6.0 - 24.0 * k / 16 + 6.0 * np.sin(k / 2.0)  # a smooth spectral shape, 1-2 dB per band
    y = noise(torch.zeros(1, 1, n), _norm(noise.param_table, db[None]))[0, 0].double().numpy()
    f, psd = welch(y, sr, nperseg=1024)
    centres = noise.band_centres_hz
    measured = np.array([10 * np.log10(psd[np.abs(f - c) <= 120].mean()) for c in centres])
    level = 10 * np.log10(2 * (1 / 3) / sr)  # uniform noise on [−1, 1]: variance 1/3, one-sided PSD
    # inner bands (the one-sided PSD halves DC and Nyquist): within 1 dB of the magnitudes ...
    np.testing.assert_allclose(measured[1:-1] - level, db[1:-1], atol=1.0)
    # ... and within 0.45 dB (3σ of the estimate) of the designed FIR's response over the same bins
    ir = ddsp.frequency_impulse_response(torch.from_numpy(10 ** (db / 20)), noise.window_size).numpy()
    h2 = np.abs(np.fft.rfft(ir, 1024)) ** 2
    designed = np.array([10 * np.log10(h2[np.abs(f - c) <= 120].mean()) for c in centres])
    np.testing.assert_allclose(measured[1:-1] - level, designed[1:-1], atol=0.45)
    # per-frame magnitudes: low bands loud in the first half, high bands in the second
    low, high = np.where(k < 8, 0.0, -60.0), np.where(k < 8, -60.0, 0.0)
    y = noise(torch.zeros(1, 1, n), _norm(noise.param_table, np.stack([low, low, high, high])[None]))[0, 0]
    for part, sign in ((y[: n // 4], 1), (y[-n // 4 :], -1)):
        f, psd = welch(part.double().numpy(), sr, nperseg=512)
        ratio = 10 * np.log10(psd[(f > 500) & (f < 3000)].mean() / psd[(f > 5000) & (f < 7500)].mean())
        assert sign * ratio > 40


def test_filtered_noise_is_seeded_and_takes_a_fixed_excitation():
    noise = ddsp.FilteredNoise(16000, num_bands=9, seed=3)
    p = torch.full((2, 9), 0.7)
    a = noise(torch.zeros(2, 1, 500), p)
    b = noise(torch.zeros(2, 1, 500), p)
    assert not torch.equal(a, b)  # fresh noise every call
    noise.reset()
    torch.testing.assert_close(noise(torch.zeros(2, 1, 500), p), a, rtol=0, atol=0)
    # all bands at 0 dB: a unit zero-phase impulse response (Hann-windowed), so the excitation passes unchanged
    e = torch.rand(1, 500, dtype=torch.float64) * 2 - 1
    y = noise.render(torch.zeros(1, 1, 500, dtype=torch.float64), torch.zeros(1, 9, dtype=torch.float64), noise=e)
    torch.testing.assert_close(y[0, 0], e[0], rtol=0, atol=1e-12)
    # harmonic plus noise is the sum of its two parts (same seed, same excitation)
    hpn = ddsp.HarmonicPlusNoise(16000, num_harmonics=4, num_bands=9, seed=3)
    h = ddsp.Harmonic(16000, num_harmonics=4)
    x = torch.rand(2, hpn.num_params)
    noise.reset()
    torch.testing.assert_close(hpn(torch.zeros(2, 1, 500), x),
                               h(torch.zeros(2, 1, 500), x[:, :6]) + noise(torch.zeros(2, 1, 500), x[:, 6:]))


# ----------------------------------------------------------------------------- reverb
def _rt60(ir: np.ndarray, sr: float) -> float:
    """RT60 by Schroeder backward integration, line fitted from −5 to −35 dB (T30 × 2)."""
    edc = np.cumsum(ir[::-1] ** 2)[::-1]
    edc_db = 10 * np.log10(edc / edc[0])
    sel = (edc_db <= -5) & (edc_db >= -35)
    slope = np.polyfit(np.nonzero(sel)[0] / sr, edc_db[sel], 1)[0]
    return -60.0 / slope


@pytest.mark.parametrize("decay_s", [0.3, 1.0])
def test_reverb_impulse_response_decays_at_the_given_rt60(decay_s):
    sr = 16000
    rev = ddsp.Reverb(sr, ir_seconds=1.5)
    impulse = torch.zeros(1, 1, 64, dtype=torch.float64)
    impulse[..., 0] = 1.0
    ir = rev.render(impulse, torch.tensor([[decay_s, 1.0]], dtype=torch.float64))[0, 0].numpy()
    assert ir.shape == (64 + int(1.5 * sr) - 1,)
    assert np.sum(ir ** 2) == pytest.approx(1.0, rel=1e-9)  # unit-energy wet path
    assert _rt60(ir, sr) == pytest.approx(decay_s, rel=0.03)


def test_reverb_mix_blends_dry_and_wet():
    rev = ddsp.Reverb(16000, ir_seconds=0.2)
    x = torch.randn(1, 2, 300, dtype=torch.float64)
    dry = rev.render(x, torch.tensor([[0.1, 0.0]], dtype=torch.float64))
    wet = rev.render(x, torch.tensor([[0.1, 1.0]], dtype=torch.float64))
    half = rev.render(x, torch.tensor([[0.1, 0.5]], dtype=torch.float64))
    torch.testing.assert_close(dry[..., :300], x, rtol=0, atol=1e-12)
    assert dry[..., 300:].abs().max() < 1e-12
    torch.testing.assert_close(half, 0.5 * (dry + wet), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- parametric EQ
def _rbj_sos(kind: str, gain_db: float, freq_hz: float, q: float, sr: float) -> np.ndarray:
    """One second-order section from the Audio EQ Cookbook, written out independently in numpy."""
    big_a, w0 = 10 ** (gain_db / 40), 2 * np.pi * freq_hz / sr
    c, alpha, sa = np.cos(w0), np.sin(w0) / (2 * q), np.sqrt(10 ** (gain_db / 40))
    if kind == "peak":
        b = [1 + alpha * big_a, -2 * c, 1 - alpha * big_a]
        a = [1 + alpha / big_a, -2 * c, 1 - alpha / big_a]
    elif kind == "low_shelf":
        b = [big_a * ((big_a + 1) - (big_a - 1) * c + 2 * sa * alpha), 2 * big_a * ((big_a - 1) - (big_a + 1) * c),
             big_a * ((big_a + 1) - (big_a - 1) * c - 2 * sa * alpha)]
        a = [(big_a + 1) + (big_a - 1) * c + 2 * sa * alpha, -2 * ((big_a - 1) + (big_a + 1) * c),
             (big_a + 1) + (big_a - 1) * c - 2 * sa * alpha]
    else:
        b = [big_a * ((big_a + 1) + (big_a - 1) * c + 2 * sa * alpha), -2 * big_a * ((big_a - 1) + (big_a + 1) * c),
             big_a * ((big_a + 1) + (big_a - 1) * c - 2 * sa * alpha)]
        a = [(big_a + 1) - (big_a - 1) * c + 2 * sa * alpha, 2 * ((big_a - 1) - (big_a + 1) * c),
             (big_a + 1) - (big_a - 1) * c - 2 * sa * alpha]
    return np.concatenate([np.array(b) / a[0], np.array(a) / a[0]])


def test_peq_matches_scipy_sosfilt_of_cookbook_biquads():
    """Within 1e-6 of full scale (float32 output), including the ringing after the block."""
    sr, n = 44100, 4096
    eq = ddsp.ParametricEQ(sr)
    rng = np.random.default_rng(0)
    vals = eq.param_table.denormalize(rng.uniform(size=(3, eq.num_params)))
    vals[2, 3:6] = [18.0, 30.0, 5.0]  # the slowest-decaying band the ranges allow: +18 dB, 30 Hz, Q 5
    x = np.zeros((3, 1, n), dtype=np.float32)
    x[:, :, :] = 0.3 * rng.standard_normal((3, 1, n))
    x[:, :, 100] = 1.0
    y = eq.render(torch.from_numpy(x), torch.from_numpy(vals)).numpy()
    assert y.dtype == np.float32 and y.shape[-1] > n + sr  # the slow band rings for seconds
    for i in range(3):
        sos = np.stack([_rbj_sos(kind, *vals[i, 3 * j : 3 * j + 3], sr) for j, (_, kind) in enumerate(eq.bands)])
        ref = sosfilt(sos, np.pad(x[i, 0].astype(np.float64), (0, y.shape[-1] - n)))
        assert np.abs(y[i, 0] - ref).max() <= 1e-6 * np.abs(ref).max()
    # cookbook identity: a peaking band's gain at its centre frequency is gain_db
    b, a = ddsp.biquad_coefficients("peak", torch.tensor([-9.0, 6.5], dtype=torch.float64),
                                    torch.tensor([441.0, 4410.0], dtype=torch.float64),
                                    torch.tensor([0.7, 3.0], dtype=torch.float64), sr)
    h = ddsp.biquad_response(b, a, 1000)  # bins of 44.1 Hz: 441 Hz is bin 10, 4410 Hz bin 100
    np.testing.assert_allclose(20 * np.log10(np.abs(h[[0, 1], [10, 100]].numpy())), [-9.0, 6.5], atol=1e-9)


def test_streamed_blocks_equal_one_shot_and_slots_are_independent():
    sr = 16000
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((2, 1, 3000)))
    for proc, vals in ((ddsp.ParametricEQ(sr), None), (ddsp.Reverb(sr, ir_seconds=0.3), [[0.25, 0.6]] * 2)):
        v = (torch.from_numpy(proc.param_table.denormalize(rng.uniform(size=(2, proc.num_params))))
             if vals is None else torch.tensor(vals, dtype=torch.float64))
        one = proc.render(x, v)[..., :3000]
        state = ddsp.TailState(3)
        parts = [state.apply(proc.render(x[..., a:b], v), b - a) for a, b in ((0, 700), (700, 710), (710, 3000))]
        torch.testing.assert_close(torch.cat(parts, -1), one, rtol=0, atol=1e-9)
        state.reset([0])
        again = state.apply(proc.render(x[..., :700], v), 700)
        torch.testing.assert_close(again[0], one[0, :, :700], rtol=0, atol=1e-12)  # reset: fresh
        assert (again[1] - one[1, :, :700]).abs().max() > 1e-3  # slot 1 kept its ringing


# ----------------------------------------------------------------------------- autograd
@pytest.mark.parametrize("backend,options", [
    ("ddsp.gain", {}),
    ("ddsp.harmonic", {"num_harmonics": 3}),
    ("ddsp.filtered_noise", {"num_bands": 5}),
    ("ddsp.reverb", {"ir_seconds": 0.004, "min_decay_seconds": 0.001}),
    ("ddsp.peq", {"num_peaks": 1}),
])
def test_gradients_are_exact(backend, options):
    """``torch.autograd.gradcheck`` (float64) of the normalized parameters, and of the audio for effects."""
    proc = ddsp.build_ddsp(ProcessorSpec(backend, "p", options=options),
                           8000 if backend != "ddsp.peq" else 44100)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 48, generator=g, dtype=torch.float64)
    p = (0.15 + 0.7 * torch.rand(2, proc.num_params, generator=g, dtype=torch.float64)).requires_grad_(True)

    def f(params, audio):
        proc.reset()  # the same noise on every call
        return proc(audio, params)

    inputs = (p, x.requires_grad_(not proc.is_instrument))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
