"""The LSP mastering chain as LV2 (backend ``lv2``) against the same plugins as VST2 (``dawdreamer``).

Both chains are LSP's multiband compressor → 16-band graphic EQ → limiter with
the same learned parameter names and ranges (``plugins/chains/lsp_mastering_lv2.yaml``
and ``plugins/chains/lsp_mastering.yaml``), driven by the same normalized vector.
For each chain, and for each of its processors alone:

* ``x_realtime``: seconds of audio per second of wall time, rendering the input
  block by block (``--block-samples``, parameters sent with every block, as in
  training), the best of ``--repeats`` renders (whole chains: LV2 and VST2
  renders alternate, so both see the same machine load); building the chain is
  not timed. ``x_realtime_cpu``: the same with this process's CPU time, which
  other processes on a shared machine do not inflate.
* ``block_vs_one_shot_max_abs``: the largest absolute difference between that
  block-by-block output and a one-shot render of the whole input by a fresh
  chain. For LV2 the one-shot render is the reference of a true block-by-block
  render (the instance keeps its state between calls). For VST2 the block-by-block
  output comes from dawdreamer's replay path (each block re-renders ``context_seconds``
  = 1 s of past input, since dawdreamer clears plugin state at every render) and
  the one-shot render is one uninterrupted render.

``speed_ratio`` = LV2 ``x_realtime`` / VST2 ``x_realtime`` of the whole chain,
within this run (``speed_ratio_cpu`` from CPU times). ``lv2_vs_vst2_one_shot_max_abs``
compares the two formats' one-shot outputs, aligned by their reported latencies
(the same DSP code, parameters set through two different tables). The output
of LSP's multiband compressor and limiter depends on the run length (the LV2 chain runs them in fixed runs of 256 and 64
samples, dawdreamer in engine blocks of 512): per processor,
``lv2_same_runs_vs_vst2_one_shot_max_abs`` repeats the comparison with the LV2
plugin in runs of 512 samples.

Usage: python benchmarks/lv2_vs_vst2.py [--seconds 5] [--block-samples 1024] [--value 0.5] [--repeats 3]
Prints one JSON line per measurement and, last, one JSON line with all results.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np

from deepafx.chain import ChainSpec
from deepafx.hosts.dawdreamer_host import DEFAULT_BLOCK_SIZE as DAWDREAMER_BLOCK_SIZE

LV2_CHAIN = "chains/lsp_mastering_lv2.yaml"
VST2_CHAIN = "chains/lsp_mastering.yaml"
TARGET_SPEED_RATIO = 20.0


def music(seconds: float, sample_rate: int = 44100, seed: int = 0) -> np.ndarray:
    """``(2, samples)`` float32: decaying harmonic notes over a bass line, level swinging 18 dB at 0.5 Hz."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    x = np.zeros((2, n))
    for k, f in enumerate((55.0, 110.0, 220.0, 330.0, 523.25, 880.0, 1760.0, 3520.0)):
        env = np.exp(-((t * (1.0 + 0.25 * k) + 0.13 * k) % 1.0) * 4.0)
        for c in range(2):
            x[c] += 0.12 * env * np.sin(2 * np.pi * f * t + 0.5 * c + k)
    x += 0.02 * rng.standard_normal((2, n)) * (1 + np.sin(2 * np.pi * 7 * t))
    x *= 10 ** (-9 / 20 * (1 + np.sin(2 * np.pi * 0.5 * t)))
    return (0.7 * x / np.abs(x).max()).astype(np.float32)


def render_blocks(spec: ChainSpec, x: np.ndarray, params: np.ndarray, block: int) -> tuple[np.ndarray, float, float, int]:
    """Block-by-block output of a fresh chain, wall and CPU seconds (rendering only), latency."""
    chain = spec.build()
    try:
        out = []
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, x.shape[1], block):
            out.append(chain.process(x[:, i : i + block], params))
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        return np.concatenate(out, axis=1), dt, dc, chain.latency_samples
    finally:
        chain.close()


def render_one_shot(spec: ChainSpec, x: np.ndarray, params: np.ndarray) -> np.ndarray:
    chain = spec.build()
    try:
        return chain.process(x, params)
    finally:
        chain.close()


def measure(spec: ChainSpec, x: np.ndarray, params: np.ndarray, block: int, label: str,
            times: list[tuple[float, float]] | None = None) -> tuple[dict, np.ndarray]:
    """One block-by-block render (plus earlier ``times`` of the same render) and a one-shot render."""
    blocks, dt, dc, latency = render_blocks(spec, x, params, block)
    times = [(dt, dc)] + list(times or [])
    dt, dc = min(t for t, _ in times), min(c for _, c in times)
    one = render_one_shot(spec, x, params)
    audio_s = x.shape[1] / spec.sample_rate
    res = {
        "chain": label,
        "processors": [p.name for p in spec.processors],
        "x_realtime": round(audio_s / dt, 3),
        "x_realtime_cpu": round(audio_s / dc, 3),
        "seconds_per_audio_second": round(dt / audio_s, 4),
        "renders_timed": len(times),
        "block_vs_one_shot_max_abs": float(np.abs(blocks - one).max()),
        "latency_samples": int(latency),
        "output_peak": round(float(np.abs(one).max()), 4),
    }
    print(json.dumps(res), flush=True)
    return res, one


