"""Evaluate a trained mastering model on held-out pieces against baselines and an oracle.

Methods, each applied to every piece of the split (whole tracks), in table order:

* ``unprocessed`` — the unmastered input itself.
* ``default`` — the chain at its default parameters (static).
* ``loudnorm`` — loudness normalization alone (:func:`loudness_normalize`):
  a gain to ``evaluate.loudnorm_lufs`` and a true-peak limiter, the baseline a
  user has for free. It is *given* the loudness (the tables say so).
* ``matchering`` — `Matchering <https://github.com/sergree/matchering>`_
  (Sergree, 2016–2022; PyPI ``matchering``), the open-source reference-based
  mastering library: it matches the input's RMS level, its average spectrum
  (FFT 4096, LOWESS-smoothed) and its peak level to one *reference master*,
  then applies its own brickwall limiter. It gets ONE reference for every
  piece, chosen from the **training** split's targets by a fixed rule
  (:func:`choose_matchering_reference`: of the training masters at the
  loudest level (the loudness convention), the one whose long-term 1/3-octave
  spectrum, level removed, is closest to the median spectrum of all training
  masters; ``evaluate.matchering_reference`` overrides it), the
  way a user would master an album against one reference record. It runs on
  files in a temporary folder (removed afterwards), with its console output
  silenced; a piece it fails on keeps its error in ``tracks[i]
  ["matchering_error"]`` and its metrics are missing (the row's means cover
  the other pieces and say so).
* ``oracle_cmaes`` — the chain with static parameters found per track by
  CMA-ES directly against the target (:mod:`deepafx.automation.oracle`, the
  ST-ITO oracle, Steinmetz et al., ISMIR 2024): a bound on what the chain can
  do with a fixed render budget, not a usable method (it needs the target).
  ``evaluate.cmaes_renders`` is one budget (row ``oracle_cmaes``) or a list
  (one row ``oracle_cmaes_<renders>`` per budget, see :func:`oracle_rows`).
* ``model`` — the trained model through the ``deepafx process`` pipeline
  (per-frame parameters, smoothing, block rendering;
  :func:`deepafx.automation.process.apply_automation`).

Metrics per track (then averaged over tracks):

* ``mfcc_cosine`` — MFCC cosine distance (DeepAFx's objective metric,
  Ramírez et al., ICASSP 2021), on [0, 2], lower is better.
* ``mrstft`` — multi-resolution STFT distance (DDSP's multi-scale spectral
  distance; FFT 2048…64, 75 % overlap; :func:`deepafx.metrics.mrstft_distance`),
  lower is better.
* ``lufs_error`` — ``|LUFS(output) − LUFS(target)|`` in LU (ITU-R BS.1770-4), lower is better.
* ``true_peak_dbtp`` — true peak of the output in dBTP (4x oversampled); the
  targets are mastered to a −1 dBTP ceiling, so values above it overshoot.
  The summary gives the mean and the maximum over pieces
  (``true_peak_dbtp_max``): the ceiling applies to every piece.
* ``seconds_per_track`` and ``realtime_factor`` — wall time of the method per
  track, and audio seconds per wall-clock second (> 1: faster than real time;
  ``None`` for ``unprocessed``). ``oracle_cmaes*`` includes its search,
  ``model`` its encoder, rendering and the start of its render worker,
  ``matchering`` its file writing and reading.

Uncertainty: with a few test pieces a mean alone says little, so every mean
comes with a percentile bootstrap confidence interval over pieces
(:func:`bootstrap_ci`; Efron & Tibshirani, *An Introduction to the
Bootstrap*, 1993, ch. 13; ``evaluate.bootstrap_resamples`` resamples, 2,000 by
default, seeded with ``evaluate.seed``; the same resampled piece sets for
every method and metric), and the differences model − unprocessed and
model − matchering get a *paired* bootstrap interval (:func:`paired_bootstrap_ci`:
pieces are resampled together, so the variation between pieces that both
methods share cancels). With fewer than about 10 pieces percentile intervals
are too narrow (they cannot be wider than the spread of the pieces' values);
read them as a lower bound on the uncertainty.

Targets (the reference engineer's, :data:`TARGETS`): mean loudness error
≤ 1.0 LU, true peak ≤ −1.0 dBTP on *every* piece, mean MFCC cosine ≤ 0.5 ×
the unprocessed input's. ``results["targets"]`` says for every method whether
each is met (point value) and whether its 95 % interval is entirely inside.

Alignment: the chain's crossovers and filters add a frequency-dependent group
delay (and a plugin may report latency), so before the pairwise metrics each
output is aligned to its target by the lag ``τ`` maximising the absolute
cross-correlation of the channel sums (:func:`deepafx.metrics.align_to_target`),
searched over ``|τ| ≤ max_delay_ms`` (default 20 ms), and both signals are cut
to their overlap. Polarity is not flipped (all metrics are magnitude-based).
``lufs_error`` and ``true_peak_dbtp`` use the whole, unaligned output.

Per album: each piece's album (soundtrack datasets) or corpus source (score
datasets) is in ``tracks[i]["album"]`` and ``results["albums"]`` holds the
summary of every album's pieces. Saturation: ``results["saturation"]`` is the
model's saturation share on the whole source tracks of the split
(:func:`model_saturation`). Rows that do not depend on the checkpoint are kept
in the dataset folder's ``eval_cache/`` and reused by the other seeds of a run.

Results in ``OUT``:

* ``results.json`` — ``{split: {method: {metric: mean, metric_ci: [low, high],
  "true_peak_dbtp_max", "num_tracks", ...}}, "tracks": [...], "settings":
  {...}, "paired": {...}, "targets": {...}}``. With several oracle budgets,
  ``split["oracle_cmaes"]`` (and ``tracks[i]["methods"]["oracle_cmaes"]``,
  ``tracks[i]["oracle"]``) repeat the largest budget's row, so readers of
  single-budget results find the oracle under its usual name.
* ``results.md`` — the table (mean [95 % CI] per metric), paired differences,
  the targets table and the settings in words.
* ``summary.png`` — :func:`plot_summary`: metric bars with CI whiskers, and
  one example piece's spectrograms and short-term loudness.
* ``examples/<piece>/<method>.wav`` for the first ``num_examples`` pieces.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import soundfile as sf
import soxr
import torch

from deepafx import metrics
from deepafx.metrics import (  # noqa: F401  (align_to_target and the intervals re-exported)
    align_to_target, bootstrap_ci, bootstrap_ratio_ci, json_safe, paired_bootstrap_ci,
)

log = logging.getLogger(__name__)

__all__ = [
    "EvaluateConfig", "METHODS", "TARGETS", "align_to_target", "bootstrap_ci", "bootstrap_ratio_ci",
    "choose_matchering_reference", "evaluate_from_config", "matchering_master", "oracle_rows",
    "paired_bootstrap_ci", "plot_summary", "results_markdown", "short_term_loudness", "track_metrics",
]

#: Methods in table order (``oracle_cmaes`` expands to one row per budget, see :func:`oracle_rows`).
METHODS = ("unprocessed", "default", "loudnorm", "matchering", "oracle_cmaes", "model", "model_loudness")
#: Rows that are given the target loudness (a number from the config), labelled so in the tables.
GIVEN_LOUDNESS = ("loudnorm", "model_loudness")
#: Rows that do not depend on the checkpoint (cached across the seeds of a run, ``evaluate.cache_baselines``).
BASELINES = ("unprocessed", "default", "loudnorm", "matchering")
#: Metric keys, their display names, units and whether lower is better (None: no direction).
METRICS = (
    ("mfcc_cosine", "MFCC cosine", "", True),
    ("mrstft", "MR-STFT", "", True),
    ("lufs_error", "LUFS error", "LU", True),
    ("true_peak_dbtp", "true peak", "dBTP", None),
    ("true_peak_dbtp_max", "true peak max", "dBTP", True),
    ("seconds_per_track", "time / track", "s", True),
    ("realtime_factor", "speed", "x real time", False),
)
#: Per-track metrics that get bootstrap intervals.
SCORED = ("mfcc_cosine", "mrstft", "lufs_error", "true_peak_dbtp")
#: The reference engineer's targets: (key, description, threshold, unit).
#: ``lufs_error``: mean loudness error ≤ 1.0 LU; ``true_peak_dbtp_max``: the
#: highest true peak over pieces ≤ −1.0 dBTP (the ceiling applies to every
#: piece); ``mfcc_cosine_ratio``: mean MFCC cosine distance ≤ 0.5 × the
#: unprocessed input's.
TARGETS = (
    ("lufs_error", "loudness error", 1.0, "LU"),
    ("true_peak_dbtp_max", "true peak on every piece", -1.0, "dBTP"),
    ("mfcc_cosine_ratio", "MFCC cosine vs unprocessed", 0.5, "x"),
)
#: Pairs ``(a, b)`` whose per-piece differences ``a − b`` get a paired bootstrap interval.
PAIRED = (("model", "unprocessed"), ("model", "loudnorm"), ("model", "matchering"), ("model_loudness", "model"),
          ("model_loudness", "matchering"))
#: Metrics compared in those pairs.
PAIRED_METRICS = ("mfcc_cosine", "mrstft", "lufs_error")
#: Version of the cached baseline rows' computation (part of the cache key).
BASELINE_CACHE_VERSION = 2


@dataclass
class EvaluateConfig:
    """The ``evaluate:`` section of a mastering config (defaults in code).

    Attributes:
        cmaes_renders: Oracle render budget per track: one int (row
            ``oracle_cmaes``) or a list such as ``[60, 300, 1000]`` (one row
            ``oracle_cmaes_<renders>`` per budget; each budget is its own
            CMA-ES run with the same seed, so the cost is the sum).
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
        static: Score the model with one parameter set per piece instead of its automation: the
            encoder's mean outputs, the level-relative gain from the piece's loudness
            (:func:`deepafx.automation.model.predict_automation`, ``deepafx process --static``).
        max_tracks: Evaluate only the first N pieces of the split (``None``: all).
        num_examples: Pieces whose renders are written to ``OUT/examples``.
        seed: CMA-ES seed, and the seed of the bootstrap resampling.
        timeout_seconds: Longest one render request may take, seconds.
        loudness_lufs: With a value (LUFS, e.g. −14, the reference engineer's
            loudness), also the row ``model_loudness``: the model's automation
            with its output-gain parameter offset per piece until the output
            meets that integrated loudness
            (:func:`deepafx.automation.process.match_loudness`), as
            ``deepafx process --loudness`` does. It knows the target loudness
            (as matchering knows it from its reference), not the target audio.
        loudness_param: The dB parameter offset for it (``None``: the chain's
            ``<processor>.gain_db``).
        matchering: Run the matchering baseline.
        matchering_reference: Reference master for matchering: a piece id of
            the training split or an audio file path; ``None`` picks one with
            :func:`choose_matchering_reference`.
        loudnorm_lufs: With a value (LUFS), the row ``loudnorm``: loudness normalization alone,
            the baseline a user has for free: a static gain to this integrated loudness
            (BS.1770-4, pyloudnorm) and a look-ahead true-peak limiter at
            ``loudnorm_true_peak_dbtp`` (:func:`loudness_normalize`). It is *given* the
            loudness (from the config, never from the test targets), and the table says so.
        loudnorm_true_peak_dbtp: The ceiling of that limiter, dBTP.
        saturation_tracks: Whole source tracks of the split's excerpts on which the model's
            saturation share is measured (:meth:`deepafx.automation.process.Automation.saturation_share`;
            encoder only, no rendering): ``None`` all of them, 0 none. Datasets of scores use
            their pieces.
        cache_baselines: Keep the rows that do not depend on the checkpoint (unprocessed,
            default, loudnorm, matchering, the oracles) in the dataset folder
            (``eval_cache/``, keyed by the data, chain and evaluation settings) so the seeds of a
            multi-seed run compute them once.
        bootstrap_resamples: Bootstrap resamples of the confidence intervals (>= 100).
        confidence: Coverage of the confidence intervals, on (0, 1).
        plot: Write ``OUT/summary.png``.
    """

    cmaes_renders: int | list[int] = 60
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
    static: bool = False
    max_tracks: int | None = None
    num_examples: int = 1
    seed: int = 0
    timeout_seconds: float = 120.0
    loudness_lufs: float | None = None
    loudness_param: str | None = None
    matchering: bool = True
    matchering_reference: str | None = None
    loudnorm_lufs: float | None = -14.0
    loudnorm_true_peak_dbtp: float = -1.0
    saturation_tracks: int | None = None
    cache_baselines: bool = True
    bootstrap_resamples: int = 2000
    confidence: float = 0.95
    plot: bool = True


def oracle_rows(cmaes_renders: int | Sequence[int]) -> list[tuple[str, int]]:
    """Oracle rows for a budget setting.

    Args:
        cmaes_renders: One budget (int) or a list of budgets, renders per track (each >= 1).

    Returns:
        ``[("oracle_cmaes", n)]`` for one int; ``[("oracle_cmaes_<n>", n), ...]``
        in increasing budget order for a list (also a list of one).

    Raises:
        ValueError: an empty list, a budget below 1, a non-integer or a repeated budget.
    """
    single = not isinstance(cmaes_renders, (list, tuple))
    values = [cmaes_renders] if single else list(cmaes_renders)
    if not values:
        raise ValueError("evaluate.cmaes_renders is an empty list; give one budget (60) or several ([60, 300])")
    budgets = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
            raise ValueError(f"evaluate.cmaes_renders: every budget must be an integer >= 1 render, got {v!r}")
        budgets.append(int(v))
    if len(set(budgets)) != len(budgets):
        raise ValueError(f"evaluate.cmaes_renders lists a budget twice: {budgets}")
    if single:
        return [("oracle_cmaes", budgets[0])]
    return [(f"oracle_cmaes_{b}", b) for b in sorted(budgets)]


# --------------------------------------------------------------------------- metrics
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


# --------------------------------------------------------------------------- statistics
def short_term_loudness(audio: np.ndarray, sample_rate: float, window_seconds: float = 3.0,
                        hop_seconds: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Short-term loudness over time (ITU-R BS.1770-4 / EBU Tech 3341), LUFS.

    The channels are K-weighted with pyloudnorm's BS.1770 filters (its
    ``Meter``'s pre-filter and RLB high-pass, designed for ``sample_rate``),
    and for each window of ``window_seconds`` ending at ``t``::

        L(t) = -0.691 + 10 log10( sum_c G_c * mean_{window} z_c^2 )

    with channel weights ``G_c`` = 1 (left, right), ungated. The EBU's
    short-term loudness is ``window_seconds`` = 3 s, updated at least every
    100 ms. See `ITU-R BS.1770-4 <https://www.itu.int/rec/R-REC-BS.1770>`_ and
    EBU Tech 3341, "Loudness metering: 'EBU mode' metering", 2016.

    Args:
        audio: ``(channels, samples)`` or ``(samples,)``, full scale 1.0 (at most 5 channels).
        sample_rate: Hz.
        window_seconds: Window length, seconds (> 0). Default 3 s.
        hop_seconds: Time between values, seconds (> 0). Default 0.1 s.

    Returns:
        ``(times_s, loudness_lufs)``, each ``(frames,)``: the end time of each
        window in seconds and its loudness in LUFS (``-inf`` for a silent
        window). Audio shorter than one window gives one value over all of it.

    Raises:
        ValueError: bad shape, NaN/Inf, more than 5 channels or bad settings.
    """
    import pyloudnorm

    a = np.asarray(audio, dtype=np.float64)
    a = a[None] if a.ndim == 1 else a
    if a.ndim != 2 or a.shape[1] == 0 or not np.all(np.isfinite(a)):
        raise ValueError(f"audio must be finite (channels, samples), got shape {np.shape(audio)}")
    if a.shape[0] > 5:
        raise ValueError(f"short_term_loudness supports up to 5 channels (BS.1770 weights), got {a.shape[0]}")
    if not (window_seconds > 0 and hop_seconds > 0 and sample_rate > 0):
        raise ValueError(f"need window_seconds, hop_seconds and sample_rate > 0, got {window_seconds}, "
                         f"{hop_seconds}, {sample_rate}")
    meter = pyloudnorm.Meter(float(sample_rate))
    z = a.copy()
    for stage in meter._filters.values():  # pyloudnorm's K-weighting stages (no public accessor)
        z = np.stack([stage.apply_filter(ch) for ch in z])
    weights = np.array([1.0, 1.0, 1.0, 1.41, 1.41])[: z.shape[0]]
    power = np.einsum("c,cn->n", weights, z**2)
    cum = np.concatenate([[0.0], np.cumsum(power)])
    n = power.size
    win = min(n, max(1, int(round(window_seconds * sample_rate))))
    hop = max(1, int(round(hop_seconds * sample_rate)))
    ends = np.arange(win, n + 1, hop)
    ms = (cum[ends] - cum[ends - win]) / win
    with np.errstate(divide="ignore"):
        loud = -0.691 + 10.0 * np.log10(np.maximum(ms, 0.0))
    return ends / float(sample_rate), loud


