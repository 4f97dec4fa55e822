"""Evaluate a trained amp-emulation model on held-out pieces against four references.

Methods, each applied to every piece of the split (whole pieces):

* ``unprocessed`` — the DI itself.
* ``default`` — the learned chain at its default parameters (static).
* ``oracle_esr_<N>`` — the **fair oracle**: the chain with static parameters fitted
  per piece by CMA-ES directly against the target on the objective the model
  trains on (pre-emphasised ESR, after the chain's reported latency), over the
  whole piece the table scores (:mod:`deepafx.automation.oracle`,
  ``objective="esr_pre"``). One search of the largest budget of
  ``esr_oracle_renders``; the row for each smaller budget ``N`` is the best of
  that search's first ``N`` renders, so the rows show whether more renders still
  help. It needs the target, so it bounds what the *static* chain can reach on
  ESR with that budget; the model's per-frame automation can go beyond it. The
  search starts from the chain's defaults, or (``esr_oracle_start: static``)
  from the ``static_train`` preset with the defaults rendered too, so that the
  rows are never worse than either on ``esr_pre``.
* ``oracle_spectral`` — the earlier oracle, kept as its own row: CMA-ES on
  MR-STFT + loudness error over a middle excerpt (``cmaes_renders``; 0 drops
  the row). It bounds nothing on ESR (a spectral match can be far off sample by
  sample); it shows what the chain can do in tone.
* ``static_train`` — the best *single* setting for the material: one static preset
  CMA-ES finds on the training pieces (pre-emphasised ESR, the mean over pieces;
  :func:`deepafx.automation.task.search_static_start`, the ``train.start_*``
  settings and the run's seed), applied unchanged to every test piece. It is what
  a player gets from a tone-match preset, the non-adaptive baseline of the model;
  a run trained with ``train.start: static`` started from it (read from its run
  folder, ``static_start.json``), other runs get it searched here.
* ``model`` — the trained encoder driving the chain through the
  ``deepafx process`` pipeline (per-frame parameters, smoothing, block rendering;
  :func:`deepafx.automation.process.apply_automation`).
* ``neural_amp`` — what users pick instead: a direct neural amp model, an LSTM
  with a residual skip (:mod:`deepafx.recipes.amp_emulation.neural_amp`)
  trained here on the same training pairs with the ESR loss (pre-emphasis) to
  convergence, as its users train it: early stopping on the validation pieces,
  its training time reported beside the model's.

Metrics per piece (then mean and a 95 % bootstrap confidence interval over pieces):

* ``esr`` — error-to-signal ratio ``Σ(y−ŷ)²/Σy²`` (Wright et al., 2019);
* ``esr_pre`` — the same after the pre-emphasis ``1 − 0.95 z⁻¹`` (Wright et al., 2019/2020);
* ``mrstft`` — multi-resolution STFT distance (:func:`deepafx.metrics.mrstft_distance`);
* ``mfcc_cosine`` — MFCC cosine distance (DeepAFx's metric, :func:`deepafx.metrics.mfcc_cosine_distance`);
* ``seconds_per_track`` and ``realtime_factor`` (audio seconds per wall second;
  the oracle's includes its search, the model's its encoder, rendering and the
  start of its render worker, the neural amp's its inference only).

Alignment (``align``): by default (``"latency"``) a chain method's output is
shifted by the chain's reported latency, exactly as the ESR training loss and
the fair oracle's objective shift it: output sample ``n + latency`` is compared
with target sample ``n`` and the last ``latency`` target samples are not
scored, so the ``oracle_esr_<N>`` rows score what their search minimised (and
are never worse than the defaults on ``esr_pre``, where the search starts).
``"xcorr"`` aligns instead by the lag maximising the absolute
cross-correlation within ``latency + max_delay_ms``
(:func:`deepafx.metrics.align_to_target`; earlier tables). Polarity is never
flipped. The DI and the neural amp have no latency and are scored sample by
sample.

Results: ``OUT/results.json`` (per-piece values, means, intervals, paired
differences of the model against the other rows), ``OUT/results.md`` (the
table), ``OUT/comparison.png`` (DI, target, model and neural amp as
waveforms and spectrograms for one test piece) and ``OUT/automation.png``
(the model's parameter curves on that piece).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import soundfile as sf
import torch

from deepafx import metrics
from deepafx.metrics import align_to_target, bootstrap_ci, json_safe  # noqa: F401  (bootstrap_ci re-exported)
from deepafx.recipes.amp_emulation.esr import PRE_EMPHASIS, esr

log = logging.getLogger(__name__)

__all__ = ["EvaluateConfig", "METHODS", "bootstrap_ci", "evaluate_from_config", "results_markdown", "run_train_seconds",
           "track_metrics"]

#: Methods in table order (the fair oracle's rows, ``oracle_esr_<N>`` per budget, sit after ``oracle_spectral``).
METHODS = ("unprocessed", "default", "static_train", "oracle_spectral", "model", "neural_amp")
#: Per-piece metrics: key, display name, lower is better.
METRICS = (("esr", "ESR", True), ("esr_pre", "ESR pre-emph.", True), ("mrstft", "MR-STFT", True),
           ("mfcc_cosine", "MFCC cosine", True))


@dataclass
class EvaluateConfig:
    """The ``evaluate:`` section of an amp-emulation config (defaults in code).

    Attributes:
        cmaes_renders: Spectral oracle's render budget per piece (0: no ``oracle_spectral`` row).
        esr_oracle_renders: Budgets of the fair oracle (CMA-ES on pre-emphasised ESR over the
            whole piece), renders per piece: one row ``oracle_esr_<N>`` each, all from one search
            of the largest (empty: no fair oracle).
        esr_oracle_excerpt_seconds: The fair oracle's scored excerpt, seconds (``None``: the whole
            piece, what the table scores).
        esr_oracle_start: Where the fair oracle's search starts: ``"defaults"`` (the chain's
            defaults) or ``"static"`` (the ``static_train`` preset, which needs ``static_train``;
            the defaults are rendered too, so its rows are never worse than either row on ``esr_pre``).
        cmaes_sigma: Initial CMA-ES step size on normalized parameters.
        cmaes_popsize: CMA-ES population (``None``: ``4 + floor(3 ln P)``).
        excerpt_seconds: Oracle's scored excerpt from the middle of each piece, seconds.
        preroll_seconds: Unscored lead-in rendered before the excerpt, seconds.
        loudness_weight: Oracle objective weight per LU of loudness error.
        oracle_fft_sizes: FFT sizes of the oracle's MR-STFT objective, samples.
        oracle_overlap: Frame overlap of that objective, [0, 1).
        align: How a chain method's output meets the target: ``"latency"`` (shift by the
            chain's reported latency, as training and the oracle do) or ``"xcorr"`` (bounded
            cross-correlation; see the module docstring).
        max_delay_ms: Lag searched beyond a chain's reported latency with ``align: xcorr``, ms.
        block_samples: Model rendering block, samples.
        smoothing_frames: Model parameter smoothing, frames.
        max_tracks: Evaluate only the first N pieces of the split (``None``: all).
        bootstrap: Bootstrap resamples of the 95 % confidence intervals.
        neural_amp: Settings of the LSTM baseline
            (:class:`~deepafx.recipes.amp_emulation.neural_amp.NeuralAmpConfig`): trained to
            convergence with early stopping on the validation pieces (``match_model_time: true``:
            for the model's training time instead, as earlier tables did).
        neural_amp_cache: Keep the trained LSTM in ``DATA/baselines/`` and reuse it when the same
            settings, seed and data come again (another chain's evaluation, a rerun;
            :func:`neural_amp_cache_path`). Its reported training time is the original one.
        static_train: Add the ``static_train`` row (see the module docstring).
        plot_piece: Index of the test piece drawn in the figures.
        threads: torch threads of the evaluation process (``None``: torch's default); the
            render workers run beside it, and on a 2-core machine one thread was fastest.
        seed: Seed of the bootstrap; CMA-ES draws with ``seed`` plus the run's training seed
            (``train.seed`` of the checkpoint) and the LSTM with its own ``neural_amp.seed`` plus
            that training seed, so the baselines of a multi-seed run get a seed spread of their own.
        timeout_seconds: Longest one render request may take, seconds.
    """

    cmaes_renders: int = 100
    esr_oracle_renders: tuple[int, ...] = (100, 300, 1000)
    esr_oracle_excerpt_seconds: float | None = None
    esr_oracle_start: str = "defaults"
    cmaes_sigma: float = 0.1
    cmaes_popsize: int | None = None
    excerpt_seconds: float = 6.0
    preroll_seconds: float = 1.0
    loudness_weight: float = 0.1
    oracle_fft_sizes: tuple[int, ...] = (2048, 512, 128)
    oracle_overlap: float = 0.5
    align: str = "latency"
    max_delay_ms: float = 20.0
    block_samples: int = 1024
    smoothing_frames: int = 3
    max_tracks: int | None = None
    bootstrap: int = 2000
    neural_amp: dict = field(default_factory=dict)
    neural_amp_cache: bool = True
    static_train: bool = True
    plot_piece: int = 0
    threads: int | None = 1
    seed: int = 0
    timeout_seconds: float = 120.0

    def __post_init__(self) -> None:
        budgets = self.esr_oracle_renders
        budgets = [] if budgets is None else [budgets] if isinstance(budgets, int) else list(budgets)
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in budgets) or \
                len(set(budgets)) != len(budgets):
            raise ValueError(f"esr_oracle_renders must list distinct budgets of >= 1 render, got {budgets}")
        self.esr_oracle_renders = tuple(sorted(budgets))
        if isinstance(self.cmaes_renders, bool) or not isinstance(self.cmaes_renders, int) or self.cmaes_renders < 0:
            raise ValueError(f"cmaes_renders must be an integer >= 0 (0: no spectral oracle), got {self.cmaes_renders}")
        if self.esr_oracle_excerpt_seconds is not None and self.esr_oracle_excerpt_seconds < 0.5:
            raise ValueError(f"esr_oracle_excerpt_seconds must be >= 0.5 s or null, got {self.esr_oracle_excerpt_seconds}")
        if self.esr_oracle_start not in ("defaults", "static"):
            raise ValueError(f"evaluate.esr_oracle_start must be 'defaults' or 'static', got {self.esr_oracle_start!r}")
        if self.esr_oracle_start == "static" and not self.static_train:
            raise ValueError("evaluate.esr_oracle_start: static starts from the static_train preset; "
                             "set evaluate.static_train: true")
        if self.align not in ("latency", "xcorr"):
            raise ValueError(f"evaluate.align must be 'latency' or 'xcorr', got {self.align!r}")

    def methods(self) -> list[str]:
        """Rows in table order for these settings."""
        return (["unprocessed", "default"] + (["static_train"] if self.static_train else [])
                + (["oracle_spectral"] if self.cmaes_renders else [])
                + [f"oracle_esr_{b}" for b in self.esr_oracle_renders] + ["model", "neural_amp"])


def _fit(oracle, x: np.ndarray, y: np.ndarray, objective: str, renders: int, excerpt: float | None,
         checkpoints: tuple[int, ...] = (), start: np.ndarray | None = None):
    """One oracle search on the shared pool with these settings (:meth:`CmaesOracle.fit` reads them)."""
    oracle.objective, oracle.renders, oracle.excerpt_seconds = objective, int(renders), excerpt
    return oracle.fit(x, y, checkpoints, start=start)


# --------------------------------------------------------------------------- metrics
def track_metrics(output: np.ndarray, target: np.ndarray, sample_rate: float, align_ms: float | None = None,
                  shift: int = 0) -> dict:
    """Every metric of one output against its target.

    Args:
        output: ``(channels, samples)``.
        target: ``(channels, samples)`` (the shorter one bounds both).
        sample_rate: Hz.
        align_ms: ``None``: no lag search; otherwise align by cross-correlation
            within ``±align_ms`` (after ``shift``).
        shift: Output samples dropped first (a chain's reported latency, >= 0):
            output sample ``n + shift`` meets target sample ``n``.

    Returns:
        ``{"esr", "esr_pre", "mrstft", "mfcc_cosine", "lag_samples"}`` (``lag_samples``
        includes ``shift``).

    Raises:
        ValueError: a negative shift, or one that leaves no samples to compare.
    """
    shift = int(shift)
    if shift < 0 or shift >= output.shape[-1]:
        raise ValueError(f"shift must be on [0, {output.shape[-1]}) samples, got {shift}")
    output = output[:, shift:]
    n = min(output.shape[-1], target.shape[-1])
    out, tgt, lag = output[:, :n], target[:, :n], 0
    if align_ms is not None:
        out, tgt, lag = align_to_target(out, tgt, sample_rate, align_ms)
    lag += shift
    return {
        "esr": esr(out, tgt),
        "esr_pre": esr(out, tgt, PRE_EMPHASIS),
        "mrstft": metrics.mrstft_distance(out, tgt),
        "mfcc_cosine": metrics.mfcc_cosine_distance(out, tgt, sample_rate),
        "lag_samples": int(lag),
    }


def _interval(values, ec: EvaluateConfig) -> tuple[float, float]:
    """95 % bootstrap interval of the mean over pieces; an ESR of ``inf`` (silent target) gives a
    non-finite bound, written as ``null``, instead of stopping the evaluation."""
    return metrics.bootstrap_ci(values, ec.bootstrap, ec.seed, allow_nonfinite=True)


# --------------------------------------------------------------------------- report
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, (list, tuple)):
        return f"[{_fmt(v[0], digits)}, {_fmt(v[1], digits)}]"
    return f"{v:.{digits}f}" if abs(v) < 100 else f"{v:.0f}"


def results_markdown(results: Mapping[str, Any], split: str = "test") -> str:
    """Markdown report: one row per method, mean [95 % CI] per metric, parameters, time, speed."""
    s = results["settings"]
    rows = results[split]
    heads = [f"{name} ↓" for _, name, _ in METRICS] + ["parameters", "time / piece [s]", "speed [x real time] ↑"]
    lines = [
        f"# Amp emulation evaluation: split `{split}`",
        "",
        f"{s['num_tracks']} pieces, {s['total_seconds']:.1f} s in all; target `{s['target_chain']}`; "
        f"chain `{s['chain']}` ({s['num_params']} learned parameters); checkpoint `{s['checkpoint']}`.",
        "Each cell: mean over pieces [95 % bootstrap interval of the mean].",
        "",
        "| method | " + " | ".join(heads) + " |",
        "|---|" + "---:|" * len(heads),
    ]
    for m in rows:
        r = rows[m]
        cells = [f"{_fmt(r[k]['mean'])} {_fmt(r[k]['ci95'])}" for k, _, _ in METRICS]
        cells += [r.get("parameters_text", "–"), _fmt(r.get("seconds_per_track"), 2),
                  _fmt(r.get("realtime_factor"), 1)]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences, model minus the other row (negative: the model is better), mean [95 % CI], "
              "and the pieces on which the model is better:", ""]
    lines.append("| model − … | " + " | ".join(name for _, name, _ in METRICS) + " |")
    lines.append("|---|" + "---:|" * len(METRICS))
    for other, diffs in results["paired"].items():
        cells = [f"{_fmt(d['mean'])} {_fmt(d['ci95'])} ({d['model_better']}/{d['n']})" for d in diffs.values()]
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    na = s["neural_amp"]
    if na["settings"].get("match_model_time"):
        how = f"for the model's training time ({na['budget_seconds']:.0f} s)"
    else:
        how = (f"to convergence: early stopping on {na['valid_pieces']} validation pieces ({na['stopped']}, "
               f"best at update {na['best_update']})")
    model_s = na.get("model_train_seconds")
    lines += [
        "",
        f"Neural amp: LSTM, hidden {na['hidden_size']}, {na['parameters']} weights, trained {how}: {na['seconds']:.0f} s "
        f"and {na['updates']} updates on {na['segments']} segments, {na['threads']} torch thread(s)"
        + (f"; the model trained {model_s:.0f} s." if model_s else "."),
        *_oracle_lines(s["oracle"]),
        f"Model: {s['model_parameters']} encoder weights predicting {s['num_params']} chain parameters every "
        f"{s['frame_seconds']:g} s (smoothed over {s['smoothing_frames']} frames).",
        "Alignment: " + s["alignment"] + ".",
        f"Speed: audio seconds per wall-clock second on this machine ({s['cpu_count']} CPU cores, "
        f"{s['torch_threads']} torch threads).",
        "",
    ]
    return "\n".join(lines)


def _oracle_lines(o: Mapping[str, Any]) -> list[str]:
    """What each oracle row is and what it bounds (both see the target)."""
    lines = []
    fair = o.get("esr")
    if fair and fair.get("renders"):
        where = "the whole piece" if fair["excerpt_seconds"] is None else f"a {fair['excerpt_seconds']:g} s excerpt"
        lines.append(f"Fair oracle (`oracle_esr_<N>`): CMA-ES on pre-emphasised ESR (the model's training objective) "
                     f"over {where}, one search of {max(fair['renders'])} renders per piece"
                     + (" started from the static_train preset (the defaults rendered too)"
                        if fair.get("start") == "static" else " started from the chain's defaults")
                     + ", the best of its first N renders for each row; it bounds what static settings of this chain "
                     "reach on ESR with N renders.")
    spectral = o.get("spectral")
    if spectral and spectral.get("renders"):
        lines.append(f"Spectral oracle (`oracle_spectral`): CMA-ES, {spectral['renders']} renders per piece on a "
                     f"{spectral['excerpt_seconds']:g} s excerpt (objective MR-STFT + {spectral['loudness_weight']:g} "
                     "x LU error): a bound in tone only, none on ESR.")
    return lines


# --------------------------------------------------------------------------- main
def run_train_seconds(ckpt: Mapping[str, Any], ckpt_path: Path) -> float | None:
    """Training wall time of the run a checkpoint belongs to, seconds (``None`` when not recorded).

    The largest ``train_seconds`` of the checkpoint itself and of ``last.pt`` beside
    it: ``best.pt`` is written at the best epoch, the run went on after it.
    """
    values = [(ckpt.get("task") or {}).get("train_seconds")]
    last = Path(ckpt_path).with_name("last.pt")
    if last.is_file() and last != Path(ckpt_path):
        from deepafx.runs import load_checkpoint

        values.append((load_checkpoint(last).get("task") or {}).get("train_seconds"))
    values = [float(v) for v in values if v is not None]
    return max(values) if values else None


def run_seed(ckpt: Mapping[str, Any]) -> int:
    """The training seed (``train.seed``) a checkpoint was trained with; 0 when it records none."""
    return int(((ckpt.get("config") or {}).get("train") or {}).get("seed") or 0)


def neural_amp_cache_path(ddir: Path, nc, budget: float | None, train_ids: Sequence[str],
                          valid_ids: Sequence[str]) -> Path:
    """Where the LSTM trained with these settings on this dataset is kept: ``DATA/baselines/neural_amp-<key>.pt``.

    The key hashes the LSTM's settings (seed included), its budget, the training and
    validation piece ids and the dataset's ``manifest.json`` (DI and target settings), so
    an evaluation of another chain on the same data, or a rerun, finds it, and any change
    of data or settings misses it.
    """
    import hashlib

    manifest = hashlib.sha256((Path(ddir) / "manifest.json").read_bytes()).hexdigest()
    payload = json.dumps({"settings": asdict(nc), "budget_seconds": budget, "train": list(train_ids),
                          "valid": list(valid_ids), "manifest": manifest}, sort_keys=True, default=str)
    return Path(ddir) / "baselines" / f"neural_amp-{hashlib.sha256(payload.encode()).hexdigest()[:16]}.pt"


def _neural_amp(ec: EvaluateConfig, ckpt: Mapping[str, Any], ckpt_path: Path, ddir: Path):
    """Train the LSTM baseline to convergence (early stopping on the validation pieces), or for the
    model's training time with ``match_model_time``; returns ``(model, info)``. With
    ``ec.neural_amp_cache`` the trained LSTM is kept in the data folder and reused
    (:func:`neural_amp_cache_path`)."""
    from deepafx.config import bind
    from deepafx.recipes.amp_emulation.data import load_split
    from deepafx.recipes.amp_emulation.neural_amp import LstmAmp, NeuralAmpConfig, train_neural_amp
    from deepafx.runs import atomic_save, load_checkpoint

    nc = bind(NeuralAmpConfig, ec.neural_amp, "evaluate.neural_amp")
    nc.seed = int(nc.seed) + run_seed(ckpt)
    budget, valid, valid_ids = nc.budget_seconds, [], []
    if nc.match_model_time:
        budget = run_train_seconds(ckpt, ckpt_path)
        if budget is None:
            raise ValueError("evaluate.neural_amp.match_model_time: the checkpoint records no training time "
                             "(train_seconds); set budget_seconds instead")
    else:
        valid_ids, valid = load_split(ddir, "valid")
        if not valid and budget is None and nc.max_updates is None:
            raise ValueError("the neural amp trains to convergence on the validation pieces, but the dataset has "
                             "none: raise data.valid_fraction, or set evaluate.neural_amp.budget_seconds")
    train_ids, train_tracks = load_split(ddir, "train")  # never the test split: the baseline sees what the model saw
    cache = neural_amp_cache_path(ddir, nc, budget, train_ids, valid_ids) if ec.neural_amp_cache else None
    if cache is not None and cache.is_file():
        saved = load_checkpoint(cache)
        model = LstmAmp(nc.hidden_size, nc.threads)
        model.load_state_dict(saved["model"])
        model.eval()
        log.info("neural amp baseline reused from %s (trained in %.0f s)", cache, saved["info"]["seconds"])
        return model, {**saved["info"], "cache": str(cache), "reused": True}
    log.info("training the neural amp baseline (%s)", "for the model's training time, %.0f s" % budget
             if nc.match_model_time else "to convergence on the validation pieces")
    trained = train_neural_amp(train_tracks, nc, budget, valid_tracks=valid)
    info = {"hidden_size": nc.hidden_size, "parameters": trained.model.num_parameters,
            "budget_seconds": None if budget is None else float(budget), "seconds": trained.seconds,
            "updates": trained.updates, "threads": nc.threads, "segments": trained.segments,
            "final_train_loss": trained.final_loss, "stopped": trained.stopped,
            "best_valid_loss": trained.best_valid_loss, "best_update": trained.best_update,
            "valid_history": trained.valid_history, "valid_pieces": len(valid),
            "train_piece_ids": list(train_ids), "valid_piece_ids": list(valid_ids),
            "model_train_seconds": run_train_seconds(ckpt, ckpt_path), "settings": asdict(nc)}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_save({"model": trained.model.state_dict(), "info": info}, cache)
    return trained.model, {**info, "cache": None if cache is None else str(cache), "reused": False}


def _static_train(config, chain, ckpt: Mapping[str, Any], ckpt_path: Path, ddir: Path) -> dict[str, Any]:
    """The ``static_train`` preset: the run's own static start (``static_start.json`` beside its
    ``checkpoints/``) when it trained from one, else searched on the training pieces with the config's
    ``train.start_*`` settings and the run's seed. Returns :func:`search_static_start`'s record plus
    ``"source"``.

    Raises:
        ValueError: the run's ``static_start.json`` is unreadable (the message names it).
    """
    from dataclasses import replace

    from deepafx.automation.task import STATIC_START_FILE, search_static_start
    from deepafx.recipes.amp_emulation.data import load_split

    saved = Path(ckpt_path).parent.parent / STATIC_START_FILE
    if saved.is_file():
        try:
            doc = json.loads(saved.read_text())
            doc["params"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{saved}: not a readable static start ({exc}); delete it to search again") from None
        doc.pop("settings", None)
        return {**doc, "source": str(saved)}
    settings = replace(config.train, seed=run_seed(ckpt))
    doc = search_static_start(chain, load_split(ddir, "train")[1], settings, config.sections.get("render"))
    log.info("static_train: searched %d renders on the training pieces (%.0f s)", doc["renders"], doc["search_seconds"])
    return {**doc, "source": "searched by the evaluation on the training pieces"}


def evaluate_from_config(config, checkpoint: Path, out_dir: Path, split: str = "test",
                         data_dir: str | Path | None = None) -> dict[str, Any]:
    """Evaluate an amp-emulation checkpoint on one split; write results, table and figures.

    Args:
        config: Bound amp-emulation config (:class:`~deepafx.recipes.RecipeConfig`) or a raw mapping.
        checkpoint: Checkpoint file or run folder (``best.pt`` preferred).
        out_dir: Output folder (created).
        split: ``"test"`` (default), ``"valid"`` or ``"train"``.
        data_dir: Dataset folder (default ``data/amp_emulation/<config name>``); built when missing.

    Returns:
        The results written to ``results.json`` (empty on ranks other than 0).

    Raises:
        ValueError: another recipe's config or checkpoint, an empty split, or a
            checkpoint without a recorded training time and no neural-amp budget set.
        FileNotFoundError: missing checkpoint.
    """
    from deepafx.recipes import get_recipe
    from deepafx.recipes.amp_emulation.neural_amp import torch_threads

    if int(os.environ.get("RANK", "0")) != 0:
        return {}
    if isinstance(config, Mapping):
        config = get_recipe("amp_emulation").bind(config)
    if config.recipe != "amp_emulation":
        raise ValueError(f"config recipe is {config.recipe!r}; this evaluator handles 'amp_emulation'")
    threads = config.evaluate.threads or torch.get_num_threads()
    with torch_threads(threads):
        return _evaluate(config, checkpoint, out_dir, split, data_dir)


def _evaluate(config, checkpoint: Path, out_dir: Path, split: str, data_dir: str | Path | None) -> dict[str, Any]:
    from tqdm import tqdm

    from deepafx.automation.oracle import CmaesOracle
    from deepafx.automation.plots import plot_process
    from deepafx.automation.process import apply_automation, load_automation_checkpoint
    from deepafx.recipes import default_data_dir
    from deepafx.recipes.amp_emulation.data import build_dataset, load_split
    from deepafx.recipes.amp_emulation.plots import plot_comparison

    ec: EvaluateConfig = config.evaluate
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, ckpt, ckpt_path = load_automation_checkpoint(checkpoint, "amp_emulation")
    chain = model.chain
    sr = float(chain.sample_rate)
    ddir = Path(data_dir) if data_dir is not None else default_data_dir(config)
    build_dataset(config.data, ddir)
    manifest = json.loads((ddir / "manifest.json").read_text())
    if float(manifest["settings"]["sample_rate"]) != sr:
        raise ValueError(f"the dataset is at {manifest['settings']['sample_rate']} Hz but the chain at {sr:g} Hz; "
                         "set data.sample_rate to the chain's rate")
    pieces, tracks = load_split(ddir, split)
    if ec.max_tracks is not None:
        pieces, tracks = pieces[: ec.max_tracks], tracks[: ec.max_tracks]
    if not tracks:
        raise ValueError(f"split {split!r} of {ddir} has no pieces; raise data.test_fraction or data.train_minutes")

    lstm, lstm_info = _neural_amp(ec, ckpt, ckpt_path, ddir)
    static = _static_train(config, chain, ckpt, ckpt_path, ddir) if ec.static_train else None
    table = chain.param_table
    defaults = table.defaults_normalized()
    per_track: list[dict[str, Any]] = []
    plot_k = min(max(int(ec.plot_piece), 0), len(tracks) - 1)
    methods = ec.methods()
    budgets = ec.esr_oracle_renders
    with CmaesOracle(chain, renders=max([ec.cmaes_renders, *budgets, 1]), sigma0=ec.cmaes_sigma,
                     popsize=ec.cmaes_popsize,
                     excerpt_seconds=ec.excerpt_seconds, preroll_seconds=ec.preroll_seconds,
                     loudness_weight=ec.loudness_weight, fft_sizes=ec.oracle_fft_sizes, overlap=ec.oracle_overlap,
                     seed=ec.seed + run_seed(ckpt), timeout_seconds=ec.timeout_seconds,
                     render=config.sections.get("render")) as oracle:
        latency = int(oracle.pool.latency_samples)
        xcorr = ec.align == "xcorr" and latency > 0
        align = latency / sr * 1e3 + ec.max_delay_ms if xcorr else None
        shift = 0 if xcorr else latency
        for k, (pid, (x, y)) in enumerate(tqdm(list(zip(pieces, tracks)), desc=f"evaluate {split}", unit="piece")):
            n = min(x.shape[1], y.shape[1])
            x, y = np.ascontiguousarray(x[:, :n]), np.ascontiguousarray(y[:, :n])
            seconds = n / sr
            outputs: dict[str, tuple[np.ndarray, float | None]] = {"unprocessed": (x, None)}
            t0 = time.perf_counter()
            outputs["default"] = (oracle.render_track(x, defaults), time.perf_counter() - t0)
            if static is not None:
                t0 = time.perf_counter()
                outputs["static_train"] = (oracle.render_track(x, np.asarray(static["params"])),
                                           time.perf_counter() - t0)
            oracles: dict[str, Any] = {}
            if ec.cmaes_renders:
                t0 = time.perf_counter()
                res = _fit(oracle, x, y, "mrstft", ec.cmaes_renders, ec.excerpt_seconds)
                outputs["oracle_spectral"] = (oracle.render_track(x, res.params), time.perf_counter() - t0)
                oracles["oracle_spectral"] = {**res.to_dict(), "values": {
                    p.name: float(v) for p, v in zip(table, table.denormalize(res.params))}}
            if budgets:
                start = np.asarray(static["params"]) if ec.esr_oracle_start == "static" else None
                res = _fit(oracle, x, y, "esr_pre", budgets[-1], ec.esr_oracle_excerpt_seconds, budgets, start)
                info = res.to_dict()
                for b in budgets:
                    params = np.asarray(res.checkpoints[b]["params"])
                    t0 = time.perf_counter()
                    audio = oracle.render_track(x, params)
                    # the search's time up to its N-th render, plus this render
                    secs = res.search_seconds * b / res.renders + time.perf_counter() - t0
                    outputs[f"oracle_esr_{b}"] = (audio, secs)
                    oracles[f"oracle_esr_{b}"] = {"renders": b, "objective": res.checkpoints[b]["objective"],
                                                  "values": {p.name: float(v) for p, v in
                                                             zip(table, table.denormalize(params))}}
                oracles["esr_search"] = {k: info[k] for k in ("default_objective", "renders", "history",
                                                              "search_seconds", "render_seconds", "popsize")}
            processed = apply_automation(model, x, sr, block_samples=ec.block_samples,
                                         smoothing_frames=ec.smoothing_frames, timeout_seconds=ec.timeout_seconds)
            outputs["model"] = (processed.audio, processed.process_seconds)
            t0 = time.perf_counter()
            outputs["neural_amp"] = (lstm.process(x), time.perf_counter() - t0)
            entry: dict[str, Any] = {"piece": pid, "seconds": seconds, "methods": {}}
            for m in methods:
                audio, secs = outputs[m]
                chain_row = m not in ("unprocessed", "neural_amp")
                row = track_metrics(audio, y, sr, align if chain_row else None, shift if chain_row else 0)
                row["seconds"] = secs
                row["realtime_factor"] = None if secs is None else seconds / max(secs, 1e-9)
                entry["methods"][m] = row
            entry["oracles"] = oracles
            per_track.append(entry)
            if k == plot_k:
                title = f"{pid} ({split})"
                plot_comparison(out_dir / "comparison.png",
                                {"DI": x, "target": y, "model": outputs["model"][0],
                                 "neural amp": outputs["neural_amp"][0]}, sr, title=title)
                plot_process(out_dir / "automation.png", x, outputs["model"][0], sr, processed.automation,
                             num_curves=min(8, len(table)), title=f"model automation: {title}")
                ex = out_dir / "examples" / pid
                ex.mkdir(parents=True, exist_ok=True)
                sf.write(str(ex / "target.wav"), y.T, int(round(sr)), subtype="FLOAT")
                for m in methods:
                    sf.write(str(ex / f"{m}.wav"), outputs[m][0].T, int(round(sr)), subtype="FLOAT")
                (ex / "automation.json").write_text(json.dumps(processed.automation.to_json_dict(), indent=1))

    total_seconds = float(sum(t["seconds"] for t in per_track))
    model_weights = int(sum(p.numel() for p in model.parameters()))
    summary: dict[str, dict[str, Any]] = {}
    for m in methods:
        rows = [t["methods"][m] for t in per_track]
        s: dict[str, Any] = {}
        for key, _, _ in METRICS:
            vals = [r[key] for r in rows]
            s[key] = {"mean": float(np.mean(vals)), "ci95": list(_interval(vals, ec)),
                      "per_piece": vals}
        secs = [r["seconds"] for r in rows]
        if any(v is None for v in secs):
            s["seconds_per_track"], s["realtime_factor"] = None, None
        else:
            s["seconds_per_track"] = float(np.mean(secs))
            s["realtime_factor"] = total_seconds / max(float(np.sum(secs)), 1e-9)
        summary[m] = s
    summary["model"]["parameters"] = model_weights
    summary["model"]["parameters_text"] = f"{model_weights} (+{len(table)} per frame)"
    summary["neural_amp"]["parameters"] = lstm_info["parameters"]
    summary["neural_amp"]["parameters_text"] = str(lstm_info["parameters"])
    for m in methods:
        if m.startswith("oracle_"):
            summary[m]["parameters_text"] = f"{len(table)} per piece"
    summary["default"]["parameters_text"] = f"{len(table)} fixed"
    if static is not None:
        summary["static_train"]["parameters_text"] = f"{len(table)} fixed"
    paired: dict[str, dict[str, Any]] = {}
    for other in (m for m in methods if m != "model"):
        paired[other] = {}
        for key, _, _ in METRICS:
            d = np.array(summary["model"][key]["per_piece"]) - np.array(summary[other][key]["per_piece"])
            paired[other][key] = {"mean": float(d.mean()), "ci95": list(_interval(d, ec)),
                                  "model_better": int((d < 0).sum()), "n": int(d.size)}
    settings = {
        "split": split,
        "num_tracks": len(per_track),
        "total_seconds": total_seconds,
        "piece_seconds": [t["seconds"] for t in per_track],
        "checkpoint": str(ckpt_path),
        "dataset_dir": str(ddir),
        "target_chain": manifest["target_chain"]["name"],
        "target": manifest["target_chain"],
        "chain": chain.name,
        "sample_rate_hz": sr,
        "num_params": len(table),
        "param_names": table.names,
        "model_parameters": model_weights,
        "frame_seconds": model.frame_samples / sr,
        "smoothing_frames": ec.smoothing_frames,
        "train_seconds": (ckpt.get("task") or {}).get("train_seconds"),
        "neural_amp": lstm_info,
        "static_train": static,
        "evaluate": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(ec).items()},
        "methods": methods,
        "oracle": {"popsize": oracle.popsize, "seed": ec.seed + run_seed(ckpt),
                   "spectral": {"renders": ec.cmaes_renders, "excerpt_seconds": ec.excerpt_seconds,
                                "loudness_weight": ec.loudness_weight, "objective": "MR-STFT + loudness error"},
                   "esr": {"renders": list(budgets), "excerpt_seconds": ec.esr_oracle_excerpt_seconds,
                           "start": ec.esr_oracle_start,
                           "objective": "ESR after pre-emphasis 1 - 0.95 z^-1, output shifted by the chain's latency",
                           "rows_are": "the best of the first N renders of one search of the largest budget",
                           "seconds_are": "the search's time up to its N-th render plus the row's render"}},
        "chain_latency_samples": latency,
        "alignment": ("none: every method is scored sample by sample (the chain reports no latency)" if latency == 0
                      else f"chain methods aligned by cross-correlation within ±{align:.1f} ms; others not" if xcorr
                      else f"chain methods shifted by the chain's reported latency ({latency} samples), as the "
                           "training loss and the ESR oracle's objective; others not"),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    results = json_safe({split: summary, "paired": paired, "tracks": per_track, "settings": settings})
    for name, text in (("results.json", json.dumps(results, indent=1, allow_nan=False)),
                       ("results.md", results_markdown(results, split))):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out_dir / name)
    return results