def format_difference(a: np.ndarray, latency_a: int, b: np.ndarray, latency_b: int) -> float:
    """Largest absolute difference of two ``(channels, samples)`` outputs once their latencies are aligned."""
    d = latency_a - latency_b
    if d >= 0:
        a, b = a[:, d:], b[:, : b.shape[1] - d]
    else:
        a, b = a[:, : a.shape[1] + d], b[:, -d:]
    return float(np.abs(a - b).max())


def parts(spec: ChainSpec, params: np.ndarray) -> list[tuple[ChainSpec, np.ndarray]]:
    """Each processor alone with its slice of the learned vector."""
    sizes = [len(p.learn) for p in spec.processors]
    out, start = [], 0
    for p, k in zip(spec.processors, sizes):
        out.append((ChainSpec((p,), spec.sample_rate, f"{spec.name}.{p.name}"), params[start : start + k]))
        start += k
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="audio length in seconds (default 5)")
    ap.add_argument("--block-samples", type=int, default=1024, help="host block size (default 1024)")
    ap.add_argument("--value", type=float, default=0.5, help="every normalized parameter (default 0.5)")
    ap.add_argument("--repeats", type=int, default=3, help="timed renders of each whole chain (default 3)")
    args = ap.parse_args()
    lv2, vst2 = ChainSpec.from_file(LV2_CHAIN), ChainSpec.from_file(VST2_CHAIN)
    if [len(p.learn) for p in lv2.processors] != [len(p.learn) for p in vst2.processors]:
        raise SystemExit("the two chains learn different parameter counts; they must match to be compared")
    x = music(args.seconds, int(lv2.sample_rate))
    params = np.full(sum(len(p.learn) for p in lv2.processors), args.value)
    results: dict = {"benchmark": "lv2_vs_vst2", "seconds": args.seconds, "block_samples": args.block_samples,
                     "normalized_value": args.value}
    extra: dict[str, list] = {"lv2": [], "vst2": []}
    for _ in range(max(args.repeats, 1) - 1):  # alternate, so both chains see the same load
        extra["lv2"].append(render_blocks(lv2, x, params, args.block_samples)[1:3])
        extra["vst2"].append(render_blocks(vst2, x, params, args.block_samples)[1:3])
    lv2_res, lv2_one = measure(lv2, x, params, args.block_samples, "lv2", extra["lv2"])
    vst_res, vst_one = measure(vst2, x, params, args.block_samples, "vst2_replay", extra["vst2"])
    results["lv2"], results["vst2_replay"] = lv2_res, vst_res
    results["per_processor"] = []
    for (pl, xl), (pv, xv) in zip(parts(lv2, params), parts(vst2, params)):
        (rl, yl), (rv, yv) = measure(pl, x, xl, args.block_samples, pl.name), measure(pv, x, xv, args.block_samples, pv.name)
        # the same LV2 plugin in runs of dawdreamer's engine block, as the VST2 one-shot render runs
        p = pl.processors[0]
        runs = replace(p, options={**p.options, "fixed_block": True, "block_size": DAWDREAMER_BLOCK_SIZE})
        same_runs = ChainSpec((runs,), pl.sample_rate, pl.name).build()
        y_runs = same_runs.process(x, xl)
        results["per_processor"].append({
            "lv2": rl, "vst2_replay": rv,
            "lv2_vs_vst2_one_shot_max_abs": format_difference(yl, rl["latency_samples"], yv, rv["latency_samples"]),
            "lv2_same_runs_vs_vst2_one_shot_max_abs": format_difference(y_runs, same_runs.latency_samples, yv,
                                                                         rv["latency_samples"]),
        })
        same_runs.close()
    results["lv2_vs_vst2_one_shot_max_abs"] = format_difference(lv2_one, lv2_res["latency_samples"],
                                                                vst_one, vst_res["latency_samples"])
    results["speed_ratio"] = round(lv2_res["x_realtime"] / vst_res["x_realtime"], 2)
    results["speed_ratio_cpu"] = round(lv2_res["x_realtime_cpu"] / vst_res["x_realtime_cpu"], 2)
    results["target"] = {"speed_ratio_min": TARGET_SPEED_RATIO,
                         "speed_met": results["speed_ratio"] >= TARGET_SPEED_RATIO,
                         "lv2_block_exact": lv2_res["block_vs_one_shot_max_abs"] == 0.0}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
