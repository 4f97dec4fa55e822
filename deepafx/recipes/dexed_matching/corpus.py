"""A large cached corpus of in-domain Dexed presets: parameters and input features, memory-mapped.

The network of this recipe learns from presets it can render for free (a 4 s
note renders in a few ms), so the corpus is big — tens of thousands of presets —
and rendered once. Everything in it derives from the *training* factory voices
only (the dataset's split by source voice holds): held-out voices never appear,
even perturbed.

Sampler (``data.corpus_*`` settings, :func:`sample_corpus`):

* the training factory voices themselves;
* **perturbations** of each training voice at several radii ``r`` (``corpus_radii``,
  drawn in turn): continuous values get Gaussian noise of standard deviation
  ``r`` (normalized units), each discrete value moves one step with probability
  ``r`` and the algorithm is redrawn with probability ``r``
  (:func:`~deepafx.recipes.dexed_matching.presets.sample_around`);
* **marginal draws** (a fraction ``corpus_random_fraction``): every parameter
  drawn independently from its empirical distribution over the training voices
  (the value of a uniformly chosen training voice, per parameter) — valid DX7
  voices with the factory set's per-parameter statistics but new combinations.

Every preset plays the dataset's notes with transpose 0. Presets whose render
is quieter than ``min_level_db`` are kept in the files but flagged invalid.

Rendering: ``data.num_workers`` processes (one torch thread each) render chunks
of presets, compute :class:`~deepafx.features.IFMel` features (log-mel and
mel-scaled instantaneous frequency, float16) and write them straight into the
memory-mapped arrays; a tqdm bar shows progress. The corpus is written in
``corpus.tmp/`` and renamed to ``corpus/`` when complete, so an interrupted
build leaves no partial corpus.

Layout of ``<data dir>/corpus/``::

    meta.json     settings, counts, feature settings, notes, build time
    params.npy    (N, 145) float32 normalized presets
    source.npy    (N,) int32 factory voice index (−1: marginal draw)
    kind.npy      (N,) int8: 0 factory voice, 1 perturbation, 2 marginal draw
    radius.npy    (N,) float32 perturbation radius (0 for the others)
    level_db.npy  (N,) float32 RMS level of the render, dBFS
    logmel.npy    (N, notes, n_mels, frames) float16, :class:`~deepafx.features.LogMel` "range" normalized
    ifmel.npy     (N, notes, n_mels, frames) float16, mel-scaled IF on [−1, 1]
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from deepafx.hosts.dexed_host import quantize_normalized
from deepafx.recipes.dexed_matching.presets import sample_around, set_transpose

#: Version of the corpus layout; bump when it changes.
CORPUS_VERSION = 1
#: Presets per worker job.
CHUNK = 128


@dataclass(frozen=True)
class FeatureSettings:
    """STFT settings of the cached features (must equal the model's).

    Args:
        n_fft: FFT size, samples. hop_length: Hop, samples. n_mels: Mel bands.
    """

    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 64

    def module(self, sample_rate: float):
        """The :class:`~deepafx.features.IFMel` module computing both feature kinds."""
        from deepafx.features import IFMel

        return IFMel(sample_rate, n_fft=self.n_fft, hop_length=self.hop_length, n_mels=self.n_mels,
                     floor_db=-120.0, normalize="range")


def sample_corpus(factory_x: np.ndarray, size: int, radii: Sequence[float], random_fraction: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw the corpus presets (see the module docstring).

    Args:
        factory_x: Training factory voices ``(F, 145)`` normalized.
        size: Total presets ``N`` (≥ F): the F voices, ``round(N · random_fraction)``
            marginal draws, perturbations for the rest.
        radii: Perturbation radii (normalized units, each in (0, 1]).
        random_fraction: Fraction of marginal draws, on [0, 1).
        rng: Random generator.

    Returns:
        ``(x (N, 145), source (N,), kind (N,), radius (N,))``; transpose 0, on the DX7 grid.

    Raises:
        ValueError: bad sizes, radii or fraction.
    """
    f = len(factory_x)
    if f < 1 or size < f:
        raise ValueError(f"corpus_size ({size}) must be at least the number of training voices ({f})")
    if not radii or any(not 0 < r <= 1 for r in radii):
        raise ValueError(f"corpus_radii must be values in (0, 1], got {list(radii)}")
    if not 0 <= random_fraction < 1:
        raise ValueError(f"corpus_random_fraction must be in [0, 1), got {random_fraction}")
    n_rand = int(round(size * random_fraction))
    n_pert = size - f - n_rand
    xs = [np.asarray(factory_x, dtype=np.float64)]
    src = [np.arange(f)]
    kind = [np.zeros(f, np.int8)]
    rad = [np.zeros(f)]
    if n_pert > 0:
        who = np.arange(n_pert) % f
        r = np.asarray(radii, dtype=np.float64)[(np.arange(n_pert) // f) % len(radii)]
        xs.append(np.stack([sample_around(factory_x[w], rng, float(s), float(s), float(s)) for w, s in zip(who, r)]))
        src.append(who)
        kind.append(np.ones(n_pert, np.int8))
        rad.append(r)
    if n_rand > 0:
        pick = rng.integers(0, f, size=(n_rand, factory_x.shape[1]))
        draws = np.asarray(factory_x)[pick, np.arange(factory_x.shape[1])]
        xs.append(quantize_normalized(draws))
        src.append(np.full(n_rand, -1))
        kind.append(np.full(n_rand, 2, np.int8))
        rad.append(np.zeros(n_rand))
    x = set_transpose(np.concatenate(xs), 0)
    return x.astype(np.float32), np.concatenate(src).astype(np.int32), np.concatenate(kind), np.concatenate(rad).astype(np.float32)


# --------------------------------------------------------------------------- workers

_W: dict[str, Any] = {}


def _init(path: str, renderer_args: tuple, feat: FeatureSettings, sample_rate: float) -> None:
    import torch

    from deepafx.hosts.dexed_host import DexedRenderer

    torch.set_num_threads(1)
    _W["renderer"] = DexedRenderer(*renderer_args)
    _W["front"] = feat.module(sample_rate)
    for name in ("logmel", "ifmel"):
        arr = np.load(os.path.join(path, f"{name}.npy"), mmap_mode="r")
        # positional writes into the .npy payload: far fewer page faults than writing through a memmap
        _W[name] = (os.open(os.path.join(path, f"{name}.npy"), os.O_WRONLY), arr.offset,
                    int(np.prod(arr.shape[1:])) * arr.itemsize)
        del arr
    _W["params"] = np.load(os.path.join(path, "params.npy"), mmap_mode="r")


def _render_chunk(bounds: tuple[int, int]) -> tuple[int, np.ndarray]:
    import torch

    a, b = bounds
    audio = _W["renderer"].render_batch(np.asarray(_W["params"][a:b], dtype=np.float64))
    level = 10.0 * np.log10(np.mean(audio.astype(np.float64) ** 2, axis=(1, 2)) + 1e-24)
    with torch.no_grad():
        f = _W["front"](torch.from_numpy(audio)).half().numpy()
    c = audio.shape[1]
    for name, part in (("logmel", f[:, :c]), ("ifmel", f[:, c:])):
        fd, offset, item_bytes = _W[name]
        data = np.ascontiguousarray(part).tobytes()
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], offset + a * item_bytes + done)
    return a, level.astype(np.float32)


def _renderer_args(sample_rate: float, notes, note_duration_seconds: float, duration_seconds: float) -> tuple:
    """Arguments of :class:`~deepafx.hosts.dexed_host.DexedRenderer` for the corpus's notes."""
    return (sample_rate, tuple(tuple(int(v) for v in p) for p in notes), note_duration_seconds, duration_seconds)


def _map_jobs(fn, jobs: Sequence, num_workers: int, initializer, initargs: tuple, cleanup, on_result) -> None:
    """``on_result(fn(job))`` for every job, in completion order: ``fn`` runs in ``num_workers`` spawned
    processes set up by ``initializer(*initargs)`` (a worker that dies breaks the executor,
    BrokenProcessPool, instead of being respawned forever), or in this process for ``num_workers`` ≤ 1,
    followed by ``cleanup()`` however it ends."""
    if num_workers > 1:
        with ProcessPoolExecutor(int(num_workers), mp_context=mp.get_context("spawn"), initializer=initializer,
                                 initargs=initargs) as pool:
            for fut in as_completed([pool.submit(fn, j) for j in jobs]):
                on_result(fut.result())
        return
    initializer(*initargs)
    try:
        for j in jobs:
            on_result(fn(j))
    finally:
        cleanup()


def _close_corpus_worker() -> None:
    for name in ("logmel", "ifmel"):
        os.close(_W[name][0])
    _W.clear()


#: Metrics the voice classifier's labels can be nearest by (:meth:`Corpus.nearest_voices`).
VOICE_METRICS = ("logmel", "lsd")
#: Presets per job of :meth:`Corpus.voice_lsd`.
LSD_CHUNK = 64

_LSD: dict[str, Any] = {}


def _stft_db(audio: np.ndarray):
    """``10 log10(|STFT|² + 1e-10)`` as :func:`~deepafx.metrics.lsd_db` takes it (Hann 2048, hop 512,
    centred with zero padding): ``(B, notes, samples)`` → torch ``(B, notes, 1025, frames)`` float32."""
    import torch

    from deepafx.metrics import LSD_EPS, LSD_HOP, LSD_N_FFT

    a = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    s = torch.stft(a.reshape(-1, a.shape[-1]), LSD_N_FFT, LSD_HOP, window=torch.hann_window(LSD_N_FFT),
                   center=True, pad_mode="constant", return_complex=True)
    p = s.real.square() + s.imag.square()
    return (10.0 * torch.log10(p + LSD_EPS)).reshape(*a.shape[:-1], *p.shape[-2:])


def _lsd_init(renderer_args: tuple, voices: np.ndarray) -> None:
    import torch

    from deepafx.hosts.dexed_host import DexedRenderer

    torch.set_num_threads(1)
    _LSD["renderer"] = DexedRenderer(*renderer_args)
    v = _stft_db(_LSD["renderer"].render_batch(voices))  # (V, notes, F, T)
    vt = v.permute(1, 3, 2, 0).reshape(-1, v.shape[2], v.shape[0]).contiguous()  # (notes·T, F, V)
    _LSD["voices"], _LSD["v2"] = vt, vt.square().sum(1)  # (notes·T, V)


def _lsd_chunk(job: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, params (B, 145))`` → ``(rows, LSD (B, V))`` against the voices of :func:`_lsd_init`."""
    import torch

    rows, params = job
    a = _stft_db(_LSD["renderer"].render_batch(params))  # (B, notes, F, T)
    bins = a.shape[2]
    x = a.permute(1, 3, 0, 2).reshape(-1, a.shape[0], bins)  # (notes·T, B, F)
    with torch.no_grad():
        d2 = x.square().sum(2)[:, :, None] + _LSD["v2"][:, None, :] - 2.0 * torch.bmm(x, _LSD["voices"])
        return rows, d2.clamp_min(0.0).div(bins).sqrt().mean(0).numpy()  # (B, V)


def build_corpus(out_dir: str | Path, factory_x: np.ndarray, *, size: int, radii: Sequence[float],
                 random_fraction: float, seed: int, sample_rate: float, notes: Sequence[Sequence[int]],
                 note_duration_seconds: float, duration_seconds: float, feature: FeatureSettings, min_level_db: float,
                 num_workers: int = 2, progress: bool = True, settings: dict | None = None,
                 source_ids: np.ndarray | None = None) -> Path:
    """Sample, render and store the corpus in ``out_dir`` (atomically; see the module docstring).

    Args:
        out_dir: Final folder (``<data dir>/corpus``); replaced only when the new corpus is complete.
        factory_x: Training factory voices ``(F, 145)``.
        size, radii, random_fraction: See :func:`sample_corpus`.
        seed: Seed of the sampler.
        sample_rate: Hz. notes: ``[(pitch, velocity)]`` played per preset.
        note_duration_seconds, duration_seconds: Note-on time and render length, seconds.
        feature: STFT settings of the cached features.
        min_level_db: Presets rendering quieter than this (dBFS RMS) are flagged invalid.
        num_workers: Render processes (≥ 1).
        progress: Show a tqdm bar.
        settings: Recorded in ``meta.json`` (the data settings the corpus was built from).
        source_ids: Index of each row of ``factory_x`` in the dataset's factory list (``source.npy``
            stores these; default the row numbers).

    Returns:
        ``out_dir``.

    Raises:
        ValueError: bad settings. Worker errors propagate (the temporary folder is removed).
    """
    from tqdm import tqdm

    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        x, src, kind, rad = sample_corpus(factory_x, size, radii, random_fraction, np.random.default_rng(seed))
        if source_ids is not None:
            ids = np.asarray(source_ids, dtype=np.int32)
            src = np.where(src >= 0, ids[np.maximum(src, 0)], -1).astype(np.int32)
        n = len(x)
        frames = 1 + int(round(duration_seconds * sample_rate)) // feature.hop_length
        shape = (n, len(notes), feature.n_mels, frames)
        np.save(tmp / "params.npy", x)
        np.save(tmp / "source.npy", src)
        np.save(tmp / "kind.npy", kind)
        np.save(tmp / "radius.npy", rad)
        for name in ("logmel", "ifmel"):
            np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=np.float16, shape=shape).flush()
        level = np.zeros(n, np.float32)
        jobs = [(a, min(a + CHUNK, n)) for a in range(0, n, CHUNK)]
        rargs = _renderer_args(sample_rate, notes, note_duration_seconds, duration_seconds)
        bar = tqdm(total=n, unit="preset", desc="corpus", disable=not progress, mininterval=5.0)
        def store(result: tuple[int, np.ndarray]) -> None:
            a, lv = result
            level[a : a + len(lv)] = lv
            bar.update(len(lv))

        _map_jobs(_render_chunk, jobs, num_workers, _init, (str(tmp), rargs, feature, sample_rate), _close_corpus_worker,
                  store)
        bar.close()
        np.save(tmp / "level_db.npy", level)
        valid = level >= min_level_db
        meta = {
            "version": CORPUS_VERSION,
            "size": n,
            "valid": int(valid.sum()),
            "counts": {"factory": int((kind == 0).sum()), "perturbation": int((kind == 1).sum()),
                       "marginal": int((kind == 2).sum())},
            "radii": [float(r) for r in radii],
            "random_fraction": float(random_fraction),
            "seed": int(seed),
            "sample_rate": float(sample_rate),
            "notes": [list(map(int, p)) for p in notes],
            "note_duration_s": float(note_duration_seconds),  # meta.json keeps its keys: older corpora stay readable
            "duration_s": float(duration_seconds),
            "feature": {"n_fft": feature.n_fft, "hop_length": feature.hop_length, "n_mels": feature.n_mels},
            "frames": frames,
            "min_level_db": float(min_level_db),
            "seconds": round(time.perf_counter() - t0, 1),
            "settings": settings or {},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


class Corpus:
    """A built corpus, memory-mapped (nothing but the small arrays is read up front).

    Attributes:
        meta: ``meta.json``. params: ``(N, 145)`` float32. source, kind, level_db: ``(N,)``.
        valid_index: Indices of the presets above the level floor.

    Raises:
        FileNotFoundError: no corpus in the folder (names the command that builds it).
    """

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        if not (p / "meta.json").exists():
            raise FileNotFoundError(f"no Dexed corpus in {p}; build it with `deepafx data --config CONFIG` "
                                    "(data.corpus_size > 0)")
        self.path = p
        self.meta = json.loads((p / "meta.json").read_text())
        self.params = np.load(p / "params.npy")
        self.source = np.load(p / "source.npy")
        self.kind = np.load(p / "kind.npy")
        self.level_db = np.load(p / "level_db.npy")
        self.valid_index = np.flatnonzero(self.level_db >= self.meta["min_level_db"])
        self._feats: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.params)

    def features(self, kind: str) -> np.ndarray:
        """Memory-mapped ``(N, notes, n_mels, frames)`` float16 array: ``"logmel"`` or ``"ifmel"``."""
        if kind not in ("logmel", "ifmel"):
            raise ValueError(f"feature kind must be 'logmel' or 'ifmel', got {kind!r}")
        if kind not in self._feats:
            self._feats[kind] = np.load(self.path / f"{kind}.npy", mmap_mode="r")
        return self._feats[kind]

    def batch(self, index: np.ndarray, kinds: Sequence[str]) -> np.ndarray:
        """Features of ``index`` concatenated on the channel axis in ``kinds`` order, float16
        ``(len(index), notes * len(kinds), n_mels, frames)`` (the layout :meth:`DexedEstimator.features` returns)."""
        order = np.argsort(index)
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        srt = np.asarray(index)[order]
        parts = [self.features(k)[srt][inv] for k in kinds]
        return np.concatenate(parts, axis=1)

    def _voice_rows(self) -> np.ndarray:
        """Sorted corpus rows of the training factory voices (``kind`` 0); ``ValueError`` if there are none."""
        rows = np.flatnonzero(self.kind == 0)
        if len(rows) == 0:
            raise ValueError(f"the corpus in {self.path} holds no factory voice (kind 0): the voice classifier's "
                             "classes and labels are those voices")
        return rows

    def nearest_voices(self, chunk: int = 1024, distances: bool = False, metric: str = "logmel",
                       num_workers: int = 2, progress: bool = True) -> tuple[np.ndarray, ...]:
        """The corpus's factory voices (``kind`` 0, the training voices) and, for every valid item, the
        one nearest to it: the classes and labels of the estimator's voice classifier
        (:class:`~deepafx.recipes.dexed_matching.model.DexedEstimator` with ``voice_classifier``).

        Distances (``metric``):

        * ``"logmel"``: Euclidean between the cached log-mel features of all notes, as
          :class:`~deepafx.recipes.dexed_matching.search.CorpusIndex` measures it, so each label is the
          training voice nearest-preset retrieval would return for that item's sound (for a perturbation
          of a voice that is not always its source: the medium corpus, 42 %). Reads the feature file
          once, ``chunk`` rows at a time (float32).
        * ``"lsd"``: the six-note log-spectral distortion (dB) of the evaluation
          (:func:`~deepafx.metrics.lsd_db`), from :meth:`voice_lsd` (computed once and cached; the
          medium corpus: about 17 minutes with 2 workers). The label is then the training voice that
          sounds closest by the metric the recipe is judged on.

        Args:
            chunk: Rows per read for ``"logmel"``.
            distances: Also return the distances.
            metric: ``"logmel"`` or ``"lsd"``.
            num_workers, progress: For building the LSD cache (:meth:`voice_lsd`).

        Returns:
            ``(voice_rows (V,), labels (N,))``: corpus rows of the V factory voices, sorted; for each
            corpus item the index into ``voice_rows`` of its nearest voice (int64; −1 for items below the
            level floor). With ``distances``, a third array ``(N, V)`` float32 of the distances
            (Euclidean in range-normalized log-mel units, or dB; NaN rows for items below the level floor).

        Raises:
            ValueError: the corpus holds no factory voice; unknown ``metric``.
        """
        if metric not in VOICE_METRICS:
            raise ValueError(f"voice-label metric must be one of {VOICE_METRICS}, got {metric!r}")
        voice_rows = self._voice_rows()
        labels = np.full(len(self), -1, dtype=np.int64)
        rows = self.valid_index  # sorted: contiguous reads of the memory map
        if metric == "lsd":
            table = self.voice_lsd(num_workers=num_workers, progress=progress)
            labels[rows] = np.argmin(table[rows], axis=1)
            return (voice_rows, labels, np.array(table, dtype=np.float32)) if distances else (voice_rows, labels)
        feats = self.features("logmel")
        voices = np.asarray(feats[voice_rows], dtype=np.float32).reshape(len(voice_rows), -1)
        v2 = np.einsum("ij,ij->i", voices, voices)
        dist = np.full((len(self), len(voice_rows)), np.nan, np.float32) if distances else None
        for i in range(0, len(rows), int(chunk)):
            sel = rows[i : i + int(chunk)]
            x = np.asarray(feats[sel], dtype=np.float32).reshape(len(sel), -1)
            d2 = v2[None, :] - 2.0 * (x @ voices.T)  # + |x|², the same for every voice
            labels[sel] = np.argmin(d2, axis=1)
            if dist is not None:
                dist[sel] = np.sqrt(np.maximum(d2 + np.einsum("ij,ij->i", x, x)[:, None], 0.0))
        return (voice_rows, labels, dist) if distances else (voice_rows, labels)

    def voice_lsd(self, num_workers: int = 2, progress: bool = True) -> np.ndarray:
        """Log-spectral distortion (dB) of every valid corpus item against every training factory voice.

        The metric of the recipe's evaluation (:func:`~deepafx.metrics.lsd_db`: Hann window of 2048
        samples, hop 512, power floor 1e-10, per-frame RMS of the dB difference over the frequency
        bins, mean over frames and notes), computed on re-rendered audio (the corpus caches mel
        features only) with one batched matrix product per STFT frame:
        ``Σ_f (a − v)² = Σa² + Σv² − 2 a·v``, float32 (within 0.02 dB of the float64 metric).

        Cached in ``voice_lsd.npy`` beside the features (written to a temporary file and renamed:
        an interrupted run leaves no partial cache) and read from there afterwards.

        Args:
            num_workers: Render processes (≥ 1; each holds the voices' spectra, about 0.8 GB for the
                medium corpus).
            progress: Show a tqdm bar.

        Returns:
            ``(N, V)`` float32 memory map in dB, V = training voices in corpus-row order; NaN rows
            for items below the level floor.

        Raises:
            ValueError: the corpus holds no factory voice. Worker errors propagate.
        """
        from tqdm import tqdm

        voice_rows = self._voice_rows()
        path = self.path / "voice_lsd.npy"
        if path.exists():
            table = np.load(path, mmap_mode="r")
            if table.shape == (len(self), len(voice_rows)):
                return table
        m = self.meta
        rargs = _renderer_args(m["sample_rate"], m["notes"], m["note_duration_s"], m["duration_s"])
        params = np.asarray(self.params, dtype=np.float64)
        table = np.full((len(self), len(voice_rows)), np.nan, np.float32)
        rows = self.valid_index
        jobs = [(j, params[j]) for j in (rows[i : i + LSD_CHUNK] for i in range(0, len(rows), LSD_CHUNK))]
        bar = tqdm(total=len(rows), unit="preset", desc="voice LSD", disable=not progress, mininterval=5.0)
        def store(result: tuple[np.ndarray, np.ndarray]) -> None:
            j, part = result
            table[j] = part
            bar.update(len(j))

        _map_jobs(_lsd_chunk, jobs, num_workers, _lsd_init, (rargs, params[voice_rows]), _LSD.clear, store)
        bar.close()
        tmp = path.with_name(f"voice_lsd.{os.getpid()}.tmp.npy")
        try:
            np.save(tmp, table)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return np.load(path, mmap_mode="r")

    def check_feature(self, feature: FeatureSettings) -> None:
        """Raise ``ValueError`` if the cached features were computed with other STFT settings than ``feature``."""
        have = self.meta["feature"]
        want = {"n_fft": feature.n_fft, "hop_length": feature.hop_length, "n_mels": feature.n_mels}
        if have != want:
            raise ValueError(f"the corpus in {self.path} caches features {have} but the model uses {want}; "
                             "rebuild the corpus (`deepafx data --force`) or match model.n_fft/hop_length/n_mels")


__all__ = ["CORPUS_VERSION", "VOICE_METRICS", "Corpus", "FeatureSettings", "build_corpus", "sample_corpus"]
