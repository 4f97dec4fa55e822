"""Fx-layer step time against the render-bound ideal, for SPSA and finite differences, per render engine.

For each chain:

* ``t_plugins_s``: the chain's plugins rendering one block in *one* pedalboard
  call (the plugin objects of a built chain, their parameters set), serially
  after warm-up, in a fresh process set up like a render worker
  (:func:`deepafx.workers.tune_allocator` where it exists): what the plugins
  themselves cost.
* ``t_render_s``: one :meth:`deepafx.chain.Chain.process` call on the same block
  (parameter mapping, validation and the plugins); ``chain_over_plugins`` is
  their ratio, the fixed cost per render.
* ``ideal_s = 3·M·t_plugins / W``: 3 renders per item for SPSA (main, ``+``,
  ``−``), spread over W workers with no other cost.
* ``fx_step_s``: the measured forward+backward of :class:`deepafx.fx.FxLayer`
  (multiprocessing engine, the embedded default); ``overhead_ratio = fx_step_s / ideal_s``.
* ``peer_step_s``: the same step through a DeepAFx-ST-style SPSA channel
  (:mod:`peer_spsa_channel`: one process per item, pickled audio, forward and
  backward messages), same chain renderer; ``peer_overhead_ratio`` against the same ideal.
* ``fd_step_s``: two-sided finite differences ((2P+1)·M renders) and its own ideal.
* with ``--engine ray``: ``ray_step_s`` (:class:`deepafx.ray_pool.RayRenderPool`
  on a local Ray cluster this run starts with W CPUs), ``ray_overhead_ratio``
  against the ideal and ``ray_over_pool = ray_step_s / fx_step_s``.

Also, once per run, ``engine_fixed_cost``: the step time of an identity chain
(one ``pedalboard.Gain`` at 0 dB, about 0.1 ms per render) per engine, i.e. the
per-step cost of moving ``M·C·N`` samples in and ``3·M·C·N`` out (messages,
shared memory or Ray's object store, copies), with the bytes moved per step;
with ``--engine ray`` also ``ray_put_get_s``, one ``ray.put`` + ``ray.get`` of
the step's output bytes in the driver.

All figures come from one run (machines are noisy). Stop other work on the
machine first.

Usage: python benchmarks/spsa_step.py [--batch-size 8] [--workers 2] [--block-samples 44100]
       [--steps 10] [--fd-steps 2] [--engine process|ray] [--chains cheap,mastering,zam] [--no-peer]
Prints one JSON line per chain and, last, one JSON line with all results.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time

import numpy as np
import pedalboard
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from deepafx.chain import ChainSpec, chain  # noqa: E402
from deepafx.fx import FxLayer  # noqa: E402
from peer_spsa_channel import PeerSPSAChannel  # noqa: E402

BUILTIN_MASTERING = chain(
    {"backend": "builtin.multiband_compressor", "name": "mbc"},
    {"backend": "builtin.graphic_eq", "name": "geq"},
    {"backend": "pedalboard.BrickwallLimiter", "name": "lim"},
    sample_rate=44100, name="builtin_mastering",
)
ZAM = chain({"backend": "vst3", "name": "comp", "options": {"path": "/usr/lib/vst3/ZamCompX2.vst3"}},
            sample_rate=44100, name="ZamCompX2.vst3")
#: The cheap chain of the fixed-cost target: compressor → shelves → 3 peaks → limiter (about 3 ms per second of stereo).
CHEAP = chain(
    {"backend": "pedalboard.Compressor", "name": "comp"},
    {"backend": "pedalboard.LowShelfFilter", "name": "low"},
    {"backend": "pedalboard.HighShelfFilter", "name": "high"},
    {"backend": "pedalboard.PeakFilter", "name": "peak1"},
    {"backend": "pedalboard.PeakFilter", "name": "peak2"},
    {"backend": "pedalboard.PeakFilter", "name": "peak3"},
    {"backend": "pedalboard.Limiter", "name": "lim"},
    sample_rate=44100, name="cheap",
)
IDENTITY = chain({"backend": "pedalboard.Gain", "name": "gain", "learn": []}, sample_rate=44100, name="identity")
CHAINS = {"cheap": CHEAP, "mastering": BUILTIN_MASTERING, "zam": ZAM}
#: Targets of the issue: step / render-bound ideal at W = 2, and Ray against the multiprocessing pool.
TARGETS = {"cheap": 1.15, "mastering": 1.10, "ray_over_pool": 1.3}


def _audio(m: int, n: int) -> torch.Tensor:
    rng = np.random.default_rng(0)
    t = np.arange(n) / 44100
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal((m, 2, n))
    return torch.from_numpy(x.astype(np.float32))


def _timed(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _plugin_objects(inst) -> list | None:
    """The pedalboard plugin objects a built chain renders with, or ``None`` if one is not a pedalboard object."""
    objs = []
    for proc in inst.processors:
        board = getattr(proc, "board", None)
        if board is None and getattr(proc, "num_instances", 0) == 1:  # a VST3 effect (not mono-only)
            board = proc._instances[0]
        if board is None:
            return None
        objs.append(board)
    return objs


def _t_render(spec: ChainSpec, audio: np.ndarray, reps: int) -> tuple[float, float]:
    """``(t_render, t_plugins)``: one Chain.process call, and its plugins in one pedalboard call,
    timed in a fresh process prepared as a render worker is."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_t_render_here, (spec, audio, reps))


