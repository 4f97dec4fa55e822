"""Losses on rendered audio: delay-invariant loss, multi-resolution STFT loss and log-spectral distortion.

All losses take ``(batch, channels, samples)`` tensors and are batched (no Python
loop over items).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from deepafx.registry import Registry


def _check_pair(est: torch.Tensor, ref: torch.Tensor) -> None:
    if est.dim() != 3 or est.shape != ref.shape:
        raise ValueError(
            f"expected est and ref of equal shape (batch, channels, samples), got {tuple(est.shape)} and {tuple(ref.shape)}"
        )


def estimate_lag(est: torch.Tensor, ref: torch.Tensor, max_delay_samples: int) -> torch.Tensor:
    """Lag ``τ`` (samples) maximizing ``|Σ_t est[t + τ] · ref[t]|`` over ``|τ| ≤ max_delay_samples``.

    The absolute value makes the estimate polarity invariant. Cross-correlation
    is computed with an FFT on the channel sum.

    Args:
        est, ref: ``(batch, channels, samples)``.
        max_delay_samples: Largest lag considered, ``≥ 0``.

    Returns:
        ``(batch,)`` int64 lags; positive means ``est`` lags ``ref``.
    """
    n = est.shape[-1]
    a = est.detach().sum(1).float()
    b = ref.detach().sum(1).float()
    nfft = 1 << (2 * n - 1).bit_length()
    r = torch.fft.irfft(torch.fft.rfft(a, nfft) * torch.fft.rfft(b, nfft).conj(), nfft)  # r[τ] = Σ a[t+τ] b[t]
    d = int(max_delay_samples)
    lags = torch.arange(-d, d + 1, device=est.device)
    vals = r[:, lags % nfft].abs()
    return lags[vals.argmax(-1)]


class DelayInvariantLoss(nn.Module):
    """Delay- and polarity-invariant loss of DeepAFx (Ramírez et al., ICASSP 2021).

    ``τ = argmax |est ⋆ ref|`` over ``|τ| ≤ D`` aligns both signals (each item its
    own lag), then on the aligned windows of ``samples − 2D`` samples::

        L_time = min(mean|ŷ − y|, mean|ŷ + y|)                      (polarity invariant)
        L_freq = rms(|Ŷ| − |Y|) + rms(log|Ŷ| − log|Y|)              (STFT, n_fft 1024)
        L = α₁ L_time + α₂ L_freq,  α₁ = 10, α₂ = 1

    The paper's ‖·‖₂ terms are taken as root-mean-square over STFT bins so the
    value does not scale with the signal length; ``log`` uses a floor ``eps``.
    The lag is not differentiated (argmax); gradients flow through the aligned
    signals.

    Args:
        max_delay_samples: Largest lag searched, ``D ≥ 0`` samples. Use
            :meth:`for_latency` to derive it from a chain's reported latency.
        alpha_time: α₁ (default 10).
        alpha_freq: α₂ (default 1).
        n_fft: FFT size of the spectral term (default 1024; hop n_fft/4, Hann window).
        eps: Floor inside the log (default 1e-5).

    Shapes:
        ``forward(est, ref)`` with ``(batch, channels, samples)`` each → scalar
        (``reduction="mean"``) or ``(batch,)`` (``"none"``).

    Raises:
        ValueError: shape mismatch, or ``samples ≤ 2·max_delay_samples``.
    """

    def __init__(self, max_delay_samples: int = 1024, alpha_time: float = 10.0, alpha_freq: float = 1.0,
                 n_fft: int = 1024, eps: float = 1e-5, reduction: str = "mean"):
        super().__init__()
        if max_delay_samples < 0:
            raise ValueError("max_delay_samples must be ≥ 0")
        if reduction not in ("mean", "none"):
            raise ValueError("reduction must be 'mean' or 'none'")
        self.max_delay_samples = int(max_delay_samples)
        self.alpha_time, self.alpha_freq = float(alpha_time), float(alpha_freq)
        self.n_fft, self.eps, self.reduction = int(n_fft), float(eps), reduction
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    @classmethod
    def for_latency(cls, latency_samples: int, sample_rate: float, margin_ms: float = 10.0, **kwargs) -> "DelayInvariantLoss":
        """Maximum delay = reported chain latency + ``margin_ms`` (for group delay of filters)."""
        return cls(max_delay_samples=int(latency_samples) + int(round(margin_ms * 1e-3 * sample_rate)), **kwargs)

    def align(self, est: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(est_aligned, ref_aligned, lags)``, windows of ``samples − 2D`` samples."""
        _check_pair(est, ref)
        n, d = est.shape[-1], self.max_delay_samples
        if n <= 2 * d:
            raise ValueError(f"signals of {n} samples are too short for max_delay_samples={d} (need > {2 * d})")
        lags = estimate_lag(est, ref, d)
        length = n - 2 * d
        idx = (d + lags)[:, None] + torch.arange(length, device=est.device)[None]  # (B, L)
        est_a = torch.gather(est, 2, idx[:, None, :].expand(-1, est.shape[1], -1))
        ref_a = ref[..., d : n - d]
        return est_a, ref_a, lags

    def forward(self, est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        est_a, ref_a, _ = self.align(est, ref)
        time = torch.minimum((est_a - ref_a).abs().mean((1, 2)), (est_a + ref_a).abs().mean((1, 2)))
        freq = spectral_distance(est_a, ref_a, self.n_fft, self.window, self.eps)
        loss = self.alpha_time * time + self.alpha_freq * freq
        return loss.mean() if self.reduction == "mean" else loss


def _stft_mag(x: torch.Tensor, n_fft: int, window: torch.Tensor) -> torch.Tensor:
    b, c, n = x.shape
    flat = x.reshape(b * c, n)
    if n < n_fft:
        flat = nn.functional.pad(flat, (0, n_fft - n))
    spec = torch.stft(flat, n_fft, hop_length=n_fft // 4, window=window.to(x.device, x.dtype),
                      center=True, return_complex=True)
    return spec.abs().reshape(b, c, spec.shape[-2], spec.shape[-1])


def spectral_distance(est: torch.Tensor, ref: torch.Tensor, n_fft: int, window: torch.Tensor, eps: float) -> torch.Tensor:
    """``rms(|Ŷ| − |Y|) + rms(log|Ŷ| − log|Y|)`` per item → ``(batch,)``."""
    e, r = _stft_mag(est, n_fft, window), _stft_mag(ref, n_fft, window)
    # sqrt has an infinite derivative at 0: keep identical signals (a perfect match,
    # silent padding) from producing NaN gradients.
    lin = (e - r).pow(2).mean((1, 2, 3)).clamp_min(1e-20).sqrt()
    log = (torch.log(e + eps) - torch.log(r + eps)).pow(2).mean((1, 2, 3)).clamp_min(1e-20).sqrt()
    return lin + log


class MultiResolutionSTFTLoss(nn.Module):
    """Multi-scale spectral loss (DDSP, Engel et al., ICLR 2020).

    ``L = Σ_s mean|S_s(ŷ) − S_s(y)| + w_log · mean|log S_s(ŷ) − log S_s(y)|``
    over FFT sizes ``s`` (default 2048, 1024, 512, 256, 128, 64), Hann window,
    75 % overlap. Computed in float32 whatever the input dtype.

    Args:
        fft_sizes: FFT sizes in samples.
        overlap: Fraction of overlap between frames (hop = size·(1 − overlap)).
        log_weight: Weight of the log-magnitude term (default 1).
        eps: Floor inside the log.

    Shapes:
        ``(batch, channels, samples)`` each → scalar, or ``(batch,)`` with
        ``reduction="none"``.
    """

    def __init__(self, fft_sizes: Sequence[int] = (2048, 1024, 512, 256, 128, 64), overlap: float = 0.75,
                 log_weight: float = 1.0, eps: float = 1e-7, reduction: str = "mean"):
        super().__init__()
        if not 0 <= overlap < 1:
            raise ValueError("overlap must be in [0, 1)")
        self.fft_sizes = tuple(int(s) for s in fft_sizes)
        self.hops = tuple(max(1, int(s * (1 - overlap))) for s in self.fft_sizes)
        self.log_weight, self.eps, self.reduction = float(log_weight), float(eps), reduction
        for s in self.fft_sizes:
            self.register_buffer(f"window_{s}", torch.hann_window(s), persistent=False)

    def forward(self, est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        _check_pair(est, ref)
        b, c, n = est.shape
        e = est.float().reshape(b * c, n)
        r = ref.float().reshape(b * c, n)
        total = est.new_zeros(b, dtype=torch.float32)
        for s, hop in zip(self.fft_sizes, self.hops):
            w = getattr(self, f"window_{s}").to(est.device)
            se = torch.stft(e, s, hop, window=w, return_complex=True).abs()
            sr = torch.stft(r, s, hop, window=w, return_complex=True).abs()
            lin = (se - sr).abs().reshape(b, -1).mean(1)
            log = (torch.log(se + self.eps) - torch.log(sr + self.eps)).abs().reshape(b, -1).mean(1)
            total = total + lin + self.log_weight * log
        return total.mean() if self.reduction == "mean" else total


def log_power_db(audio: torch.Tensor, n_fft: int = 2048, hop_length: int = 512, eps: float = 1e-10) -> torch.Tensor:
    """Power spectra in dB, ``10 log10(|STFT|² + eps)``, float64.

    Periodic Hann window of ``n_fft`` samples, hop ``hop_length``, centred frames padded with zeros
    (librosa's ``stft`` defaults, which :func:`deepafx.metrics.lsd_db` uses).

    Args:
        audio: ``(..., samples)`` audio, full scale 1.0.
        n_fft, hop_length: FFT size and hop, samples.
        eps: Power floor (unnormalized STFT power units).

    Returns:
        ``(..., n_fft // 2 + 1, frames)`` float64, dB.
    """
    a = audio.double()
    lead = a.shape[:-1]
    s = torch.stft(a.reshape(-1, a.shape[-1]), n_fft, hop_length,
                   window=torch.hann_window(n_fft, dtype=torch.float64, device=a.device),
                   center=True, pad_mode="constant", return_complex=True)
    p = s.real.square() + s.imag.square()
    return (10.0 * torch.log10(p + eps)).reshape(*lead, *p.shape[-2:])


def lsd_from_db_difference(d: torch.Tensor) -> torch.Tensor:
    """LSD (dB) from a difference of dB spectra ``d`` ``(..., channels, bins, frames)`` → ``(...)``: the RMS over
    bins, mean over frames and channels; ``1e-12`` dB² inside the root keeps the autograd gradient finite at 0."""
    return torch.sqrt(d.square().mean(-2) + 1e-12).mean(-1).mean(-1)


class LogSpectralDistortionLoss(nn.Module):
    """Log-spectral distortion (dB) as a loss: the value of :func:`deepafx.metrics.lsd_db`.

    ``LSD = mean_t sqrt(mean_f (10 log10(P_ref + eps) − 10 log10(P_est + eps))²)``, averaged over
    channels, with the power spectra of :func:`log_power_db` (float64). The metric synthesizer
    sound matching is scored by (`Masuda & Saito, 2021 <https://arxiv.org/abs/2107.05050>`_); as a
    training loss it suits gradient-free estimators (SPSA on the loss value,
    :func:`deepafx.fx.spsa_loss_gradient`): its floor ``eps`` makes near-silent bins count as much as
    loud ones, and its gradient through autograd is not smoothed (a ``1e-12`` dB² inside the root
    only keeps it finite at 0).

    Args:
        n_fft, hop_length: FFT size and hop, samples (default 2048 / 512, the metric's).
        eps: Power floor (default 1e-10, the metric's).
        reduction: ``"mean"`` (scalar) or ``"none"`` (``(batch,)``).

    Shapes:
        ``(batch, channels, samples)`` each → scalar, or ``(batch,)`` with ``reduction="none"``.

    Raises:
        ValueError: shapes that differ or are not 3-D.
    """

    def __init__(self, n_fft: int = 2048, hop_length: int = 512, eps: float = 1e-10, reduction: str = "mean"):
        super().__init__()
        if int(n_fft) < 2 or int(hop_length) < 1 or not eps > 0:
            raise ValueError(f"need n_fft >= 2, hop_length >= 1 and eps > 0, got {n_fft}, {hop_length}, {eps}")
        self.n_fft, self.hop_length, self.eps, self.reduction = int(n_fft), int(hop_length), float(eps), reduction

    def forward(self, est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        _check_pair(est, ref)
        d = log_power_db(est, self.n_fft, self.hop_length, self.eps) - log_power_db(ref, self.n_fft, self.hop_length,
                                                                                   self.eps)
        per = lsd_from_db_difference(d).to(torch.float32)  # (batch,): bins, frames, channels
        return per.mean() if self.reduction == "mean" else per


# --------------------------------------------------------------------------- registry
#: Audio losses by name. Each entry is a factory taking keyword settings (unknown ones
#: are ignored, so one settings mapping serves every loss) and returning a module
#: mapping ``(batch, channels, samples)`` pairs to ``(batch,)`` (``reduction="none"``)
#: or a scalar.
LOSSES: Registry = Registry("loss")


@LOSSES.register("delay_invariant")
def _delay_invariant(*, sample_rate: float, latency_samples: int = 0, max_delay_ms: float = 10.0,
                     alpha_time: float = 10.0, alpha_freq: float = 1.0, reduction: str = "none", **_: Any) -> nn.Module:
    """DeepAFx delay-invariant loss; lags searched up to ``latency_samples`` + ``max_delay_ms``."""
    return DelayInvariantLoss.for_latency(latency_samples, sample_rate, max_delay_ms, alpha_time=alpha_time,
                                          alpha_freq=alpha_freq, reduction=reduction)


@LOSSES.register("mss")
def _mss(*, fft_sizes: Sequence[int] = (2048, 1024, 512, 256, 128, 64), reduction: str = "none", **_: Any) -> nn.Module:
    """DDSP multi-scale spectral loss over ``fft_sizes``."""
    return MultiResolutionSTFTLoss(fft_sizes=fft_sizes, reduction=reduction)


LOSSES.register("mrstft", _mss)  # the same loss under its other common name


@LOSSES.register("lsd")
def _lsd(*, reduction: str = "none", **_: Any) -> nn.Module:
    """Log-spectral distortion (dB), the metric's settings (2048 / 512, floor 1e-10)."""
    return LogSpectralDistortionLoss(reduction=reduction)


def build_loss(name: str, **settings: Any) -> nn.Module:
    """Build the registered loss ``name`` (see :data:`LOSSES`).

    Raises:
        ValueError: unknown name (the known ones are listed).
    """
    return LOSSES.get(name)(**settings)
