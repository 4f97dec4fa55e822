"""Fx-layer step time against the render-bound ideal, for SPSA and finite differences, per render engine.

For each chain:

* ``t_plugins_s``: the chain's plugins rendering one block in *one* pedalboard
  call (the plugin objects of a built chain, their parameters set beforehand),
  serially after warm-up, in a fresh process set up like a render worker
  (:func:`deepafx.workers.tune_allocator` where it exists): what the plugins
  themselves cost. Timed on every item of the step (its audio, its parameters:
  one instance per item) and averaged, because what a plugin costs depends on
  its parameter values; ``params_over_half`` compares it with the plugins at
  every parameter 0.5 (how this benchmark timed the ideal before a new commit
  after a2598a6).
* ``t_render_s``: one :meth:`deepafx.chain.Chain.process` call on the same blocks
  (parameter mapping, validation and the plugins); ``chain_over_plugins`` is
  their ratio, the fixed cost per render.
* ``ideal_s = 3·M·t_plugins / W``: 3 renders per item for SPSA (main, ``+``,
  ``−``), spread over W workers with no other cost.
* ``parallel_floor_s``: W processes rendering their slots' items three times each
  (``3·M/W`` blocks) through the plugins alone, at the same time: what a perfect engine would take on this
  machine, where cores running at once slow each other down;
  ``floor_over_ideal`` shows by how much, ``over_floor = fx_step_s / parallel_floor_s``
  the engine's own overhead.
* ``fx_step_s``: the measured forward+backward of :class:`deepafx.fx.FxLayer`
  (multiprocessing engine, the embedded default); ``overhead_ratio = fx_step_s / ideal_s``.
* ``peer_step_s``: the same step through a DeepAFx-ST-style SPSA channel
  (:mod:`peer_spsa_channel`: one process per item, pickled audio, forward and
  backward messages), same chain renderer; ``peer_overhead_ratio`` against the same ideal.
* ``fd_step_s``: two-sided finite differences ((2P+1)·M renders) and its own ideal.
* with ``--engine ray``: ``ray_step_s`` (:class:`deepafx.ray_pool.RayRenderPool`
  on a local Ray cluster this run starts with W CPUs), ``ray_overhead_ratio``
  against the ideal and ``ray_over_pool = ray_step_s / fx_step_s``.

``parallel_floor_spsa_s``: the W processes each rendering their share of an SPSA step as a render
worker does (:class:`deepafx.workers.SlotInstances`: their slots' three instances, the main one at θ,
the perturbed two at a new ``θ ± εΔ``, so the plugins recompute coefficients; ``y⁺ − y⁻`` written to a
buffer) at the same time, without messages; ``floor_spsa_over_ideal`` against the ideal.
``bound_s = parallel_floor_spsa_s + before_send + after_replies``: the step of an engine whose messages
cost nothing and whose main process does its measured serial work (checks, perturbations, input
copies; stacking, the loss, backward) without overlapping the renders; ``bound_over_ideal`` and
``over_bound = fx_step_s / bound_s`` (what the messages, wake-ups and replies add).

``step_phases_ms``: where a multiprocessing step's time goes (medians over its
timed steps, from the engine's ``last_timeline``): ``before_send``, ``wake``
(message sent → first worker starts), ``busy_mean`` (a worker on its request),
``busy_spread`` (first → last worker done), ``reply``, ``after_replies``
(stacking outputs, loss, backward). ``ray_step_phases_ms``: the same for the Ray
engine (its actors report their times on this machine's clock).

Also, once per run, ``engine_fixed_cost``: the step time of an identity chain
(one ``pedalboard.Gain`` at 0 dB, about 0.1 ms per render) per engine, i.e. the
per-step cost of moving ``M·C·N`` samples in and ``2·M·C·N`` out (the main
renders and the workers' SPSA differences: messages, shared memory or Ray's
object store, copies), with the bytes moved per step;
with ``--engine ray`` also ``ray_put_get_s``, one ``ray.put`` + ``ray.get`` of
the step's output bytes in the driver.

All figures come from one run (machines are noisy). Stop other work on the
machine first.

Machines are noisy (here one plugin render varies by ±15 % from second to
second), so the plugins-alone time and every runner's steps are timed
interleaved, one step at a time, in rounds that start only once the machine is
idle (:func:`wait_quiet`; the seconds waited are reported): every ratio is
taken within a round, and the median over rounds is reported.

Usage: python benchmarks/spsa_step.py [--batch-size 8] [--workers 2] [--block-samples 44100]
       [--steps 8] [--rounds 5] [--fd-steps 2] [--engine process|ray] [--chains cheap,mastering,zam] [--no-peer]
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
from deepafx.spsa import perturb  # noqa: E402
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
CHEAP = ChainSpec.from_file("builtin_channel")
IDENTITY = chain({"backend": "pedalboard.Gain", "name": "gain", "learn": []}, sample_rate=44100, name="identity")
CHAINS = {"cheap": CHEAP, "mastering": BUILTIN_MASTERING, "zam": ZAM}
#: Targets: step / render-bound ideal at W = 2, and Ray against the multiprocessing pool.
TARGETS = {"cheap": 1.15, "mastering": 1.10, "ray_over_pool": 1.3}


def _audio(m: int, n: int) -> torch.Tensor:
    rng = np.random.default_rng(0)
    t = np.arange(n) / 44100
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal((m, 2, n))
    return torch.from_numpy(x.astype(np.float32))


def _timed(fn, reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
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


class _RenderTimer:
    """W fresh processes prepared as render workers are (:func:`deepafx.workers.tune_allocator` where it
    exists), each holding one chain instance per item of the step, its parameters set to that item's
    (the step's audio and parameters), that time on request:

    * ``serial(reps)``: ``(t_render, t_plugins, t_plugins_half)`` in one process, means over the items of
      medians over ``reps``: one Chain.process call at the item's parameters, the chain's plugins in one
      pedalboard call at those parameters (nothing written), and the plugins at every parameter 0.5;
    * ``floor()``: each process renders its slots' items three times each (``3·M/W`` blocks) through the
      plugins alone, all at the same time (started together at a barrier); the slowest one's time:
      the step time of a perfect engine on this machine, where cores that slow each other down
      (shared caches, memory, a hypervisor's hyper-threads) raise it above ``3·M·t_plugins/W``;
    * ``floor_spsa()``: the same share rendered as a render worker does (see :func:`_timer_main`).
    """

    def __init__(self, spec: ChainSpec, audio: np.ndarray, params: np.ndarray, workers: int):
        ctx = mp.get_context("spawn")
        barrier = ctx.Barrier(workers)
        self.conns, self.procs = [], []
        for w in range(workers):
            slots = list(range(w, audio.shape[0], workers))  # the slots worker w of the engine owns
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_timer_main, args=(child, spec, audio, params, barrier, slots), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for c in self.conns:
            c.recv()

    def serial(self, reps: int) -> tuple[float, float, float]:
        self.conns[0].send(("serial", reps))
        return self.conns[0].recv()

    def _all(self, op: str) -> float:
        for c in self.conns:
            c.send((op, 0))
        return max(c.recv() for c in self.conns)

    def floor(self) -> float:
        return self._all("floor")

    def floor_spsa(self) -> float:
        return self._all("floor_spsa")

    def close(self) -> None:
        for c in self.conns:
            c.send(("close", 0))
        for p in self.procs:
            p.join(timeout=5)


def _plugins_call(spec: ChainSpec, inst, audio: np.ndarray):
    """A callable rendering ``audio`` through ``inst``'s plugins in one pedalboard call (parameters as set
    last), or through ``inst.process`` without writing parameters where a plugin is not a pedalboard object."""
    objs = _plugin_objects(inst)
    if objs is None:
        return lambda: inst.process(audio)
    board = pedalboard.Pedalboard(objs)
    return lambda: board.process(audio, spec.sample_rate, reset=False)


def _timer_main(conn, spec: ChainSpec, audio: np.ndarray, params: np.ndarray, barrier, slots: list[int]) -> None:
    """Timer process: ``audio`` ``(M, C, N)`` and ``params`` ``(M, P)`` are the step's items."""
    try:
        from deepafx.workers import tune_allocator
    except ImportError:  # older deepafx: workers ran with the default allocator
        tune_allocator = None
    if tune_allocator is not None:
        tune_allocator()
    torch.set_num_threads(1)
    m = audio.shape[0]
    insts = [spec.build() for _ in range(m)]
    for i, inst in enumerate(insts):
        inst.process(audio[i], params[i])  # the item's parameters, written once (not timed)
    plugins = [_plugins_call(spec, inst, audio[i]) for i, inst in enumerate(insts)]
    half = spec.build()
    half.process(audio[0], np.full(params.shape[1], 0.5))
    plugins_half = _plugins_call(spec, half, audio[0])
    # A worker's share of an SPSA step without the engine's messages: its slots' three instances each
    # through the workers' own render code (SlotInstances.render: the main instance keeps θ, the perturbed
    # two get θ ± εΔ with a fresh Rademacher Δ, ε = 0.01 as FxLayer's default; y⁺ − y⁻ into a buffer).
    try:
        from deepafx.workers import SlotInstances
    except ImportError:  # older deepafx
        SlotInstances = None
    owned = SlotInstances(spec, slots, 3) if SlotInstances is not None else None
    gen = torch.Generator().manual_seed(len(slots) and slots[0])
    theta = torch.from_numpy(params[slots])
    out = np.empty(2 * audio[0].size * len(slots), np.float32)

    def spsa_share() -> None:
        pert = perturb(theta, 0.01, generator=gen)  # the draws FxLayer makes (deepafx.spsa)
        rows = torch.cat([theta[:, None], pert.plus, pert.minus], dim=1).numpy()  # (slots, 3, P)
        owned.render([(s, audio[s], rows[k], False, True, 2 * audio[s].size * k) for k, s in enumerate(slots)], out)

    if owned is not None:
        spsa_share()
    conn.send("ready")
    while True:
        op, arg = conn.recv()
        if op == "serial":
            conn.send((float(np.mean([_timed(lambda: insts[i].process(audio[i], params[i]), arg, warmup=1)
                                      for i in range(m)])),
                       float(np.mean([_timed(plugins[i], arg, warmup=1) for i in range(m)])),
                       _timed(plugins_half, arg)))
        elif op == "floor":
            barrier.wait()
            t0 = time.perf_counter()
            for s in slots:
                for _ in range(3):
                    plugins[s]()
            conn.send(time.perf_counter() - t0)
        elif op == "floor_spsa":
            barrier.wait()
            t0 = time.perf_counter()
            if owned is not None:
                spsa_share()
            conn.send(time.perf_counter() - t0 if owned is not None else float("nan"))
        else:
            return


def wait_quiet(max_busy: float = 0.15, timeout_seconds: float = 120.0) -> float:
    """Wait until the machine is idle (other processes use under ``max_busy`` of all cores over 0.5 s).

    Returns:
        Seconds waited (``timeout_seconds`` if it never got quiet: the figures of that round are noisy).
    """
    def busy() -> float:
        def read():
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            return sum(v), v[3] + v[4]
        (t0, i0), _ = read(), time.sleep(0.5)
        t1, i1 = read()
        return 1.0 - (i1 - i0) / max(t1 - t0, 1)

    start = time.monotonic()
    while busy() > max_busy and time.monotonic() - start < timeout_seconds:
        time.sleep(1.0)
    return round(time.monotonic() - start - 0.5, 1)


PHASES = ("before_send", "wake", "busy_mean", "busy_spread", "reply", "after_replies")


def _phases(t0: float, t_end: float, timeline: dict) -> dict[str, float] | None:
    """One step's timeline in ms (engines that report worker times): ``before_send`` (checks, perturbations,
    input copies), ``wake`` (first message sent → the first worker starts: pickling, pipe, wake-up), ``busy_mean`` (a worker's time on the
    request), ``busy_spread`` (first to last worker done), ``reply`` (last worker done → all replies read),
    ``after_replies`` (stacking the outputs, the loss and backward)."""
    ws = list((timeline or {}).get("workers", {}).values())
    if not ws:
        return None
    starts, ends = [a for a, _ in ws], [b for _, b in ws]
    ms = lambda v: round(1e3 * v, 3)  # noqa: E731
    return {"before_send": ms(timeline["sent"] - t0), "wake": ms(min(starts) - timeline["sent"]),
            "busy_mean": ms(float(np.mean([b - a for a, b in ws]))), "busy_spread": ms(max(ends) - min(ends)),
            "reply": ms(timeline["received"] - max(ends)), "after_replies": ms(t_end - timeline["received"])}


def _phase_medians(phases: list[dict[str, float]]) -> dict[str, float] | None:
    """Median of each phase over the timed steps, ms (``None`` when the engine reported no worker times)."""
    return {k: round(float(np.median([ph[k] for ph in phases])), 3) for k in PHASES} if phases else None


def _step_inputs(audio: torch.Tensor, num_params: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(params, dy)`` of every timed step: normalized parameters ``(M, P)`` on [0.1, 0.9] and the
    output gradient, seeded (the ideal is timed at the same parameters)."""
    g = torch.Generator().manual_seed(0)
    p = torch.rand(audio.shape[0], num_params, generator=g) * 0.8 + 0.1
    return p, torch.randn(audio.shape, generator=g)


def _step_time(layer, audio: torch.Tensor, steps: int, num_params: int, warmup: int = 2,
               phases: list | None = None) -> float:
    p, dy = _step_inputs(audio, num_params)
    times = []
    for i in range(steps + warmup):
        pp = p.clone().requires_grad_(num_params > 0)
        t0 = time.perf_counter()
        y = layer(audio, pp)
        if num_params:
            (y * dy).sum().backward()
        t_end = time.perf_counter()
        if i >= warmup:
            times.append(t_end - t0)
            ph = _phases(t0, t_end, getattr(getattr(layer, "pool", None), "last_timeline", None))
            if phases is not None and ph is not None:
                phases.append(ph)
    return float(np.median(times))


def _layer(spec: ChainSpec, m: int, w: int, engine: str, **kw) -> FxLayer:
    if engine == "process":
        return FxLayer(spec, batch_size=m, num_workers=w, **kw)
    from deepafx.workers import RenderConfig

    return FxLayer(spec, batch_size=m, render=RenderConfig(engine=engine, num_workers=w), **kw)


def bench(spec: ChainSpec, m: int, w: int, n: int, steps: int, rounds: int, fd_steps: int, engines: list[str],
          peer: bool) -> dict:
    """Rounds of (wait until quiet; ``steps`` times: the plugins alone, one step of each engine and of the
    peer); medians within a round, ratios per round, then the median over rounds."""
    audio = _audio(m, n)
    runners = {e: _layer(spec, m, w, e) for e in engines}
    p = runners["process"].num_params
    timer = _RenderTimer(spec, audio.numpy(), _step_inputs(audio, p)[0].double().numpy(), w)
    if peer:
        runners["peer"] = PeerSPSAChannel(spec, m)
    keys = ["t_plugins", "t_render", "t_plugins_half", "floor", "floor_spsa"]
    per_round: dict[str, list[float]] = {k: [] for k in [*keys, "waited_s", *runners]}
    phases: dict[str, list[dict[str, float]]] = {"process": [], "ray": []}
    try:
        for runner in runners.values():  # warm-up
            _step_time(runner, audio, 1, p)
        for _ in range(rounds):
            per_round["waited_s"].append(wait_quiet())
            samples: dict[str, list[float]] = {k: [] for k in [*keys, *runners]}
            for _ in range(steps):  # interleaved at step granularity: slow drifts of the machine cancel
                t_render, t_plugins, t_half = timer.serial(reps=2)
                samples["t_render"].append(t_render)
                samples["t_plugins"].append(t_plugins)
                samples["t_plugins_half"].append(t_half)
                samples["floor"].append(timer.floor())
                samples["floor_spsa"].append(timer.floor_spsa())
                for name, runner in runners.items():
                    samples[name].append(_step_time(runner, audio, 1, p, warmup=0, phases=phases.get(name)))
            for k, v in samples.items():
                per_round[k].append(float(np.median(v)))
    finally:
        timer.close()
        for runner in runners.values():
            runner.close()
    ideal = [3 * m * t / w for t in per_round["t_plugins"]]
    med = lambda v: float(np.median(v))  # noqa: E731
    ratio = {k: med([s / i for s, i in zip(per_round[k], ideal)]) for k in runners}
    r = {
        "chain": spec.name, "num_params": p, "batch_size": m, "workers": w, "block_samples": n, "rounds": rounds,
        "steps_per_round": steps, "waited_for_quiet_s": per_round["waited_s"],
        "t_plugins_s": round(med(per_round["t_plugins"]), 6), "t_render_s": round(med(per_round["t_render"]), 6),
        "chain_over_plugins": round(med([a / b for a, b in zip(per_round["t_render"], per_round["t_plugins"])]), 3),
        "params_over_half": round(med([a / b for a, b in zip(per_round["t_plugins"], per_round["t_plugins_half"])]), 3),
        "fx_step_s": round(med(per_round["process"]), 4), "ideal_s": round(med(ideal), 4),
        "overhead_ratio": round(ratio["process"], 3),
        "overhead_ratio_rounds": [round(s / i, 3) for s, i in zip(per_round["process"], ideal)],
        "parallel_floor_s": round(med(per_round["floor"]), 4),
        "floor_over_ideal": round(med([f / i for f, i in zip(per_round["floor"], ideal)]), 3),
        "over_floor": round(med([s / f for s, f in zip(per_round["process"], per_round["floor"])]), 3),
        # medians over every timed step of the process engine, ms (see _phases)
        "step_phases_ms": _phase_medians(phases["process"]),
        "parallel_floor_spsa_s": round(med(per_round["floor_spsa"]), 4),
        "floor_spsa_over_ideal": round(med([f / i for f, i in zip(per_round["floor_spsa"], ideal)]), 3),
    }
    ph = r["step_phases_ms"]
    if ph is not None:  # the main process's serial work added to the message-free parallel SPSA renders
        bound = r["parallel_floor_spsa_s"] + 1e-3 * (ph["before_send"] + ph["after_replies"])
        r.update(bound_s=round(bound, 4), bound_over_ideal=round(bound / r["ideal_s"], 3),
                 over_bound=round(r["fx_step_s"] / bound, 3))
    if "ray" in runners:
        r.update(ray_step_s=round(med(per_round["ray"]), 4), ray_overhead_ratio=round(ratio["ray"], 3),
                 ray_over_pool=round(med([a / b for a, b in zip(per_round["ray"], per_round["process"])]), 3),
                 ray_step_phases_ms=_phase_medians(phases["ray"]))
    if peer:
        r.update(peer_step_s=round(med(per_round["peer"]), 4), peer_overhead_ratio=round(ratio["peer"], 3),
                 peer_over_floor=round(med([s / f for s, f in zip(per_round["peer"], per_round["floor"])]), 3))
    if fd_steps:
        with FxLayer(spec, batch_size=m, num_workers=w, estimator="fd") as fd:
            fd_step = _step_time(fd, audio, fd_steps, p)
        fd_ideal = (2 * p + 1) * m * r["t_plugins_s"] / w
        r.update(fd_step_s=round(fd_step, 4), fd_ideal_s=round(fd_ideal, 4),
                 fd_overhead_ratio=round(fd_step / fd_ideal, 3), fd_over_spsa=round(fd_step / r["fx_step_s"], 2))
    return r


def engine_fixed_cost(m: int, w: int, n: int, steps: int, engines: list[str]) -> dict:
    """Step time of the identity chain per engine (training mode: 3 renders per item), and bytes moved."""
    audio = _audio(m, n)
    from deepafx.workers import RenderRequest

    rows_back = 2 if hasattr(RenderRequest, "differences") else 3  # main + (y⁺ − y⁻), or main, y⁺, y⁻
    out: dict = {"chain": IDENTITY.name, "bytes_in_per_step": int(audio.numel() * 4),
                 "bytes_out_per_step": int(rows_back * audio.numel() * 4), "waited_for_quiet_s": wait_quiet()}
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
    ap.add_argument("--steps", type=int, default=8, help="timed SPSA steps per round and runner (median)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds of plugins-alone and step timings; ratios are per round, the median reported")
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
            r = bench(spec, args.batch_size, args.workers, args.block_samples, args.steps, args.rounds, args.fd_steps,
                      engines, peer=not args.no_peer)
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
