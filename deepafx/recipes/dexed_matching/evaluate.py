"""Evaluation of the Dexed sound-matching recipe (``deepafx evaluate --config ... --checkpoint RUN``).

Methods (rows), each on held-out in-domain factory presets and on
out-of-domain sampled-instrument notes of held-out GM programs (columns):

* ``retrieval`` — nearest training preset by log-mel distance, rendered as is;
* ``ploss``, ``synth``, ``real`` — the estimator after each training stage
  (DiffSynth's P-loss, Synth and Real models);
* ``voice`` — with ``model.voice_classifier``: the voice classifier of
  ``voice.pt``, i.e. the training voice it chooses, intact (network alone);
* ``<method>+refine`` — each of those followed by test-time SPSA through Dexed
  on the target's multi-scale spectral loss (``refine_renders`` renders, the
  point with the lowest LSD kept: ``evaluate.refine_keep``);
* ``cmaes`` — the gradient-free reference: per-target CMA-ES from the mean
  training preset with the same render budget.

Metrics: log-spectral distortion ``lsd`` (dB), multi-scale spectral loss
``mss`` (:func:`deepafx.metrics.mrstft_distance`), ``mfcc_l1``; in-domain also
``param_l1`` (mean absolute error of the numerical parameters, normalized,
transpose excluded) and ``discrete_accuracy`` (fraction of the 54 categorical
parameters exactly right); ``seconds_per_sound`` (wall time to produce the
preset, one core for the searches). Writes ``results.json`` (form
``{"models": {method: {"in_domain": {...}, "out_of_domain": {...}}}, ...}``),
``results.md`` (a table like DiffSynth's) and ``details.json`` (per target).

Novelty: each held-out sound carries its novelty, the LSD (dB) to the nearest
training factory voice (computed when the dataset is built,
:func:`~deepafx.recipes.dexed_matching.data.novelty`), as ``novelty_db`` in
``details.json``. Per domain the evaluated sounds are cut into novelty terciles
(``low`` ≤ the first tercile < ``mid`` ≤ the second < ``high``; edges in
``results.json["novelty"]``), and every method's LSD and the paired
differences are also reported per tercile (``by_novelty``, ``paired_by_novelty``
and a second table in ``results.md``).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from deepafx.metrics import bootstrap_ci, ndb, note_pitch_hz, paired_bootstrap_ci, pitch_error_cents
from deepafx.recipes.dexed_matching.data import RecipeData
from deepafx.recipes.dexed_matching.model import DexedEstimator, predict, predict_voice
from deepafx.recipes.dexed_matching.presets import set_transpose
from deepafx.recipes.dexed_matching.search import RetrievalIndex, cmaes_search, spsa_refine
from deepafx.recipes.dexed_matching.train import ensure_dataset, load_estimator
from deepafx.hosts.dexed_host import DexedRenderer, dexed_param_table

MODEL_STAGES = ("ploss", "synth", "real")
#: Rows produced by a network alone (compared with retrieval in the paired differences).
NETWORK_METHODS = ("voice", *MODEL_STAGES)
DOMAINS = ("in_domain", "out_of_domain")


@dataclass
class EvalConfig:
    """The ``evaluate:`` section.

    Args:
        num_in_domain: Held-out factory presets evaluated (``None``: all of the test split).
        num_out_of_domain: Held-out sampled-instrument notes evaluated (``None``: all).
        refine_renders: Render budget of test-time SPSA and of CMA-ES, per target.
        refine_learning_rate: Adam step size of the refinement (normalized units).
        refine_epsilon: SPSA perturbation of the refinement.
        cmaes_sigma: Initial CMA-ES step size (normalized units).
        num_workers: Processes running the per-target searches (one torch thread each).
        seed: Seed of the target choice and the searches.
        refine_methods: Starting points refined (``None``: every method; names
            such as ``retrieval``, ``retrieval_corpus``, ``ploss``, ``synth``, ``real``).
        refine_keep: Metric the refinement and CMA-ES keep their best rendered point by:
            ``"lsd"`` (default; the table's log-spectral distortion) or ``"mss"`` (the spectral loss
            they descend; how results before this option were made).
        cmaes: Run the CMA-ES reference.
        ndb_bins: ``K`` of the NDB metric (``None``: one bin per 6 targets, at least 2).
        pitch_tolerance_cents: A matched note's pitch is right within this many cents.
    """

    num_in_domain: int | None = 16
    num_out_of_domain: int | None = 16
    refine_renders: int = 1000
    refine_learning_rate: float = 1e-3
    refine_epsilon: float = 0.01
    cmaes_sigma: float = 0.2
    num_workers: int = 2
    seed: int = 0
    refine_methods: list[str] | None = None
    refine_keep: str = "lsd"
    cmaes: bool = True
    ndb_bins: int | None = None
    pitch_tolerance_cents: float = 50.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "EvalConfig":
        from deepafx.config import bind

        from deepafx.recipes.dexed_matching.search import KEEP_METRICS

        cfg = bind(cls, d, "evaluate")
        if cfg.refine_renders < 0 or cfg.num_workers < 1:
            raise ValueError("refine_renders must be >= 0 and num_workers >= 1")
        if cfg.refine_keep not in KEEP_METRICS:
            raise ValueError(f"evaluate.refine_keep must be one of {KEEP_METRICS}, got {cfg.refine_keep!r}")
        return cfg


def _pick(n_total: int, n: int | None, rng: np.random.Generator) -> np.ndarray:
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(rng.choice(n_total, size=int(n), replace=False))


# --------------------------------------------------------------------------- worker side

_WORKER: dict[str, Any] = {}


def _init_worker(renderer_args: tuple) -> None:
    torch.set_num_threads(1)
    _WORKER["renderer"] = DexedRenderer(*renderer_args)


def _run_search(job: tuple) -> tuple:
    key, kind, target, x0, budget, lr, eps, sigma, seed, keep = job
    r = _WORKER["renderer"]
    if kind == "refine":
        res = spsa_refine(target, x0, r, budget, lr, eps, seed=seed, keep=keep)
    else:
        res = cmaes_search(target, x0, r, budget, sigma, seed=seed, keep=keep)
    return key, res.x, res.seconds, res.renders


# --------------------------------------------------------------------------- metrics


def sound_metrics(est: np.ndarray, ref: np.ndarray, sample_rate: float) -> dict[str, float]:
    """``lsd`` (dB), ``mss`` and ``mfcc_l1`` of ``est`` against ``ref`` (both ``(channels, samples)``)."""
    from deepafx.metrics import lsd_db, mfcc_l1, mrstft_distance

    return {
        "lsd": lsd_db(est, ref),
        "mss": mrstft_distance(est, ref),
        "mfcc_l1": mfcc_l1(est, ref, sample_rate),
    }


def param_metrics(x_est: np.ndarray, x_true: np.ndarray, layout) -> dict[str, float]:
    """``param_l1`` over numerical parameters (transpose excluded) and ``discrete_accuracy``."""
    t = dexed_param_table().index("transpose_semitones")
    num = [i for i in layout.numeric_indices if i != t]
    l1 = float(np.mean(np.abs(x_est[num] - x_true[num])))
    acc = [
        round(float(x_est[i]) * (n - 1)) == round(float(x_true[i]) * (n - 1))
        for i, n in zip(layout.discrete_indices, layout.discrete_counts)
    ]
    return {"param_l1": l1, "discrete_accuracy": float(np.mean(acc))}


# --------------------------------------------------------------------------- main


def evaluate_from_config(
    config,
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    split: str = "test",
    data_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Evaluate every method and write ``results.json``, ``results.md``, ``details.json``.

    Args:
        config: Bound recipe config (:class:`~deepafx.recipes.RecipeConfig`) or a raw mapping.
        checkpoint_dir: Training run folder (or its ``checkpoints/``) holding
            ``ploss.pt``, ``synth.pt``, ``real.pt``; missing ones are skipped with a note.
        out_dir: Where the results go (created).
        split: Held-out split evaluated, ``"test"`` (default) or ``"valid"``
            (factory presets and GM programs never seen in training).
        data_dir: Dataset folder (default ``data/dexed_matching/<config name>``, as ``deepafx train``).
        progress: Print progress lines.

    Returns:
        Path of ``results.json``.

    Raises:
        FileNotFoundError: no checkpoint at all in ``checkpoint_dir``.
    """
    say = print if progress else (lambda *a, **k: None)
    if split not in ("test", "valid"):
        raise ValueError(f"split must be 'test' or 'valid' for dexed_matching (training presets are not held out), got {split!r}")
    from deepafx.recipes import default_data_dir, get_recipe
    from deepafx.runs import RunLayout

    if isinstance(config, Mapping):
        config = get_recipe("dexed_matching").bind(config)
    ecfg = config.evaluate
    given = Path(checkpoint_dir)
    ckpt_dir = RunLayout(given).checkpoints if (given / "checkpoints").is_dir() else given
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data: RecipeData = ensure_dataset(config, Path(data_dir) if data_dir is not None else default_data_dir(config), progress)
    dcfg = data.config
    renderer = dcfg.renderer()
    rng = np.random.default_rng(ecfg.seed)

    # targets
    in_idx = _pick(len(data.x[split]), ecfg.num_in_domain, rng)
    ood_idx = _pick(len(data.ood_audio[split]), ecfg.num_out_of_domain, rng)
    targets: dict[str, dict[str, np.ndarray]] = {
        "in_domain": {
            "x": data.x[split][in_idx],
            "pitch": data.pitch[split][in_idx],
            "audio": renderer.render_batch(data.x[split][in_idx]),
            "novelty": _novelty_of(data, "in_domain", split, in_idx),
        },
        "out_of_domain": {
            "pitch": data.ood_pitch[split][ood_idx],
            "audio": data.ood_audio[split][ood_idx],
            "program": data.ood_program[split][ood_idx],
            "novelty": _novelty_of(data, "out_of_domain", split, ood_idx),
        },
    }
    novelty_bins = {dom: novelty_terciles(targets[dom]["novelty"]) for dom in DOMAINS if targets[dom]["novelty"] is not None}
    say(f"evaluating on {len(in_idx)} in-domain presets and {len(ood_idx)} out-of-domain notes")

    # starting points
    starts: dict[str, dict[str, np.ndarray]] = {}
    seconds: dict[str, dict[str, np.ndarray]] = {}
    index = RetrievalIndex(data.x["train"], renderer)
    for dom in DOMAINS:
        for p in np.unique(targets[dom]["pitch"]):
            index.database(int(p))  # warm the per-pitch cache (one-off cost, not per sound)
    starts["retrieval"], seconds["retrieval"] = {}, {}
    for dom in DOMAINS:
        xs, ts = [], []
        for a, p in zip(targets[dom]["audio"], targets[dom]["pitch"]):
            t0 = time.perf_counter()
            xs.append(index.retrieve(a, int(p)))
            ts.append(time.perf_counter() - t0)
        starts["retrieval"][dom], seconds["retrieval"][dom] = np.stack(xs), np.array(ts)
    corpus_dir = Path(data_dir) if data_dir is not None else default_data_dir(config)
    if dcfg.corpus_size > 0 and (corpus_dir / "corpus" / "meta.json").exists():
        from deepafx.recipes.dexed_matching.corpus import Corpus
        from deepafx.recipes.dexed_matching.search import CorpusIndex

        cindex = CorpusIndex(Corpus(corpus_dir / "corpus"))
        starts["retrieval_corpus"], seconds["retrieval_corpus"] = {}, {}
        both = np.concatenate([targets[d]["audio"] for d in DOMAINS])
        t0 = time.perf_counter()
        found = cindex.retrieve(both)
        per = (time.perf_counter() - t0) / max(len(both), 1)
        n_in = len(targets["in_domain"]["audio"])
        for dom, part in (("in_domain", found[:n_in]), ("out_of_domain", found[n_in:])):
            starts["retrieval_corpus"][dom] = set_transpose(part, targets[dom]["pitch"] - 60)
            seconds["retrieval_corpus"][dom] = np.full(len(part), per)
        say(f"corpus retrieval over {len(cindex.corpus.valid_index)} presets: {per:.2f} s per sound")
    layout = None
    notes: list[str] = []
    stage_pairs = STAGE_PAIRS
    for stage in ("voice", *MODEL_STAGES):
        path = ckpt_dir / f"{stage}.pt"
        if not path.exists():
            if stage != "voice":
                notes.append(f"{stage}: no checkpoint {path}, skipped")
            continue
        model, ckpt = load_estimator(path)
        layout = model.layout
        if stage == "synth":  # the network the spectral stages start from (train.spectral_start)
            stage_pairs = (("synth", model.start), ("real", "synth"))
        if stage == "voice":  # the classifier's choice; this checkpoint's parameter heads are untrained
            estimators = {stage: lambda a, p, model=model, v=ckpt["voice_x"]: predict_voice(model, v, a, p)}
        else:
            estimators = {stage: lambda a, p, model=model: predict(model, a, p)}
        for method, estimate in estimators.items():
            starts[method], seconds[method] = {}, {}
            for dom in DOMAINS:
                a, p = targets[dom]["audio"], targets[dom]["pitch"]
                estimate(a[:1], p[:1])  # warm-up
                t0 = time.perf_counter()
                starts[method][dom] = np.stack([estimate(a[i : i + 1], p[i : i + 1])[0] for i in range(len(a))])
                seconds[method][dom] = np.full(len(a), (time.perf_counter() - t0) / max(len(a), 1))
    if layout is None and not any((ckpt_dir / f"{s}.pt").exists() for s in MODEL_STAGES):
        raise FileNotFoundError(f"no checkpoint (ploss.pt, synth.pt, real.pt) in {ckpt_dir}; train first with `deepafx train`")
    if layout is None:
        layout = DexedEstimator(len(dcfg.notes), dcfg.sample_rate).layout

    # per-target searches
    mean_x = data.x["train"].mean(axis=0)
    jobs = []
    if ecfg.refine_renders > 0:
        for method in [m for m in starts if ecfg.refine_methods is None or m in ecfg.refine_methods]:
            for dom in DOMAINS:
                for i, x0 in enumerate(starts[method][dom]):
                    jobs.append(((f"{method}+refine", dom, i), "refine", targets[dom]["audio"][i], x0, ecfg.refine_renders,
                                 ecfg.refine_learning_rate, ecfg.refine_epsilon, ecfg.cmaes_sigma, ecfg.seed + i,
                                 ecfg.refine_keep))
        for dom in DOMAINS if ecfg.cmaes else ():
            for i, p in enumerate(targets[dom]["pitch"]):
                x0 = set_transpose(mean_x, int(p) - 60)
                jobs.append((("cmaes", dom, i), "cmaes", targets[dom]["audio"][i], x0, ecfg.refine_renders,
                             ecfg.refine_learning_rate, ecfg.refine_epsilon, ecfg.cmaes_sigma, ecfg.seed + i,
                             ecfg.refine_keep))
    if jobs:
        say(f"running {len(jobs)} per-target searches ({ecfg.refine_renders} renders each) on {ecfg.num_workers} worker(s)")
        t0 = time.perf_counter()
        rargs = (dcfg.sample_rate, dcfg.notes, dcfg.note_duration_seconds, dcfg.duration_seconds)
        results = []
        if ecfg.num_workers > 1:
            ctx = mp.get_context("spawn")
            with ctx.Pool(ecfg.num_workers, initializer=_init_worker, initargs=(rargs,)) as pool:
                for k, res in enumerate(pool.imap_unordered(_run_search, jobs)):
                    results.append(res)
                    if progress and (k + 1) % max(1, len(jobs) // 10) == 0:
                        say(f"  {k + 1}/{len(jobs)} searches done ({time.perf_counter() - t0:.0f} s)")
        else:
            _init_worker(rargs)
            results = [_run_search(j) for j in jobs]
        for (method, dom, i), x, secs, _ in results:
            starts.setdefault(method, {}).setdefault(dom, np.zeros((len(targets[dom]["audio"]), x.shape[0])))[i] = x
            base = method.split("+")[0]
            seconds.setdefault(method, {}).setdefault(dom, np.zeros(len(targets[dom]["audio"])))[i] = secs + (
                seconds[base][dom][i] if base in seconds and method != "cmaes" else 0.0
            )

    # metrics
    tol = float(ecfg.pitch_tolerance_cents)
    results_json: dict[str, Any] = {"models": {}}
    details: dict[str, Any] = {}
    renders: dict[str, dict[str, np.ndarray]] = {}
    target_hz = {dom: [np.array([note_pitch_hz(ch, dcfg.sample_rate) for ch in np.atleast_2d(a)])
                       for a in targets[dom]["audio"]] for dom in DOMAINS}
    for method, per_dom in starts.items():
        results_json["models"][method] = {}
        details[method] = {}
        renders[method] = {}
        for dom, xs in per_dom.items():
            rows = []
            ys = renderer.render_batch(xs)
            renders[method][dom] = ys
            for i, (x, y) in enumerate(zip(xs, ys)):
                m = sound_metrics(y, targets[dom]["audio"][i], dcfg.sample_rate)
                if dom == "in_domain":
                    m.update(param_metrics(x, targets[dom]["x"][i], layout))
                cents = pitch_error_cents(y, targets[dom]["audio"][i], dcfg.sample_rate, ref_hz=target_hz[dom][i])
                ok = np.isfinite(cents)
                m["pitch_correct"] = float(np.mean(cents[ok] <= tol)) if ok.any() else float("nan")
                m["seconds"] = float(seconds[method][dom][i])
                if dom in novelty_bins:
                    m["novelty_db"] = float(targets[dom]["novelty"][i])
                    m["novelty_bin"] = novelty_bins[dom]["bins"][i]
                rows.append(m)
            agg = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k not in ("seconds", "novelty_bin")}
            lsd = [r["lsd"] for r in rows]
            agg["lsd_ci"] = list(bootstrap_ci(lsd, seed=ecfg.seed))
            agg["seconds_per_sound"] = float(np.mean([r["seconds"] for r in rows]))
            agg["n"] = len(rows)
            if dom in novelty_bins:
                agg["by_novelty"] = {b: _lsd_summary([r["lsd"] for r in rows if r["novelty_bin"] == b], ecfg.seed)
                                     for b in NOVELTY_BINS}
            results_json["models"][method][dom] = agg
            details[method][dom] = rows
    # NDB: k-means bins of the targets' log-mel spectrograms, matches assigned to them
    for dom in DOMAINS:
        tf = _ndb_features(targets[dom]["audio"], dcfg.sample_rate)
        k = ecfg.ndb_bins or max(2, len(tf) // 6)
        if len(tf) < 2 or k > len(tf):
            continue
        for method in renders:
            if dom in renders[method]:
                r = ndb(tf, _ndb_features(renders[method][dom], dcfg.sample_rate), k, seed=ecfg.seed)
                results_json["models"][method][dom].update({"ndb": r["ndb"], "ndb_k": r["k"]})
    results_json["paired"] = _paired_comparisons(details, seed=ecfg.seed, stage_pairs=stage_pairs)
    if novelty_bins:
        results_json["novelty"] = {dom: {"edges_db": b["edges_db"], "counts": {k: b["bins"].count(k) for k in NOVELTY_BINS},
                                         "median_db": float(np.median(targets[dom]["novelty"]))}
                                   for dom, b in novelty_bins.items()}
        results_json["paired_by_novelty"] = _paired_comparisons(details, seed=ecfg.seed, by_novelty=True,
                                                                stage_pairs=stage_pairs)
    else:
        notes.append("no novelty in this dataset (built before DATASET_VERSION 2): no novelty bins")
    results_json["settings"] = {
        "refine_renders": ecfg.refine_renders,
        "refine_learning_rate": ecfg.refine_learning_rate,
        "refine_keep": ecfg.refine_keep,
        "data_split": dcfg.split,
        "group_threshold": dcfg.group_threshold,
        "cmaes_sigma": ecfg.cmaes_sigma,
        "num_in_domain": int(len(in_idx)),
        "num_out_of_domain": int(len(ood_idx)),
        "sample_rate": dcfg.sample_rate,
        "notes": [list(n) for n in dcfg.notes],
        "checkpoints": str(ckpt_dir),
        "split": split,
        "notes_on_run": notes,
    }
    (out / "results.json").write_text(json.dumps(results_json, indent=2))
    (out / "details.json").write_text(json.dumps(details, indent=2))
    table = results_table(results_json)
    (out / "results.md").write_text(table + "\n")
    say(table)
    return out / "results.json"


#: Novelty terciles, least novel first.
NOVELTY_BINS = ("low", "mid", "high")


def _novelty_of(data: RecipeData, domain: str, split: str, index: np.ndarray) -> np.ndarray | None:
    """Novelty (dB) of the evaluated sounds ``index`` of ``split``, or ``None`` if the dataset has none."""
    values = data.novelty.get(domain, {}).get(split)
    return None if values is None else np.asarray(values, dtype=np.float64)[index]


def novelty_terciles(novelty_db: np.ndarray) -> dict[str, Any]:
    """Cut sounds into novelty terciles.

    Args:
        novelty_db: ``(M,)`` LSD in dB of each sound to its nearest training voice.

    Returns:
        ``{"edges_db": [t1, t2], "bins": [bin name per sound]}``: ``"low"`` for ``v ≤ t1``, ``"mid"`` for
        ``t1 < v ≤ t2``, ``"high"`` above, ``t1``/``t2`` the 1/3 and 2/3 quantiles (linear interpolation);
        with ``M < 3`` every sound is ``"low"`` or ``"high"`` around the median.

    Raises:
        ValueError: empty input or NaN/Inf.
    """
    v = np.asarray(novelty_db, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0 or not np.all(np.isfinite(v)):
        raise ValueError(f"novelty must be a non-empty 1-D array of finite dB values, got shape {v.shape}")
    t1, t2 = (float(q) for q in np.quantile(v, [1 / 3, 2 / 3]))
    if len(v) < 3:
        t1 = t2 = float(np.median(v))
    bins = ["low" if x <= t1 else "mid" if x <= t2 else "high" for x in v]
    return {"edges_db": [t1, t2], "bins": bins}


def _lsd_summary(values: list[float], seed: int) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "lsd": float(np.mean(values)), "lsd_ci": list(bootstrap_ci(values, seed=seed))}


def _ndb_features(audio: np.ndarray, sample_rate: float) -> np.ndarray:
    """Flattened log-mel spectrograms ``(M, D)`` of ``(M, notes, samples)`` audio (32 bands, 2048/1024), the space
    NDB bins live in."""
    from deepafx.features import LogMel

    front = LogMel(sample_rate, n_fft=2048, hop_length=1024, n_mels=32, normalize="none")
    with torch.no_grad():
        f = front(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)))
    return f.reshape(len(audio), -1).double().numpy()


