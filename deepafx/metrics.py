"""Evaluation metrics on numpy audio (not differentiable; for evaluation and reports).

Every metric takes audio shaped ``(channels, samples)`` or ``(samples,)``
(float, any finite values) and returns a Python ``float``. Pairwise metrics
take an estimate ``est`` and a reference ``ref`` of the same shape; align them
first (plugin latency, :func:`align_to_target`) — they raise on a shape
mismatch rather than guess. Multichannel metrics are computed per channel and
averaged.

* :func:`mfcc_cosine_distance` — DeepAFx's objective metric (Ramírez et al.,
  ICASSP 2021), on [0, 2], 0 for identical audio.
* :func:`mfcc_l1` — mean absolute MFCC difference.
* :func:`mrstft_distance` — multi-resolution STFT distance (DDSP, Engel et al.,
  ICLR 2020; auraloss, Steinmetz & Reiss, 2020).
* :func:`lsd_db` — log-spectral distortion in dB (DiffSynth, Masuda & Saito,
  ISMIR 2021).
* :func:`lufs`, :func:`lufs_error` — integrated loudness (ITU-R BS.1770-4 via
  pyloudnorm) in LUFS and the absolute difference in LU.
* :func:`true_peak_dbtp`, :func:`sample_peak_dbfs` — true peak in dBTP
  (ITU-R BS.1770-4 Annex 2, oversampled) and sample peak in dBFS.

The helpers every recipe's evaluation shares live here too, below the recipes:

* :func:`align_to_target` — bounded cross-correlation alignment of an output
  to its target, both cut to their overlap;
* :func:`bootstrap_ci`, :func:`paired_bootstrap_ci`, :func:`bootstrap_ratio_ci`
  — percentile bootstrap intervals over pieces;
* :func:`json_safe` — results with non-finite floats as ``None`` and numpy
  scalars as Python ones, for strict JSON.
"""

from __future__ import annotations

from typing import Any, Sequence

import librosa
import numpy as np
import pyloudnorm
from scipy.signal import resample_poly

__all__ = [
    "mfcc",
    "mfcc_cosine_distance",
    "mfcc_l1",
    "mrstft_distance",
    "lsd_db",
    "lufs",
    "lufs_error",
    "true_peak_dbtp",
    "sample_peak_dbfs",
    "MRSTFT_FFT_SIZES",
    "align_to_target",
    "json_safe",
    "bootstrap_ci",
    "paired_bootstrap_ci",
    "bootstrap_ratio_ci",
    "ndb",
    "note_pitch_hz",
    "pitch_error_cents",
]

#: FFT sizes of :func:`mrstft_distance` (DDSP's multi-scale spectral loss).
MRSTFT_FFT_SIZES: tuple[int, ...] = (2048, 1024, 512, 256, 128, 64)


def _as_2d(audio: np.ndarray, name: str = "audio") -> np.ndarray:
    """Validate and return float64 ``(channels, samples)``."""
    a = np.asarray(audio)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape (channels, samples) or (samples,), got {a.shape}")
    if a.shape[1] == 0 or a.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or Inf")
    return a


