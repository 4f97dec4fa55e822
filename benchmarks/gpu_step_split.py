"""Where a training step's time goes with the encoder on an accelerator and the plugin on CPU render workers.

One Dexed spectral-stage step of the recipe (loss-level SPSA, K perturbations,
``batch · (1 + 2K)`` renders of six notes by the Fx layer's render workers) with
:class:`~deepafx.recipes.dexed_matching.model.DexedEstimator` on ``--device``:

* ``encoder_s`` — features, forward, the surrogate backward and the Adam step on the device
  (synchronized, so the figure is the device's real time);
* ``render_wait_s`` — :func:`deepafx.fx.spsa_loss_gradient` (the renders by the
  workers and the per-item multi-scale spectral losses on the host);
* ``step_s`` and the render share ``render_wait_s / step_s``.

Targets are presets drawn uniformly on the DX7 grid (transpose 0), rendered once.

Usage: python benchmarks/gpu_step_split.py [--device cuda] [--batch-size 8] [--workers 2] [--steps 10]
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--perturbations", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--architecture", default="cnn2d")
    args = ap.parse_args()

    from deepafx.chain import chain
    from deepafx.fx import FxLayer, spsa_loss_gradient
    from deepafx.hosts.dexed_host import MULTI_NOTES, DexedRenderer, quantize_normalized
    from deepafx.losses import build_loss
    from deepafx.recipes.dexed_matching.model import DexedEstimator
    from deepafx.recipes.dexed_matching.presets import set_transpose
    from deepafx.recipes.dexed_matching.search import numeric_free_mask
    from deepafx.recipes.dexed_matching.train import _grouped_loss

    dev = torch.device(args.device)
    sr, b, k = 16000.0, args.batch_size, args.perturbations
    rng = np.random.default_rng(0)
    x = set_transpose(quantize_normalized(rng.random((b, 145))), 0)
    target = torch.from_numpy(DexedRenderer(sr, MULTI_NOTES, 3.0, 4.0).render_batch(x))
    model = DexedEstimator(6, sr, n_mels=64, hop_length=512, architecture=args.architecture).to(dev)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    spec = chain({"backend": "dexed", "name": "dexed", "options": {"notes": [list(n) for n in MULTI_NOTES],
                                                                  "note_duration_seconds": 3.0}}, sample_rate=sr, name="dexed")
    loss_fn = build_loss("mss", sample_rate=sr, fft_sizes=(2048, 1024, 512, 256), reduction="none")
    free = torch.from_numpy(numeric_free_mask())
    pitch = torch.full((b,), 60.0, device=dev)
    gen = torch.Generator().manual_seed(0)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    enc, rend, total = [], [], []
    with FxLayer(spec, b * (1 + 2 * k), num_workers=args.workers, estimator="spsa", epsilon=0.01, seed=0) as fx:
        for step in range(args.steps + 2):
            sync()
            t0 = time.perf_counter()
            xn = model.to_normalized(model(target.to(dev)), pitch)
            sync()
            t1 = time.perf_counter()
            _, grad = spsa_loss_gradient(fx, xn.detach().cpu(), target, loss_fn, 0.01, k, free, gen,
                                         grouped_loss=_grouped_loss(loss_fn))
            t2 = time.perf_counter()
            surrogate = (xn * grad.to(dev, xn.dtype)).sum() / b
            opt.zero_grad(set_to_none=True)
            surrogate.backward()
            opt.step()
            sync()
            t3 = time.perf_counter()
            if step >= 2:  # warm-up excluded
                enc.append((t1 - t0) + (t3 - t2))
                rend.append(t2 - t1)
                total.append(t3 - t0)
    out = {
        "benchmark": "gpu_step_split", "device": str(dev),
        "device_name": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
        "batch_size": b, "perturbations": k, "renders_per_step": b * (1 + 2 * k), "workers": args.workers,
        "steps": args.steps, "architecture": args.architecture,
        "encoder_s": float(np.mean(enc)), "render_wait_s": float(np.mean(rend)), "step_s": float(np.mean(total)),
        "render_share": float(np.sum(rend) / np.sum(total)),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