def best_network(details: Mapping[str, Any], suffix: str = "") -> str | None:
    """The network row (``voice``/``ploss``/``synth``/``real`` + ``suffix``) with the lowest mean in-domain LSD."""
    cands = [m + suffix for m in NETWORK_METHODS if m + suffix in details and "in_domain" in details[m + suffix]]
    if not cands:
        return None
    return min(cands, key=lambda m: np.mean([r["lsd"] for r in details[m]["in_domain"]]))


#: Each stage trained through the synth against the network it starts from (the Synth stage continues the
#: P-loss network through the cross-fade, or with ``train.spectral_start: voice`` the ``voice`` row; the Real
#: stage continues the Synth stage's).
STAGE_PAIRS = (("synth", "ploss"), ("real", "synth"))


def _paired_comparisons(details: Mapping[str, Any], seed: int = 0, by_novelty: bool = False,
                        stage_pairs: Sequence[tuple[str, str]] = STAGE_PAIRS) -> list[dict[str, Any]]:
    """Per-sound paired LSD differences with 95 % bootstrap intervals: the best network − retrieval (over the
    training voices and over the corpus, alone and refined), and each end-to-end stage − the network it starts
    from (``stage_pairs``, default :data:`STAGE_PAIRS`); with ``by_novelty``, one set per novelty tercile (each entry gets
    ``"novelty": bin``)."""
    pairs = []
    for suffix in ("", "+refine"):
        net = best_network(details, suffix)
        for base in ("retrieval", "retrieval_corpus"):
            if net is not None and base + suffix in details:
                pairs.append((net, base + suffix))
    pairs += [(a, b) for a, b in stage_pairs if a in details and b in details]
    if not by_novelty:
        return paired_lsd_differences(details, pairs, seed)
    out = []
    for b in NOVELTY_BINS:
        sub = {m: {dom: [r for r in rows if r.get("novelty_bin") == b] for dom, rows in per.items()}
               for m, per in details.items()}
        sub = {m: {dom: rows for dom, rows in per.items() if len(rows) >= 2} for m, per in sub.items()}
        out += [dict(c, novelty=b) for c in paired_lsd_differences(sub, [p for p in pairs if p[0] in sub and p[1] in sub], seed)]
    return out