def _pair(est: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    e, r = _as_2d(est, "est"), _as_2d(ref, "ref")
    if e.shape != r.shape:
        raise ValueError(
            f"est and ref must have the same shape, got {e.shape} and {r.shape}; "
            "trim or align them (e.g. compensate plugin latency) first"
        )
    return e, r


def _check_sample_rate(sample_rate: float) -> float:
    if not sample_rate > 0:
        raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
    return float(sample_rate)


def mfcc(
    audio: np.ndarray,
    sample_rate: float,
    n_mfcc: int = 20,
    n_fft: int = 2048,
    hop_length: int = 512,
    n_mels: int = 128,
) -> np.ndarray:
    """MFCCs with librosa, ``(channels, n_mfcc, frames)``.

    ``librosa.feature.mfcc``: Hann window of ``n_fft`` samples, centred frames
    every ``hop_length`` samples (``frames = 1 + samples // hop_length``),
    ``n_mels`` Slaney mel bands from 0 Hz to ``sample_rate / 2``, power in dB
    (``power_to_db``, ref 1, floor 1e-10, ``top_db`` 80) and an orthonormal
    DCT-II. Defaults are librosa's (20 coefficients, FFT 2048, hop 512,
    128 bands: 93 ms windows and 23 ms hops at 22,050 Hz).

    Args:
        audio: ``(channels, samples)`` or ``(samples,)``.
        sample_rate: Sample rate in Hz.
        n_mfcc: Number of coefficients (including c0). Default 20.
        n_fft: FFT size in samples. Default 2048.
        hop_length: Hop in samples. Default 512.
        n_mels: Mel bands. Default 128.

    Returns:
        ``(channels, n_mfcc, frames)`` float64.

    Raises:
        ValueError: bad shape, NaN/Inf, empty audio or non-positive sample rate.
    """
    a = _as_2d(audio)
    sr = _check_sample_rate(sample_rate)
    return librosa.feature.mfcc(
        y=a, sr=sr, n_mfcc=int(n_mfcc), n_fft=int(n_fft), hop_length=int(hop_length), n_mels=int(n_mels)
    )


def _mfcc_pair(est, ref, sample_rate, n_mfcc, n_fft, hop_length, n_mels) -> tuple[np.ndarray, np.ndarray]:
    """Validated pair → their MFCCs (same settings for both)."""
    e, r = _pair(est, ref)
    return (mfcc(e, sample_rate, n_mfcc, n_fft, hop_length, n_mels),
            mfcc(r, sample_rate, n_mfcc, n_fft, hop_length, n_mels))


def mfcc_cosine_distance(
    est: np.ndarray,
    ref: np.ndarray,
    sample_rate: float,
    n_mfcc: int = 20,
    n_fft: int = 2048,
    hop_length: int = 512,
    n_mels: int = 128,
) -> float:
    """Mean cosine distance between the MFCC vectors of ``est`` and ``ref``.

    For each frame ``t`` (and channel), ``1 - <a_t, b_t> / (|a_t| |b_t|)`` of the
    ``n_mfcc``-dimensional MFCC vectors (:func:`mfcc`, librosa defaults:
    20 coefficients, FFT 2048, hop 512, 128 mel bands), averaged over frames
    and channels. Symmetric; 0 for identical audio; on [0, 2]. The objective
    metric of `Ramírez et al., 2021 <https://arxiv.org/abs/2010.04237>`_.

    Args:
        est: Estimate ``(channels, samples)`` or ``(samples,)``.
        ref: Reference, same shape.
        sample_rate: Sample rate in Hz.
        n_mfcc: MFCC coefficients. Default 20.
        n_fft: FFT size in samples. Default 2048.
        hop_length: Hop in samples. Default 512.
        n_mels: Mel bands. Default 128.

    Returns:
        Distance (unitless) on [0, 2].

    Raises:
        ValueError: shape mismatch, bad shape, NaN/Inf or bad sample rate.
    """
    a, b = _mfcc_pair(est, ref, sample_rate, n_mfcc, n_fft, hop_length, n_mels)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = num / np.maximum(den, 1e-12)
    return float(np.clip(np.mean(1.0 - cos), 0.0, 2.0))


def mfcc_l1(
    est: np.ndarray,
    ref: np.ndarray,
    sample_rate: float,
    n_mfcc: int = 20,
    n_fft: int = 2048,
    hop_length: int = 512,
    n_mels: int = 128,
) -> float:
    """Mean absolute difference of MFCCs (same settings as :func:`mfcc_cosine_distance`).

    Args:
        est: Estimate ``(channels, samples)`` or ``(samples,)``.
        ref: Reference, same shape.
        sample_rate: Sample rate in Hz.
        n_mfcc: MFCC coefficients. Default 20.
        n_fft: FFT size in samples. Default 2048.
        hop_length: Hop in samples. Default 512.
        n_mels: Mel bands. Default 128.

    Returns:
        Mean ``|MFCC_est - MFCC_ref|`` over coefficients, frames and channels
        (MFCC units: DCT of dB values), >= 0; symmetric.

    Raises:
        ValueError: shape mismatch, bad shape, NaN/Inf or bad sample rate.
    """
    a, b = _mfcc_pair(est, ref, sample_rate, n_mfcc, n_fft, hop_length, n_mels)
    return float(np.mean(np.abs(a - b)))


def _magnitude(audio: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    return np.abs(librosa.stft(audio, n_fft=n_fft, hop_length=hop_length, window="hann", center=True))


def mrstft_distance(
    est: np.ndarray,
    ref: np.ndarray,
    fft_sizes: Sequence[int] = MRSTFT_FFT_SIZES,
    overlap: float = 0.75,
    linear_weight: float = 1.0,
    log_weight: float = 1.0,
    eps: float = 1e-7,
) -> float:
    """Multi-resolution STFT distance (DDSP multi-scale spectral loss).

    For each FFT size ``n`` (Hann window of ``n`` samples, hop
    ``n * (1 - overlap)``, centred frames, unnormalized magnitudes ``S`` from
    ``librosa.stft``)::

        d_n = linear_weight * mean|S_est - S_ref|
            + log_weight * mean|ln(S_est + eps) - ln(S_ref + eps)|

    and the result is the mean of ``d_n`` over the sizes (DDSP sums them; the
    mean keeps the scale independent of how many sizes are used: multiply by
    ``len(fft_sizes)`` to compare with the summed form). See `Engel et al., 2020
    <https://arxiv.org/abs/2001.04643>`_ and `Steinmetz & Reiss, 2020 (auraloss)
    <https://github.com/csteinmetz1/auraloss>`_.

    Args:
        est: Estimate ``(channels, samples)`` or ``(samples,)``.
        ref: Reference, same shape.
        fft_sizes: FFT sizes in samples. Default (2048, 1024, 512, 256, 128, 64).
        overlap: Frame overlap on [0, 1). Default 0.75.
        linear_weight: Weight of the linear-magnitude term (>= 0). Default 1.
        log_weight: Weight of the log-magnitude term (>= 0). Default 1.
        eps: Magnitude floor in the log. Default 1e-7.

    Returns:
        Distance >= 0 (linear term in STFT magnitude units, log term in nepers);
        0 for identical audio; symmetric.

    Raises:
        ValueError: shape mismatch, bad shape, NaN/Inf or bad settings.
    """
    e, r = _pair(est, ref)
    sizes = [int(n) for n in fft_sizes]
    if not sizes or min(sizes) < 2:
        raise ValueError(f"fft_sizes must be a non-empty list of sizes >= 2 samples, got {fft_sizes}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be on [0, 1), got {overlap}")
    if linear_weight < 0 or log_weight < 0 or not eps > 0:
        raise ValueError("linear_weight and log_weight must be >= 0 and eps > 0")
    total = 0.0
    for n in sizes:
        hop = max(1, int(round(n * (1.0 - overlap))))
        se, sr_ = _magnitude(e, n, hop), _magnitude(r, n, hop)
        total += linear_weight * np.mean(np.abs(se - sr_))
        total += log_weight * np.mean(np.abs(np.log(se + eps) - np.log(sr_ + eps)))
    return float(total / len(sizes))


#: :func:`lsd_db` defaults: FFT size and hop (samples), power floor.
LSD_N_FFT, LSD_HOP, LSD_EPS = 2048, 512, 1e-10


def lsd_db(
    est: np.ndarray,
    ref: np.ndarray,
    n_fft: int = LSD_N_FFT,
    hop_length: int = LSD_HOP,
    eps: float = LSD_EPS,
) -> float:
    """Log-spectral distortion in dB.

    With power spectra ``P = |STFT|^2`` (Hann window of ``n_fft`` samples, hop
    ``hop_length``, centred frames)::

        LSD = mean_t sqrt( mean_f (10 log10(P_ref + eps) - 10 log10(P_est + eps))^2 )

    averaged over channels. Symmetric, 0 for identical audio. Used by
    `Masuda & Saito, 2021 <https://arxiv.org/abs/2107.05050>`_ to evaluate
    synthesizer sound matching.

    Args:
        est: Estimate ``(channels, samples)`` or ``(samples,)``.
        ref: Reference, same shape.
        n_fft: FFT size in samples. Default 2048.
        hop_length: Hop in samples. Default 512.
        eps: Power floor (unnormalized STFT power units). Default 1e-10.

    Returns:
        LSD in dB, >= 0.

    Raises:
        ValueError: shape mismatch, bad shape, NaN/Inf or bad settings.
    """
    e, r = _pair(est, ref)
    if int(n_fft) < 2 or int(hop_length) < 1 or not eps > 0:
        raise ValueError(f"need n_fft >= 2, hop_length >= 1 and eps > 0, got {n_fft}, {hop_length}, {eps}")
    pe = _magnitude(e, int(n_fft), int(hop_length)) ** 2
    pr = _magnitude(r, int(n_fft), int(hop_length)) ** 2
    diff = 10.0 * (np.log10(pr + eps) - np.log10(pe + eps))  # (channels, freq, frames)
    return float(np.mean(np.sqrt(np.mean(diff**2, axis=1))))


def lufs(audio: np.ndarray, sample_rate: float) -> float:
    """Integrated loudness (ITU-R BS.1770-4, gated) in LUFS via pyloudnorm.

    K-weighting, 400 ms blocks with 75 % overlap, absolute gate at −70 LUFS and
    relative gate at −10 LU. Channel weights are 1 (BS.1770 weights for left,
    right and centre; pyloudnorm supports up to 5 channels). See
    `ITU-R BS.1770-4 <https://www.itu.int/rec/R-REC-BS.1770>`_ and
    `pyloudnorm <https://github.com/csteinmetz1/pyloudnorm>`_.

    Args:
        audio: ``(channels, samples)`` or ``(samples,)``, full scale = 1.0.
        sample_rate: Sample rate in Hz.

    Returns:
        Loudness in LUFS; ``-inf`` when every block is below the −70 LUFS
        absolute gate (e.g. digital silence).

    Raises:
        ValueError: audio shorter than one 400 ms block, more than 5 channels,
            bad shape, NaN/Inf or bad sample rate.
    """
    a = _as_2d(audio)
    sr = _check_sample_rate(sample_rate)
    min_samples = int(np.ceil(0.4 * sr))
    if a.shape[1] < min_samples:
        raise ValueError(
            f"integrated loudness needs at least one 400 ms block ({min_samples} samples at {sr:g} Hz), "
            f"got {a.shape[1]} samples; use longer audio"
        )
    if a.shape[0] > 5:
        raise ValueError(f"lufs supports up to 5 channels (BS.1770 weights), got {a.shape[0]}")
    meter = pyloudnorm.Meter(sr)
    data = a[0] if a.shape[0] == 1 else a.T
    with np.errstate(divide="ignore"):
        value = meter.integrated_loudness(data)
    value = float(value)
    return value if np.isfinite(value) else float("-inf")


def lufs_error(est: np.ndarray, ref: np.ndarray, sample_rate: float) -> float:
    """Absolute integrated-loudness difference ``|lufs(est) - lufs(ref)|`` in LU.

    Args:
        est: Estimate ``(channels, samples)`` or ``(samples,)`` (at least 400 ms).
        ref: Reference, same channel count (lengths may differ).
        sample_rate: Sample rate in Hz.

    Returns:
        Difference in LU, >= 0; 0 when both are below the gate (silent),
        ``inf`` when exactly one is. Symmetric.

    Raises:
        ValueError: as :func:`lufs`, or different channel counts.
    """
    e, r = _as_2d(est, "est"), _as_2d(ref, "ref")
    if e.shape[0] != r.shape[0]:
        raise ValueError(f"est and ref must have the same channel count, got {e.shape[0]} and {r.shape[0]}")
    le, lr = lufs(e, sample_rate), lufs(r, sample_rate)
    if np.isinf(le) and np.isinf(lr):
        return 0.0
    return float(abs(le - lr))


def _oversampling_factor(sample_rate: float) -> int:
    # BS.1770-4 Annex 2: 4x for 48 kHz; higher rates need less.
    if sample_rate < 96000:
        return 4
    return 2 if sample_rate < 192000 else 1


def true_peak_dbtp(audio: np.ndarray, sample_rate: float, oversample: int | None = None) -> float:
    """True peak in dBTP (ITU-R BS.1770-4 Annex 2).

    The signal is oversampled by ``oversample`` with a polyphase FIR
    (``scipy.signal.resample_poly``, Kaiser window with beta 10; the signal is
    taken as zero outside ``[0, samples)``, so an abrupt start or end can read
    a little above the steady-state peak, as a real D/A converter would), and the largest
    absolute value over samples and channels is returned as ``20 log10(peak)``.
    A full-scale sine whose samples miss its crests reads about 0 dBTP while
    its sample peak is lower (up to −3.01 dB at ``sample_rate / 4``).

    Args:
        audio: ``(channels, samples)`` or ``(samples,)``, full scale = 1.0.
        sample_rate: Sample rate in Hz.
        oversample: Integer factor (>= 1); ``None`` picks 4 below 96 kHz
            (BS.1770-4's factor for 48 kHz), 2 below 192 kHz and 1 above. The
            reading can be low by up to about 0.7 dB for content near Nyquist
            at 4x (crests between oversampled points).

    Returns:
        True peak in dBTP; ``-inf`` for digital silence.

    Raises:
        ValueError: bad shape, NaN/Inf, bad sample rate or ``oversample < 1``.
    """
    a = _as_2d(audio)
    sr = _check_sample_rate(sample_rate)
    factor = _oversampling_factor(sr) if oversample is None else int(oversample)
    if factor < 1:
        raise ValueError(f"oversample must be >= 1, got {oversample}")
    up = resample_poly(a, factor, 1, axis=-1, window=("kaiser", 10.0)) if factor > 1 else a
    peak = max(float(np.max(np.abs(up))), float(np.max(np.abs(a))))
    if peak == 0.0:
        return float("-inf")
    return float(20.0 * np.log10(peak))


def sample_peak_dbfs(audio: np.ndarray) -> float:
    """Sample peak ``20 log10(max |x|)`` in dBFS (full scale = 1.0); ``-inf`` for silence.

    Raises:
        ValueError: bad shape or NaN/Inf.
    """
    a = _as_2d(audio)
    peak = float(np.max(np.abs(a)))
    return float("-inf") if peak == 0.0 else float(20.0 * np.log10(peak))


# --------------------------------------------------------------------------- alignment
def align_to_target(output: np.ndarray, target: np.ndarray, sample_rate: float,
                    max_delay_ms: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Align ``output`` to ``target`` by bounded cross-correlation and cut both to their overlap.

    The lag maximises the absolute cross-correlation of the channel sums
    (:func:`deepafx.losses.estimate_lag`, float32), so polarity does not
    matter and is never flipped.

    Args:
        output: ``(channels, samples)``.
        target: ``(channels, samples)`` (lengths may differ; the shorter one bounds both).
        sample_rate: Hz.
        max_delay_ms: Largest lag searched, ms (>= 0; 0: no search).

    Returns:
        ``(output_aligned, target_aligned, lag_samples)`` with equal shapes (views
        of the inputs); ``lag_samples > 0`` means the output lagged the target.
    """
    import torch

    from deepafx.losses import estimate_lag

    n = min(output.shape[1], target.shape[1])
    out, tgt = output[:, :n], target[:, :n]
    d = min(int(round(max_delay_ms * 1e-3 * sample_rate)), n - 1)
    lag = 0
    if d > 0:
        lag = int(estimate_lag(torch.from_numpy(np.ascontiguousarray(out, np.float32))[None],
                               torch.from_numpy(np.ascontiguousarray(tgt, np.float32))[None], d)[0])
    if lag > 0:
        out, tgt = out[:, lag:], tgt[:, : n - lag]
    elif lag < 0:
        out, tgt = out[:, : n + lag], tgt[:, -lag:]
    return out, tgt, lag


# --------------------------------------------------------------------------- results
def json_safe(obj: Any) -> Any:
    """Copy of ``obj`` fit for strict JSON (``json.dumps(..., allow_nan=False)``).

    Non-finite floats (NaN, ±inf: a metric of a failed or silent piece) become
    ``None``; numpy floats, integers and booleans become Python ones; tuples
    become lists; dicts and lists are copied recursively; anything else is
    returned as it is.

    Args:
        obj: Results (nested dicts, lists, tuples, scalars).

    Returns:
        The converted copy.
    """
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# --------------------------------------------------------------------------- confidence intervals


def _resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """``(resamples, n)`` indices drawn uniformly with replacement from ``range(n)`` (seeded)."""
    if int(resamples) < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    return np.random.default_rng(int(seed)).integers(0, n, size=(int(resamples), n))


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be on (0, 1), e.g. 0.95, got {level}")


def _interval(stats: np.ndarray, level: float) -> tuple[float, float]:
    """The ``(1 - level)/2`` and ``(1 + level)/2`` quantiles of bootstrap statistics."""
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [a, 1.0 - a])
    return float(lo), float(hi)


def _values(values: Any, name: str = "values", allow_nonfinite: bool = False) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError(f"{name}: a bootstrap interval needs at least one value")
    if not allow_nonfinite and not np.all(np.isfinite(v)):
        raise ValueError(f"{name} holds NaN/Inf; drop the pieces a method failed on first")
    return v


def bootstrap_ci(values: Any, resamples: int = 2000, seed: int = 0, level: float = 0.95, *,
                 allow_nonfinite: bool = False) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a mean.

    Draws ``resamples`` samples of ``n`` values with replacement, takes each
    one's mean and returns the ``(1 − level)/2`` and ``(1 + level)/2``
    quantiles of those means. See B. Efron and R. J. Tibshirani, *An
    Introduction to the Bootstrap*, Chapman & Hall, 1993, ch. 13 (the
    percentile interval). For a given ``n`` and ``seed`` the resampled index
    sets are the same whatever the values, so intervals of different methods
    and metrics over the same pieces use the same resamples.

    Args:
        values: ``(n,)`` per-piece values (finite unless ``allow_nonfinite``).
        resamples: Bootstrap resamples (>= 1). Default 2,000.
        seed: Seed of the resampling (``numpy.random.default_rng``).
        level: Coverage on (0, 1). Default 0.95.
        allow_nonfinite: Resample NaN/Inf like any other value instead of
            raising; a bound is then NaN or infinite where the resampled means
            are (for reports that show such a bound as missing, see
            :func:`json_safe`, rather than stop). Finite values give the same
            interval either way.

    Returns:
        ``(low, high)``, in the unit of ``values``; ``(v, v)`` for one value.

    Raises:
        ValueError: no values, NaN/Inf (unless ``allow_nonfinite``), ``resamples < 1``
            or ``level`` outside (0, 1).
    """
    _check_level(level)
    v = _values(values, allow_nonfinite=allow_nonfinite)
    if v.size == 1:
        return float(v[0]), float(v[0])
    means = v[_resample_indices(v.size, resamples, seed)].mean(axis=1)
    return _interval(means, level)


def paired_bootstrap_ci(a: Any, b: Any, resamples: int = 2000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float, float]:
    """Mean of the per-piece differences ``a − b`` and its paired percentile bootstrap interval.

    Pieces are resampled as pairs (the interval of the mean difference,
    Efron & Tibshirani, 1993, ch. 13), so what the two methods share on a
    piece (a hard piece is hard for both) cancels.

    Args:
        a: ``(n,)`` per-piece values of one method (finite).
        b: ``(n,)`` the other method's values on the same pieces.
        resamples: Bootstrap resamples (>= 1).
        seed: Seed of the resampling.
        level: Coverage on (0, 1).

    Returns:
        ``(mean_difference, low, high)`` in the unit of the values.

    Raises:
        ValueError: different lengths, no values or NaN/Inf.
    """
    x, y = _values(a, "a"), _values(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired values need the same pieces, got {x.size} and {y.size} values")
    d = x - y
    lo, hi = bootstrap_ci(d, resamples, seed, level)
    return float(d.mean()), lo, hi


def bootstrap_ratio_ci(a: Any, b: Any, resamples: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float, float]:
    """Ratio of means ``mean(a) / mean(b)`` over the same pieces and its paired percentile bootstrap interval.

    Args:
        a: ``(n,)`` per-piece values (finite).
        b: ``(n,)`` values on the same pieces (finite, positive mean).
        resamples: Bootstrap resamples (>= 1).
        seed: Seed of the resampling.
        level: Coverage on (0, 1).

    Returns:
        ``(ratio, low, high)``, unitless.

    Raises:
        ValueError: different lengths, no values, NaN/Inf or ``mean(b) <= 0``.
    """
    _check_level(level)
    x, y = _values(a, "a"), _values(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired values need the same pieces, got {x.size} and {y.size} values")
    if not y.mean() > 0:
        raise ValueError(f"the ratio's denominator has mean {y.mean()}; it must be positive")
    ratio = float(x.mean() / y.mean())
    if x.size == 1:
        return ratio, ratio, ratio
    idx = _resample_indices(x.size, resamples, seed)
    den = y[idx].mean(axis=1)
    ratios = x[idx].mean(axis=1) / np.where(den > 0, den, np.nan)
    lo, hi = _interval(ratios[np.isfinite(ratios)], level)
    return ratio, lo, hi


# --------------------------------------------------------------------------- loudness over time


# --------------------------------------------------------------------------- NDB, pitch


def ndb(reference: np.ndarray, generated: np.ndarray, num_bins: int, alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """Number of statistically different bins (NDB) between two sets of samples.

    Richardson & Weiss, "On GANs and GMMs", NeurIPS 2018; used by GANSynth
    (Engel et al., ICLR 2019) on log-spectrograms. The reference samples are
    clustered into ``num_bins`` bins with k-means (scikit-learn, ``n_init=10``);
    each generated sample goes to its nearest centroid; per bin, a two-sided
    two-proportion z-test compares the share of reference and generated samples
    in it (pooled standard error). A bin is different when ``p < alpha``.

    Args:
        reference: ``(n, d)`` features of the reference set (e.g. flattened
            log-mel spectrograms of the targets).
        generated: ``(m, d)`` features of the generated set (the matches).
        num_bins: ``K`` on [2, n]; with small sets take ``K`` so that each bin
            holds several samples (``n / K`` ≳ 5).
        alpha: Significance level on (0, 1).
        seed: k-means seed.

    Returns:
        ``{"ndb": count, "ndb_over_k": count / K, "k": K, "different": [bool] * K,
        "reference_share": [...], "generated_share": [...]}``.

    Raises:
        ValueError: bad shapes, ``num_bins`` outside [2, n], NaN/Inf.
    """
    from scipy.stats import norm
    from sklearn.cluster import KMeans

    ref = np.asarray(reference, dtype=np.float64)
    gen = np.asarray(generated, dtype=np.float64)
    if ref.ndim != 2 or gen.ndim != 2 or ref.shape[1] != gen.shape[1] or len(gen) < 1:
        raise ValueError(f"ndb needs (n, d) and (m, d) arrays, got {ref.shape} and {gen.shape}")
    if not (np.isfinite(ref).all() and np.isfinite(gen).all()):
        raise ValueError("ndb: features contain NaN or Inf")
    k = int(num_bins)
    if not 2 <= k <= len(ref):
        raise ValueError(f"num_bins must be in [2, {len(ref)}] (the reference count), got {num_bins}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(ref)
    p_ref = np.bincount(km.labels_, minlength=k) / len(ref)
    p_gen = np.bincount(km.predict(gen), minlength=k) / len(gen)
    pooled = (p_ref * len(ref) + p_gen * len(gen)) / (len(ref) + len(gen))
    se = np.sqrt(pooled * (1 - pooled) * (1 / len(ref) + 1 / len(gen)))
    z = np.abs(p_ref - p_gen) / np.maximum(se, 1e-12)
    different = 2 * norm.sf(z) < alpha
    return {"ndb": int(different.sum()), "ndb_over_k": float(different.sum() / k), "k": k,
            "different": different.tolist(), "reference_share": p_ref.tolist(), "generated_share": p_gen.tolist()}


def note_pitch_hz(audio: np.ndarray, sample_rate: float, start_seconds: float = 0.25, end_seconds: float = 2.5,
                  fmin_hz: float = 30.0, fmax_hz: float = 2000.0) -> float:
    """Median fundamental frequency (Hz) of one held note, by YIN (``librosa.yin``;
    de Cheveigné & Kawahara, JASA 2002) over ``[start_seconds, end_seconds]`` seconds.

    Args:
        audio: ``(samples,)`` mono note.
        sample_rate: Hz. start_seconds, end_seconds: Analysed span, seconds. fmin_hz, fmax_hz: YIN's search range, Hz.

    Returns:
        The median f0 in Hz, or NaN when the span is (near) silent.

    Raises:
        ValueError: not 1-D, or NaN/Inf.
    """
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim != 1 or not np.isfinite(x).all():
        raise ValueError(f"note_pitch_hz needs a finite (samples,) array, got shape {x.shape}")
    seg = x[int(start_seconds * sample_rate) : int(end_seconds * sample_rate)]
    if len(seg) < 4096 or np.sqrt(np.mean(seg**2)) < 1e-4:
        return float("nan")
    f0 = librosa.yin(seg, fmin=fmin_hz, fmax=fmax_hz, sr=sample_rate, frame_length=4096)
    return float(np.median(f0))


def pitch_error_cents(est: np.ndarray, ref: np.ndarray, sample_rate: float,
                      ref_hz: np.ndarray | None = None) -> np.ndarray:
    """Per-channel pitch error ``|1200 log2(f_est / f_ref)|`` in cents of ``(channels, samples)`` notes
    (:func:`note_pitch_hz`); NaN where either note has no pitch (silent).

    ``ref_hz`` ``(channels,)``: the reference's pitches if already known (``note_pitch_hz`` of each
    channel of ``ref``), to score many estimates against one reference without recomputing them."""
    e = np.atleast_2d(est)
    r = np.atleast_2d(ref)
    if e.shape != r.shape:
        raise ValueError(f"pitch_error_cents: shapes differ, {e.shape} vs {r.shape}")
    if ref_hz is None:
        ref_hz = np.array([note_pitch_hz(b, sample_rate) for b in r])
    elif np.shape(ref_hz) != (len(r),):
        raise ValueError(f"ref_hz must have one pitch per channel ({len(r)}), got shape {np.shape(ref_hz)}")
    out = []
    for a, fb in zip(e, ref_hz):
        fa = note_pitch_hz(a, sample_rate)
        out.append(abs(1200.0 * np.log2(fa / fb)) if np.isfinite(fa) and np.isfinite(fb) and fa > 0 and fb > 0 else np.nan)
    return np.asarray(out)
