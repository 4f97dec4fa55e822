"""Amp emulation with the post-drive tone stage as black boxes (plain) or as DDSP stages (hybrid).

Trains ``amp_emulation/quick`` (multiband compressor → distortion → graphic
EQ → gain, every stage a black box with SPSA gradients) and
``amp_emulation/quick_hybrid`` (the same compressor and distortion by SPSA,
then ``ddsp.peq`` → ``ddsp.gain`` with exact gradients, :mod:`deepafx.hybrid`)
on one dataset with the same seeds, model, settings and ``--set`` overrides,
one ``deepafx train`` after the other (for each seed in ``--seeds``: plain,
then hybrid). Then scores both best checkpoints on
the test split with one renderer: per-frame parameters predicted and smoothed
(``evaluate.smoothing_frames``) as the recipe does, applied per block of
``--block`` samples (interpolated at each block's centre; state carried
through the piece) by a :class:`~deepafx.hybrid.HybridChain` in eval mode (for
the plain chain that is one Fx layer). Metrics as the recipe's evaluation
(built-in chains have no latency: sample by sample): ESR, pre-emphasised ESR
(Wright et al., 2019), MFCC cosine distance and multi-resolution STFT distance,
mean over pieces; plus each chain at its default parameters and the
unprocessed DI. Both chains at their defaults render the same audio up to
float rounding (flat EQ, 0 dB gain), which the ``default`` rows check.

Measured with ``--seeds 0 1`` and the configs as shipped (pre-emphasised ESR
loss, 6 epochs, seed 0 and 1; 6 test pieces, 71 s; 2 busy CPU cores), means
over the two seeds, model rows:

========  =====  ===============  ===========  =======  ===============
chain     ESR    ESR pre-emph.    MFCC cos.    MR-STFT  training clock
========  =====  ===============  ===========  =======  ===============
plain     0.153  0.368            0.0402       4.52     217 s
hybrid    0.090  0.298            0.0274       4.15     337 s
========  =====  ===============  ===========  =======  ===============

The hybrid run was better on every metric for both seeds and on 30 of the 36
(seed, piece, metric) pairs for ESR, pre-emphasised ESR and MR-STFT, all 12
for MFCC; it also has another EQ (5 parametric bands, 15 parameters, against
10 fixed octave bands), so the comparison is of the two chains as wholes, not
of the gradient alone. Training took 1.55 times the time (the EQ's forward and
backward in torch, beside the render workers).

Usage:
    python benchmarks/hybrid_vs_plain.py --out runs/hybrid_vs_plain [--seeds 0 1] [--set train.epochs=4] [--skip-train]

Prints a markdown table (each run, then the mean over seeds), then one JSON
line of the means (everything in ``OUT/results.json``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from deepafx import metrics
from deepafx.automation.model import predict_automation
from deepafx.automation.process import load_automation_checkpoint
from deepafx.commands.train import load_recipe_config
from deepafx.hybrid import HybridChain
from deepafx.recipes.amp_emulation.data import load_split
from deepafx.recipes.amp_emulation.esr import PRE_EMPHASIS, esr
from deepafx.runs import load_checkpoint

CONFIGS = {"plain": "amp_emulation/quick", "hybrid": "amp_emulation/quick_hybrid"}
METRICS = ("esr", "esr_pre", "mfcc_cosine", "mrstft")


@torch.no_grad()
def render_track(chain: HybridChain, audio: np.ndarray, times_s: np.ndarray, params: np.ndarray,
                 block_samples: int) -> np.ndarray:
    """Render ``audio (channels, samples)`` with ``params (frames, P)`` at ``times_s`` interpolated per block.

    Slot 0 of ``chain`` is reset first; its state then runs through the whole piece.
    """
    chain.eval()
    chain.reset()
    n = audio.shape[-1]
    starts = np.arange(0, n, block_samples)
    stops = np.minimum(starts + block_samples, n)
    centres = (starts + stops) / 2 / chain.sample_rate
    p = np.stack([np.interp(centres, times_s, params[:, j]) for j in range(params.shape[1])], 1)
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
    outs = [chain(x[..., a:b], torch.from_numpy(p[i : i + 1]).float()) for i, (a, b) in enumerate(zip(starts, stops))]
    return torch.cat(outs, -1)[0].numpy()


def score(output: np.ndarray, target: np.ndarray, sample_rate: float) -> dict[str, float]:
    """The recipe's metrics of one piece (sample by sample)."""
    n = min(output.shape[-1], target.shape[-1])
    out, tgt = output[:, :n], target[:, :n]
    return {"esr": esr(out, tgt), "esr_pre": esr(out, tgt, PRE_EMPHASIS),
            "mfcc_cosine": metrics.mfcc_cosine_distance(out, tgt, sample_rate),
            "mrstft": metrics.mrstft_distance(out, tgt)}


