"""The hidden reference "engineer" that masters the unmastered mixes.

The mastering recipe needs targets that depend on the input: a fixed chain
setting would teach the encoder to output a constant. This module is the
reference engineer that produces those targets. Its processing is
deliberately *different* from the trainable chain (multiband compressor →
graphic EQ → limiter), so the network has to approximate a real engineer's
decisions with the plugins it is given rather than invert a copy of them.

How it masters (the paragraph the recipe README reuses)
-------------------------------------------------------
The engineer works in three stereo-linked stages. (1) **Spectral balance.**
It measures the long-term average spectrum of the mix (Welch's method, mean of
the channels' power spectra), averages it in 1/3-octave bands from 40 Hz to
16 kHz, and compares it with a *reference* long-term spectrum, as
reference-based mastering tools do (e.g. Matchering): the mean band levels of
48 uncoloured renders of the score corpus (chorales, quartets, madrigals, folk
tunes in varied ensembles), with 1.5 dB/octave of added "air" above 2 kHz.
Only the shape is compared (levels are aligned on the median difference
between 100 Hz and 5 kHz). The correction is 0.8 times the deviation; a band
more than 9 dB below the reference gets progressively less boost and none at
18 dB below (an engineer does not boost content that is not there); the result
is smoothed over about one octave (5 bands) and bounded to ±6 dB
(no boost below the lowest band) and applied as a
**linear-phase FIR** (window method, ``scipy.signal.firwin2``, about 190 ms of
taps, the delay compensated so the output is time-aligned with the input). A
linear-phase filter cannot be reproduced exactly by the chain's minimum-phase
graphic EQ, which is the point: the network must match the magnitude, and the
delay-invariant loss tolerates the remaining phase difference. (2) **Loudness.**
A static gain brings the integrated loudness (ITU-R BS.1770-4, gated, via
``pyloudnorm``) to −14 LUFS. (3) **True-peak ceiling.** A look-ahead,
stereo-linked, zero-latency (offline) gain-reduction limiter keeps the true
peak at or below −1 dBTP: the required gain is computed on the 4x
oversampled signal (``soxr``), held with a forward/backward minimum filter
(5 ms look-ahead, 50 ms hold) and smoothed with two cascaded moving averages,
a construction that never lets the applied gain exceed the required gain.
Because limiting lowers loudness, stages (2)–(3) are iterated (up to six
times) until the loudness is within 0.05 LU of the target and the true peak
within the ceiling; a final static trim guarantees the ceiling. Everything is
deterministic and depends on the input only through measured quantities
(spectrum, loudness, peaks), so two mixes with different balance get different
corrections.

All functions take ``(channels, samples)`` float audio.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.ndimage
import scipy.signal
import soxr

from deepafx import metrics
from deepafx.hosts.base import AudioError

__all__ = [
    "MasteringInfo",
    "band_centers_hz",
    "integrated_loudness",
    "long_term_spectrum_db",
    "master",
    "reference_curve_db",
    "spectral_correction",
    "true_peak_dbtp",
]

#: Version of the engineer's processing; part of dataset cache keys.
ENGINEER_VERSION = 2  # 2: loudness and true peak measured by deepafx.metrics


def _check(audio: np.ndarray, sample_rate: float, what: str = "audio") -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 2:
        raise AudioError(f"{what} must be (channels, samples), got shape {audio.shape}")
    if audio.shape[1] == 0:
        raise AudioError(f"{what} has no samples")
    if not sample_rate or sample_rate <= 0:
        raise AudioError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
    audio = np.ascontiguousarray(audio, dtype=np.float64)
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{what} contains NaN or Inf")
    return audio


def true_peak_dbtp(audio: np.ndarray, sample_rate: float, oversample: int = 4) -> float:
    """True-peak level in dBTP (ITU-R BS.1770-4 Annex 2), the same measurement
    the evaluation reports: :func:`deepafx.metrics.true_peak_dbtp`.

    Args:
        audio: ``(channels, samples)`` float audio, full scale = 1.0.
        sample_rate: Sample rate in Hz.
        oversample: Oversampling factor (>= 1; 4 per BS.1770-4).

    Returns:
        Highest absolute oversampled value over all channels, in dB re full
        scale (``-inf`` for digital silence).

    Raises:
        AudioError: not ``(channels, samples)``, empty, or NaN/Inf.
    """
    x = _check(audio, sample_rate)
    if oversample < 1:
        raise ValueError(f"oversample must be >= 1, got {oversample}")
    return _true_peak_db(x, sample_rate, oversample)


def _true_peak_db(x: np.ndarray, sample_rate: float, oversample: int) -> float:
    return metrics.true_peak_dbtp(x, sample_rate, oversample=oversample)


def _oversample(x: np.ndarray, sample_rate: float, factor: int) -> np.ndarray:
    """``(channels, samples)`` → ``(channels, samples * factor)`` float32 (soxr VHQ).

    float32 halves the memory traffic of the 4x signal; its 1e-7 relative
    precision is far below what a peak measurement in hundredths of a dB needs.
    """
    if factor == 1:
        return np.asarray(x, dtype=np.float32)
    y = soxr.resample(np.ascontiguousarray(x.T, dtype=np.float32), sample_rate, sample_rate * factor, quality="VHQ")
    return np.asarray(y).T


def integrated_loudness(audio: np.ndarray, sample_rate: float) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770-4, gated) via ``pyloudnorm``.

    Args:
        audio: ``(channels, samples)`` float audio, at least 0.4 s long.
        sample_rate: Sample rate in Hz.

    Returns:
        Loudness in LUFS (``-inf`` when everything is below the absolute gate).

    Raises:
        AudioError: bad shape, NaN/Inf, or shorter than one 400 ms gating block.
    """
    x = _check(audio, sample_rate)
    if x.shape[1] < int(0.4 * sample_rate) + 1:
        raise AudioError(
            f"audio has {x.shape[1]} samples ({x.shape[1] / sample_rate:.3f} s); "
            "integrated loudness needs at least 0.4 s"
        )
    return metrics.lufs(x, sample_rate)


