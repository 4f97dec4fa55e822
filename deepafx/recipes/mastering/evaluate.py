"""Evaluate a trained mastering model on held-out pieces against three references.

Methods, each applied to every piece of the split (whole tracks):

* ``unprocessed`` — the unmastered input itself.
* ``default`` — the chain at its default parameters (static).
* ``oracle_cmaes`` — the chain with static parameters found per track by
  CMA-ES directly against the target (:mod:`deepafx.automation.oracle`, the
  ST-ITO oracle, Steinmetz et al., ISMIR 2024): a bound on what the chain can
  do with a fixed render budget, not a usable method (it needs the target).
* ``model`` — the trained model through the ``deepafx process`` pipeline
  (per-frame parameters, smoothing, block rendering;
  :func:`deepafx.automation.process.apply_automation`).

Metrics per track (then averaged over tracks):

* ``mfcc_cosine`` — MFCC cosine distance (DeepAFx's objective metric,
  Ramírez et al., ICASSP 2021), on [0, 2], lower is better.
* ``mrstft`` — multi-resolution STFT distance (DDSP's multi-scale spectral
  distance; FFT 2048…64, 75 % overlap; :func:`deepafx.metrics.mrstft_distance`),
  lower is better.
* ``lufs_error`` — ``|LUFS(output) − LUFS(target)|`` in LU (BS.1770-4), lower is better.
* ``true_peak_dbtp`` — true peak of the output in dBTP (4x oversampled); the
  targets are mastered to a −1 dBTP ceiling, so values above it overshoot.
* ``seconds_per_track`` and ``realtime_factor`` — wall time of the method per
  track, and audio seconds per wall-clock second (> 1: faster than real time;
  ``None`` for ``unprocessed``). ``oracle_cmaes`` includes its search,
  ``model`` its encoder, rendering and the start of its render worker.

Alignment: the chain's crossovers and filters add a frequency-dependent group
delay (and a plugin may report latency), so before the pairwise metrics each
output is aligned to its target by the lag ``τ`` maximising the absolute
cross-correlation of the channel sums (:func:`deepafx.losses.estimate_lag`),
searched over ``|τ| ≤ max_delay_ms`` (default 20 ms), and both signals are cut
to their overlap. Polarity is not flipped (all metrics are magnitude-based).
``lufs_error`` and ``true_peak_dbtp`` use the whole, unaligned output.

Results: ``OUT/results.json`` ``{split: {method: {metric: mean}}, "tracks":
[...], "settings": {...}}``, ``OUT/results.md`` (a table: methods × metrics)
and rendered examples ``OUT/examples/<piece>/<method>.wav`` for the first
``num_examples`` pieces.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import soundfile as sf
import soxr
import torch

from deepafx import metrics

log = logging.getLogger(__name__)

__all__ = ["EvaluateConfig", "METHODS", "align_to_target", "evaluate_from_config", "results_markdown", "track_metrics"]

#: Methods in table order.
METHODS = ("unprocessed", "default", "oracle_cmaes", "model")
#: Metric keys, their display names, units and whether lower is better (None: no direction).
METRICS = (
    ("mfcc_cosine", "MFCC cosine", "", True),
    ("mrstft", "MR-STFT", "", True),
    ("lufs_error", "LUFS error", "LU", True),
    ("true_peak_dbtp", "true peak", "dBTP", None),
    ("seconds_per_track", "time / track", "s", True),
    ("realtime_factor", "speed", "x real time", False),
)


@dataclass
class EvaluateConfig:
    """The ``evaluate:`` section of a mastering config (defaults in code).

    Attributes:
        cmaes_renders: Oracle render budget per track (e.g. 60 quick, 400 full).
        cmaes_sigma: Initial CMA-ES step size on normalized parameters (0.1 searched
            better than 0.25 at small budgets; see :mod:`deepafx.automation.oracle`).
        cmaes_popsize: CMA-ES population (``None``: ``4 + floor(3 ln P)``).
        excerpt_seconds: Oracle's scored excerpt from the middle of each track, seconds.
        preroll_seconds: Unscored lead-in rendered before the excerpt, seconds.
        loudness_weight: Oracle objective weight per LU of loudness error.
        oracle_fft_sizes: FFT sizes of the oracle's MR-STFT objective, samples.
        oracle_overlap: Frame overlap of that objective, [0, 1).
        max_delay_ms: Largest lag searched when aligning outputs to targets, ms.
        block_samples: Model rendering block, samples.
        smoothing_frames: Model parameter smoothing, frames.
        max_tracks: Evaluate only the first N pieces of the split (``None``: all).
        num_examples: Pieces whose renders are written to ``OUT/examples``.
        workers: Render worker processes of the oracle (``None``: usable CPU cores).
        seed: CMA-ES seed.
        timeout_s: Longest one render request may take, seconds.
    """

    cmaes_renders: int = 60
    cmaes_sigma: float = 0.1
    cmaes_popsize: int | None = None
    excerpt_seconds: float = 10.0
    preroll_seconds: float = 1.0
    loudness_weight: float = 0.1
    oracle_fft_sizes: tuple[int, ...] = (2048, 512, 128)
    oracle_overlap: float = 0.5
    max_delay_ms: float = 20.0
    block_samples: int = 1024
    smoothing_frames: int = 3
    max_tracks: int | None = None
    num_examples: int = 1
    workers: int | None = None
    seed: int = 0
    timeout_s: float = 120.0


# --------------------------------------------------------------------------- metrics
def align_to_target(output: np.ndarray, target: np.ndarray, sample_rate: float,
                    max_delay_ms: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Align ``output`` to ``target`` by bounded cross-correlation and cut both to their overlap.

    Args:
        output: ``(channels, samples)``.
        target: ``(channels, samples)`` (lengths may differ; the shorter one bounds both).
        sample_rate: Hz.
        max_delay_ms: Largest lag searched, ms (>= 0).

    Returns:
        ``(output_aligned, target_aligned, lag_samples)`` with equal shapes;
        ``lag_samples > 0`` means the output lagged the target.
    """
    from deepafx.losses import estimate_lag

    n = min(output.shape[1], target.shape[1])
    out, tgt = output[:, :n], target[:, :n]
    d = min(int(round(max_delay_ms * 1e-3 * sample_rate)), n - 1)
    lag = 0
    if d > 0:
        lag = int(estimate_lag(torch.from_numpy(np.ascontiguousarray(out, np.float32))[None],
                               torch.from_numpy(np.ascontiguousarray(tgt, np.float32))[None], d)[0])
    if lag > 0:
        out, tgt = out[:, lag:], tgt[:, : n - lag]
    elif lag < 0:
        out, tgt = out[:, : n + lag], tgt[:, -lag:]
    return out, tgt, lag