def _t_render_here(spec: ChainSpec, audio: np.ndarray, reps: int) -> tuple[float, float]:
    try:
        from deepafx.workers import tune_allocator
    except ImportError:  # older deepafx: workers ran with the default allocator
        tune_allocator = None
    if tune_allocator is not None:
        tune_allocator()
    torch.set_num_threads(1)
    inst = spec.build()
    x = np.full(len(inst.param_table), 0.5)
    t_render = _timed(lambda: inst.process(audio, x), reps)
    objs = _plugin_objects(inst)
    if objs is None:
        return t_render, t_render
    board = pedalboard.Pedalboard(objs)
    t_plugins = _timed(lambda: board.process(audio, spec.sample_rate, reset=False), reps)
    inst.close()
    return t_render, t_plugins


def _step_time(layer, audio: torch.Tensor, steps: int, num_params: int) -> float:
    g = torch.Generator().manual_seed(0)
    p = torch.rand(audio.shape[0], num_params, generator=g) * 0.8 + 0.1
    dy = torch.randn(audio.shape, generator=g)
    times = []
    for i in range(steps + 2):
        pp = p.clone().requires_grad_(num_params > 0)
        t0 = time.perf_counter()
        y = layer(audio, pp)
        if num_params:
            (y * dy).sum().backward()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _layer(spec: ChainSpec, m: int, w: int, engine: str, **kw) -> FxLayer:
    if engine == "process":
        return FxLayer(spec, batch_size=m, num_workers=w, **kw)
    from deepafx.workers import RenderConfig

    return FxLayer(spec, batch_size=m, render=RenderConfig(engine=engine, num_workers=w), **kw)


def bench(spec: ChainSpec, m: int, w: int, n: int, steps: int, fd_steps: int, engines: list[str], peer: bool) -> dict:
    audio = _audio(m, n)
    steps_by_engine = {}
    for engine in engines:
        with _layer(spec, m, w, engine) as layer:
            p = layer.num_params
            steps_by_engine[engine] = _step_time(layer, audio, steps, p)
    t_render, t_plugins = _t_render(spec, audio[0].numpy(), reps=max(20, steps))
    ideal = 3 * m * t_plugins / w
    fx_step = steps_by_engine["process"]
    r = {
        "chain": spec.name, "num_params": p, "batch_size": m, "workers": w, "block_samples": n,
        "t_plugins_s": round(t_plugins, 6), "t_render_s": round(t_render, 6),
        "chain_over_plugins": round(t_render / t_plugins, 3),
        "fx_step_s": round(fx_step, 4), "ideal_s": round(ideal, 4), "overhead_ratio": round(fx_step / ideal, 3),
    }
    if "ray" in steps_by_engine:
        r.update(ray_step_s=round(steps_by_engine["ray"], 4), ray_overhead_ratio=round(steps_by_engine["ray"] / ideal, 3),
                 ray_over_pool=round(steps_by_engine["ray"] / fx_step, 3))
    if peer:
        with PeerSPSAChannel(spec, m) as ch:
            peer_step = _step_time(ch, audio, steps, p)
        r.update(peer_step_s=round(peer_step, 4), peer_overhead_ratio=round(peer_step / ideal, 3))
    if fd_steps:
        with FxLayer(spec, batch_size=m, num_workers=w, estimator="fd") as fd:
            fd_step = _step_time(fd, audio, fd_steps, p)
        fd_ideal = (2 * p + 1) * m * t_plugins / w
        r.update(fd_step_s=round(fd_step, 4), fd_ideal_s=round(fd_ideal, 4),
                 fd_overhead_ratio=round(fd_step / fd_ideal, 3), fd_over_spsa=round(fd_step / fx_step, 2))
    return r


