"""Error-to-signal ratio (ESR), with and without first-order pre-emphasis: the amp-modelling metric and loss.

``ESR(ŷ, y) = Σ (y − ŷ)² / Σ y²`` over all samples (0 is a perfect match; 1 is
what silence scores; a level-matched but otherwise unrelated signal scores
about 2). The pre-emphasised variant first filters both signals with
``H(z) = 1 − 0.95 z⁻¹`` (a first-order high-pass that weights the upper
spectrum, where distortion products live), starting from zero state.

References:
    A. Wright, E.-P. Damskägg, V. Välimäki, "Real-time black-box modelling with
    recurrent neural networks", DAFx 2019 (ESR with pre-emphasis, plus a DC term).
    A. Wright, V. Välimäki, "Perceptual loss function for neural modelling of audio
    systems", ICASSP 2020 (pre-emphasis filters for the ESR loss).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["EsrLoss", "PRE_EMPHASIS", "esr", "esr_loss", "pre_emphasis", "pre_emphasis_torch"]

#: Coefficient ``a`` of the first-order pre-emphasis ``H(z) = 1 − a z⁻¹`` (Wright et al.).
PRE_EMPHASIS = 0.95


def pre_emphasis(audio: np.ndarray, coeff: float = PRE_EMPHASIS) -> np.ndarray:
    """``y[n] = x[n] − coeff · x[n−1]`` along the last axis, with ``x[−1] = 0``.

    Args:
        audio: ``(..., samples)`` float.
        coeff: Filter coefficient (0.95 in Wright et al.).

    Returns:
        float64 array of the same shape.
    """
    x = np.asarray(audio, dtype=np.float64)
    out = x.copy()
    out[..., 1:] -= coeff * x[..., :-1]
    return out


def esr(est: np.ndarray, ref: np.ndarray, pre_emphasis_coeff: float | None = None) -> float:
    """Error-to-signal ratio ``Σ (ref − est)² / Σ ref²`` over every channel and sample.

    Args:
        est: ``(channels, samples)`` or ``(samples,)`` estimate.
        ref: Reference of the same shape (align plugin latency first).
        pre_emphasis_coeff: Filter both with ``1 − coeff z⁻¹`` first (``None``: plain ESR).

    Returns:
        ESR on [0, ∞); ``inf`` when the reference is silent and the estimate is not, 0 when both are.

    Raises:
        ValueError: shapes differ, or NaN/Inf samples.
    """
    e, r = np.asarray(est, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if e.shape != r.shape:
        raise ValueError(f"est and ref must have the same shape, got {e.shape} and {r.shape}; align them first")
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(r))):
        raise ValueError("est and ref must be finite (no NaN/Inf)")
    if pre_emphasis_coeff is not None:
        e, r = pre_emphasis(e, pre_emphasis_coeff), pre_emphasis(r, pre_emphasis_coeff)
    num, den = float(np.sum((r - e) ** 2)), float(np.sum(r**2))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def pre_emphasis_torch(audio: torch.Tensor, coeff: float = PRE_EMPHASIS) -> torch.Tensor:
    """Differentiable :func:`pre_emphasis` of ``(..., samples)`` tensors (zero initial state)."""
    return torch.cat([audio[..., :1], audio[..., 1:] - coeff * audio[..., :-1]], dim=-1)


def esr_loss(est: torch.Tensor, ref: torch.Tensor, pre_emphasis_coeff: float | None = PRE_EMPHASIS,
             floor: float = 1e-8) -> torch.Tensor:
    """Per-item ESR of ``(batch, channels, samples)`` tensors, differentiable in ``est``.

    ``Σ (ref − est)² / (Σ ref² + floor · N)`` per item, ``N`` = channels × samples;
    the floor (an rms of 1e-4, −80 dBFS) keeps near-silent frames from dominating.

    Returns:
        ``(batch,)``.
    """
    if est.shape != ref.shape or est.dim() != 3:
        raise ValueError(f"expected est and ref of equal shape (batch, channels, samples), got "
                         f"{tuple(est.shape)} and {tuple(ref.shape)}")
    if pre_emphasis_coeff is not None:
        est, ref = pre_emphasis_torch(est, pre_emphasis_coeff), pre_emphasis_torch(ref, pre_emphasis_coeff)
    n = ref.shape[1] * ref.shape[2]
    return ((ref - est) ** 2).sum((1, 2)) / ((ref**2).sum((1, 2)) + floor * n)


class EsrLoss(nn.Module):
    """:func:`esr_loss` as a module (the ``"esr"`` training loss of the amp-emulation recipe).

    Args:
        pre_emphasis: Coefficient of ``1 − a z⁻¹`` (``None``: plain ESR). Default 0.95.
        reduction: ``"none"`` (``(batch,)``) or ``"mean"``.
        latency_samples: The chain's reported latency, samples (>= 0): estimate sample
            ``n + latency`` is compared with reference sample ``n``, the first ``latency``
            estimate samples and the last ``latency`` reference samples of each frame unscored
            (a plugin chain's output is late by its latency; ESR is sample-exact).

    Raises:
        ValueError: a bad reduction or a negative latency; at call time, frames not longer than the latency.
    """

    def __init__(self, pre_emphasis: float | None = PRE_EMPHASIS, reduction: str = "none", latency_samples: int = 0):
        super().__init__()
        if reduction not in ("none", "mean"):
            raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")
        if int(latency_samples) < 0:
            raise ValueError(f"latency_samples must be >= 0, got {latency_samples}")
        self.coeff, self.reduction, self.latency = pre_emphasis, reduction, int(latency_samples)

    def forward(self, est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        if self.latency:
            n = ref.shape[-1] - self.latency
            if n <= 0:
                raise ValueError(f"frames of {ref.shape[-1]} samples are not longer than the latency "
                                 f"({self.latency} samples)")
            est, ref = est[..., self.latency:], ref[..., :n]
        loss = esr_loss(est, ref, self.coeff)
        return loss.mean() if self.reduction == "mean" else loss
