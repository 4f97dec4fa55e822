"""Float32 spectral distances against a fixed target, for per-target search.

Test-time refinement and CMA-ES compare thousands of candidate renders with one
target; the target's spectra are computed once here and the candidates' in
float32 (the FFTs, not Dexed, dominate a render's cost: about 1.5 ms to render
a 4 s note at 16 kHz against about 8 ms for the six-resolution spectra on one
core). :class:`SpectralTarget` computes exactly the DDSP multi-scale spectral
loss of :class:`deepafx.losses.MultiResolutionSTFTLoss` (tested equal).

See `Engel et al., "DDSP: Differentiable Digital Signal Processing", ICLR 2020
<https://arxiv.org/abs/2001.04643>`_.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

#: DDSP multi-scale spectral loss FFT sizes.
DDSP_FFT_SIZES: tuple[int, ...] = (2048, 1024, 512, 256, 128, 64)


class SpectralTarget:
    """Multi-scale spectral loss of candidates against one target (target spectra cached).

    ``L = Σ_s mean|S_s(ŷ) − S_s(y)| + log_weight · mean|log(S_s(ŷ) + eps) − log(S_s(y) + eps)|``
    over FFT sizes ``s`` (Hann window, hop ``s · (1 − overlap)``, centred frames),
    means over channels, bins and frames.

    Args:
        target: ``(channels, samples)`` float audio.
        fft_sizes: FFT sizes in samples (default DDSP's 2048 … 64).
        overlap: Frame overlap on [0, 1) (default 0.75).
        log_weight: Weight of the log-magnitude term (default 1).
        eps: Floor inside the log (default 1e-7, as the torch loss).

    Raises:
        ValueError: target not 2-D, or NaN/Inf.
    """

    def __init__(
        self,
        target: np.ndarray,
        fft_sizes: Sequence[int] = DDSP_FFT_SIZES,
        overlap: float = 0.75,
        log_weight: float = 1.0,
        eps: float = 1e-7,
    ) -> None:
        t = np.asarray(target, dtype=np.float32)
        if t.ndim != 2:
            raise ValueError(f"target must be (channels, samples), got shape {t.shape}")
        if not np.all(np.isfinite(t)):
            raise ValueError("target holds NaN or Inf")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        self.shape = t.shape
        self.fft_sizes = tuple(int(s) for s in fft_sizes)
        self.hops = tuple(max(1, int(s * (1 - overlap))) for s in self.fft_sizes)
        self.log_weight = float(log_weight)
        self.eps = float(eps)
        self._windows = {s: torch.hann_window(s) for s in self.fft_sizes}
        with torch.no_grad():
            self._ref = [self._mag(torch.from_numpy(t), s, h) for s, h in zip(self.fft_sizes, self.hops)]
            self._ref_log = [torch.log(m + self.eps) for m in self._ref]

    def _mag(self, x: torch.Tensor, size: int, hop: int) -> torch.Tensor:
        lead = x.shape[:-1]
        spec = torch.stft(x.reshape(-1, x.shape[-1]), size, hop, window=self._windows[size], return_complex=True)
        return spec.abs().reshape(*lead, spec.shape[-2], spec.shape[-1])

    @torch.no_grad()
    def __call__(self, candidates: np.ndarray) -> np.ndarray:
        """Loss of each candidate.

        Args:
            candidates: ``(batch, channels, samples)`` or ``(channels, samples)``
                with the target's channels and samples.

        Returns:
            ``(batch,)`` float64 losses (``(1,)`` for a single candidate).

        Raises:
            ValueError: shape mismatch with the target.
        """
        y = np.asarray(candidates, dtype=np.float32)
        if y.ndim == 2:
            y = y[None]
        if y.shape[1:] != self.shape:
            raise ValueError(f"candidates of shape {y.shape[1:]} do not match the target {self.shape}")
        x = torch.from_numpy(np.ascontiguousarray(y))
        total = torch.zeros(x.shape[0], dtype=torch.float64)
        for s, h, ref, ref_log in zip(self.fft_sizes, self.hops, self._ref, self._ref_log):
            m = self._mag(x, s, h)
            lin = (m - ref).abs().flatten(1).mean(1)
            log = (torch.log(m + self.eps) - ref_log).abs().flatten(1).mean(1)
            total += (lin + self.log_weight * log).double()
        return total.numpy()


def _check_grouped(candidates: torch.Tensor, targets: torch.Tensor) -> None:
    """Raise ``ValueError`` unless candidates are ``(batch, R, channels, samples)`` for targets ``(batch, channels, samples)``."""
    if candidates.dim() != 4 or targets.dim() != 3 or candidates.shape[0] != targets.shape[0] or candidates.shape[2:] != targets.shape[1:]:
        raise ValueError(
            f"need candidates (batch, R, channels, samples) and targets (batch, channels, samples), "
            f"got {tuple(candidates.shape)} and {tuple(targets.shape)}"
        )


def grouped_mss(
    candidates: torch.Tensor,
    targets: torch.Tensor,
    fft_sizes: Sequence[int] = DDSP_FFT_SIZES,
    overlap: float = 0.75,
    log_weight: float = 1.0,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Multi-scale spectral loss of ``R`` candidates per target, each target's spectra computed once.

    Same value as :class:`deepafx.losses.MultiResolutionSTFTLoss` (``reduction="none"``)
    applied to every candidate and its target, at about half the FFT cost when
    ``R`` candidates share a target (SPSA: the preset and its ``2K`` perturbations).

    Args:
        candidates: ``(batch, R, channels, samples)``.
        targets: ``(batch, channels, samples)``.
        fft_sizes, overlap, log_weight, eps: As in the torch loss.

    Returns:
        ``(batch, R)`` float32 losses (no gradient).

    Raises:
        ValueError: shape mismatch.
    """
    _check_grouped(candidates, targets)
    b, r, c, n = candidates.shape
    with torch.no_grad():
        y = candidates.float().reshape(b * r * c, n)
        t = targets.float().reshape(b * c, n)
        total = torch.zeros(b, r)
        for size in fft_sizes:
            hop = max(1, int(size * (1 - overlap)))
            w = torch.hann_window(int(size))
            sy = torch.stft(y, int(size), hop, window=w, return_complex=True).abs()
            st = torch.stft(t, int(size), hop, window=w, return_complex=True).abs()
            sy = sy.reshape(b, r, c, *sy.shape[-2:])
            st = st.reshape(b, 1, c, *st.shape[-2:])
            lin = (sy - st).abs().flatten(2).mean(2)
            log = (torch.log(sy + eps) - torch.log(st + eps)).abs().flatten(2).mean(2)
            total += lin + log_weight * log
    return total


def grouped_lsd(candidates: torch.Tensor, targets: torch.Tensor, n_fft: int = 2048, hop_length: int = 512,
                eps: float = 1e-10) -> torch.Tensor:
    """Log-spectral distortion (dB) of ``R`` candidates per target, each target's spectra computed once.

    The value of :class:`deepafx.losses.LogSpectralDistortionLoss` (``reduction="none"``) applied to every
    candidate and its target (float64 power spectra of :func:`deepafx.losses.log_power_db`), with the
    target's STFT taken once instead of ``R`` times: SPSA on the loss renders the preset and its ``2K``
    perturbations against one target, so this computes ``1 + 2K`` spectra per item instead of ``2 (1 + 2K)``.

    Args:
        candidates: ``(batch, R, channels, samples)``.
        targets: ``(batch, channels, samples)``.
        n_fft, hop_length, eps: As in the loss (default 2048 / 512 / 1e-10, the metric's).

    Returns:
        ``(batch, R)`` float32 LSD values, dB (no gradient).

    Raises:
        ValueError: shape mismatch.
    """
    from deepafx.losses import log_power_db, lsd_from_db_difference

    _check_grouped(candidates, targets)
    with torch.no_grad():
        d = log_power_db(candidates, n_fft, hop_length, eps) - log_power_db(targets, n_fft, hop_length, eps)[:, None]
        return lsd_from_db_difference(d).to(torch.float32)


class LogMelFeatures:
    """Log-mel spectra in dB (float32) for nearest-preset retrieval.

    Args:
        sample_rate: Hz.
        n_fft, hop_length, n_mels: STFT and mel settings (default 1024, 256, 64).
        floor_db: Floor of the dB values (default −100 dB).
    """

    def __init__(self, sample_rate: float, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 64, floor_db: float = -100.0):
        from deepafx.features import LogMel

        self.mel = LogMel(sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, floor_db=floor_db, normalize="none")

    @torch.no_grad()
    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """``(batch, channels, samples)`` → ``(batch, channels * n_mels * frames)`` float32 dB."""
        a = torch.from_numpy(np.ascontiguousarray(np.asarray(audio, dtype=np.float32)))
        if a.dim() == 2:
            a = a[None]
        return self.mel(a).flatten(1).numpy()


def log_mel_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """RMS difference in dB between feature rows ``a`` ``(M, D)`` and ``b`` ``(D,)`` → ``(M,)``."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    return np.sqrt(np.mean((a - b[None]) ** 2, axis=1))


def lsd_power_db(audio: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Power spectra in dB exactly as :func:`deepafx.metrics.lsd_db` takes them, float64.

    ``10 log10(|STFT|² + LSD_EPS)`` with a periodic Hann window of ``LSD_N_FFT`` (2048) samples,
    hop ``LSD_HOP`` (512), centred frames padded with zeros (librosa's ``stft`` defaults).

    Args:
        audio: ``(..., samples)`` float audio, full scale 1.0.

    Returns:
        ``(..., 1025, frames)`` float64 tensor, dB.

    Raises:
        ValueError: NaN/Inf in ``audio`` or fewer than 2 samples.
    """
    from deepafx.losses import log_power_db
    from deepafx.metrics import LSD_EPS, LSD_HOP, LSD_N_FFT

    a = torch.as_tensor(np.ascontiguousarray(audio) if isinstance(audio, np.ndarray) else audio).double()
    if a.shape[-1] < 2 or not bool(torch.isfinite(a).all()):
        raise ValueError(f"audio must hold at least 2 finite samples per channel, got shape {tuple(a.shape)}")
    return log_power_db(a, LSD_N_FFT, LSD_HOP, LSD_EPS)


class LSDTarget:
    """Log-spectral distortion (dB) of candidates against one target, the target's spectra cached.

    The value of :func:`deepafx.metrics.lsd_db` (per-frame RMS over the frequency bins of the dB
    difference, mean over frames and channels; `Masuda & Saito, 2021 <https://arxiv.org/abs/2107.05050>`_),
    computed with :func:`lsd_power_db` in float64 (equal to ``lsd_db`` within 1e-6 dB, tested).

    Args:
        target: ``(channels, samples)`` float audio.

    Raises:
        ValueError: target not 2-D, or NaN/Inf.
    """

    def __init__(self, target: np.ndarray) -> None:
        t = np.asarray(target, dtype=np.float64)
        if t.ndim != 2:
            raise ValueError(f"target must be (channels, samples), got shape {t.shape}")
        if not np.all(np.isfinite(t)):
            raise ValueError("target holds NaN or Inf")
        self.shape = t.shape
        self._ref = lsd_power_db(t)  # (channels, bins, frames)

    @torch.no_grad()
    def __call__(self, candidates: np.ndarray) -> np.ndarray:
        """LSD of each candidate in dB.

        Args:
            candidates: ``(batch, channels, samples)`` or ``(channels, samples)`` with the target's shape.

        Returns:
            ``(batch,)`` float64 LSD values, dB, ≥ 0 (``(1,)`` for a single candidate).

        Raises:
            ValueError: shape mismatch with the target, NaN/Inf.
        """
        y = np.asarray(candidates, dtype=np.float64)
        if y.ndim == 2:
            y = y[None]
        if y.shape[1:] != self.shape:
            raise ValueError(f"candidates of shape {y.shape[1:]} do not match the target {self.shape}")
        diff = lsd_power_db(y) - self._ref[None]
        return diff.square().mean(2).sqrt().mean((1, 2)).numpy()


@torch.no_grad()
def lsd_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Log-spectral distortion (dB) of every sound of ``a`` against every sound of ``b``.

    :func:`deepafx.metrics.lsd_db` for all pairs, from each sound's :func:`lsd_power_db` spectra computed
    once and ``Σ_f (x − y)² = Σ x² + Σ y² − 2 x·y`` per frame (one matrix product per channel and frame,
    float64: within 1e-4 dB of ``lsd_db``, tested).

    Args:
        a: ``(M, channels, samples)`` audio.
        b: ``(V, channels, samples)`` audio, the same channels and samples.

    Returns:
        ``(M, V)`` float64 LSD, dB.

    Raises:
        ValueError: not 3-D, different channels or samples, empty, NaN/Inf.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:] or len(a) == 0 or len(b) == 0:
        raise ValueError(f"need non-empty (M, channels, samples) and (V, channels, samples) audio with the same "
                         f"channels and samples, got {a.shape} and {b.shape}")
    out = torch.zeros(len(a), len(b), dtype=torch.float64)
    for c in range(a.shape[1]):  # one channel at a time: (frames, M, bins) and (frames, bins, V) in memory
        x = lsd_power_db(a[:, c]).permute(2, 0, 1)
        y = lsd_power_db(b[:, c]).permute(2, 1, 0)
        bins = x.shape[2]
        d2 = x.square().sum(2)[:, :, None] + y.square().sum(1)[:, None, :] - 2.0 * torch.bmm(x, y)
        out += d2.clamp_min(0.0).div(bins).sqrt().mean(0)
    return (out / a.shape[1]).numpy()


__all__ = ["DDSP_FFT_SIZES", "LSDTarget", "LogMelFeatures", "SpectralTarget", "grouped_lsd", "grouped_mss", "log_mel_distance", "lsd_matrix",
           "lsd_power_db"]