def track_metrics(output: np.ndarray, target: np.ndarray, sample_rate: float, max_delay_ms: float = 20.0) -> dict:
    """All metrics of one output against its target (see the module docstring).

    Args:
        output: ``(channels, samples)`` method output.
        target: ``(channels, samples)`` target (same channel count).
        sample_rate: Hz.
        max_delay_ms: Alignment search range, ms.

    Returns:
        ``{"mfcc_cosine", "mrstft", "lufs_error" (LU), "true_peak_dbtp" (dBTP),
        "lag_samples"}``.
    """
    out_a, tgt_a, lag = align_to_target(output, target, sample_rate, max_delay_ms)
    return {
        "mfcc_cosine": metrics.mfcc_cosine_distance(out_a, tgt_a, sample_rate),
        "mrstft": metrics.mrstft_distance(out_a, tgt_a),
        "lufs_error": metrics.lufs_error(output, target, sample_rate),
        "true_peak_dbtp": metrics.true_peak_dbtp(output, sample_rate),
        "lag_samples": lag,
    }


# --------------------------------------------------------------------------- data
def _split_pieces(dataset_dir: Path, split: str) -> list[str]:
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    return list(manifest["splits"][split]["pieces"])


# --------------------------------------------------------------------------- report
def _fmt(v: Any, key: str) -> str:
    if v is None:
        return "–"
    if key == "realtime_factor":
        return f"{v:.1f}"
    if key in ("true_peak_dbtp", "lufs_error"):
        return f"{v:.2f}"
    if key == "seconds_per_track":
        return f"{v:.2f}"
    return f"{v:.4f}"


def results_markdown(results: Mapping[str, Any], split: str = "test") -> str:
    """Markdown report: one row per method, one column per metric (units, ↓ lower / ↑ higher is better)."""
    s = results["settings"]
    heads = []
    for key, name, unit, lower in METRICS:
        arrow = "" if lower is None else (" ↓" if lower else " ↑")
        heads.append(f"{name}{f' [{unit}]' if unit else ''}{arrow}")
    lines = [
        f"# Mastering evaluation: split `{split}`",
        "",
        f"{s['num_tracks']} pieces, {s['total_seconds'] / 60:.2f} min; chain `{s['chain']}` "
        f"({s['num_params']} parameters); checkpoint `{s['checkpoint']}`.",
        "",
        "| method | " + " | ".join(heads) + " |",
        "|---|" + "---:|" * len(heads),
    ]
    for m in METHODS:
        row = results[split][m]
        lines.append(f"| {m} | " + " | ".join(_fmt(row.get(k), k) for k, *_ in METRICS) + " |")
    lines += [
        "",
        f"Targets: mean loudness {s['target_mean_lufs']:.2f} LUFS, highest true peak {s['target_max_true_peak_dbtp']:.2f} dBTP "
        "(mastered to a −1 dBTP ceiling); `true peak` is the output's mean true peak.",
        f"Oracle: CMA-ES, {s['oracle']['renders']} renders per track on a {s['oracle']['excerpt_seconds']:g} s excerpt "
        f"(objective MR-STFT + {s['oracle']['loudness_weight']:g} x LU error), "
        f"{s['oracle']['mean_renders_per_second']:.2f} renders/s; it sees the target, so it bounds the chain.",
        f"Alignment: output vs target by cross-correlation within ±{s['max_delay_ms']:g} ms before MFCC and MR-STFT.",
        "Speed is audio seconds per wall-clock second on this machine "
        f"({s['cpu_count']} CPU cores); model time includes starting its render worker.",
        "",
    ]
    return "\n".join(lines)