# --------------------------------------------------------------------------- loudness normalization
def loudness_normalize(audio: np.ndarray, sample_rate: float, target_lufs: float = -14.0,
                       true_peak_dbtp: float = -1.0) -> np.ndarray:
    """Loudness normalization alone: a static gain to ``target_lufs`` and a true-peak-safe limiter.

    The trivial mastering baseline a user has for free (what a streaming
    service's normalization with a limiter does): the reference engineer's
    loudness and ceiling stages without its EQ
    (:func:`deepafx.recipes.mastering.engineer.master` with ``eq_strength=0``
    and no added air: BS.1770-4 gain via pyloudnorm, a look-ahead limiter on the
    4x oversampled signal, iterated until the loudness is within 0.05 LU and
    the true peak at or below the ceiling).

    Args:
        audio: ``(channels, samples)`` float, at least 0.4 s.
        sample_rate: Hz.
        target_lufs: Integrated loudness, LUFS.
        true_peak_dbtp: Ceiling, dBTP (<= 0).

    Returns:
        ``(channels, samples)`` float32.

    Raises:
        deepafx.hosts.base.AudioError: silent, too short or non-finite audio.
        ValueError: a ceiling above 0 dBTP.
    """
    from deepafx.recipes.mastering.engineer import master

    return master(audio, sample_rate, target_lufs, true_peak_dbtp, eq_strength=0.0, eq_air_db_per_octave=0.0)


