"""Per-track gradient-free oracle: CMA-ES over the chain's parameters, directly against the target.

The "oracle" baseline of ST-ITO (Steinmetz, Singh, Comunità, Ibnyahya, Yuan,
Benetos and Reiss, "ST-ITO: Controlling audio effects for style transfer with
inference-time optimization", ISMIR 2024, https://arxiv.org/abs/2410.21233):
for each test track the chain's parameters are searched with CMA-ES (Hansen &
Ostermeier, 2001; the ``cma`` package) to minimise a distance between the
chain's output and the *target itself*. It needs the target, so it is not a
usable mastering method, but it bounds what the chain can do on that track
with a given render budget; a trained model is judged against it.

Search (:class:`CmaesOracle`)
-----------------------------
* **Variables**: the chain's learned parameters, normalized on [0, 1]
  (``cma`` bound handling), *static* for the whole track; the search starts
  at the chain's default parameters with step size ``sigma0`` (default 0.1)
  and the default population ``4 + floor(3 ln P)`` unless ``popsize`` is set.
  With budgets of tens to a few hundred renders over the 30 parameters of
  the built-in mastering chain, 0.1 searched better than 0.25: on the two
  quick-recipe test pieces, 60 renders reached objectives 0.626 and 0.87
  with 0.1 against 0.715 (no improvement on the defaults) and 1.05 with 0.25.
* **Budget**: exactly ``renders`` chain renders per track: the defaults are
  rendered first, then full CMA-ES generations while a whole generation fits,
  then a last partial sample that is evaluated but not told to CMA-ES.
* **Excerpt**: renders use an excerpt of ``excerpt_seconds`` from the middle
  of the track (the whole track when shorter), preceded by ``preroll_seconds``
  of input that is rendered but not scored, so compressor envelopes and filter
  states have settled when scoring starts. Every candidate starts from reset
  plugin state.
* **Objective** (lower is better)::

      J = MRSTFT(y, t) + loudness_weight * min(|LUFS(y) - LUFS(t)|, 60)

  ``MRSTFT`` is the multi-resolution STFT distance of
  :class:`deepafx.losses.MultiResolutionSTFTLoss` (mean L1 of linear plus
  log magnitudes, Hann window, centred frames), averaged rather than summed
  over ``fft_sizes``, with the target's magnitudes computed once per track (default 2048, 512,
  128 samples at 50 % overlap: three resolutions instead of the evaluation
  metric's six at 75 % overlap make a render's score about 8x cheaper while
  covering the same time–frequency range); ``LUFS`` is BS.1770-4 integrated
  loudness (pyloudnorm); the loudness error in LU is weighted by
  ``loudness_weight`` (default 0.1 per LU; it is capped at 60 LU so that a
  silent render still gets a finite score). The magnitude terms make the
  score insensitive to the few samples of group delay the crossovers add, so
  no alignment is done inside the search.

  With ``objective="esr_pre"`` (or ``"esr"``) the score is instead the
  error-to-signal ratio ``Σ(t−y)²/Σt²`` of the pre-emphasised (``1 − 0.95 z⁻¹``)
  or plain signals (:class:`EsrObjective`; Wright, Damskägg & Välimäki, DAFx
  2019), after shifting the output by the chain's reported latency: the
  objective the amp-emulation model trains on, so that oracle bounds what the
  static chain can reach on the table's own metric. ESR is sample-exact, so it
  is only meaningful for chains whose latency is reported exactly.
* **Budget curve**: ``fit(..., checkpoints=(100, 300))`` also records the best
  candidate among the first 100 and 300 renders of the same search (one search
  of the largest budget gives every point of the curve; a shorter search would
  draw its last partial generation anew, so the points are those of the long
  search's prefix, not of independent shorter searches).
* **Whole tracks**: ``excerpt_seconds=None`` scores the whole track (no pre-roll).
* **Crash safety**: renders run in a :class:`deepafx.workers.RenderEngine`,
  worker processes by default or Ray actors (one slot per worker, ``ceil(popsize / workers)`` chain
  instances each). If a render batch fails (a plugin crashes, hangs or
  returns NaN), its candidates are rendered one by one and each one that
  fails again scores ``FAILED_RENDER_SCORE``; the search continues.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from deepafx.chain import ChainSpec
from deepafx.hosts.base import PluginError
from deepafx.metrics import lufs
from deepafx.workers import RenderConfig, RenderRequest, rank_workers

log = logging.getLogger(__name__)

__all__ = ["CmaesOracle", "EsrObjective", "OBJECTIVES", "OracleObjective", "OracleResult", "FAILED_RENDER_SCORE", "middle_excerpt", "cmaes_oracle",
           "static_preset"]

#: Score of a candidate whose render failed twice (crash, hang or NaN output).
FAILED_RENDER_SCORE = 1e3
#: Cap on the loudness error inside the objective, LU.
LOUDNESS_CAP_LU = 60.0
#: The oracle's objectives: MR-STFT + loudness (the default), ESR of pre-emphasised or plain signals.
OBJECTIVES = ("mrstft", "esr_pre", "esr")


def middle_excerpt(num_samples: int, excerpt_samples: int, preroll_samples: int) -> tuple[int, int, int]:
    """Bounds of a centred excerpt and its pre-roll.

    Args:
        num_samples: Track length in samples.
        excerpt_samples: Wanted scored length in samples (the whole track when longer).
        preroll_samples: Wanted unscored lead-in in samples (shortened near the start).

    Returns:
        ``(render_start, score_start, stop)`` sample indices: render
        ``[render_start, stop)``, score ``[score_start, stop)``.
    """
    excerpt = min(int(excerpt_samples), int(num_samples))
    start = (int(num_samples) - excerpt) // 2
    pre = min(int(preroll_samples), start)
    return start - pre, start, start + excerpt


class OracleObjective:
    """``J = MRSTFT(y, t) + loudness_weight * min(|LUFS(y) - LUFS(t)|, 60)`` against one target excerpt.

    See the module docstring. The target's loudness is measured once.

    Args:
        target: ``(channels, samples)`` target excerpt (at least 0.4 s for BS.1770).
        sample_rate: Hz.
        loudness_weight: Weight per LU (>= 0).
        fft_sizes: MR-STFT FFT sizes in samples.
        overlap: MR-STFT frame overlap on [0, 1).

    Raises:
        ValueError: bad settings or a target shorter than 400 ms.
    """

    def __init__(self, target: np.ndarray, sample_rate: float, loudness_weight: float = 0.1,
                 fft_sizes: Sequence[int] = (2048, 512, 128), overlap: float = 0.5):
        if loudness_weight < 0:
            raise ValueError(f"loudness_weight must be >= 0 (per LU), got {loudness_weight}")
        self.target = np.ascontiguousarray(target, dtype=np.float32)
        self.sample_rate = float(sample_rate)
        self.loudness_weight = float(loudness_weight)
        self.fft_sizes = tuple(int(n) for n in fft_sizes)
        if not self.fft_sizes or min(self.fft_sizes) < 2 or not 0.0 <= overlap < 1.0:
            raise ValueError(f"need fft_sizes >= 2 samples and overlap on [0, 1), got {fft_sizes}, {overlap}")
        self.hops = tuple(max(1, int(n * (1 - overlap))) for n in self.fft_sizes)
        self.eps = 1e-7
        self.num_sizes = len(self.fft_sizes)
        self.target_lufs = lufs(self.target, self.sample_rate)
        self._shape = self.target.shape
        # Target magnitudes are computed once; candidates only need their own STFTs.
        self._target_mag = [self._mag(torch.from_numpy(self.target), n, h) for n, h in zip(self.fft_sizes, self.hops)]
        self._target_log = [torch.log(m + self.eps) for m in self._target_mag]

    @staticmethod
    def _mag(x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
        """``|STFT|`` of ``(..., samples)``: Hann window, centred frames, as :class:`MultiResolutionSTFTLoss`."""
        lead = x.shape[:-1]
        spec = torch.stft(x.reshape(-1, x.shape[-1]), n_fft, hop, window=torch.hann_window(n_fft),
                          return_complex=True).abs()
        return spec.unflatten(0, lead) if len(lead) > 1 else spec.reshape(*lead, *spec.shape[-2:])

    def loudness_error(self, output: np.ndarray) -> float:
        """``min(|LUFS(output) - LUFS(target)|, 60)`` in LU (60 when exactly one is silent)."""
        lo = lufs(output, self.sample_rate)
        if math.isinf(lo) and math.isinf(self.target_lufs):
            return 0.0
        if math.isinf(lo) or math.isinf(self.target_lufs):
            return LOUDNESS_CAP_LU
        return min(abs(lo - self.target_lufs), LOUDNESS_CAP_LU)

    @torch.no_grad()
    def __call__(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """Scores ``(k,)`` of ``k`` outputs, each ``(channels, samples)`` shaped like the target."""
        est = torch.from_numpy(np.stack([np.asarray(o, dtype=np.float32) for o in outputs]))
        if tuple(est.shape[1:]) != self._shape:
            raise ValueError(f"outputs have shape {tuple(est.shape[1:])}, the target {self._shape}")
        k = est.shape[0]
        spec = torch.zeros(k, dtype=torch.float64)
        for n, h, tm, tl in zip(self.fft_sizes, self.hops, self._target_mag, self._target_log):
            m = self._mag(est, n, h)
            lin = (m - tm).abs().mean(dim=(1, 2, 3))
            log_ = (torch.log(m + self.eps) - tl).abs().mean(dim=(1, 2, 3))
            spec += (lin + log_).double()
        spec = (spec / self.num_sizes).numpy()
        loud = np.array([self.loudness_error(o) for o in outputs])
        return spec + self.loudness_weight * loud


class EsrObjective:
    """Error-to-signal ratio against one target excerpt, after the chain's latency (lower is better).

    ``J = Σ (t − y)² / Σ t²`` over every channel and sample, both signals first
    filtered by ``1 − coeff z⁻¹`` when ``pre_emphasis`` (Wright, Damskägg & Välimäki,
    DAFx 2019; Wright & Välimäki, ICASSP 2020). Output sample ``n + latency``
    is compared with target sample ``n``; the last ``latency`` target samples are
    not scored. 0 is a perfect match, 1 what silence scores.

    With ``segments`` (the start sample of each of several excerpts laid end to end, the
    first 0), each segment is pre-emphasised from zero state and the score is the mean over
    segments of each segment's ESR, so that a quiet excerpt counts as much as a loud one, as
    in a mean of per-frame losses.

    Args:
        target: ``(channels, samples)`` target excerpt.
        latency_samples: The chain's reported latency, samples (>= 0, shorter than the excerpt).
        pre_emphasis: Filter coefficient (0.95 in Wright et al.); ``None``: plain ESR.
        segments: Increasing segment starts, samples, the first 0; ``None``: one segment.

    Raises:
        ValueError: a negative latency, one as long as the excerpt, a silent target or segment,
            or segments that are not increasing starts inside the excerpt.
    """

    def __init__(self, target: np.ndarray, latency_samples: int = 0, pre_emphasis: float | None = 0.95,
                 segments: Sequence[int] | None = None):
        from scipy.signal import lfilter

        self.latency = int(latency_samples)
        t = np.asarray(target, dtype=np.float64)
        if not 0 <= self.latency < t.shape[-1]:
            raise ValueError(f"latency_samples must be on [0, {t.shape[-1]}) for this excerpt, got {latency_samples}")
        self.coeff = pre_emphasis
        # y[n] = x[n] − coeff·x[n−1] from zero state
        self._emphasise = (lambda x: x) if pre_emphasis is None else (lambda x: lfilter([1.0, -pre_emphasis], [1.0], x))
        n = t.shape[-1] - self.latency
        starts = [0] if segments is None else [int(v) for v in segments]
        if not starts or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= n:
            raise ValueError(f"segments must be increasing starts on [0, {n}) beginning with 0, got {segments}")
        self._bounds = list(zip(starts, starts[1:] + [n]))
        self._target = self._filter(t[:, :n])
        self._energy = np.array([np.sum(self._target[:, a:b] ** 2) for a, b in self._bounds])
        if np.any(self._energy == 0.0):
            raise ValueError("the target excerpt (or one of its segments) is silent: its ESR is undefined")

    def _filter(self, x: np.ndarray) -> np.ndarray:
        """Pre-emphasis of each segment from zero state (segments are separate excerpts)."""
        return np.concatenate([self._emphasise(x[:, a:b]) for a, b in self._bounds], axis=-1)

    def __call__(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """Scores ``(k,)`` of ``k`` outputs, each ``(channels, samples)`` shaped like the target."""
        n = self._target.shape[-1]
        scores = []
        for o in outputs:
            o = np.asarray(o, dtype=np.float64)
            if o.shape[0] != self._target.shape[0] or o.shape[-1] < self.latency + n:
                raise ValueError(f"an output of shape {o.shape} does not cover the target {self._target.shape} "
                                 f"after {self.latency} samples of latency")
            err = (self._target - self._filter(o[:, self.latency : self.latency + n])) ** 2
            scores.append(float(np.mean(np.array([np.sum(err[:, a:b]) for a, b in self._bounds]) / self._energy)))
        return np.array(scores)


@dataclass
class OracleResult:
    """Outcome of one CMA-ES search.

    Attributes:
        params: ``(num_params,)`` best normalized parameters on [0, 1].
        objective: Best objective value on the excerpt.
        default_objective: Objective of the chain's default parameters (first render).
        renders: Chain renders spent (the budget).
        failed_renders: Renders that failed twice and were scored ``FAILED_RENDER_SCORE``.
        generations: Full CMA-ES generations told to the optimizer.
        popsize: Population size.
        search_seconds: Wall time of the search (renders + scoring), seconds.
        render_seconds: Part of it spent waiting for renders, seconds.
        excerpt_start_seconds: Start of the scored excerpt in the track, seconds.
        excerpt_seconds: Length of the scored excerpt, seconds.
        history: Best objective so far after the defaults and after each generation.
        checkpoints: ``{renders: {"params": [...], "objective": float}}``: the best candidate among
            the search's first ``renders`` renders, for each budget asked of :meth:`CmaesOracle.fit`.
        objective_name: The objective searched (:data:`OBJECTIVES`).
    """

    params: np.ndarray
    objective: float
    default_objective: float
    renders: int
    failed_renders: int
    generations: int
    popsize: int
    search_seconds: float
    render_seconds: float
    excerpt_start_seconds: float
    excerpt_seconds: float
    history: list[float] = field(default_factory=list)
    checkpoints: dict = field(default_factory=dict)
    objective_name: str = "mrstft"

    @property
    def renders_per_second(self) -> float:
        """Renders per wall-clock second of search (scoring included)."""
        return self.renders / max(self.search_seconds, 1e-9)

    def to_dict(self) -> dict:
        return {
            "objective": self.objective, "default_objective": self.default_objective, "renders": self.renders,
            "failed_renders": self.failed_renders, "generations": self.generations, "popsize": self.popsize,
            "search_seconds": self.search_seconds, "render_seconds": self.render_seconds,
            "renders_per_second": self.renders_per_second, "excerpt_start_seconds": self.excerpt_start_seconds,
            "excerpt_seconds": self.excerpt_seconds, "history": list(self.history),
            "params": [float(v) for v in self.params], "objective_name": self.objective_name,
            "checkpoints": {str(k): v for k, v in self.checkpoints.items()},
        }


class CmaesOracle:
    """CMA-ES oracle over a chain (see the module docstring); owns a render pool.

    Use as a context manager (or call :meth:`close`) so the workers stop.

    Args:
        chain: The chain searched (its sample rate is the audio's).
        renders: Render budget per track (>= 1).
        sigma0: Initial CMA-ES step size on normalized parameters (> 0). Default 0.1.
        popsize: Population size (>= 2); ``None``: ``4 + floor(3 ln P)``.
        excerpt_seconds: Scored excerpt from the middle of the track, seconds (>= 0.5);
            ``None``: the whole track, no pre-roll.
        preroll_seconds: Unscored lead-in rendered before the excerpt, seconds (>= 0).
        objective: ``"mrstft"`` (MR-STFT + loudness, the default), ``"esr_pre"`` or ``"esr"``
            (:class:`EsrObjective`, after the chain's reported latency).
        loudness_weight: Objective weight per LU of loudness error (>= 0; ``mrstft`` only).
        fft_sizes: MR-STFT FFT sizes of the objective, samples.
        overlap: MR-STFT overlap of the objective, [0, 1).
        num_workers: Render workers, replacing ``render.num_workers`` when given (default:
            ``render.num_workers``, else usable CPU cores; at most ``popsize``).
        seed: Seed of CMA-ES sampling (``cma`` seed ``seed + 1``; cma reads 0 as "random").
        timeout_seconds: Longest one render request may take before its worker is restarted, seconds.
        render: Render engine (:class:`~deepafx.workers.RenderConfig`, the config's ``render:`` section;
            default: worker processes on this machine), e.g. ``RenderConfig(engine="ray", address="auto")``.

    Raises:
        ValueError: bad settings, or a chain with fewer than 2 learned parameters.
        deepafx.workers.WorkerError: the chain cannot be built in a worker.
    """

    def __init__(self, chain: ChainSpec, renders: int = 60, sigma0: float = 0.1, popsize: int | None = None,
                 excerpt_seconds: float | None = 10.0, preroll_seconds: float = 1.0, loudness_weight: float = 0.1,
                 fft_sizes: Sequence[int] = (2048, 512, 128), overlap: float = 0.5, num_workers: int | None = None,
                 seed: int = 0, timeout_seconds: float = 120.0, render: RenderConfig | None = None,
                 objective: str = "mrstft"):
        if int(renders) < 1:
            raise ValueError(f"renders must be >= 1 (the render budget per track), got {renders}")
        if not sigma0 > 0:
            raise ValueError(f"sigma0 must be > 0 (normalized units), got {sigma0}")
        if excerpt_seconds is not None and excerpt_seconds < 0.5:
            raise ValueError(f"excerpt_seconds must be >= 0.5 s (loudness needs 400 ms blocks) or None (the whole "
                             f"track), got {excerpt_seconds}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.objective = objective
        if preroll_seconds < 0:
            raise ValueError(f"preroll_seconds must be >= 0 s, got {preroll_seconds}")
        self.chain = chain
        self.table = chain.param_table
        self.num_params = len(self.table)
        if self.num_params < 2:
            raise ValueError(f"CMA-ES (the cma package) needs at least 2 parameters; chain {chain.name!r} learns "
                             f"{self.num_params}")
        self.defaults = self.table.defaults_normalized()
        self.popsize = int(popsize) if popsize is not None else 4 + int(3 * math.log(self.num_params))
        if self.popsize < 2:
            raise ValueError(f"popsize must be >= 2, got {popsize}")
        self.renders, self.sigma0 = int(renders), float(sigma0)
        self.excerpt_seconds = None if excerpt_seconds is None else float(excerpt_seconds)
        self.preroll_seconds = float(preroll_seconds)
        self.loudness_weight, self.fft_sizes, self.overlap = float(loudness_weight), tuple(fft_sizes), float(overlap)
        self.seed = int(seed)
        render = render or RenderConfig()
        workers = rank_workers(num_workers if num_workers is not None else render.num_workers)
        self.num_slots = min(workers, self.popsize)  # one slot per worker
        self.instances_per_slot = int(math.ceil(self.popsize / self.num_slots))
        self.pool = render.build(chain, self.num_slots, self.instances_per_slot, num_workers=self.num_slots,
                                 timeout_seconds=timeout_seconds)

    # -- lifecycle --------------------------------------------------------------
    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> "CmaesOracle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- rendering --------------------------------------------------------------
    def render_track(self, audio: np.ndarray, params: np.ndarray) -> np.ndarray:
        """Render a whole track with static parameters from reset plugin state.

        Args:
            audio: ``(channels, samples)`` float32 at the chain's rate.
            params: ``(num_params,)`` normalized on [0, 1].

        Returns:
            ``(channels_out, samples)`` float32.
        """
        self.pool.reset([0])
        return self.pool.render([RenderRequest(0, np.ascontiguousarray(audio, np.float32),
                                               np.asarray(params, np.float64)[None])])[0][0]

    def _render_many(self, audio: np.ndarray, candidates: np.ndarray) -> tuple[list[np.ndarray | None], int]:
        """Render ``(k, P)`` candidates (``k <= popsize``) from reset state; ``None`` where a render failed."""
        k = len(candidates)
        by_slot: dict[int, list[int]] = {}
        for i in range(k):
            by_slot.setdefault(i % self.num_slots, []).append(i)
        try:
            self.pool.reset()
            reqs = [RenderRequest(s, audio, candidates[idx]) for s, idx in by_slot.items()]
            outs = self.pool.render(reqs)
            result: list[np.ndarray | None] = [None] * k
            for (s, idx), arr in zip(by_slot.items(), outs):
                for r, i in enumerate(idx):
                    result[i] = arr[r]
            return result, 0
        except PluginError as exc:
            log.warning("oracle: a render batch failed (%s); rendering its %d candidates one by one", exc, k)
        result, failed = [], 0
        for i in range(k):
            try:
                self.pool.reset([0])
                result.append(self.pool.render([RenderRequest(0, audio, candidates[i : i + 1])])[0][0])
            except PluginError as exc:
                log.warning("oracle: candidate %d failed again (%s); scored %g", i, exc, FAILED_RENDER_SCORE)
                result.append(None)
                failed += 1
        return result, failed

    # -- search -----------------------------------------------------------------
    def fit(self, audio: np.ndarray, target: np.ndarray, checkpoints: Sequence[int] = (),
            segments: Sequence[int] | None = None, start: np.ndarray | None = None) -> OracleResult:
        """Search static parameters that make the chain's output match ``target``.

        Args:
            audio: ``(channels, samples)`` input at the chain's rate.
            target: ``(channels_out, samples)`` target, time-aligned with ``audio``
                (same length; the longer one is cut).
            checkpoints: Render counts (each on ``[1, renders]``) at which to record the best
                candidate so far (:attr:`OracleResult.checkpoints`; the module docstring).
            segments: Starts of excerpts laid end to end in ``audio`` (ESR objectives, whole-track
                mode only): the score is the mean of their ESRs (:class:`EsrObjective`).
            start: Normalized parameters ``(num_params,)`` on [0, 1] where the search's mean starts
                (e.g. a static preset found on training pieces); ``None``: the chain's defaults. Both the
                defaults and ``start`` are rendered first, so the result is never worse than either on
                the objective (``default_objective`` stays the defaults' score).

        Returns:
            :class:`OracleResult` (``params`` are the best found on the excerpt).

        Raises:
            ValueError: mismatched channel counts, a track shorter than 0.5 s, a checkpoint
                outside ``[1, renders]``, (ESR objectives) a silent target, ``segments`` with
                an MR-STFT objective or an excerpt, or a ``start`` of the wrong length or off [0, 1].
        """
        import cma

        if start is not None:
            start = np.asarray(start, dtype=np.float64)
            if start.shape != self.defaults.shape or not np.all(np.isfinite(start)) or start.min() < 0 or start.max() > 1:
                raise ValueError(f"start must be {self.defaults.shape[0]} normalized values on [0, 1], got shape "
                                 f"{start.shape}")

        audio = np.ascontiguousarray(audio, dtype=np.float32)
        target = np.ascontiguousarray(target, dtype=np.float32)
        n = min(audio.shape[1], target.shape[1])
        sr = self.chain.sample_rate
        if n < int(0.5 * sr):
            raise ValueError(f"the oracle needs at least 0.5 s of audio, got {n / sr:.3f} s")
        marks = sorted({int(c) for c in checkpoints})
        if marks and not 1 <= marks[0] <= marks[-1] <= self.renders:
            raise ValueError(f"checkpoints must be render counts on [1, {self.renders}], got {list(checkpoints)}")
        if segments is not None and (self.objective == "mrstft" or self.excerpt_seconds is not None):
            raise ValueError("segments need an ESR objective and whole-track scoring (excerpt_seconds=None)")
        if self.excerpt_seconds is None:
            r0, s0, stop = 0, 0, n
        else:
            r0, s0, stop = middle_excerpt(n, int(round(self.excerpt_seconds * sr)),
                                          int(round(self.preroll_seconds * sr)))
        x = np.ascontiguousarray(audio[:, r0:stop])
        skip = s0 - r0
        if self.objective == "mrstft":
            objective = OracleObjective(target[:, s0:stop], sr, self.loudness_weight, self.fft_sizes, self.overlap)
        else:
            objective = EsrObjective(target[:, s0:stop], self.pool.latency_samples,
                                     0.95 if self.objective == "esr_pre" else None, segments=segments)
        trace: list[tuple[float, np.ndarray]] = []  # every render's score and candidate, in order

        t_start = time.perf_counter()
        render_time = 0.0
        used = failed = generations = 0

        def evaluate(cands: np.ndarray) -> np.ndarray:
            nonlocal render_time, used, failed
            cands = np.clip(np.asarray(cands, dtype=np.float64), 0.0, 1.0)
            t0 = time.perf_counter()
            outs, nfail = self._render_many(x, cands)
            render_time += time.perf_counter() - t0
            used += len(cands)
            failed += nfail
            scores = np.full(len(cands), FAILED_RENDER_SCORE)
            ok = [i for i, o in enumerate(outs) if o is not None]
            if ok:
                if outs[ok[0]].shape[0] != target.shape[0]:
                    raise ValueError(
                        f"the chain outputs {outs[ok[0]].shape[0]} channel(s) but the target has {target.shape[0]}"
                    )
                scores[ok] = np.minimum(objective([outs[i][:, skip:] for i in ok]), FAILED_RENDER_SCORE)
            trace.extend(zip(scores.tolist(), cands))
            return scores

        best_x = self.defaults.copy()
        best_f = float(evaluate(best_x[None])[0])
        default_f = best_f
        mean0 = self.defaults
        if start is not None:
            mean0 = start
            f0 = float(evaluate(start[None])[0])
            if f0 < best_f:
                best_f, best_x = f0, start.copy()
        history = [best_f]
        saved_rng = np.random.get_state()  # cma seeds numpy's global generator; restore it afterwards
        try:
            es = cma.CMAEvolutionStrategy(
                mean0.tolist(), self.sigma0,
                {"bounds": [0.0, 1.0], "popsize": self.popsize, "seed": self.seed + 1, "verbose": -9,
                 "maxfevals": float("inf"), "tolfun": 0.0, "tolx": 0.0, "tolfunhist": 0.0, "tolstagnation": 10**9},
            )
            while self.renders - used >= self.popsize:
                xs = es.ask()
                fs = evaluate(np.array(xs))
                es.tell(xs, fs.tolist())
                generations += 1
                i = int(np.argmin(fs))
                if fs[i] < best_f:
                    best_f, best_x = float(fs[i]), np.clip(np.array(xs[i]), 0.0, 1.0)
                history.append(best_f)
                log.debug("oracle generation %d: min %.4f, best %.4f, sigma %.3f", generations, fs[i], best_f, es.sigma)
            left = self.renders - used
            if left > 0:
                xs = es.ask(number=left)
                fs = evaluate(np.array(xs))
                i = int(np.argmin(fs))
                if fs[i] < best_f:
                    best_f, best_x = float(fs[i]), np.clip(np.array(xs[i]), 0.0, 1.0)
                history.append(best_f)
        finally:
            np.random.set_state(saved_rng)
        recorded = {}
        for c in marks:
            k = int(np.argmin([f for f, _ in trace[:c]]))
            recorded[c] = {"objective": float(trace[k][0]), "params": [float(v) for v in trace[k][1]]}
        return OracleResult(
            params=best_x, objective=best_f, default_objective=default_f, renders=used, failed_renders=failed,
            generations=generations, popsize=self.popsize, search_seconds=time.perf_counter() - t_start,
            render_seconds=render_time, excerpt_start_seconds=s0 / sr, excerpt_seconds=(stop - s0) / sr, history=history,
            checkpoints=recorded, objective_name=self.objective,
        )


def cmaes_oracle(chain: ChainSpec, audio: np.ndarray, target: np.ndarray, **kwargs) -> OracleResult:
    """One-shot :meth:`CmaesOracle.fit` (starts and stops its own workers).

    Args:
        chain: The chain searched.
        audio: ``(channels, samples)`` input at the chain's rate.
        target: ``(channels_out, samples)`` time-aligned target.
        **kwargs: :class:`CmaesOracle` settings (``renders``, ``sigma0`` …).

    Returns:
        :class:`OracleResult`.
    """
    with CmaesOracle(chain, **kwargs) as oracle:
        return oracle.fit(audio, target)


def static_preset(chain: ChainSpec, tracks: Sequence[tuple[np.ndarray, np.ndarray]], renders: int = 300,
                  seconds: float = 24.0, objective: str = "esr_pre", seed: int = 0, sigma0: float = 0.1,
                  render: RenderConfig | None = None, num_workers: int | None = None,
                  timeout_seconds: float = 120.0) -> OracleResult:
    """One static preset for many tracks: CMA-ES (:class:`CmaesOracle`) on their middle excerpts laid end to end.

    Each of the ``tracks`` gives its middle ``seconds / len(tracks)`` (at least 0.5 s, the whole
    track when shorter); the excerpts are rendered as one signal from reset plugin state (the
    seams are not scored apart), and the score is, for the ESR objectives, the mean of the
    excerpts' ESRs (:class:`EsrObjective` with ``segments``), for ``"mrstft"`` the objective of
    the whole concatenation. It is the best single setting a user could dial for the material —
    a start for a trained model (``train.start: static``) and a non-adaptive baseline.

    Args:
        chain: The chain searched (its sample rate is the tracks').
        tracks: ``(input, target)`` pairs, each ``(channels, samples)`` float32.
        renders: Render budget (>= 1).
        seconds: Total seconds of audio per render, split evenly over the tracks (> 0).
        objective: One of :data:`OBJECTIVES`.
        seed, sigma0, render, num_workers, timeout_seconds: As in :class:`CmaesOracle`.

    Returns:
        :class:`OracleResult` (``params``: the preset, normalized on [0, 1]).

    Raises:
        ValueError: no tracks, ``seconds <= 0``, or what :meth:`CmaesOracle.fit` raises.
    """
    if not tracks:
        raise ValueError("static_preset needs at least one (input, target) track")
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    sr = chain.sample_rate
    each = max(int(round(seconds / len(tracks) * sr)), int(0.5 * sr))
    xs, ts, starts, at = [], [], [], 0
    for x, t in tracks:
        n = min(x.shape[-1], t.shape[-1])
        _, a, b = middle_excerpt(n, each, 0)
        xs.append(x[:, a:b])
        ts.append(t[:, a:b])
        starts.append(at)
        at += b - a
    audio, target = np.concatenate(xs, axis=1), np.concatenate(ts, axis=1)
    with CmaesOracle(chain, renders=renders, sigma0=sigma0, excerpt_seconds=None, objective=objective, seed=seed,
                     render=render, num_workers=num_workers, timeout_seconds=timeout_seconds) as oracle:
        return oracle.fit(audio, target, segments=None if objective == "mrstft" else starts)
