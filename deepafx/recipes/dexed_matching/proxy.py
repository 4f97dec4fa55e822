"""A learned differentiable proxy of Dexed: normalized preset → the six-note log-mel features.

The spectral stages of training need the gradient of a spectral loss with respect to the 145
normalized Dexed parameters. SPSA estimates it from ``2K`` extra renders per item
(:func:`deepafx.fx.spsa_loss_gradient`). The proxy gets it by back-propagation through a network
trained once, on the cached corpus, to predict what Dexed renders: the log-mel features the corpus
stores for every preset. This is the idea of synth-proxy (Combes, Weinzierl and Obermayer, "Neural
proxies for sound synthesizers: learning perceptually informed preset representations", JAES 2025),
here predicting the spectrogram itself so that the gradient is that of a spectral distance.

The proxy only gives gradients: the loss reported by a training step and every evaluation figure are
still computed on real Dexed renders. Its cost is one render per item and step (the reported loss)
instead of ``1 + 2K``, plus the proxy's own training before the first spectral stage.

Architecture: an MLP from the preset to a coarse log-mel ``(notes, n_mels, proxy_frames)``,
linearly interpolated in time to the features' frames (envelopes are smooth; attacks are blurred,
which the held-out error below says).

Loss (:func:`mel_lsd`): the log-spectral distortion of the range-normalized log-mel features in dB,
``mean over notes and frames of sqrt(mean over mel bands of (Δ dB)²)``, the mel-band counterpart of
the evaluation's LSD (:func:`deepafx.metrics.lsd_db`).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

#: dB per unit of the range-normalized log-mel features (``floor_db = −120``: ``(dB + 120) / 120``).
FEATURE_DB = 120.0


def mel_lsd(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Log-spectral distortion between range-normalized log-mel features, in dB, per item.

    Args:
        pred, target: ``(batch, notes, n_mels, frames)`` range-normalized log-mel features (floor −120 dB
            at 0, 0 dB at 1; :class:`deepafx.features.LogMel` with ``normalize="range"``).
        eps: Added under the square root (dB², keeps the gradient finite at equality).

    Returns:
        ``(batch,)`` dB: mean over notes and frames of the RMS over mel bands of the dB difference.

    Raises:
        ValueError: shapes differ or are not 4-D.
    """
    if pred.dim() != 4 or pred.shape != target.shape:
        raise ValueError(f"need two (batch, notes, n_mels, frames) tensors of one shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    d = (pred - target) * FEATURE_DB
    return (d.square().mean(2) + eps).sqrt().mean((1, 2))


class DexedProxy(nn.Module):
    """Normalized Dexed presets ``(batch, 145)`` → log-mel features ``(batch, notes, n_mels, frames)``.

    Args:
        num_params: Preset size (145 for Dexed).
        notes, n_mels, frames: Shape of the predicted features (the corpus's ``logmel`` layout).
        hidden: Width of the MLP's hidden layers (default 512).
        layers: Hidden layers (default 3, ≥ 1).
        proxy_frames: Frames of the coarse prediction interpolated to ``frames`` (default 32).

    Raises:
        ValueError: a size below 1.
    """

    def __init__(self, num_params: int = 145, notes: int = 6, n_mels: int = 64, frames: int = 126, hidden: int = 512,
                 layers: int = 3, proxy_frames: int = 32) -> None:
        super().__init__()
        sizes = dict(num_params=num_params, notes=notes, n_mels=n_mels, frames=frames, hidden=hidden, layers=layers,
                     proxy_frames=proxy_frames)
        if min(sizes.values()) < 1:
            raise ValueError(f"every proxy size must be >= 1, got {sizes}")
        self.sizes = {k: int(v) for k, v in sizes.items()}
        body: list[nn.Module] = []
        width = int(num_params)
        for _ in range(int(layers)):
            body += [nn.Linear(width, int(hidden)), nn.GELU()]
            width = int(hidden)
        self.body = nn.Sequential(*body)
        self.out = nn.Linear(width, int(notes) * int(n_mels) * int(proxy_frames))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(batch, num_params)`` normalized on [0, 1] → ``(batch, notes, n_mels, frames)`` range-normalized."""
        s = self.sizes
        if x.dim() != 2 or x.shape[1] != s["num_params"]:
            raise ValueError(f"expected presets (batch, {s['num_params']}), got {tuple(x.shape)}")
        coarse = self.out(self.body(x.float())).view(-1, s["notes"] * s["n_mels"], s["proxy_frames"])
        fine = F.interpolate(coarse, size=s["frames"], mode="linear", align_corners=True)
        return fine.view(-1, s["notes"], s["n_mels"], s["frames"])


def train_proxy(corpus, *, steps: int, batch_size: int = 64, learning_rate: float = 1e-3, seed: int = 0,
                holdout: int | None = None, hidden: int = 512, layers: int = 3, proxy_frames: int = 32,
                progress: bool = False) -> tuple[DexedProxy, dict[str, Any]]:
    """Train a :class:`DexedProxy` on a corpus's presets and cached log-mel features.

    The ``holdout`` presets drawn first (among the corpus items above its level floor) are never trained
    on; their :func:`mel_lsd` is the proxy's reported error. Adam with a cosine-decayed rate.

    Args:
        corpus: A :class:`~deepafx.recipes.dexed_matching.corpus.Corpus`.
        steps: Adam steps (≥ 1). batch_size: Presets per step. learning_rate: Initial rate.
        seed: Seed of the weights, the hold-out draw and the batches.
        holdout: Presets held out for the reported error (≥ 1, fewer than the corpus's usable items; default
            a tenth of them, at most 256).
        hidden, layers, proxy_frames: :class:`DexedProxy` sizes.
        progress: tqdm bar.

    Returns:
        ``(proxy in eval mode with frozen weights, info)``; ``info``: ``holdout_mel_lsd_db`` (proxy vs
        Dexed), ``holdout_mean_mel_lsd_db`` (the hold-out's mean features vs Dexed: what a proxy that
        ignores the preset scores), ``train_mel_lsd_db`` (last 50 steps), ``steps``, ``seconds``.

    Raises:
        ValueError: ``steps`` < 1, ``holdout`` out of range.
    """
    import time

    from tqdm import tqdm

    valid = np.asarray(corpus.valid_index)
    if holdout is None:
        holdout = min(256, max(1, len(valid) // 10))
    if steps < 1 or batch_size < 1:
        raise ValueError(f"proxy steps and batch size must be >= 1, got {steps} and {batch_size}")
    if not 1 <= holdout < len(valid):
        raise ValueError(f"proxy holdout must be in [1, {len(valid) - 1}] (the corpus has {len(valid)} usable "
                         f"presets), got {holdout}")
    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, 7])
    perm = rng.permutation(valid)
    held, train_rows = np.sort(perm[:holdout]), perm[holdout:]
    feats = corpus.features("logmel")
    n, notes, n_mels, frames = feats.shape
    torch.manual_seed(seed)
    proxy = DexedProxy(corpus.params.shape[1], notes, n_mels, frames, hidden, layers, proxy_frames)
    opt = torch.optim.Adam(proxy.parameters(), lr=learning_rate)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    recent: list[float] = []
    for _ in tqdm(range(steps), desc="proxy", disable=not progress, leave=False):
        idx = np.sort(rng.choice(train_rows, batch_size))
        x = torch.from_numpy(corpus.params[idx].astype(np.float32))
        y = torch.from_numpy(np.asarray(feats[idx], dtype=np.float32))
        loss = mel_lsd(proxy(x), y).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        recent = (recent + [float(loss.detach())])[-50:]
    proxy.eval()
    for p in proxy.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        errs, base = [], []
        y_all = torch.from_numpy(np.asarray(feats[held], dtype=np.float32))
        mean = y_all.mean(0, keepdim=True)
        for i in range(0, len(held), 128):
            rows = held[i : i + 128]
            y = y_all[i : i + 128]
            errs.append(mel_lsd(proxy(torch.from_numpy(corpus.params[rows].astype(np.float32))), y))
            base.append(mel_lsd(mean.expand_as(y), y))
    info = {"holdout_mel_lsd_db": float(torch.cat(errs).mean()), "holdout_mean_mel_lsd_db": float(torch.cat(base).mean()),
            "train_mel_lsd_db": float(np.mean(recent)), "steps": int(steps), "holdout": int(holdout),
            "seconds": time.perf_counter() - t0}
    return proxy, info


def proxy_from_state(state: Mapping[str, Any]) -> DexedProxy:
    """Rebuild a frozen proxy in eval mode from ``{"sizes", "weights"}`` (:func:`proxy_state`)."""
    proxy = DexedProxy(**state["sizes"])
    proxy.load_state_dict(state["weights"])
    proxy.eval()
    for p in proxy.parameters():
        p.requires_grad_(False)
    return proxy


def proxy_state(proxy: DexedProxy) -> dict[str, Any]:
    """``{"sizes", "weights"}``: what :func:`proxy_from_state` needs (saved with the training task's state)."""
    return {"sizes": dict(proxy.sizes), "weights": {k: v.clone() for k, v in proxy.state_dict().items()}}


__all__ = ["FEATURE_DB", "DexedProxy", "mel_lsd", "proxy_from_state", "proxy_state", "train_proxy"]