# --------------------------------------------------------------------------- matchering
@contextlib.contextmanager
def _quiet():
    """Silence Python-level console output and warnings (matchering, numba, statsmodels)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def matchering_master(audio: np.ndarray, sample_rate: float, reference: str | Path) -> np.ndarray:
    """Master ``audio`` with matchering against one reference master.

    Matchering (Sergree, https://github.com/sergree/matchering, GPL-3.0)
    matches the input's RMS level, average spectrum and peak level to the
    reference's and applies its brickwall limiter (defaults of
    ``matchering.Config``; internal rate 44.1 kHz, resampling other rates).
    It works on files: the input is written as 32-bit float WAV into a
    temporary folder, processed into a 24-bit PCM WAV (``matchering.pcm24``,
    the format its users get), read back and the folder removed. Its console
    output is silenced.

    Args:
        audio: ``(2, samples)`` input (matchering needs stereo), full scale 1.0.
        sample_rate: Hz.
        reference: Reference master file (any format matchering reads).

    Returns:
        ``(2, samples_out)`` float32 at ``sample_rate`` (resampled with soxr
        when matchering's rate differs).

    Raises:
        ImportError: matchering is not installed (``pip install matchering``).
        Exception: matchering's own errors (``ModuleError`` with its
            explanation, e.g. a reference equal to the input).
    """
    with _quiet():  # its import warns about scipy namespaces
        import matchering as mg

    with tempfile.TemporaryDirectory(prefix="deepafx-matchering-") as tmp:
        src, dst = Path(tmp) / "target.wav", Path(tmp) / "result.wav"
        sf.write(str(src), np.asarray(audio, np.float32).T, int(round(sample_rate)), subtype="FLOAT")
        with _quiet():
            mg.process(target=str(src), reference=str(reference), results=[mg.pcm24(str(dst))],
                       config=mg.Config(temp_folder=tmp))
        out, out_sr = sf.read(str(dst), dtype="float32", always_2d=True)
    out = np.ascontiguousarray(out.T)
    if float(out_sr) != float(sample_rate):
        out = np.ascontiguousarray(soxr.resample(out.T, float(out_sr), float(sample_rate), quality="VHQ").T,
                                   dtype=np.float32)
    return out


def choose_matchering_reference(dataset_dir: str | Path, split: str = "train") -> dict[str, Any]:
    """The one reference master matchering gets: the most typical training master by spectrum.

    Matchering copies the reference's level, so only the masters at the
    loudest level of the split (within 0.1 LU: the loudness convention; the
    soundtrack targets held below it by their true-peak ceiling are left out) are
    candidates. For each target (master) of ``split``, its long-term average spectrum in
    1/3-octave bands from 31.5 Hz to 16 kHz
    (:func:`deepafx.recipes.mastering.engineer.long_term_spectrum_db`: Welch
    PSD, dB) minus its mean over bands (so the level does not count) is
    compared with the band-wise median of all of them; the piece with the
    smallest mean absolute difference (dB) is chosen, the first in manifest
    order on a tie. Every target of the recipe's engineer sits at −14 LUFS
    (within 0.03 LU on the quick data), so all of them are candidates there.

    Args:
        dataset_dir: Dataset folder (``manifest.json``, ``<split>/<piece>_target.wav``).
        split: The split the reference comes from (default ``"train"``: never a test piece).

    Returns:
        ``{"piece", "path", "split", "rule", "spectral_distance_db",
        "lufs", "true_peak_dbtp", "seconds", "candidates"}``.

    Raises:
        ValueError: an empty split.
        FileNotFoundError: a listed target is missing.
    """
    from deepafx.recipes.mastering.engineer import long_term_spectrum_db

    ddir = Path(dataset_dir)
    pieces = _split_pieces(ddir, split)
    if not pieces:
        raise ValueError(f"split {split!r} of {ddir} has no pieces to take a matchering reference from")
    spectra, paths, loudness = [], [], []
    for pid in pieces:
        path = ddir / split / f"{pid}_target.wav"
        if not path.is_file():
            raise FileNotFoundError(f"{path} listed in {ddir / 'manifest.json'} is missing; rebuild with --force")
        y, rate = sf.read(str(path), dtype="float32", always_2d=True)
        _, level_db = long_term_spectrum_db(y.T, rate)
        spectra.append(level_db - level_db.mean())
        paths.append(path)
        loudness.append(metrics.lufs(y.T, rate))
    spectra = np.stack(spectra)
    dist = np.mean(np.abs(spectra - np.median(spectra, axis=0)), axis=1)
    # matchering copies the reference's level: only masters at the convention's loudness (the loudest ones,
    # within 0.1 LU; targets quieter than it were held back by their true-peak ceiling) are candidates
    loudest = max(loudness)
    eligible = np.array([v >= loudest - 0.1 for v in loudness])
    k = int(np.argmin(np.where(eligible, dist, np.inf)))
    path = paths[k]
    y, rate = sf.read(str(path), dtype="float32", always_2d=True)
    y = y.T
    return {
        "piece": pieces[k], "path": str(path), "split": split,
        "rule": (f"of the {int(eligible.sum())} {split} masters within 0.1 LU of the loudest "
                 f"({loudest:.2f} LUFS), the one whose 1/3-octave long-term spectrum (31.5 Hz-16 kHz, level "
                 f"removed) is closest (mean absolute dB) to the band-wise median over all {len(pieces)} "
                 f"{split} masters"),
        "spectral_distance_db": float(dist[k]), "lufs": metrics.lufs(y, rate),
        "true_peak_dbtp": metrics.true_peak_dbtp(y, rate), "seconds": y.shape[1] / rate,
        "candidates": len(pieces),
    }


def _resolve_reference(ec: EvaluateConfig, ddir: Path) -> dict[str, Any]:
    """The matchering reference of ``ec.matchering_reference`` (piece id, file or automatic)."""
    ref = ec.matchering_reference
    if ref is None:
        return choose_matchering_reference(ddir, "train")
    as_piece = ddir / "train" / f"{ref}_target.wav"
    path = as_piece if as_piece.is_file() else Path(ref).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"evaluate.matchering_reference {ref!r} is neither a training piece of {ddir} "
                                f"nor an audio file; give a piece id from its train split or a file path")
    y, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return {"piece": ref if as_piece.is_file() else None, "path": str(path),
            "split": "train" if as_piece.is_file() else None, "rule": "given by evaluate.matchering_reference",
            "spectral_distance_db": None, "lufs": metrics.lufs(y.T, rate),
            "true_peak_dbtp": metrics.true_peak_dbtp(y.T, rate), "seconds": y.shape[0] / rate, "candidates": None}


# --------------------------------------------------------------------------- data
def _split_pieces(dataset_dir: Path, split: str) -> list[str]:
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    return list(manifest["splits"][split]["pieces"])


def piece_groups(dataset_dir: Path) -> dict[str, str]:
    """Piece id → its album (soundtrack datasets) or its corpus source (score datasets)."""
    manifest = json.loads((Path(dataset_dir) / "manifest.json").read_text())
    return {p["piece_id"]: p.get("album") or p.get("source") for p in manifest.get("pieces", [])
            if p.get("album") or p.get("source")}


def _cache_path(ddir: Path, split: str, config, chain, ec: EvaluateConfig) -> Path:
    """``ddir/eval_cache/<split>-<key>.json``: the key covers everything the baseline rows depend on."""
    import hashlib

    manifest = json.loads((ddir / "manifest.json").read_text())
    irrelevant = {"max_tracks", "num_examples", "plot", "saturation_tracks", "cache_baselines", "bootstrap_resamples",
                  "confidence", "loudness_lufs", "loudness_param", "smoothing_frames", "static", "block_samples",
                  "timeout_seconds"}
    key = {"data": manifest.get("settings"), "software": manifest.get("software"), "split": split,
           "chain": chain.to_dict(), "evaluate": {k: v for k, v in asdict(ec).items() if k not in irrelevant},
           "version": BASELINE_CACHE_VERSION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return ddir / "eval_cache" / f"{split}-{digest}.json"


def _write_cache(path: Path, cache: Mapping[str, Any]) -> None:
    from deepafx.runs import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(json_safe(dict(cache))))


def model_saturation(model, ddir: Path, split: str, pieces: Sequence[str], tracks: Sequence[tuple], data_sr: float,
                     ec: EvaluateConfig) -> dict[str, Any]:
    """The model's saturation share on whole tracks (encoder only; see ``evaluate.saturation_tracks``).

    Measured on the per-frame automation (smoothed over ``ec.smoothing_frames``) also when
    ``ec.static`` scores the model with one parameter set per piece.

    Returns:
        ``{"definition", "tracks": [{"album", "track", "seconds", "share"}], "mean_share", "max_share",
        "tracks_over_5_percent"}``.
    """
    from deepafx.audio import resample
    from deepafx.automation.model import predict_automation
    from deepafx.automation.process import SATURATION_FRACTION, SATURATION_TOLERANCE, Automation

    manifest = json.loads((ddir / "manifest.json").read_text())
    sr = float(model.sample_rate)
    items: list[tuple[dict[str, Any], Any]] = []
    if manifest.get("source") == "soundtracks":
        from deepafx.recipes.mastering.soundtracks import read_track, whole_tracks

        for t in whole_tracks(ddir, split):
            items.append(({"album": t["album"], "track": t["track"]},
                          lambda path=t["path"]: read_track(path, int(sr))))
    else:
        groups = piece_groups(ddir)
        for pid, (x, _) in zip(pieces, tracks):
            items.append(({"album": groups.get(pid), "track": pid}, lambda x=x: resample(x, data_sr, sr)))
    if ec.saturation_tracks is not None:
        items = items[: int(ec.saturation_tracks)]
    out = []
    for info, load in items:
        try:
            audio = load()
        except Exception as exc:  # an unreadable track must not cost the evaluation
            out.append(dict(info, seconds=None, share=None, error=f"{type(exc).__name__}: {exc}"))
            log.warning("saturation: %s/%s not read: %s", info["album"], info["track"], out[-1]["error"])
            continue
        # per-frame automation even when the model is scored static: the share asks whether the encoder's
        # outputs are pinned whatever it hears, which a mean over the track would hide
        times, params = predict_automation(model, audio, smoothing_frames=ec.smoothing_frames)
        share = Automation(times, params, model.chain.param_table).saturation_share()
        out.append(dict(info, seconds=audio.shape[1] / sr, share=share))
    shares = [t["share"] for t in out if t["share"] is not None]
    return {
        "definition": (f"share of frames where at least {SATURATION_FRACTION:.0%} of the learned parameters sit "
                       f"within {SATURATION_TOLERANCE:.0%} of a range bound (normalized), on whole tracks"),
        "tracks": out,
        "mean_share": float(np.mean(shares)) if shares else None,
        "max_share": float(np.max(shares)) if shares else None,
        "tracks_over_5_percent": int(sum(v > 0.05 for v in shares)),
        "tracks_not_read": int(sum(t["share"] is None for t in out)),
    }


# --------------------------------------------------------------------------- figure
def _method_color(method: str, oracle_index: int = 0) -> str:
    fixed = {"unprocessed": "0.55", "default": "0.78", "matchering": "tab:green", "model": "tab:blue",
             "model_loudness": "tab:cyan"}
    if method in fixed:
        return fixed[method]
    return ("tab:orange", "tab:red", "tab:brown", "tab:purple")[oracle_index % 4]


def plot_summary(dest: str | Path | io.BytesIO, results: Mapping[str, Any], example: Mapping[str, Any] | None,
                 split: str = "test", dpi: int = 100) -> None:
    """Save the evaluation figure as PNG (matplotlib, Agg backend).

    Top row: one bar per method for MFCC cosine, LUFS error, true peak and
    MR-STFT — the mean over pieces with its bootstrap interval as a whisker;
    the true-peak panel also marks each method's highest true peak over pieces
    (triangles) and the −1 dBTP ceiling (dashed line). Middle row: the
    example piece's log spectrograms (channel mean, FFT 2048, hop 512, a
    log-frequency axis and one colour scale over the top 90 dB:
    :func:`deepafx.automation.plots.log_spectrogram_db`) for input, model and
    target. Bottom row: its short-term loudness (:func:`short_term_loudness`,
    3 s windows every 0.1 s) for input, model, target and matchering.

    Args:
        dest: File path or binary file object.
        results: The results dict of :func:`evaluate_from_config`.
        example: ``{"piece": id, "sample_rate": Hz, "audio": {"input", "model",
            "target", "matchering"?: (channels, samples)}}``, or ``None`` for
            the bars alone.
        split: Split name in the title.
        dpi: Dots per inch; the figure is 16 x 13 inches (16 x 5 with no example).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from deepafx.automation.plots import _display_grid, log_spectrogram_db

    s = results["settings"]
    rows = list(s.get("methods", METHODS))
    summary = results[split]
    fig = plt.figure(figsize=(16, 13 if example else 5), dpi=dpi)
    grid = fig.add_gridspec(3 if example else 1, 12, height_ratios=[1.0, 1.1, 0.9] if example else [1.0],
                            hspace=0.55, wspace=1.2)
    panels = (("mfcc_cosine", "MFCC cosine ↓"), ("lufs_error", "LUFS error [LU] ↓"),
              ("true_peak_dbtp", "true peak [dBTP]"), ("mrstft", "MR-STFT ↓"))
    colors = []
    k_oracle = 0
    for m in rows:
        colors.append(_method_color(m, k_oracle))
        k_oracle += m.startswith("oracle_cmaes")
    xs = np.arange(len(rows))
    for p, (key, label) in enumerate(panels):
        ax = fig.add_subplot(grid[0, 3 * p: 3 * p + 3])
        for i, m in enumerate(rows):
            row = summary.get(m, {})
            v, ci = row.get(key), row.get(f"{key}_ci")
            if v is None:
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8)
                continue
            err = None if ci is None else [[max(v - ci[0], 0.0)], [max(ci[1] - v, 0.0)]]
            ax.bar(i, v, color=colors[i], edgecolor="black", linewidth=0.5)
            if err is not None:
                ax.errorbar(i, v, yerr=err, color="black", capsize=3, linewidth=1)
            if key == "true_peak_dbtp" and row.get("true_peak_dbtp_max") is not None:
                ax.scatter(i, row["true_peak_dbtp_max"], marker="^", color="black", zorder=3)
        if key == "true_peak_dbtp":
            ax.axhline(TARGETS[1][2], color="red", linestyle="--", linewidth=1)
            label += "\n▲ max over pieces, red: −1 dBTP ceiling"
        ax.set_xticks(xs)
        ax.set_xticklabels(rows, rotation=40, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
        ax.axhline(0.0, color="black", linewidth=0.5)
    conf = s.get("bootstrap", {}).get("confidence", 0.95)
    title = (f"mastering evaluation, split {split}: {s['num_tracks']} pieces; bars: mean, whiskers: "
             f"{conf * 100:g} % bootstrap interval over pieces")
    if example:
        sr = float(example["sample_rate"])
        audio = example["audio"]
        specs = {name: log_spectrogram_db(audio[name]) for name in ("input", "model", "target")}
        vmax = max(float(v.max()) for v in specs.values())
        freqs = np.linspace(0, sr / 2, next(iter(specs.values())).shape[0])
        log_f = np.geomspace(20.0, sr / 2, 193)
        for c, (name, spec) in enumerate(specs.items()):
            ax = fig.add_subplot(grid[1, 4 * c: 4 * c + 4])
            shown = _display_grid(spec, freqs, log_f, max_columns=600)
            duration = audio[name].shape[-1] / sr
            mesh = ax.pcolormesh(np.linspace(0, duration, shown.shape[1] + 1), log_f, shown, shading="flat",
                                 cmap="magma", vmin=vmax - 90.0, vmax=vmax, rasterized=True)
            ax.set_yscale("log")
            ax.set_ylim(20.0, sr / 2)
            ax.set_title(f"{name}: log spectrogram", fontsize=10)
            ax.set_xlabel("time [s]", fontsize=8)
            ax.tick_params(labelsize=8)
            if c == 0:
                ax.set_ylabel("frequency [Hz]", fontsize=8)
            if c == 2:
                fig.colorbar(mesh, ax=ax, pad=0.01, label="level [dB]")
        ax = fig.add_subplot(grid[2, :])
        styles = {"input": ("0.6", "-", 2.6), "target": ("black", "--", 1.4), "matchering": ("tab:green", "-", 1.4),
                  "model": ("tab:blue", "-", 1.4)}
        for name, (color, ls, width) in styles.items():
            if audio.get(name) is None:
                continue
            t, loud = short_term_loudness(audio[name], sr)
            ax.plot(t, loud, color=color, linestyle=ls, linewidth=width,
                    label=f"{name} ({metrics.lufs(audio[name], sr):.1f} LUFS integrated)")
        ax.set_xlabel("time [s] (end of each 3 s window)", fontsize=9)
        ax.set_ylabel("short-term loudness [LUFS]", fontsize=9)
        ax.set_title(f"example piece {example['piece']}: short-term loudness (BS.1770, 3 s windows)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        ax.tick_params(labelsize=8)
    fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.06, right=0.96, top=0.93 if example else 0.85, bottom=0.06 if example else 0.25)
    fig.savefig(dest, format="png", dpi=dpi)
    plt.close(fig)


# --------------------------------------------------------------------------- report
def _fmt(v: Any, key: str) -> str:
    if v is None:
        return "–"
    if key == "realtime_factor":
        return f"{v:.1f}"
    if key in ("true_peak_dbtp", "true_peak_dbtp_max", "lufs_error", "seconds_per_track"):
        return f"{v:.2f}"
    if key == "mrstft":
        return f"{v:.3f}"
    return f"{v:.4f}"


def _cell(row: Mapping[str, Any], key: str) -> str:
    text = _fmt(row.get(key), key)
    ci = row.get(f"{key}_ci")
    if ci is not None and row.get(key) is not None:
        text += f" [{_fmt(ci[0], key)}, {_fmt(ci[1], key)}]"
    return text


def results_markdown(results: Mapping[str, Any], split: str = "test") -> str:
    """Markdown report: methods × metrics (mean [CI]), paired differences, targets, settings in words.

    Args:
        results: The results dict of :func:`evaluate_from_config` (results
            written before these keys existed are read too).
        split: The split key of ``results``.

    Returns:
        The report text.
    """
    s = results["settings"]
    rows = list(s.get("methods", [m for m in METHODS if m in results[split]]))
    conf = s.get("bootstrap", {}).get("confidence", 0.95)
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
    given = s.get("given_loudness") or {}

    def label(m: str) -> str:
        name = f"**{m}**" if m == "model" else m
        return name + (f" (given {given[m]:g} LUFS)" if given.get(m) is not None else "")

    for m in rows:
        row = results[split][m]
        name = label(m)
        n, missing = row.get("num_tracks"), row.get("failed_tracks")
        if missing:
            name += f" ({n} of {n + missing} pieces)"
        lines.append(f"| {name} | " + " | ".join(_cell(row, k) for k, *_ in METRICS) + " |")
    lines += ["", f"Mean over pieces [{conf * 100:g} % percentile bootstrap interval over pieces]; "
              "`true peak` is the mean output true peak, `true peak max` the highest over pieces. "
              "A row marked *given* is told the loudness (a number from the config, never from the test targets)."]
    albums = results.get("albums") or {}
    if len(albums) > 1:
        keys = ("mfcc_cosine", "mrstft", "lufs_error", "true_peak_dbtp_max")
        lines += ["", "## Per album (or source)", "",
                  "| album | method | " + " | ".join(next(f"{n}{f' [{u}]' if u else ''}" for k2, n, u, _ in METRICS
                                                        if k2 == k) for k in keys) + " |",
                  "|---|---|" + "---:|" * len(keys)]
        for album, summ in albums.items():
            for m in rows:
                row = summ.get(m)
                if row is None:
                    continue
                lines.append(f"| {album} ({row.get('num_tracks')}) | {label(m)} | "
                             + " | ".join(_cell(row, k) for k in keys) + " |")
    sat = results.get("saturation")
    if sat and sat.get("tracks") and sat.get("mean_share") is not None:
        lines += ["", "## Saturation of the model's automation", "",
                  f"{sat['definition']}: mean {100 * sat['mean_share']:.1f} %, highest {100 * sat['max_share']:.1f} %, "
                  f"{sat['tracks_over_5_percent']} of {len(sat['tracks'])} tracks over 5 %.", "",
                  "| album | track | minutes | saturated frames |", "|---|---|---:|---:|"]
        for t in sat["tracks"]:
            if t["share"] is None:
                lines.append(f"| {t['album']} | {t['track']} | – | not read: {t['error']} |")
            else:
                lines.append(f"| {t['album']} | {t['track']} | {t['seconds'] / 60:.2f} | {100 * t['share']:.1f} % |")
    paired = results.get("paired") or {}
    if paired:
        lines += ["", f"## Paired differences ({conf * 100:g} % paired bootstrap interval; < 0: the first is better)",
                  "", "| difference | metric | mean | interval | pieces | interval excludes 0 |",
                  "|---|---|---:|---:|---:|---|"]
        for name, per in paired.items():
            for key, d in per.items():
                if d.get("mean") is None:
                    lines.append(f"| {name.replace('_minus_', ' − ')} | {key} | – | – | 0 | – |")
                    continue
                ex = "yes" if d["ci"][0] > 0 or d["ci"][1] < 0 else "no"
                lines.append(f"| {name.replace('_minus_', ' − ')} | {key} | {d['mean']:+.3g} | "
                             f"[{d['ci'][0]:+.3g}, {d['ci'][1]:+.3g}] | {d['num_tracks']} | {ex} |")
    targets = results.get("targets") or {}
    if targets:
        heads = [f"{desc} ≤ {thr:g} {unit}" for _, desc, thr, unit in TARGETS]
        lines += ["", "## Targets (the reference engineer's)", "",
                  "| method | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
        order = ["model"] + [m for m in rows if m not in ("model", "unprocessed")]
        for m in order:
            t = targets["methods"].get(m)
            if t is None:
                continue
            cells = []
            for key, _, _, unit in TARGETS:
                c = t[key]
                if c["value"] is None:
                    cells.append("–")
                    continue
                text = f"{'yes' if c['met'] else 'no'}: {c['value']:.2f} {unit}"
                if c.get("ci") is not None:
                    text += f" [{c['ci'][0]:.2f}, {c['ci'][1]:.2f}]"
                if c.get("tracks_over") is not None:
                    text += f", {c['tracks_over']} of {c['num_tracks']} pieces over"
                cells.append(text)
            lines.append(f"| {'**model**' if m == 'model' else m} | " + " | ".join(cells) + " |")
        lines += ["", "yes/no: whether the value is within the target; loudness error and MFCC ratio are means "
                  f"(MFCC ratio: mean model distance / mean unprocessed distance) with {conf * 100:g} % "
                  "bootstrap intervals; the true peak is the highest over pieces."]
    lines += [
        "",
        f"Targets: mean loudness {s['target_mean_lufs']:.2f} LUFS, highest true peak {s['target_max_true_peak_dbtp']:.2f} dBTP "
        "(mastered to a −1 dBTP ceiling).",
    ]
    mg = s.get("matchering")
    if mg and mg.get("reference"):
        r = mg["reference"]
        lines.append(f"Matchering {mg.get('version', '')}: one reference master for every piece, `{r['piece'] or r['path']}` "
                     f"({r['rule']}; {r['lufs']:.2f} LUFS, {r['true_peak_dbtp']:.2f} dBTP, {r['seconds']:.1f} s); "
                     f"failed on {mg['failures']} of {s['num_tracks']} pieces.")
    elif mg and mg.get("error"):
        lines.append(f"Matchering: not run ({mg['error']}).")
    ld = s.get("loudness")
    if ld:
        lines.append(f"model_loudness: the model's automation with `{ld['param']}` offset on every frame until the "
                     f"output measures {ld['target_lufs']:g} LUFS (the engineer's loudness; known, like matchering's "
                     f"reference level, the target audio is not used): mean offset {ld['mean_offset_db']:+.2f} dB, "
                     f"{ld['mean_renders']:.1f} more renders per piece, within 0.1 LU on {ld['reached']} of "
                     f"{s['num_tracks']} pieces.")
    o = s["oracle"]
    budgets = o.get("budgets") or {}
    if budgets:
        costs = "; ".join(f"{b['renders']} renders: {b['mean_seconds_per_track']:.1f} s/track "
                          f"({b['mean_renders_per_second']:.2f} renders/s)" for b in budgets.values())
    else:
        costs = f"{o['renders']} renders, {o['mean_renders_per_second']:.2f} renders/s"
    lines += [
        f"Oracle: CMA-ES per track on a {o['excerpt_seconds']:g} s excerpt (objective MR-STFT + "
        f"{o['loudness_weight']:g} x LU error), one run per budget with the same seed; {costs}. "
        "It sees the target, so it bounds the chain.",
        f"Alignment: output vs target by cross-correlation within ±{s['max_delay_ms']:g} ms before MFCC and MR-STFT.",
        "Speed is audio seconds per wall-clock second on this machine "
        f"({s['cpu_count']} CPU cores); model time includes starting its render worker.",
    ]
    if s.get("summary_png"):
        lines += ["", f"![summary]({s['summary_png']})"]
    lines.append("")
    return "\n".join(lines)


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


# --------------------------------------------------------------------------- summary
def _summarize(per_track: list[dict], rows: Sequence[str], total_seconds: float,
               ec: EvaluateConfig) -> dict[str, dict[str, Any]]:
    """Per-method means, bootstrap intervals, maximum true peak and time over the tracks."""
    boot = dict(resamples=ec.bootstrap_resamples, seed=ec.seed, level=ec.confidence)
    summary: dict[str, dict[str, Any]] = {}
    for m in rows:
        track_rows = [t["methods"][m] for t in per_track]
        s: dict[str, Any] = {}
        for key in SCORED:
            vals = [r[key] for r in track_rows if r.get(key) is not None]
            s[key] = float(np.mean(vals)) if vals else None
            finite = bool(vals) and all(math.isfinite(v) for v in vals)
            s[f"{key}_ci"] = list(bootstrap_ci(vals, **boot)) if finite else None
        peaks = [r["true_peak_dbtp"] for r in track_rows if r.get("true_peak_dbtp") is not None]
        s["true_peak_dbtp_max"] = float(np.max(peaks)) if peaks else None
        done = [(t["seconds"], r) for t, r in zip(per_track, track_rows) if r.get("mfcc_cosine") is not None]
        s["num_tracks"] = len(done)
        s["failed_tracks"] = len(track_rows) - len(done)
        timed = [(sec, r["seconds"]) for sec, r in done if r.get("seconds") is not None]
        if timed:
            s["seconds_per_track"] = float(np.mean([w for _, w in timed]))
            s["realtime_factor"] = float(sum(a for a, _ in timed)) / max(float(sum(w for _, w in timed)), 1e-9)
        else:
            s["seconds_per_track"], s["realtime_factor"] = None, None
        summary[m] = s
    return summary


def _common(per_track: list[dict], a: str, b: str, key: str) -> tuple[list[float], list[float]]:
    """Values of ``key`` for methods ``a`` and ``b`` on the pieces where both are finite."""
    xs, ys = [], []
    for t in per_track:
        va, vb = t["methods"][a].get(key), t["methods"][b].get(key)
        if va is not None and vb is not None and math.isfinite(va) and math.isfinite(vb):
            xs.append(va)
            ys.append(vb)
    return xs, ys


def _paired(per_track: list[dict], rows: Sequence[str], ec: EvaluateConfig) -> dict[str, Any]:
    """Paired bootstrap intervals of the differences in :data:`PAIRED` for :data:`PAIRED_METRICS`."""
    out: dict[str, Any] = {}
    for a, b in PAIRED:
        if a not in rows or b not in rows:
            continue
        per = {}
        for key in PAIRED_METRICS:
            xs, ys = _common(per_track, a, b, key)
            if xs:
                mean, lo, hi = paired_bootstrap_ci(xs, ys, ec.bootstrap_resamples, ec.seed, ec.confidence)
                per[key] = {"mean": mean, "ci": [lo, hi], "num_tracks": len(xs)}
            else:
                per[key] = {"mean": None, "ci": None, "num_tracks": 0}
        out[f"{a}_minus_{b}"] = per
    return out


def _targets(per_track: list[dict], summary: Mapping[str, Mapping[str, Any]], rows: Sequence[str],
             ec: EvaluateConfig) -> dict[str, Any]:
    """Whether each method meets each of :data:`TARGETS` (value, interval, met, met by the whole interval)."""
    (k_lufs, _, lufs_max, _), (k_peak, _, peak_max, _), (k_ratio, _, ratio_max, _) = TARGETS
    out: dict[str, Any] = {
        "definitions": {k: {"description": d, "threshold": thr, "unit": u} for k, d, thr, u in TARGETS},
        "methods": {},
    }
    for m in rows:
        s = summary[m]
        cells: dict[str, Any] = {}
        v, ci = s.get("lufs_error"), s.get("lufs_error_ci")
        cells[k_lufs] = {"value": v, "ci": ci, "met": None if v is None else bool(v <= lufs_max),
                         "met_by_interval": None if ci is None else bool(ci[1] <= lufs_max)}
        peaks = [t["methods"][m]["true_peak_dbtp"] for t in per_track if t["methods"][m].get("true_peak_dbtp") is not None]
        v = s.get("true_peak_dbtp_max")
        cells[k_peak] = {"value": v, "ci": None, "met": None if v is None else bool(v <= peak_max),
                         "met_by_interval": None, "tracks_over": int(sum(p > peak_max for p in peaks)),
                         "num_tracks": len(peaks)}
        cells[k_ratio] = {"value": None, "ci": None, "met": None, "met_by_interval": None}
        if "unprocessed" in rows:
            xs, ys = _common(per_track, m, "unprocessed", "mfcc_cosine")
            if xs and np.mean(ys) > 0:
                r, lo, hi = bootstrap_ratio_ci(xs, ys, ec.bootstrap_resamples, ec.seed, ec.confidence)
                cells[k_ratio] = {"value": r, "ci": [lo, hi], "met": bool(r <= ratio_max),
                                  "met_by_interval": bool(hi <= ratio_max), "num_tracks": len(xs)}
        out["methods"][m] = cells
    return out


# --------------------------------------------------------------------------- main
def evaluate_from_config(config, checkpoint: Path, out_dir: Path, split: str = "test",
                         data_dir: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a mastering checkpoint on one split; write ``results.json``, ``results.md`` and ``summary.png``.

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

    from deepafx.audio import write_files_atomic
    from deepafx.data.pieces import read_json
    from deepafx.recipes.mastering.data import build_dataset
    from deepafx.recipes.mastering.music import load_split
    from deepafx.automation.oracle import CmaesOracle
    from deepafx.automation.model import render_automation
    from deepafx.automation.process import (apply_automation, check_loudness_target, load_automation_checkpoint,
                                            loudness_parameter, match_loudness)

    if int(os.environ.get("RANK", "0")) != 0:
        log.info("rank %s: evaluation runs on rank 0 only", os.environ.get("RANK"))
        return {}
    from deepafx.recipes import default_data_dir, get_recipe

    if isinstance(config, Mapping):
        config = get_recipe("mastering").bind(config)
    if config.recipe != "mastering":
        raise ValueError(f"config recipe is {config.recipe!r}; this evaluator handles 'mastering'")
    ec = config.evaluate
    budgets = oracle_rows(ec.cmaes_renders)
    if int(ec.bootstrap_resamples) < 100:
        raise ValueError(f"evaluate.bootstrap_resamples must be >= 100 (2000 is usual), got {ec.bootstrap_resamples}")
    if not 0.0 < float(ec.confidence) < 1.0:
        raise ValueError(f"evaluate.confidence must be on (0, 1), e.g. 0.95, got {ec.confidence}")
    rows = (["unprocessed", "default"] + (["loudnorm"] if ec.loudnorm_lufs is not None else [])
            + (["matchering"] if ec.matchering else []) + [r for r, _ in budgets] + ["model"])
    if ec.loudnorm_lufs is not None:
        check_loudness_target(ec.loudnorm_lufs, "evaluate.loudnorm_lufs")
    if ec.loudness_lufs is not None:
        check_loudness_target(ec.loudness_lufs, "evaluate.loudness_lufs")
        rows.append("model_loudness")
    model, ckpt, ckpt_path = load_automation_checkpoint(checkpoint, "mastering")
    chain = model.chain
    sr = float(chain.sample_rate)
    loudness_name = None if ec.loudness_lufs is None else chain.param_table.names[
        loudness_parameter(chain.param_table, ec.loudness_param)]  # fails before any work
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    ddir = Path(data_dir) if data_dir is not None else default_data_dir(config)
    build_dataset(config.data, ddir)
    pieces = _split_pieces(ddir, split)
    tracks = load_split(ddir, split)
    data_sr = float(sf.info(str(ddir / split / f"{pieces[0]}_input.wav")).samplerate) if pieces else sr
    if ec.max_tracks is not None:
        pieces, tracks = pieces[: ec.max_tracks], tracks[: ec.max_tracks]
    if not tracks:
        raise ValueError(f"split {split!r} of {ddir} has no pieces; raise data.test_fraction or the dataset size")

    mg_settings: dict[str, Any] = {"enabled": bool(ec.matchering)}
    reference = None
    if ec.matchering:
        from importlib.metadata import version

        mg_settings["config"] = "matchering.Config() defaults; result written as 24-bit PCM (matchering.pcm24)"
        try:
            mg_settings["version"] = version("matchering")
            reference = _resolve_reference(ec, ddir)
            mg_settings["reference"] = reference
        except Exception as exc:  # no train split, unreadable reference, matchering not installed
            mg_settings["error"] = f"{type(exc).__name__}: {exc}"
            log.warning("matchering baseline not run: %s", mg_settings["error"])

    table = chain.param_table
    defaults = table.defaults_normalized()
    per_track: list[dict[str, Any]] = []
    examples_dir = out_dir / "examples"
    example: dict[str, Any] | None = None
    groups = piece_groups(ddir)
    cache_rows = [m for m in rows if m not in ("model", "model_loudness")]
    cache_path = _cache_path(ddir, split, config, chain, ec) if ec.cache_baselines else None
    cache = (read_json(cache_path) or {}) if cache_path is not None else {}
    with CmaesOracle(chain, renders=max(b for _, b in budgets), sigma0=ec.cmaes_sigma, popsize=ec.cmaes_popsize,
                     excerpt_seconds=ec.excerpt_seconds, preroll_seconds=ec.preroll_seconds,
                     loudness_weight=ec.loudness_weight, fft_sizes=ec.oracle_fft_sizes, overlap=ec.oracle_overlap,
                     seed=ec.seed, timeout_seconds=ec.timeout_seconds,
                     render=config.sections.get("render")) as oracle:
        for k, (pid, (x, y)) in enumerate(tqdm(list(zip(pieces, tracks)), desc=f"evaluate {split}", unit="piece")):
            if data_sr != sr:
                x = soxr.resample(x.T, data_sr, sr, quality="VHQ").T.astype(np.float32)
                y = soxr.resample(y.T, data_sr, sr, quality="VHQ").T.astype(np.float32)
            n = min(x.shape[1], y.shape[1])
            x, y = np.ascontiguousarray(x[:, :n]), np.ascontiguousarray(y[:, :n])
            seconds = n / sr
            entry: dict[str, Any] = {
                "piece": pid, "album": groups.get(pid), "seconds": seconds,
                "target_lufs": metrics.lufs(y, sr), "target_true_peak_dbtp": metrics.true_peak_dbtp(y, sr),
                "methods": {},
            }
            keep_audio = k < max(ec.num_examples, 1)  # the example pieces need every row's audio
            cached = None if keep_audio else cache.get(pid)
            outputs: dict[str, tuple[np.ndarray | None, float | None]] = {"unprocessed": (x, None)}
            if cached is not None:
                entry["methods"].update(cached["methods"])
                entry["oracles"] = cached["oracles"]
                if "matchering_error" in cached:
                    entry["matchering_error"] = cached["matchering_error"]
            else:
                t0 = time.perf_counter()
                outputs["default"] = (oracle.render_track(x, defaults), time.perf_counter() - t0)
                if ec.loudnorm_lufs is not None:
                    t0 = time.perf_counter()
                    outputs["loudnorm"] = (loudness_normalize(x, sr, ec.loudnorm_lufs, ec.loudnorm_true_peak_dbtp),
                                           time.perf_counter() - t0)
                if ec.matchering:
                    if reference is None:
                        outputs["matchering"] = (None, None)
                        entry["matchering_error"] = mg_settings.get("error", "no reference")
                    else:
                        t0 = time.perf_counter()
                        try:
                            out = matchering_master(x, sr, reference["path"])
                            if out.shape[0] != y.shape[0]:  # matchering makes mono stereo
                                out = out.mean(axis=0, keepdims=True)
                            outputs["matchering"] = (out, time.perf_counter() - t0)
                        except Exception as exc:  # matchering's ModuleError and anything else it raises
                            outputs["matchering"] = (None, None)
                            entry["matchering_error"] = f"{type(exc).__name__}: {exc}"
                            log.warning("matchering failed on %s: %s", pid, entry["matchering_error"])
                entry["oracles"] = {}
                for row, renders in budgets:
                    oracle.renders = renders  # one pool for every budget; fit() reads the budget from here
                    t0 = time.perf_counter()
                    res = oracle.fit(x, y)
                    outputs[row] = (oracle.render_track(x, res.params), time.perf_counter() - t0)
                    info = res.to_dict()
                    info["values"] = {p.name: float(v) for p, v in zip(table, table.denormalize(res.params))}
                    entry["oracles"][row] = info
            entry["oracle"] = entry["oracles"][budgets[-1][0]]
            mastered = apply_automation(model, x, sr, block_samples=ec.block_samples,
                                        smoothing_frames=ec.smoothing_frames, timeout_seconds=ec.timeout_seconds,
                                        static=ec.static)
            outputs["model"] = (mastered.audio, mastered.process_seconds)
            entry["model_saturation_share"] = mastered.automation.saturation_share()
            if ec.loudness_lufs is not None:
                t0 = time.perf_counter()
                auto = mastered.automation
                _, loud, entry["model_loudness"] = match_loudness(
                    lambda prm: render_automation(chain, x, auto.times_s, prm, block_samples=ec.block_samples,
                                                  timeout_seconds=ec.timeout_seconds),
                    auto.normalized, table, ec.loudness_lufs, sr, param=ec.loudness_param, output=mastered.audio)
                outputs["model_loudness"] = (loud, mastered.process_seconds + time.perf_counter() - t0)
            for m in rows:
                if m in entry["methods"]:  # cached
                    continue
                audio, secs = outputs[m]
                if audio is None:
                    row = {key: None for key in (*SCORED, "lag_samples")}
                else:
                    row = track_metrics(audio, y, sr, ec.max_delay_ms)
                row["seconds"] = secs
                row["realtime_factor"] = None if secs is None else seconds / max(secs, 1e-9)
                entry["methods"][m] = row
            if cache_path is not None and cached is None:
                cache[pid] = {"methods": {m: entry["methods"][m] for m in cache_rows}, "oracles": entry["oracles"]}
                if "matchering_error" in entry:
                    cache[pid]["matchering_error"] = entry["matchering_error"]
                _write_cache(cache_path, cache)
            if len(budgets) > 1 or budgets[0][0] != "oracle_cmaes":
                entry["methods"]["oracle_cmaes"] = dict(entry["methods"][budgets[-1][0]])
            entry["model_automation_frames"] = int(len(mastered.automation.times_s))
            per_track.append(entry)
            if k == 0:
                example = {"piece": pid, "sample_rate": sr,
                           "audio": {"input": x, "model": mastered.audio, "target": y,
                                     "matchering": outputs.get("matchering", (None, None))[0]}}
            if k < ec.num_examples:
                d = examples_dir / pid
                d.mkdir(parents=True, exist_ok=True)
                sf.write(str(d / "target.wav"), y.T, int(round(sr)), subtype="FLOAT")
                for m in rows:
                    if outputs.get(m, (None, None))[0] is not None:
                        sf.write(str(d / f"{m}.wav"), outputs[m][0].T, int(round(sr)), subtype="FLOAT")
    saturation = model_saturation(model, ddir, split, pieces, tracks, data_sr, ec)

    total_seconds = float(sum(t["seconds"] for t in per_track))
    summary = _summarize(per_track, rows, total_seconds, ec)
    alias = None
    if budgets[-1][0] != "oracle_cmaes":
        alias = budgets[-1][0]
        summary["oracle_cmaes"] = dict(summary[alias])
    for row, renders in budgets:
        summary[row]["renders"] = renders
    if alias:
        summary["oracle_cmaes"]["renders"] = budgets[-1][1]
    if ec.matchering:
        errors = {t["piece"]: t["matchering_error"] for t in per_track if "matchering_error" in t}
        mg_settings.update(failures=len(errors), errors=errors)

    budget_info = {}
    for row, renders in budgets:
        infos = [t["oracles"][row] for t in per_track]
        budget_info[row] = {
            "renders": renders,
            "mean_seconds_per_track": summary[row]["seconds_per_track"],
            "mean_search_seconds": float(np.mean([i["search_seconds"] for i in infos])),
            "mean_renders_per_second": float(sum(i["renders"] for i in infos)
                                             / max(sum(i["search_seconds"] for i in infos), 1e-9)),
            "mean_objective": float(np.mean([i["objective"] for i in infos])),
            "mean_default_objective": float(np.mean([i["default_objective"] for i in infos])),
        }
    all_infos = [i for t in per_track for i in t["oracles"].values()]
    settings = {
        "split": split,
        "num_tracks": len(per_track),
        "total_seconds": total_seconds,
        "methods": rows,
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
            "renders": budgets[-1][1],
            "budgets": budget_info,
            "alias": {"oracle_cmaes": alias} if alias else {},
            "excerpt_seconds": ec.excerpt_seconds,
            "loudness_weight": ec.loudness_weight,
            "popsize": oracle.popsize,
            "render_workers": oracle.num_slots,
            "mean_renders_per_second": float(sum(i["renders"] for i in all_infos)
                                             / max(sum(i["search_seconds"] for i in all_infos), 1e-9)),
            "objective": "mean over FFT sizes of L1(|Y|-|T|) + L1(log|Y| - log|T|), plus loudness_weight * |LUFS error|",
            "budgets_are": "independent CMA-ES runs with the same seed (a larger budget replays the smaller one's "
                           "full generations exactly)",
        },
        "matchering": mg_settings,
        "loudness": None if ec.loudness_lufs is None else {
            "target_lufs": float(ec.loudness_lufs), "param": loudness_name,
            "mean_offset_db": float(np.mean([t["model_loudness"]["offset_db"] for t in per_track])),
            "mean_renders": float(np.mean([t["model_loudness"]["renders"] for t in per_track])),
            "reached": int(sum(t["model_loudness"]["reached"] for t in per_track)),
        },
        "bootstrap": {
            "resamples": int(ec.bootstrap_resamples), "confidence": float(ec.confidence), "seed": int(ec.seed),
            "method": "percentile bootstrap of the mean over pieces (Efron & Tibshirani 1993, ch. 13); paired "
                      "differences and the MFCC ratio resample pieces jointly",
        },
        "metrics": {
            "mfcc_cosine": "MFCC cosine distance (librosa: 20 MFCCs, FFT 2048, hop 512, 128 mel bands), aligned",
            "mrstft": "multi-resolution STFT distance, FFT 2048..64, 75% overlap, mean over sizes, aligned",
            "lufs_error": "|integrated loudness(output) - integrated loudness(target)|, LU, BS.1770-4",
            "true_peak_dbtp": "true peak of the output, dBTP, 4x oversampled (mean over pieces; "
                              "true_peak_dbtp_max: the highest)",
            "seconds_per_track": "wall-clock seconds per track",
            "realtime_factor": "audio seconds per wall-clock second (>1 faster than real time)",
        },
        "alignment": "lag maximising |cross-correlation| of channel sums within ±max_delay_ms; both cut to the overlap",
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "summary_png": None,
    }
    albums = {}
    for album in dict.fromkeys(t["album"] for t in per_track if t.get("album") is not None):
        sub = [t for t in per_track if t.get("album") == album]
        albums[album] = _summarize(sub, rows, float(sum(t["seconds"] for t in sub)), ec)
    settings["given_loudness"] = {m: (ec.loudnorm_lufs if m == "loudnorm" else ec.loudness_lufs)
                                  for m in GIVEN_LOUDNESS if m in rows}
    settings["baseline_cache"] = None if cache_path is None else str(cache_path)
    results = json_safe({split: summary, "tracks": per_track, "settings": settings, "albums": albums,
                         "saturation": saturation,
                         "paired": _paired(per_track, rows, ec), "targets": _targets(per_track, summary, rows, ec)})
    files = []
    if ec.plot:
        buf = io.BytesIO()
        try:
            plot_summary(buf, results, example, split)
            files.append((out_dir / "summary.png", buf.getvalue()))
            results["settings"]["summary_png"] = "summary.png"
        except Exception as exc:  # a figure must not cost the results
            results["settings"]["summary_png_error"] = f"{type(exc).__name__}: {exc}"
            log.warning("summary.png not written: %s", results["settings"]["summary_png_error"])
    files += [(out_dir / "results.json", json.dumps(results, indent=1, allow_nan=False).encode()),
              (out_dir / "results.md", results_markdown(results, split).encode())]
    write_files_atomic(files)
    return results