def paired_lsd_differences(details: Mapping[str, Any], pairs: list[tuple[str, str]], seed: int = 0) -> list[dict[str, Any]]:
    """For each method pair ``(a, b)`` and domain both have: the per-sound paired LSD difference ``a − b``
    (dB; mean, 95 % percentile-bootstrap interval, :func:`~deepafx.metrics.paired_bootstrap_ci`), and on how
    many sounds ``a`` is lower. ``details``: ``{method: {domain: [per-sound rows with "lsd"]}}`` as in
    ``details.json``."""
    out = []
    for a, b in pairs:
        for dom in DOMAINS:
            if dom in details[a] and dom in details[b]:
                da = np.array([r["lsd"] for r in details[a][dom]])
                db = np.array([r["lsd"] for r in details[b][dom]])
                _, lo, hi = paired_bootstrap_ci(da, db, seed=seed)
                out.append({"a": a, "b": b, "domain": dom, "n": int(len(da)), "mean_diff_lsd": float(np.mean(da - db)),
                            "ci": [lo, hi], "a_better": bool(hi < 0), "b_better": bool(lo > 0),
                            "a_wins": int(np.sum(da < db))})
    return out


def _order(methods: list[str]) -> list[str]:
    base = ["retrieval", "retrieval_corpus", "voice", "ploss", "synth", "real"]
    order = []
    for b in base:
        order += [m for m in (b, f"{b}+refine") if m in methods]
    order += [m for m in methods if m not in order]
    return order


