"""Which SPSA estimator trains through Dexed: audio-linearized (FxLayer autograd) vs SPSA on the loss.

Four factory voices are perturbed (σ = 0.08 on continuous values); their
continuous parameters are optimized directly (Adam, 12 steps) toward the
original voices' renders (0.5 s notes, multi-scale spectral loss with FFT sizes
2048–256) with

* ``vjp``: :class:`deepafx.fx.FxLayer`'s estimator, ``g = dL/dy · (y⁺ − y⁻) / (2εΔ)``;
* ``loss``: :func:`deepafx.fx.spsa_loss_gradient`, ``g = (L⁺ − L⁻) / (2εΔ)``, the perturbed
  presets rendered by the same Fx layer's workers (the trainer's ``spsa_mode: loss``,
  with the same grouped multi-scale spectral loss).

Run: ``python benchmarks/dexed_spsa_estimators.py [--perturbations 2] [--lr 3e-3]``.
Prints the loss per step, the final loss and the ratio final / start for each.
Needs the hexter factory banks (fetched with ``apt-get download hexter``).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch


def run(mode: str, k: int, lr: float, steps: int, bank_dir) -> dict:
    from deepafx.chain import chain
    from deepafx.recipes.dexed_matching.presets import load_factory_presets, sample_around
    from deepafx.recipes.dexed_matching.search import numeric_free_mask
    from deepafx.recipes.dexed_matching.spectral import grouped_mss
    from deepafx.fx import FxLayer, spsa_loss_gradient
    from deepafx.hosts.dexed_host import DexedRenderer
    from deepafx.losses import MultiResolutionSTFTLoss

    sr, n = 16000, 8000
    voices = load_factory_presets(bank_dir)
    rng = np.random.default_rng(5)
    r = DexedRenderer(sr, [(60, 100)], 0.25, 0.5)
    ids = (10, 30, 50, 70)
    b = len(ids)
    target = torch.from_numpy(np.stack([r.render(voices[i].x) for i in ids]))
    start = np.stack([sample_around(voices[i].x, rng, 0.08, 0.0, 0.0) for i in ids])
    free = torch.from_numpy(numeric_free_mask())
    spec = chain({"backend": "dexed", "name": "dexed", "options": {"note_duration_seconds": 0.25}}, sample_rate=sr)
    fx = FxLayer(spec, batch_size=b * (1 + 2 * k) if mode == "loss" else b, num_workers=2, epsilon=0.01,
                 num_perturbations=k if mode == "vjp" else 1, seed=0)
    sizes = (2048, 1024, 512, 256)
    loss_mean = MultiResolutionSTFTLoss(fft_sizes=sizes)
    loss_none = MultiResolutionSTFTLoss(fft_sizes=sizes, reduction="none")
    overlap = 1.0 - loss_none.hops[0] / sizes[0]

    def grouped(y, t):  # same value as loss_none, each target's spectra computed once
        return grouped_mss(y, t, sizes, overlap, loss_none.log_weight, loss_none.eps)

    theta = torch.nn.Parameter(torch.from_numpy(start[:, free.numpy()]).float())
    fixed = torch.from_numpy(start).float()
    opt = torch.optim.Adam([theta], lr=lr)
    gen = torch.Generator().manual_seed(0)
    hist = []
    t0 = time.perf_counter()
    try:
        for _ in range(steps):
            x = fixed.clone()
            x[:, free] = theta.clamp(0, 1)
            opt.zero_grad()
            if mode == "vjp":
                loss = loss_mean(fx(torch.zeros(b, 1, n), x), target)
                loss.backward()
                hist.append(float(loss.detach()))
            else:
                per_item, grad = spsa_loss_gradient(fx, x, target, loss_none, 0.01, k, free, gen, grouped_loss=grouped)
                ((x * grad.float()).sum() / b).backward()
                hist.append(float(per_item.mean()))
            opt.step()
        x = fixed.clone()
        x[:, free] = theta.detach().clamp(0, 1)
        final = float(loss_mean(fx.render(torch.zeros(b, 1, n), x), target))
    finally:
        fx.close()
    return {"mode": mode, "losses": [round(h, 3) for h in hist], "final": round(final, 3),
            "ratio": round(final / hist[0], 3), "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--perturbations", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(2)
    from deepafx.recipes.dexed_matching.presets import fetch_hexter_banks

    with tempfile.TemporaryDirectory() as tmp:
        bank_dir = fetch_hexter_banks(tmp)
        for mode in ("vjp", "loss"):
            print(run(mode, args.perturbations, args.lr, args.steps, bank_dir))


if __name__ == "__main__":
    main()