def _finite(obj: Any) -> Any:
    """Copy of ``obj`` with non-finite floats replaced by ``None`` (strict JSON has no inf/NaN)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


# --------------------------------------------------------------------------- main
def evaluate_from_config(config, checkpoint: Path, out_dir: Path, split: str = "test",
                         data_dir: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a mastering checkpoint on one split and write ``results.json`` / ``results.md``.

    Args:
        config: Bound mastering config (:class:`~deepafx.recipes.RecipeConfig`) or a raw mapping.
        checkpoint: Checkpoint file or run folder (``best.pt`` preferred).
        out_dir: Output folder (created).
        split: ``"test"`` (default), ``"valid"`` or ``"train"``.
        data_dir: Dataset folder (default ``data/mastering/<config name>``); built/cached
            with :func:`deepafx.recipes.mastering.music.build_dataset`.

    Returns:
        The results dict written to ``results.json`` (empty on ranks other
        than 0 under torchrun, which write nothing).

    Raises:
        ValueError: a config or checkpoint of another recipe, bad settings, an empty split.
        FileNotFoundError: missing checkpoint.
    """
    from tqdm import tqdm

    from deepafx.recipes.mastering.music import build_dataset, load_split
    from deepafx.automation.oracle import CmaesOracle
    from deepafx.automation.process import load_automation_checkpoint, apply_automation

    if int(os.environ.get("RANK", "0")) != 0:
        log.info("rank %s: evaluation runs on rank 0 only", os.environ.get("RANK"))
        return {}
    from deepafx.recipes import default_data_dir, get_recipe

    if isinstance(config, Mapping):
        config = get_recipe("mastering").bind(config)
    if config.recipe != "mastering":
        raise ValueError(f"config recipe is {config.recipe!r}; this evaluator handles 'mastering'")
    ec = config.evaluate
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, ckpt, ckpt_path = load_automation_checkpoint(checkpoint, "mastering")
    chain = model.chain
    sr = float(chain.sample_rate)

    ddir = Path(data_dir) if data_dir is not None else default_data_dir(config)
    build_dataset(config.data, ddir)
    pieces = _split_pieces(ddir, split)
    tracks = load_split(ddir, split)
    data_sr = float(sf.info(str(ddir / split / f"{pieces[0]}_input.wav")).samplerate) if pieces else sr
    if ec.max_tracks is not None:
        pieces, tracks = pieces[: ec.max_tracks], tracks[: ec.max_tracks]
    if not tracks:
        raise ValueError(f"split {split!r} of {ddir} has no pieces; raise data.test_fraction or the dataset size")

    table = chain.param_table
    defaults = table.defaults_normalized()
    per_track: list[dict[str, Any]] = []
    examples_dir = out_dir / "examples"
    with CmaesOracle(chain, renders=ec.cmaes_renders, sigma0=ec.cmaes_sigma, popsize=ec.cmaes_popsize,
                     excerpt_seconds=ec.excerpt_seconds, preroll_seconds=ec.preroll_seconds,
                     loudness_weight=ec.loudness_weight, fft_sizes=ec.oracle_fft_sizes, overlap=ec.oracle_overlap,
                     num_workers=ec.workers, seed=ec.seed, timeout_s=ec.timeout_s) as oracle:
        for k, (pid, (x, y)) in enumerate(tqdm(list(zip(pieces, tracks)), desc=f"evaluate {split}", unit="piece")):
            if data_sr != sr:
                x = soxr.resample(x.T, data_sr, sr, quality="VHQ").T.astype(np.float32)
                y = soxr.resample(y.T, data_sr, sr, quality="VHQ").T.astype(np.float32)
            n = min(x.shape[1], y.shape[1])
            x, y = np.ascontiguousarray(x[:, :n]), np.ascontiguousarray(y[:, :n])
            seconds = n / sr
            outputs: dict[str, tuple[np.ndarray, float | None]] = {"unprocessed": (x, None)}
            t0 = time.perf_counter()
            outputs["default"] = (oracle.render_track(x, defaults), time.perf_counter() - t0)
            t0 = time.perf_counter()
            res = oracle.fit(x, y)
            outputs["oracle_cmaes"] = (oracle.render_track(x, res.params), time.perf_counter() - t0)
            mastered = apply_automation(model, x, sr, block_samples=ec.block_samples,
                                    smoothing_frames=ec.smoothing_frames, timeout_s=ec.timeout_s)
            outputs["model"] = (mastered.audio, mastered.process_seconds)
            entry: dict[str, Any] = {
                "piece": pid, "seconds": seconds,
                "target_lufs": metrics.lufs(y, sr), "target_true_peak_dbtp": metrics.true_peak_dbtp(y, sr),
                "methods": {},
            }
            for m in METHODS:
                audio, secs = outputs[m]
                row = track_metrics(audio, y, sr, ec.max_delay_ms)
                row["seconds"] = secs
                row["realtime_factor"] = None if secs is None else seconds / max(secs, 1e-9)
                entry["methods"][m] = row
            oracle_info = res.to_dict()
            oracle_info["values"] = {p.name: float(v) for p, v in zip(table, table.denormalize(res.params))}
            entry["oracle"] = oracle_info
            entry["model_automation_frames"] = int(len(mastered.automation.times_s))
            per_track.append(entry)
            if k < ec.num_examples:
                d = examples_dir / pid
                d.mkdir(parents=True, exist_ok=True)
                sf.write(str(d / "target.wav"), y.T, int(round(sr)), subtype="FLOAT")
                for m in METHODS:
                    sf.write(str(d / f"{m}.wav"), outputs[m][0].T, int(round(sr)), subtype="FLOAT")

    total_seconds = float(sum(t["seconds"] for t in per_track))
    summary: dict[str, dict[str, Any]] = {}
    for m in METHODS:
        rows = [t["methods"][m] for t in per_track]
        s = {key: _mean([r[key] for r in rows]) for key in ("mfcc_cosine", "mrstft", "lufs_error", "true_peak_dbtp")}
        secs = [r["seconds"] for r in rows]
        if any(v is None for v in secs):
            s["seconds_per_track"], s["realtime_factor"] = None, None
        else:
            s["seconds_per_track"] = float(np.mean(secs))
            s["realtime_factor"] = total_seconds / max(float(np.sum(secs)), 1e-9)
        summary[m] = s
    settings = {
        "split": split,
        "num_tracks": len(per_track),
        "total_seconds": total_seconds,
        "checkpoint": str(ckpt_path),
        "dataset_dir": str(ddir),
        "dataset_sample_rate_hz": data_sr,
        "chain": chain.name,
        "sample_rate_hz": sr,
        "num_params": len(table),
        "param_names": table.names,
        "evaluate": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(ec).items()},
        "max_delay_ms": ec.max_delay_ms,
        "target_mean_lufs": float(np.mean([t["target_lufs"] for t in per_track])),
        "target_max_true_peak_dbtp": float(np.max([t["target_true_peak_dbtp"] for t in per_track])),
        "oracle": {
            "renders": ec.cmaes_renders,
            "excerpt_seconds": ec.excerpt_seconds,
            "loudness_weight": ec.loudness_weight,
            "popsize": oracle.popsize,
            "render_workers": oracle.num_slots,
            "mean_renders_per_second": float(np.mean([t["oracle"]["renders_per_second"] for t in per_track])),
            "objective": "mean over FFT sizes of L1(|Y|-|T|) + L1(log|Y| - log|T|), plus loudness_weight * |LUFS error|",
        },
        "metrics": {
            "mfcc_cosine": "MFCC cosine distance (librosa: 20 MFCCs, FFT 2048, hop 512, 128 mel bands), aligned",
            "mrstft": "multi-resolution STFT distance, FFT 2048..64, 75% overlap, mean over sizes, aligned",
            "lufs_error": "|integrated loudness(output) - integrated loudness(target)|, LU, BS.1770-4",
            "true_peak_dbtp": "true peak of the output, dBTP, 4x oversampled",
            "seconds_per_track": "wall-clock seconds per track",
            "realtime_factor": "audio seconds per wall-clock second (>1 faster than real time)",
        },
        "alignment": "lag maximising |cross-correlation| of channel sums within ±max_delay_ms; both cut to the overlap",
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    results = _finite({split: summary, "tracks": per_track, "settings": settings})
    tmp = out_dir / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1, allow_nan=False))
    os.replace(tmp, out_dir / "results.json")
    tmp = out_dir / ".results.md.tmp"
    tmp.write_text(results_markdown(results, split))
    os.replace(tmp, out_dir / "results.md")
    return results