def engine_fixed_cost(m: int, w: int, n: int, steps: int, engines: list[str]) -> dict:
    """Step time of the identity chain per engine (training mode: 3 renders per item), and bytes moved."""
    audio = _audio(m, n)
    out: dict = {"chain": IDENTITY.name, "bytes_in_per_step": int(audio.numel() * 4),
                 "bytes_out_per_step": int(3 * audio.numel() * 4)}
    for engine in engines:
        with _layer(IDENTITY, m, w, engine) as layer:
            layer.train()
            out[f"{engine}_step_s"] = round(_step_time(layer, audio, steps, 0), 5)
    if "ray" in engines:
        import ray

        block = np.zeros((3 * m, 2, n), np.float32)
        with _layer(IDENTITY, 1, 1, "ray"):  # connects this process to the run's cluster
            out["ray_put_get_s"] = round(_timed(lambda: ray.get(ray.put(block)), steps), 5)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=8, help="batch slots M")
    ap.add_argument("--workers", type=int, default=2, help="render workers W")
    ap.add_argument("--block-samples", type=int, default=44100, help="samples per rendered block (44100 = 1 s at 44.1 kHz)")
    ap.add_argument("--steps", type=int, default=10, help="timed SPSA steps (median reported)")
    ap.add_argument("--fd-steps", type=int, default=2, help="timed finite-difference steps (0 skips them)")
    ap.add_argument("--engine", choices=("process", "ray"), default="process",
                    help="ray: also time the Ray engine (a local cluster with W CPUs) against the multiprocessing pool")
    ap.add_argument("--chains", default=",".join(CHAINS), help=f"comma-separated, from {sorted(CHAINS)}")
    ap.add_argument("--no-peer", action="store_true", help="skip the DeepAFx-ST-style channel")
    args = ap.parse_args()
    torch.set_num_threads(1)
    engines = ["process"] + (["ray"] if args.engine == "ray" else [])
    if args.engine == "ray":
        import ray

        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    results = []
    try:
        for name in args.chains.split(","):
            spec = CHAINS[name]
            if spec is ZAM and not os.path.exists("/usr/lib/vst3/ZamCompX2.vst3"):
                print(json.dumps({"chain": spec.name, "skipped": "ZamCompX2.vst3 not installed (apt-get install zam-plugins)"}))
                continue
            r = bench(spec, args.batch_size, args.workers, args.block_samples, args.steps, args.fd_steps, engines,
                      peer=not args.no_peer)
            print(json.dumps(r), flush=True)
            results.append(r)
        fixed = engine_fixed_cost(args.batch_size, args.workers, args.block_samples, args.steps, engines)
        print(json.dumps(fixed), flush=True)
    finally:
        if args.engine == "ray":
            ray.shutdown()
    by_name = {k: r for r in results for k, s in CHAINS.items() if s.name == r["chain"]}
    summary = {f"{k}_overhead_ratio": by_name[k]["overhead_ratio"] for k in ("cheap", "mastering") if k in by_name}
    summary.update({f"{k}_peer_overhead_ratio": by_name[k]["peer_overhead_ratio"]
                    for k in ("cheap", "mastering") if k in by_name and "peer_overhead_ratio" in by_name[k]})
    summary.update({f"{k}_ray_over_pool": by_name[k]["ray_over_pool"] for k in by_name if "ray_over_pool" in by_name[k]})
    print(json.dumps({"benchmark": "spsa_step", "engine": args.engine, "targets": TARGETS, "summary": summary,
                      "engine_fixed_cost": fixed, "results": results}))


if __name__ == "__main__":
    main()
