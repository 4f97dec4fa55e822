"""Fx-layer step time against the render-bound ideal, for SPSA and finite differences.

For each chain: ``t_render`` = one chain instance rendering one block serially
(in this process, after warm-up); ``ideal_s = 3·M·t_render / W`` (3 renders per
item for SPSA, spread over W workers); ``fx_step_s`` = measured forward+backward
of :class:`deepafx.fx.FxLayer`; ``overhead_ratio = fx_step_s / ideal_s``.
``fd_step_s`` is the same step with two-sided finite differences ((2P+1)·M
renders), with its own ideal ``fd_ideal_s``. All measured in one run.

Usage: python benchmarks/spsa_step.py [--batch-size 8] [--workers 2] [--block-samples 44100] [--steps 10]
Prints one JSON line per chain and, last, one JSON line with all results.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from deepafx.chain import ChainSpec, chain
from deepafx.fx import FxLayer

BUILTIN_MASTERING = chain(
    {"backend": "builtin.multiband_compressor", "name": "mbc"},
    {"backend": "builtin.graphic_eq", "name": "geq"},
    {"backend": "pedalboard.BrickwallLimiter", "name": "lim"},
    sample_rate=44100, name="builtin_mastering",
)
ZAM = chain({"backend": "vst3", "name": "comp", "options": {"path": "/usr/lib/vst3/ZamCompX2.vst3"}},
            sample_rate=44100, name="ZamCompX2.vst3")


def _audio(m: int, n: int) -> torch.Tensor:
    rng = np.random.default_rng(0)
    t = np.arange(n) / 44100
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal((m, 2, n))
    return torch.from_numpy(x.astype(np.float32))


def _t_render(spec: ChainSpec, audio: np.ndarray, reps: int) -> float:
    inst = spec.build()
    x = np.full(len(inst.param_table), 0.5)
    for _ in range(3):
        inst.process(audio, x)
    t0 = time.perf_counter()
    for _ in range(reps):
        inst.process(audio, x)
    return (time.perf_counter() - t0) / reps


def _step_time(layer: FxLayer, audio: torch.Tensor, steps: int) -> float:
    g = torch.Generator().manual_seed(0)
    p = torch.rand(audio.shape[0], layer.num_params, generator=g) * 0.8 + 0.1
    dy = torch.randn(audio.shape, generator=g)
    times = []
    for i in range(steps + 2):
        pp = p.clone().requires_grad_(True)
        t0 = time.perf_counter()
        (layer(audio, pp) * dy).sum().backward()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench(spec: ChainSpec, m: int, w: int, n: int, steps: int, fd_steps: int) -> dict:
    audio = _audio(m, n)
    with FxLayer(spec, batch_size=m, num_workers=w) as layer:
        fx_step = _step_time(layer, audio, steps)
        p = layer.num_params
    t_render = _t_render(spec, audio[0].numpy(), reps=max(10, steps))
    ideal = 3 * m * t_render / w
    with FxLayer(spec, batch_size=m, num_workers=w, estimator="fd") as fd:
        fd_step = _step_time(fd, audio, fd_steps)
    fd_ideal = (2 * p + 1) * m * t_render / w
    return {
        "chain": spec.name, "num_params": p, "batch_size": m, "workers": w, "block_samples": n,
        "t_render_s": round(t_render, 6), "fx_step_s": round(fx_step, 4), "ideal_s": round(ideal, 4),
        "overhead_ratio": round(fx_step / ideal, 3), "fd_step_s": round(fd_step, 4),
        "fd_ideal_s": round(fd_ideal, 4), "fd_overhead_ratio": round(fd_step / fd_ideal, 3),
        "fd_over_spsa": round(fd_step / fx_step, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=8, help="batch slots M")
    ap.add_argument("--workers", type=int, default=2, help="render worker processes W")
    ap.add_argument("--block-samples", type=int, default=44100, help="samples per rendered block (44100 = 1 s at 44.1 kHz)")
    ap.add_argument("--steps", type=int, default=10, help="timed SPSA steps (median reported)")
    ap.add_argument("--fd-steps", type=int, default=2, help="timed finite-difference steps")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = []
    for spec in (BUILTIN_MASTERING, ZAM):
        if spec is ZAM and not os.path.exists("/usr/lib/vst3/ZamCompX2.vst3"):
            print(json.dumps({"chain": spec.name, "skipped": "ZamCompX2.vst3 not installed (apt-get install zam-plugins)"}))
            continue
        r = bench(spec, args.batch_size, args.workers, args.block_samples, args.steps, args.fd_steps)
        print(json.dumps(r), flush=True)
        results.append(r)
    print(json.dumps({"benchmark": "spsa_step", "results": results}))


if __name__ == "__main__":
    main()