def results_table(results: Mapping[str, Any]) -> str:
    """Markdown table of ``results.json`` (rows methods; columns in-domain and out-of-domain metrics)."""
    models = results["models"]
    head = (
        "| method | ID LSD (dB) ↓ [95 % CI] | ID MSS ↓ | ID param L1 ↓ | ID discrete acc ↑ | ID pitch ok ↑ | ID NDB ↓ "
        "| OOD LSD (dB) ↓ [95 % CI] | OOD MSS ↓ | OOD pitch ok ↑ | OOD NDB ↓ | s / sound |"
    )
    lines = [head, "|" + "---|" * 12]
    for m in _order(list(models)):
        i = models[m].get("in_domain", {})
        o = models[m].get("out_of_domain", {})

        def f(d, k, fmt="{:.2f}"):
            return fmt.format(d[k]) if k in d and d[k] == d[k] else "–"

        def lsd(d):
            if "lsd" not in d:
                return "–"
            ci = d.get("lsd_ci")
            return f"{d['lsd']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

        def nd(d):
            return f"{d['ndb']}/{d['ndb_k']}" if "ndb" in d else "–"

        secs = np.mean([d["seconds_per_sound"] for d in (i, o) if d]) if (i or o) else float("nan")
        lines.append(
            f"| {m} | {lsd(i)} | {f(i, 'mss')} | {f(i, 'param_l1', '{:.3f}')} | {f(i, 'discrete_accuracy', '{:.3f}')} "
            f"| {f(i, 'pitch_correct')} | {nd(i)} | {lsd(o)} | {f(o, 'mss')} | {f(o, 'pitch_correct')} | {nd(o)} "
            f"| {secs:.3f} |"
        )
    n_in = next((d["in_domain"]["n"] for d in models.values() if "in_domain" in d), 0)
    n_out = next((d["out_of_domain"]["n"] for d in models.values() if "out_of_domain" in d), 0)
    lines.append("")
    lines.append(f"{n_in} in-domain (ID) sounds, {n_out} out-of-domain (OOD) sounds; 95 % percentile-bootstrap "
                 "intervals of the mean; pitch ok: share of notes within the pitch tolerance; NDB: different bins / K.")
    if results.get("paired"):
        lines += ["", *_paired_lines(results["paired"])]
    if results.get("novelty"):
        lines += ["", novelty_table(results)]
    return "\n".join(lines)