def train(name: str, config: str, out: Path, data_dir: Path, sets: list[str]) -> float:
    """``deepafx train`` of one config into ``out/name``; returns the wall time in seconds."""
    cmd = [sys.executable, "-m", "deepafx.cli", "train", "--config", config, "--run-dir", str(out / name),
           "--data-dir", str(data_dir)] + [x for s in sets for x in ("--set", s)]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def evaluate(name: str, config: str, out: Path, data_dir: Path, sets: list[str], block: int,
             max_pieces: int | None) -> dict:
    """Score the best checkpoint of ``out/name`` and its chain at defaults on the test split."""
    _, cfg = load_recipe_config(config, sets)
    model, ckpt, path = load_automation_checkpoint(out / name, "amp_emulation")
    pieces, tracks = load_split(data_dir, "test")
    if max_pieces:
        pieces, tracks = pieces[:max_pieces], tracks[:max_pieces]
    sr = model.sample_rate
    rows: dict[str, list[dict]] = {"model": [], "default": [], "unprocessed": []}
    with HybridChain(model.chain, batch_size=1, num_workers=1) as chain:
        defaults = chain.param_table.defaults_normalized()[None]
        for x, y in tracks:
            times, params = predict_automation(model, x, smoothing_frames=cfg.evaluate.smoothing_frames)
            rows["model"].append(score(render_track(chain, x, times, params, block), y, sr))
            rows["default"].append(score(render_track(chain, x, np.zeros(1), defaults, block), y, sr))
            rows["unprocessed"].append(score(x, y, sr))
    run = out / name
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    validated = [h for h in history if h.get("stage") == "spsa" and "valid_loss" in h]
    epochs = [h for h in validated if h["epoch"] >= 0]
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    return {
        "checkpoint": str(path),
        "chain": model.chain.name,
        "num_params": int(ckpt["num_params"]),
        "pieces": len(pieces),
        "test_seconds": float(sum(t[0].shape[-1] for t in tracks) / sr),
        "epochs": len(epochs),
        "best_epoch": min(validated, key=lambda h: h["valid_loss"])["epoch"],  # −1: the model before training
        "best_valid_loss": float(ckpt["state"]["best_valid"]),
        "train_seconds": float(last.get("task", {}).get("train_seconds", float("nan"))),
        "steps": int(last["state"]["global_step"]),
        "mean": {m: {k: float(np.mean([r[k] for r in v])) for k in METRICS} for m, v in rows.items()},
        "per_piece": rows,
    }


def markdown(results: dict, means: dict) -> str:
    cols = ["run", "chain", "learned params", "epochs (best)", "steps", "train s", "best valid loss", "rendered"]
    lines = ["| " + " | ".join(cols + list(METRICS)) + " |", "|" + "---|" * (len(cols) + len(METRICS))]
    for run, r in results.items():
        for kind in ("model", "default", "unprocessed"):
            m = r["mean"][kind]
            lines.append(f"| {run} | {r['chain']} | {r['num_params']} | {r['epochs']} ({r['best_epoch']}) | "
                         f"{r['steps']} | {r['train_seconds']:.0f} | {r['best_valid_loss']:.4f} | {kind} | "
                         + " | ".join(f"{m[k]:.4f}" for k in METRICS) + " |")
    for name, m in means.items():
        lines.append(f"| **{name}, mean of {m['runs']} seed(s)** | | | | | {m['train_seconds']:.0f} | "
                     f"{m['best_valid_loss']:.4f} | model | " + " | ".join(f"{m[k]:.4f}" for k in METRICS) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/hybrid_vs_plain"), help="run folders and results")
    ap.add_argument("--data-dir", type=Path, default=None, help="shared dataset folder (default OUT/data)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override applied to both configs (repeatable)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed of each pair of runs")
    ap.add_argument("--skip-train", action="store_true", help="score existing runs in OUT only")
    ap.add_argument("--block", type=int, default=1024, help="render block in samples (the recipe's evaluate default)")
    ap.add_argument("--max-pieces", type=int, default=None, help="score only the first test pieces")
    args = ap.parse_args()
    data_dir = args.data_dir or args.out / "data"
    runs = {f"{name}_seed{seed}": (name, config, args.set + [f"train.seed={seed}"])
            for seed in args.seeds for name, config in CONFIGS.items()}
    wall = {}
    if not args.skip_train:
        for run, (_, config, sets) in runs.items():
            wall[run] = train(run, config, args.out, data_dir, sets)
    results = {run: evaluate(run, config, args.out, data_dir, sets, args.block, args.max_pieces)
               for run, (_, config, sets) in runs.items()}
    for run, seconds in wall.items():
        results[run]["wall_seconds"] = seconds
    means = {}
    for name in CONFIGS:
        mine = [r for run, r in results.items() if runs[run][0] == name]
        means[name] = {k: float(np.mean([r["mean"]["model"][k] for r in mine])) for k in METRICS}
        means[name].update(runs=len(mine), train_seconds=float(np.mean([r["train_seconds"] for r in mine])),
                           best_valid_loss=float(np.mean([r["best_valid_loss"] for r in mine])))
    settings = {**vars(args), "out": str(args.out), "data_dir": str(data_dir)}
    (args.out / "results.json").write_text(json.dumps({"settings": settings, "means": means, "results": results},
                                                      indent=1, default=str))
    print(markdown(results, means))
    print(json.dumps({f"{name}_{k}": v for name, m in means.items() for k, v in m.items()}))


if __name__ == "__main__":
    main()
