"""Quality of black-box gradient estimates against autodiff.

Uses ``testing.waveshaper`` (a numpy black box rendered in worker processes)
and its exact torch twin. For random problems (audio, parameters, upstream
gradient) reports the mean cosine similarity between the SPSA estimate and the
autodiff gradient with K = 1 and K = 8 draws per step (``cosine_k1``,
``cosine_k8``), the cosine of the average of 100 single draws
(``cosine_avg100``), and the relative error ‖g_fd − g‖/‖g‖ of two-sided finite
differences (``fd_rel_error``).

Usage: python benchmarks/gradient_quality.py [--trials 20] [--epsilon 0.01]
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from deepafx.chain import chain
from deepafx.fx import FxLayer
from deepafx.hosts.testing import waveshaper_torch

SPEC = chain({"backend": "testing.waveshaper", "name": "ws"}, sample_rate=44100, name="waveshaper")


def _problem(seed: int, batch: int, samples: int):
    g = torch.Generator().manual_seed(seed)
    x = 0.5 * torch.randn(batch, 2, samples, generator=g)
    p = torch.rand(batch, 4, generator=g)
    w = torch.randn(batch, 2, samples, generator=g)
    pt = p.clone().requires_grad_(True)
    (waveshaper_torch(x, pt) * w).sum().backward()
    return x, p, w, pt.grad


def _grad(layer: FxLayer, x, p, w) -> torch.Tensor:
    pp = p.clone().requires_grad_(True)
    (layer(x, pp) * w).sum().backward()
    return pp.grad


def _cos(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20, help="random problems averaged")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--epsilon", type=float, default=0.01, help="perturbation ε on normalized parameters")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    res = {"k1": [], "k8": [], "avg100": [], "fd": []}
    layers = {k: FxLayer(SPEC, args.batch_size, num_workers=args.workers, num_perturbations=k, epsilon=args.epsilon, seed=k)
              for k in (1, 8)}
    fd = FxLayer(SPEC, args.batch_size, num_workers=args.workers, estimator="fd", epsilon=args.epsilon)
    try:
        for t in range(args.trials):
            x, p, w, g = _problem(t, args.batch_size, args.samples)
            res["k1"].append(_cos(_grad(layers[1], x, p, w), g))
            res["k8"].append(_cos(_grad(layers[8], x, p, w), g))
            g_fd = _grad(fd, x, p, w)
            res["fd"].append(float((g_fd - g).norm() / g.norm()))
            if t < 3:
                avg = torch.stack([_grad(layers[1], x, p, w) for _ in range(100)]).mean(0)
                res["avg100"].append(_cos(avg, g))
    finally:
        for layer in (*layers.values(), fd):
            layer.close()
    print(json.dumps({
        "benchmark": "gradient_quality", "epsilon": args.epsilon, "trials": args.trials,
        "cosine_k1": round(float(np.mean(res["k1"])), 4), "cosine_k8": round(float(np.mean(res["k8"])), 4),
        "cosine_avg100": round(float(np.mean(res["avg100"])), 4),
        "fd_rel_error": float(f"{np.mean(res['fd']):.3g}"),
    }))


if __name__ == "__main__":
    main()