def novelty_table(results: Mapping[str, Any]) -> str:
    """Markdown table of every method's LSD per novelty tercile and domain, then the paired differences per tercile.

    Args:
        results: ``results.json`` content with ``"novelty"`` (per domain ``edges_db``), the models'
            ``by_novelty`` entries and optionally ``"paired_by_novelty"``.

    Returns:
        Markdown text (LSD in dB with 95 % bootstrap intervals and the number of sounds per cell).

    Raises:
        KeyError: ``results`` has no ``"novelty"`` (a dataset built before novelty was recorded).
    """
    models, nov = results["models"], results["novelty"]
    doms = [d for d in DOMAINS if d in nov]
    head = "| method | " + " | ".join(f"{'ID' if d == 'in_domain' else 'OOD'} LSD, {b} novelty (dB) [95 % CI]"
                                      for d in doms for b in NOVELTY_BINS) + " |"
    lines = [head, "|" + "---|" * (1 + len(doms) * len(NOVELTY_BINS))]
    for m in _order(list(models)):
        cells = []
        for d in doms:
            for b in NOVELTY_BINS:
                c = models[m].get(d, {}).get("by_novelty", {}).get(b, {})
                cells.append(f"{c['lsd']:.2f} [{c['lsd_ci'][0]:.2f}, {c['lsd_ci'][1]:.2f}] (n={c['n']})" if c.get("n") else "–")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Novelty: LSD of each target to the nearest training factory voice; terciles per domain, edges "
                 + "; ".join(f"{d} {nov[d]['edges_db'][0]:.2f} / {nov[d]['edges_db'][1]:.2f} dB" for d in doms) + ".")
    if results.get("paired_by_novelty"):
        lines += ["", *_paired_lines(results["paired_by_novelty"], by_novelty=True)]
    return "\n".join(lines)


def _paired_lines(pairs: Sequence[Mapping[str, Any]], by_novelty: bool = False) -> list[str]:
    """Markdown rows of paired LSD differences (with a novelty column when ``by_novelty``)."""
    nov = " novelty |" if by_novelty else ""
    lines = [f"| paired LSD difference (a − b) | domain |{nov} n | mean (dB) | 95 % CI | a better on |",
             "|---|---|" + ("---|" if by_novelty else "") + "---|---|---|---|"]
    for p in pairs:
        cell = f" {p['novelty']} |" if by_novelty else ""
        lines.append(f"| {p['a']} − {p['b']} | {p['domain']} |{cell} {p['n']} | {p['mean_diff_lsd']:+.2f} "
                     f"| [{p['ci'][0]:+.2f}, {p['ci'][1]:+.2f}] | {p['a_wins']}/{p['n']} sounds |")
    return lines


__all__ = ["NOVELTY_BINS", "EvalConfig", "evaluate_from_config", "novelty_table", "novelty_terciles", "param_metrics",
           "results_table", "sound_metrics"]
