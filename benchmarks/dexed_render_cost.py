"""Cost of one Dexed evaluation (render + spectral loss) and of test-time SPSA, in-process vs through FxLayer.

Run: ``python benchmarks/dexed_render_cost.py [--renders 200]``. Prints a JSON
object with milliseconds per render, per float32/float64 multi-scale spectral
loss, per LSD (each render against its target's spectra recomputed, or the
target's computed once as training does, :func:`grouped_lsd`, and their ratio),
and per SPSA render for the in-process refinement (:func:`spsa_refine`)
and for the same SPSA steps through :class:`deepafx.fx.FxLayer` render workers.
Timings depend on machine load; rerun on an idle machine to compare.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--renders", type=int, default=200, help="renders per measurement")
    args = ap.parse_args()
    if args.renders < 48:
        ap.error("--renders must be at least 48 (the LSD measurement scores 8 items of 5 renders)")
    torch.set_num_threads(1)
    from deepafx.chain import chain
    from deepafx.recipes.dexed_matching.search import spsa_refine
    from deepafx.recipes.dexed_matching.spectral import SpectralTarget, grouped_lsd
    from deepafx.fx import FxLayer
    from deepafx.hosts.dexed_host import DexedRenderer, dexed_param_table
    from deepafx.losses import LogSpectralDistortionLoss, MultiResolutionSTFTLoss

    r = DexedRenderer(16000, [(60, 100)], 3.0, 4.0)
    x = dexed_param_table().defaults_normalized()
    x[dexed_param_table().index("op2_output_level")] = 0.8
    target = r.render(x)
    n = args.renders
    out = {}
    t = time.perf_counter()
    ys = [r.render(x) for _ in range(n)]
    out["render_ms"] = (time.perf_counter() - t) / n * 1e3
    obj = SpectralTarget(target)
    t = time.perf_counter()
    for y in ys:
        obj(y)
    out["mss_float32_cached_target_ms"] = (time.perf_counter() - t) / n * 1e3
    loss = MultiResolutionSTFTLoss()
    tt = torch.from_numpy(target)[None].double()
    t = time.perf_counter()
    for y in ys[: n // 4]:
        with torch.no_grad():
            loss(torch.from_numpy(y)[None].double(), tt)
    out["mss_torch_loss_float64_input_ms"] = (time.perf_counter() - t) / (n // 4) * 1e3
    # SPSA on the LSD loss: the 1 + 2K = 5 renders of each item scored against its target, the target's
    # spectra computed per render (the loss on repeated targets) or once (grouped_lsd, as training does)
    lsd = LogSpectralDistortionLoss(reduction="none")
    cand = torch.from_numpy(np.stack(ys[:40]).reshape(8, 5, *target.shape))
    tgts = torch.from_numpy(np.stack(ys[40:48]))
    t = time.perf_counter()
    lsd(cand.reshape(40, *target.shape), tgts.repeat_interleave(5, 0))
    out["lsd_per_render_target_ms"] = (time.perf_counter() - t) / 40 * 1e3
    t = time.perf_counter()
    grouped_lsd(cand, tgts)
    out["lsd_grouped_ms"] = (time.perf_counter() - t) / 40 * 1e3
    out["lsd_grouped_over_per_render"] = out["lsd_grouped_ms"] / out["lsd_per_render_target_ms"]
    res = spsa_refine(target, x * 0.9, r, budget_renders=n, seed=0)
    out["spsa_in_process_ms_per_render"] = res.seconds / res.renders * 1e3
    fx = FxLayer(chain({"backend": "dexed", "name": "dexed"}, sample_rate=16000), 1, num_workers=1, epsilon=0.01)
    try:
        theta = torch.nn.Parameter(torch.from_numpy(x * 0.9).float()[None])
        opt = torch.optim.Adam([theta], lr=1e-3)
        tgt = torch.from_numpy(target)[None]
        steps = n // 3  # 3 renders per step (main + two perturbed)
        t = time.perf_counter()
        for _ in range(steps):
            lo = loss(fx(torch.zeros(1, 1, target.shape[-1]), theta.clamp(0, 1)), tgt)
            opt.zero_grad()
            lo.backward()
            opt.step()
        out["spsa_fx_layer_ms_per_render"] = (time.perf_counter() - t) / (steps * 3) * 1e3
    finally:
        fx.close()
    print(json.dumps({k: round(v, 2) for k, v in out.items()}, indent=2))


if __name__ == "__main__":
    main()