def band_centers_hz(low_hz: float = 31.5, high_hz: float = 16000.0, bands_per_octave: int = 3) -> np.ndarray:
    """Fractional-octave band centre frequencies ``1000 * 2**(k / bands_per_octave)`` in Hz.

    Args:
        low_hz: Lowest centre to include (Hz).
        high_hz: Highest centre to include (Hz).
        bands_per_octave: Bands per octave (3 = third-octave).

    Returns:
        ``(num_bands,)`` float64 centres in Hz, ascending.
    """
    k_lo = int(np.ceil(bands_per_octave * np.log2(low_hz / 1000.0) - 1e-6))
    k_hi = int(np.floor(bands_per_octave * np.log2(high_hz / 1000.0) + 1e-6))
    return 1000.0 * 2.0 ** (np.arange(k_lo, k_hi + 1) / bands_per_octave)


def long_term_spectrum_db(
    audio: np.ndarray,
    sample_rate: float,
    centers_hz: np.ndarray | None = None,
    bands_per_octave: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Long-term average spectrum in fractional-octave bands.

    Welch power spectral density (Hann, 8192-sample segments at 44.1 kHz,
    scaled with the rate), averaged over channels, then averaged over the bins
    of each band ``[fc * 2**(-1/(2b)), fc * 2**(1/(2b)))`` (the nearest bin for
    bands narrower than one bin).

    Args:
        audio: ``(channels, samples)`` float audio.
        sample_rate: Sample rate in Hz.
        centers_hz: Band centres in Hz (default :func:`band_centers_hz`, capped
            below Nyquist).
        bands_per_octave: Bands per octave ``b`` of the band edges.

    Returns:
        ``(centers_hz, level_db)``: ``(num_bands,)`` centres in Hz and mean power
        spectral density per band in dB (re 1/Hz, full scale = 1.0).

    Raises:
        AudioError: bad shape, NaN/Inf, or digital silence.
    """
    x = _check(audio, sample_rate)
    if centers_hz is None:
        centers_hz = band_centers_hz(31.5, min(16000.0, 0.45 * sample_rate), bands_per_octave)
    centers_hz = np.asarray(centers_hz, dtype=np.float64)
    nperseg = int(2 ** round(np.log2(8192 * sample_rate / 44100.0)))
    nperseg = min(nperseg, x.shape[1])
    freqs, psd = scipy.signal.welch(x, fs=sample_rate, window="hann", nperseg=nperseg, axis=-1)
    psd = psd.mean(axis=0)
    if not np.any(psd > 0):
        raise AudioError("audio is digitally silent: no spectrum to balance")
    half = 2.0 ** (1.0 / (2 * bands_per_octave))
    levels = np.empty(len(centers_hz))
    for i, fc in enumerate(centers_hz):
        sel = (freqs >= fc / half) & (freqs < fc * half)
        p = psd[sel].mean() if np.any(sel) else psd[np.argmin(np.abs(freqs - fc))]
        levels[i] = 10.0 * np.log10(max(p, 1e-30))
    return centers_hz, levels


#: Reference long-term spectrum: 1/3-octave centres (Hz) and mean PSD level (dB, relative).
#: Measured as the mean over 48 renders of music21 corpus pieces (seeds 100-103,
#: 15-second excerpts, no colouring) of each piece's band levels minus their
#: median between 100 Hz and 5 kHz.
REFERENCE_CENTERS_HZ = (
    39.4, 49.6, 62.5, 78.7, 99.2, 125.0, 157.5, 198.4, 250.0, 315.0, 396.9, 500.0, 630.0, 793.7,
    1000.0, 1259.9, 1587.4, 2000.0, 2519.8, 3174.8, 4000.0, 5039.7, 6349.6, 8000.0, 10079.4, 12699.2, 16000.0,
)
REFERENCE_LEVELS_DB = (
    -24.2, -27.1, -24.8, -26.3, -17.4, -11.4, -5.9, -1.8, 0.7, 4.9, 7.7, 6.5, 5.9, 3.3,
    0.3, -0.0, -2.1, -4.3, -5.2, -9.3, -16.2, -22.9, -30.1, -38.4, -45.3, -52.0, -59.2,
)


def reference_curve_db(
    centers_hz: np.ndarray, air_db_per_octave: float = 1.5, air_start_hz: float = 2000.0
) -> np.ndarray:
    """The engineer's target band levels (dB, relative) at ``centers_hz``.

    :data:`REFERENCE_LEVELS_DB` interpolated over log-frequency, plus
    ``air_db_per_octave`` per octave above ``air_start_hz``.

    Args:
        centers_hz: ``(num_bands,)`` band centres in Hz.
        air_db_per_octave: Extra brightness in dB per octave above ``air_start_hz``.
        air_start_hz: Where the extra brightness starts, in Hz.

    Returns:
        ``(num_bands,)`` target levels in dB.
    """
    logf = np.log2(np.asarray(centers_hz, dtype=np.float64))
    ref = np.interp(logf, np.log2(REFERENCE_CENTERS_HZ), REFERENCE_LEVELS_DB)
    return ref + air_db_per_octave * np.maximum(0.0, logf - np.log2(air_start_hz))


def spectral_correction(
    audio: np.ndarray,
    sample_rate: float,
    strength: float = 0.8,
    max_correction_db: float = 6.0,
    air_db_per_octave: float = 1.5,
    absent_db: float = 18.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The engineer's input-dependent EQ decision, in 1/3-octave bands.

    ``deviation = reference + offset - measured`` (positive: the mix lacks
    energy there), with ``offset`` the median of ``measured - reference`` over
    the bands between 100 Hz and 5 kHz. Boosts fade out for bands far below the
    reference (weight 1 up to ``absent_db / 2`` of deviation, 0 at
    ``absent_db``); then ``strength`` scaling, smoothing over 5 bands (weights
    1-2-3-2-1, about one octave) and clipping to ``±max_correction_db``.

    Args:
        audio: ``(channels, samples)`` float audio.
        sample_rate: Sample rate in Hz.
        strength: Fraction of the deviation corrected, [0, 1].
        max_correction_db: Bound on the correction magnitude in dB (> 0).
        air_db_per_octave: Extra target brightness above 2 kHz in dB/octave.
        absent_db: Deviation in dB at which a band counts as absent (no boost).

    Returns:
        ``(centers_hz, correction_db)``, both ``(num_bands,)``.

    Raises:
        AudioError: bad shape, NaN/Inf, or digital silence.
        ValueError: ``strength`` outside [0, 1] or non-positive bounds.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if max_correction_db <= 0 or absent_db <= 0:
        raise ValueError(f"max_correction_db and absent_db must be > 0 dB, got {max_correction_db}, {absent_db}")
    centers, measured = long_term_spectrum_db(audio, sample_rate)
    ref = reference_curve_db(centers, air_db_per_octave)
    core = (centers >= 100.0) & (centers <= 5000.0)
    offset = np.median((measured - ref)[core])
    deviation = ref + offset - measured
    boost_weight = np.clip((absent_db - deviation) / (absent_db / 2.0), 0.0, 1.0)
    wanted = strength * np.where(deviation > 0, deviation * boost_weight, deviation)
    kernel = np.array([1.0, 2.0, 3.0, 2.0, 1.0]) / 9.0
    smoothed = np.convolve(np.pad(wanted, 2, mode="edge"), kernel, mode="valid")
    return centers, np.clip(smoothed, -max_correction_db, max_correction_db)


def _design_eq_fir(centers_hz: np.ndarray, gains_db: np.ndarray, sample_rate: float) -> np.ndarray:
    """Linear-phase FIR (odd length, type I) with the band gains interpolated over log-frequency."""
    numtaps = int(round(0.19 * sample_rate)) | 1  # ≈ 190 ms, odd
    nyq = sample_rate / 2.0
    grid = np.linspace(0.0, nyq, 4097)
    logf = np.log2(np.maximum(grid, 1e-3))
    gains = np.interp(logf, np.log2(centers_hz), gains_db)  # holds the edge bands beyond the range
    below = grid < centers_hz[0]
    gains[below] = np.minimum(gains[below], 0.0)  # never boost the sub-bass rumble region
    return scipy.signal.firwin2(numtaps, grid, 10.0 ** (gains / 20.0), fs=sample_rate, window="hann")


def _apply_fir(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Zero-delay linear-phase filtering of ``(channels, samples)`` (delay compensated)."""
    delay = (len(taps) - 1) // 2
    y = scipy.signal.oaconvolve(x, taps[None, :], mode="full", axes=-1)
    return y[:, delay : delay + x.shape[1]]


def _peak_envelope(x: np.ndarray, sample_rate: float, oversample: int) -> np.ndarray:
    """``(samples,)`` stereo-linked true-peak envelope at the base rate.

    Sample ``t`` gets the largest absolute oversampled value of any channel
    between samples ``t - 1`` and ``t + 1`` (inter-sample peaks belong to
    both neighbours), so a gain that is constant over those samples keeps the
    oversampled peak below the ceiling.
    """
    n = x.shape[1]
    y = _oversample(x, sample_rate, oversample)
    peak_os = np.maximum(y.max(axis=0), -y.min(axis=0)).astype(np.float64)
    m = min(len(peak_os) // oversample, n)
    peak = peak_os[: m * oversample].reshape(m, oversample).max(axis=1)
    if m < n:
        peak = np.concatenate([peak, np.full(n - m, peak_os[m * oversample :].max(initial=0.0))])
    peak = np.maximum(peak, np.concatenate([peak[1:], peak[-1:]]))
    return np.maximum(peak, np.concatenate([peak[:1], peak[:-1]]))


def _limiter_gain(
    peak: np.ndarray, sample_rate: float, ceiling_lin: float, lookahead_ms: float, hold_ms: float
) -> np.ndarray:
    """Per-sample gain ``(samples,)`` <= the gain that keeps ``peak`` under ``ceiling_lin``.

    ``r(t) = min(1, ceiling / peak(t))`` is the required gain;
    ``h(u) = min r`` over ``[u - hold, u + W1 + W2 - 2]``;
    ``g`` = two cascaded causal moving averages of ``h`` (lengths ``W1``, ``W2``,
    together the look-ahead). Every ``h`` value averaged into ``g(t)`` has ``t``
    inside its minimum window, so ``g(t) <= r(t)`` exactly, while the gain
    ramps down smoothly before a peak and back up after the hold.
    """
    required = np.minimum(1.0, ceiling_lin / np.maximum(peak, 1e-12))
    w1 = max(1, int(round(lookahead_ms * 1e-3 * sample_rate / 2)))
    w2 = w1
    hold = max(0, int(round(hold_ms * 1e-3 * sample_rate)))
    ahead = w1 + w2 - 2
    size = hold + ahead + 1
    # minimum_filter1d's window for output u is [u - size//2 - origin, u + (size-1)//2 - origin]
    # (scipy.ndimage convention); this origin makes it [u - hold, u + ahead].
    origin = size // 2 - hold
    h = scipy.ndimage.minimum_filter1d(required, size=size, mode="nearest", origin=origin)
    g = _causal_mean(h, w1)
    g = _causal_mean(g, w2)
    return np.minimum(g, 1.0)


def _causal_mean(x: np.ndarray, width: int) -> np.ndarray:
    """``y(t) = mean(x[t-width+1 .. t])`` with the first value repeated before the start."""
    if width <= 1:
        return x
    c = np.cumsum(np.concatenate([np.full(width, x[0]), x]))
    return (c[width:] - c[:-width]) / width


@dataclass
class MasteringInfo:
    """What the engineer measured and did (all levels in dB/LUFS/dBTP).

    Attributes:
        eq_centers_hz: ``(num_bands,)`` band centres of the EQ decision in Hz.
        eq_gains_db: ``(num_bands,)`` EQ correction per band in dB.
        input_lufs: Integrated loudness of the input in LUFS.
        gain_db: Static make-up gain applied before the limiter in dB.
        max_gain_reduction_db: Largest limiter gain reduction in dB (>= 0).
        output_lufs: Integrated loudness of the output in LUFS.
        output_true_peak_dbtp: True peak of the output in dBTP.
        iterations: Loudness/limiter iterations used.
        notes: Anything unusual that was done (e.g. a final true-peak trim).
    """

    eq_centers_hz: np.ndarray
    eq_gains_db: np.ndarray
    input_lufs: float
    gain_db: float
    max_gain_reduction_db: float
    output_lufs: float
    output_true_peak_dbtp: float
    iterations: int
    notes: list[str] = field(default_factory=list)


def master(
    audio: np.ndarray,
    sample_rate: float,
    target_lufs: float = -14.0,
    true_peak_dbtp: float = -1.0,
    *,
    eq_strength: float = 0.8,
    eq_air_db_per_octave: float = 1.5,
    max_eq_db: float = 6.0,
    lookahead_ms: float = 5.0,
    hold_ms: float = 50.0,
    oversample: int = 4,
    max_iterations: int = 6,
    return_info: bool = False,
) -> np.ndarray | tuple[np.ndarray, MasteringInfo]:
    """Master a mix: spectral balance → loudness → true-peak limiting.

    See the module docstring for the method. Deterministic.

    Args:
        audio: ``(channels, samples)`` float unmastered mix (1 or 2 channels
            typical; any count works, processing is linked across channels),
            at least 0.4 s long.
        sample_rate: Sample rate in Hz.
        target_lufs: Integrated loudness of the result in LUFS (BS.1770-4).
        true_peak_dbtp: True-peak ceiling of the result in dBTP (<= 0).
        eq_strength: Fraction of the spectral deviation corrected, [0, 1].
        eq_air_db_per_octave: Extra target brightness above 2 kHz in dB/octave.
        max_eq_db: Bound on the EQ correction in dB.
        lookahead_ms: Limiter look-ahead (attack ramp) in ms.
        hold_ms: Limiter hold before release in ms (release ramp = look-ahead).
        oversample: Oversampling factor for true-peak detection.
        max_iterations: Loudness/limiter iterations (>= 1).
        return_info: Also return a :class:`MasteringInfo`.

    Returns:
        ``(channels, samples)`` float32 mastered audio, time-aligned with the
        input (zero latency), or ``(audio, info)`` when ``return_info``.

    Raises:
        AudioError: bad shape, NaN/Inf, shorter than 0.4 s, or silent input
            (nothing to measure).
        ValueError: a ceiling above 0 dBTP or other out-of-range settings.
    """
    x = _check(audio, sample_rate)
    if true_peak_dbtp > 0.0:
        raise ValueError(f"true_peak_dbtp must be <= 0 dBTP, got {true_peak_dbtp}")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    input_lufs = integrated_loudness(x, sample_rate)
    if not np.isfinite(input_lufs):
        raise AudioError("audio is silent (integrated loudness below the -70 LUFS gate): nothing to master")

    centers, eq_db = spectral_correction(
        x, sample_rate, strength=eq_strength, max_correction_db=max_eq_db, air_db_per_octave=eq_air_db_per_octave
    )
    eq = _apply_fir(x, _design_eq_fir(centers, eq_db, sample_rate))

    ceiling = 10.0 ** (true_peak_dbtp / 20.0)
    envelope = _peak_envelope(eq, sample_rate, oversample)  # scales linearly with the make-up gain
    gain_db = target_lufs - integrated_loudness(eq, sample_rate)
    internal_ceiling = ceiling * 10.0 ** (-0.01 / 20.0)  # 0.01 dB margin for gain changes between samples
    for iterations in range(1, max_iterations + 1):
        make_up = 10.0 ** (gain_db / 20.0)
        gain = _limiter_gain(make_up * envelope, sample_rate, internal_ceiling, lookahead_ms, hold_ms)
        out = eq * (make_up * gain)
        lufs = integrated_loudness(out, sample_rate)
        tp = _true_peak_db(out, sample_rate, oversample)
        loud_ok = abs(lufs - target_lufs) <= 0.05
        peak_ok = tp <= true_peak_dbtp
        if (loud_ok and peak_ok) or iterations == max_iterations:
            break
        applied_db = gain_db
        gain_db = applied_db + (target_lufs - lufs)
        if not peak_ok:
            internal_ceiling *= 10.0 ** (-(tp - true_peak_dbtp + 0.02) / 20.0)
    notes = []
    if tp > true_peak_dbtp:
        trim_db = true_peak_dbtp - tp - 0.005
        out = out * 10.0 ** (trim_db / 20.0)
        gain_db += trim_db
        notes.append(f"final trim {trim_db:.3f} dB to meet the true-peak ceiling")
    out32 = out.astype(np.float32)
    if not return_info:
        return out32
    info = MasteringInfo(
        eq_centers_hz=centers,
        eq_gains_db=eq_db,
        input_lufs=input_lufs,
        gain_db=float(gain_db),
        max_gain_reduction_db=float(-20.0 * np.log10(max(float(gain.min()), 1e-12))),
        output_lufs=integrated_loudness(out32, sample_rate),
        output_true_peak_dbtp=_true_peak_db(out32.astype(np.float64), sample_rate, oversample),
        iterations=iterations,
        notes=notes,
    )
    return out32, info

