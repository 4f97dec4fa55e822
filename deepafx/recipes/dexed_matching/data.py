"""Dataset of the Dexed sound-matching recipe (``deepafx data --config recipes/dexed_matching/quick.yaml``).

In-domain (made by Dexed): the real DX7 factory voices of Debian's ``hexter``
package, split into train/valid/test by *groups of related voices*
(``data.split: grouped``, the default: near-twins within ``data.group_threshold``
of each other and voices of one name family stay together, see
:mod:`~deepafx.recipes.dexed_matching.split`; ``data.split: index`` is the
former split by voice, kept to reproduce older results). A test voice never
appears, even perturbed, in training. Plus presets sampled around each *training*
voice (:func:`~deepafx.recipes.dexed_matching.presets.sample_around`: perturbed continuous
values, neighbouring discrete values, other algorithms) for volume. Only the
normalized preset vectors ``(145,)`` and the note pitch are stored; audio is
rendered on demand (a 4 s note renders in about 1.5 ms).

Out-of-domain (not made by Dexed): single sampled-instrument notes rendered
from a General MIDI SoundFont (FluidR3_GM, Debian ``fluid-soundfont-gm``) with
pyfluidsynth, reverb and chorus off — an NSynth-like set split *by instrument*
(GM program). Each note is scaled to the median RMS level of the factory voices
so both domains play at comparable levels.

Protocol (DiffSynth, Masuda & Saito, ISMIR 2021; Le Vaillant et al., DAFx 2021):
4 s at 16 kHz, note held 3 s. Single-note mode plays MIDI note 60 and moves the
pitch with the preset's transpose (the pitch is a given condition, not an
estimated parameter); multi-note mode plays the six (pitch, velocity) pairs of
Le Vaillant et al. as channels with transpose 0.

Layout of ``out_dir``::

    manifest.json          settings, counts, level reference, split programs, the
                           split (method, threshold, group id of every factory
                           voice), novelty summaries
    in_domain.npz          x_{train,valid,test} (M, 145), pitch_{split} (M,),
                           source_{split} (M,) factory index, factory_names,
                           factory_x, factory_cluster (F,) group id,
                           novelty_{valid,test} (M,) dB, novelty_voice_{valid,test} (M,)
    out_of_domain.npz      audio_{train,valid,test} (M, C, N) float32,
                           program_{split}, pitch_{split}, velocity_{split},
                           novelty_{valid,test} (M,) dB, novelty_voice_{valid,test} (M,)
    factory/               the hexter banks used

Novelty of a held-out sound (``novelty_*``): the six-note (or one-note)
log-spectral distortion, dB (:func:`deepafx.metrics.lsd_db`), to the nearest
*training* factory voice rendered at the sound's pitch; ``novelty_voice_*`` is
that voice's factory index. The evaluation reports its results in novelty
terciles as well as pooled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from deepafx.recipes.dexed_matching.presets import HEXTER_BANKS, fetch_hexter_banks, load_factory_presets, sample_around, set_transpose
from deepafx.recipes.dexed_matching.split import (
    DEFAULT_GROUP_THRESHOLD,
    SPLIT_METHODS,
    grouped_split,
    nearest_lsd,
    voice_clusters,
)
from deepafx.data.soundfont import DEFAULT_SOUNDFONT, render_notes
from deepafx.hosts.dexed_host import MULTI_NOTES, DexedRenderer

#: Version of the on-disk layout; bump when it changes. 2: grouped split, group ids, novelty arrays.
DATASET_VERSION = 2


@dataclass
class DataConfig:
    """Settings of the dataset (the ``data:`` section of a recipe config).

    Args:
        sample_rate: Audio rate in Hz (16,000 in DiffSynth).
        duration_seconds: Rendered length per note, seconds (4.0).
        note_duration_seconds: Note-on time before note-off, seconds (3.0).
        multi_note: Use the six (pitch, velocity) pairs of Le Vaillant et al. as
            channels (in-domain and out-of-domain) instead of one note.
        velocity: Velocity of the single note (1–127).
        pitches: MIDI pitches notes are drawn from (single-note mode; the
            transpose is ``pitch - 60``, within ±24 semitones).
        hexter_dir: Folder holding ``dx7_roms.dx7``/``tx7_roms.dx7``; ``None``
            fetches them with ``apt-get download hexter`` into ``out_dir/factory``.
        banks: Factory bank files to read.
        max_factory_presets: Keep at most this many unique factory voices
            (``None``: all, 186 after removing duplicates).
        valid_fraction, test_fraction: Fractions of factory voices held out.
        split: ``"grouped"`` (default): whole groups of related voices go to one split
            (:func:`~deepafx.recipes.dexed_matching.split.voice_clusters`,
            :func:`~deepafx.recipes.dexed_matching.split.grouped_split`); ``"index"``: the
            former split of single voices, as datasets of version 1 were built.
        group_threshold: Mean absolute normalized-parameter distance, on [0, 1], within which two
            voices are grouped (single linkage; default 0.04, measured in
            :mod:`~deepafx.recipes.dexed_matching.split`).
        group_by_name: Also group voices whose names match once the bank's variant suffixes are
            removed (:func:`~deepafx.recipes.dexed_matching.split.normalize_voice_name`).
        samples_per_preset: Presets sampled around each training voice.
        sample_sigma: Std of the Gaussian noise on continuous values (normalized).
        discrete_change_prob: Probability a discrete value moves one step.
        algorithm_change_prob: Probability the algorithm is redrawn.
        min_level_db: Voices quieter than this RMS level (dBFS) are dropped.
        soundfont: Path of the General MIDI SoundFont.
        ood_programs: GM programs (0–127) used out-of-domain.
        ood_test_programs, ood_valid_programs: How many programs go to test/valid.
        ood_pitches: MIDI pitches of the out-of-domain notes.
        seed: Random seed of splits and sampling.
        corpus_size: Presets of the cached corpus (``0``: none; see
            :mod:`~deepafx.recipes.dexed_matching.corpus`). Needs ``multi_note``.
        corpus_radii: Perturbation radii of the corpus sampler (normalized units).
        corpus_random_fraction: Fraction of the corpus drawn from the training
            voices' per-parameter marginals.
        num_workers: Processes building the dataset: they render the corpus (and the
            training voices' LSD table, :meth:`~deepafx.recipes.dexed_matching.corpus.Corpus.voice_lsd`).
        n_fft, hop_length, n_mels: STFT settings of the cached features (must
            equal the model's ``n_fft``/``hop_length``/``n_mels``).
    """

    sample_rate: float = 16000.0
    duration_seconds: float = 4.0
    note_duration_seconds: float = 3.0
    multi_note: bool = False
    velocity: int = 100
    pitches: Sequence[int] = (48, 55, 60, 67, 72)
    hexter_dir: str | None = None
    banks: Sequence[str] = HEXTER_BANKS
    max_factory_presets: int | None = None
    valid_fraction: float = 0.1
    test_fraction: float = 0.15
    split: str = "grouped"
    group_threshold: float = DEFAULT_GROUP_THRESHOLD
    group_by_name: bool = True
    samples_per_preset: int = 4
    sample_sigma: float = 0.05
    discrete_change_prob: float = 0.05
    algorithm_change_prob: float = 0.2
    min_level_db: float = -40.0
    soundfont: str = DEFAULT_SOUNDFONT
    ood_programs: Sequence[int] = tuple(range(0, 96))
    ood_test_programs: int = 16
    ood_valid_programs: int = 8
    ood_pitches: Sequence[int] = (48, 55, 60, 67, 72)
    seed: int = 0
    corpus_size: int = 0
    corpus_radii: Sequence[float] = (0.02, 0.05, 0.1, 0.2)
    corpus_random_fraction: float = 0.25
    num_workers: int = 2
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 64

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "DataConfig":
        """Build from a mapping; unknown keys raise ``ValueError`` listing the known ones."""
        from deepafx.config import bind

        cfg = bind(cls, d, "data")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first bad setting."""
        if (self.sample_rate <= 0 or self.duration_seconds <= 0
                or not (0 < self.note_duration_seconds <= self.duration_seconds)):
            raise ValueError(
                f"need sample_rate > 0 Hz and 0 < note_duration_seconds <= duration_seconds, got {self.sample_rate}, "
                f"{self.note_duration_seconds}, {self.duration_seconds}"
            )
        if not 1 <= self.velocity <= 127:
            raise ValueError(f"velocity must be in 1..127, got {self.velocity}")
        for name in ("pitches", "ood_pitches"):
            for p in getattr(self, name):
                if not 36 <= int(p) <= 84:
                    raise ValueError(f"{name}: pitch {p} is outside 36..84 (note 60 ± 24 semitones of transpose)")
        for name in ("valid_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 0.5:
                raise ValueError(f"{name} must be in (0, 0.5), got {getattr(self, name)}")
        if self.split not in SPLIT_METHODS:
            raise ValueError(f"split must be one of {SPLIT_METHODS} ('grouped': whole groups of related voices; "
                             f"'index': single voices, the former split), got {self.split!r}")
        if not 0.0 <= float(self.group_threshold) <= 1.0:
            raise ValueError(f"group_threshold must be on [0, 1] (mean absolute normalized-parameter distance), "
                             f"got {self.group_threshold}")
        if self.samples_per_preset < 0:
            raise ValueError(f"samples_per_preset must be >= 0, got {self.samples_per_preset}")
        if self.corpus_size < 0:
            raise ValueError(f"corpus_size must be >= 0, got {self.corpus_size}")
        if self.corpus_size > 0 and not self.multi_note:
            raise ValueError("a corpus (corpus_size > 0) needs multi_note: true: its presets play the fixed notes "
                             "with transpose 0 (a single-note network reads one of them, model.input_notes)")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        progs = list(self.ood_programs)
        if any(not 0 <= int(p) <= 127 for p in progs):
            raise ValueError("ood_programs must be GM programs in 0..127")
        if self.ood_test_programs + self.ood_valid_programs >= len(set(progs)):
            raise ValueError(
                f"ood_test_programs + ood_valid_programs ({self.ood_test_programs} + {self.ood_valid_programs}) "
                f"must leave training programs out of {len(set(progs))}"
            )

    @property
    def corpus_settings(self) -> dict:
        """The settings the corpus depends on (a change rebuilds it).

        The split's settings (``split``, ``group_threshold``, ``group_by_name``) are included except
        for ``split: index``, whose corpora were built before those settings existed and stay current.
        """
        keys = ("sample_rate", "duration_seconds", "note_duration_seconds", "multi_note", "velocity", "banks", "max_factory_presets",
                "valid_fraction", "test_fraction", "min_level_db", "seed", "corpus_size", "corpus_radii",
                "corpus_random_fraction", "n_fft", "hop_length", "n_mels")
        if self.split != "index":
            keys += ("split", "group_threshold", "group_by_name")
        return _jsonable({k: getattr(self, k) for k in keys})

    def feature_settings(self):
        from deepafx.recipes.dexed_matching.corpus import FeatureSettings

        return FeatureSettings(int(self.n_fft), int(self.hop_length), int(self.n_mels))

    @property
    def notes(self) -> tuple[tuple[int, int], ...]:
        """(pitch, velocity) pairs Dexed plays (transpose moves single notes)."""
        return MULTI_NOTES if self.multi_note else ((60, int(self.velocity)),)

    @property
    def num_samples(self) -> int:
        return int(round(self.duration_seconds * self.sample_rate))

    def renderer(self) -> DexedRenderer:
        """A :class:`DexedRenderer` with these notes, rate and durations."""
        return DexedRenderer(self.sample_rate, self.notes, self.note_duration_seconds, self.duration_seconds)


def rms_db(audio: np.ndarray) -> float:
    """RMS level of ``audio`` (any shape) in dBFS (−240 for silence)."""
    a = np.asarray(audio, dtype=np.float64)
    return float(20.0 * np.log10(np.sqrt(np.mean(a * a)) + 1e-12))


def _split_indices(n: int, valid_fraction: float, test_fraction: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    perm = rng.permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    n_valid = max(1, int(round(n * valid_fraction)))
    return {
        "test": np.sort(perm[:n_test]),
        "valid": np.sort(perm[n_test : n_test + n_valid]),
        "train": np.sort(perm[n_test + n_valid :]),
    }


def _data_section(config: Mapping[str, Any]) -> dict:
    d = config["data"] if "data" in config and isinstance(config["data"], Mapping) else config
    return {k: v for k, v in d.items() if k != "_path"}


def build_dataset(config: Mapping[str, Any], out_dir: str | Path, force: bool = False, progress: bool = True) -> Path:
    """Build (or reuse) the recipe dataset in ``out_dir`` and return ``out_dir``.

    Args:
        config: The whole recipe config (its ``data`` section is used) or the
            ``data`` section itself (see :class:`DataConfig`).
        out_dir: Destination folder (created).
        force: Rebuild even if a dataset with the same settings exists.
        progress: Print one line per stage.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: bad settings; RuntimeError/FileNotFoundError: factory banks or
        SoundFont unavailable (the message says how to get them).
    """
    cfg = DataConfig.from_dict(_data_section(config))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    settings = _jsonable({f.name: getattr(cfg, f.name) for f in fields(cfg)})
    if manifest_path.exists() and not force:
        old = json.loads(manifest_path.read_text())
        if _stored_settings(old.get("settings")) == settings and old.get("version") == DATASET_VERSION:
            if progress:
                print(f"dataset in {out} is up to date (use --force to rebuild)")
            _ensure_corpus(cfg, out, force=False, progress=progress)
            return out
    say = print if progress else (lambda *a, **k: None)
    rng = np.random.default_rng(cfg.seed)
    bank_dir = Path(cfg.hexter_dir) if cfg.hexter_dir else fetch_hexter_banks(out / "factory")
    voices = load_factory_presets(bank_dir, cfg.banks)
    renderer = cfg.renderer()
    levels = np.array([rms_db(renderer.render(set_transpose(v.x, 0))) for v in voices])
    keep = [i for i, lv in enumerate(levels) if lv >= cfg.min_level_db]
    if cfg.max_factory_presets is not None:
        keep = sorted(rng.permutation(keep)[: int(cfg.max_factory_presets)].tolist())
    voices = [voices[i] for i in keep]
    levels = levels[keep]
    reference_level_db = float(np.median(levels))
    say(f"factory voices: {len(voices)} kept (median level {reference_level_db:.1f} dBFS) from {bank_dir}")

    factory_x = np.stack([v.x for v in voices])
    clusters = voice_clusters(factory_x, [v.name for v in voices] if cfg.group_by_name else None, cfg.group_threshold)
    if cfg.split == "index":
        splits = _split_indices(len(voices), cfg.valid_fraction, cfg.test_fraction, rng)
    else:
        splits = grouped_split(clusters, cfg.valid_fraction, cfg.test_fraction, rng)
    straddling = _straddling_groups(clusters, splits)
    say(f"factory split ({cfg.split}): {len(np.unique(clusters))} groups at distance {cfg.group_threshold:g}"
        f"{' and by name' if cfg.group_by_name else ''}; " + ", ".join(f"{s} {len(i)}" for s, i in splits.items())
        + f" voices; {len(straddling)} group(s) straddle splits")
    pitches = np.asarray(cfg.pitches, dtype=np.int64)
    arrays: dict[str, np.ndarray] = {"factory_names": np.array([v.name.strip() for v in voices])}
    arrays["factory_x"] = factory_x
    arrays["factory_cluster"] = clusters
    for split, idx in splits.items():
        xs, src = [], []
        for i in idx:
            xs.append(voices[i].x)
            src.append(i)
            if split == "train":
                for _ in range(cfg.samples_per_preset):
                    xs.append(sample_around(voices[i].x, rng, cfg.sample_sigma, cfg.discrete_change_prob, cfg.algorithm_change_prob))
                    src.append(i)
        xs = np.stack(xs)
        pitch = np.full(len(xs), 60) if cfg.multi_note else rng.choice(pitches, size=len(xs))
        xs = set_transpose(xs, pitch - 60 if not cfg.multi_note else 0)
        # drop sampled presets that came out (nearly) silent
        ok = np.array([rms_db(renderer.render(x)) >= cfg.min_level_db for x in xs])
        arrays[f"x_{split}"] = xs[ok]
        arrays[f"pitch_{split}"] = pitch[ok]
        arrays[f"source_{split}"] = np.asarray(src)[ok]
        say(f"in-domain {split}: {int(ok.sum())} presets from {len(idx)} factory voices")
    train_voices = np.asarray(splits["train"])
    for split in ("valid", "test"):
        audio = np.stack([renderer.render(x) for x in arrays[f"x_{split}"]])
        arrays[f"novelty_{split}"], arrays[f"novelty_voice_{split}"] = novelty(
            audio, arrays[f"pitch_{split}"], factory_x[train_voices], renderer, train_voices)
    np.savez(out / "in_domain.npz", **arrays)

    # out-of-domain notes, split by instrument
    programs = np.array(sorted(set(int(p) for p in cfg.ood_programs)))
    perm = rng.permutation(programs)
    prog_split = {
        "test": np.sort(perm[: cfg.ood_test_programs]),
        "valid": np.sort(perm[cfg.ood_test_programs : cfg.ood_test_programs + cfg.ood_valid_programs]),
        "train": np.sort(perm[cfg.ood_test_programs + cfg.ood_valid_programs :]),
    }
    ood: dict[str, np.ndarray] = {}
    for split, progs in prog_split.items():
        if cfg.multi_note:
            items = [(int(pg), p, v) for pg in progs for p, v in MULTI_NOTES]
        else:
            items = [(int(pg), int(p), int(cfg.velocity)) for pg in progs for p in cfg.ood_pitches]
        audio = render_notes(cfg.soundfont, items, cfg.sample_rate, cfg.duration_seconds, cfg.note_duration_seconds)
        c = len(cfg.notes)
        audio = audio.reshape(-1, c, audio.shape[-1])
        meta = np.array(items).reshape(-1, c, 3)
        lv = np.array([rms_db(a) for a in audio])
        ok = lv >= -70.0
        gain = 10.0 ** ((reference_level_db - lv[ok]) / 20.0)
        ood[f"audio_{split}"] = (audio[ok] * gain[:, None, None]).astype(np.float32)
        ood[f"program_{split}"] = meta[ok, 0, 0]
        ood[f"pitch_{split}"] = meta[ok, 0, 1] if not cfg.multi_note else np.full(int(ok.sum()), 60)
        ood[f"velocity_{split}"] = meta[ok, 0, 2]
        say(f"out-of-domain {split}: {int(ok.sum())} notes from {len(progs)} GM programs")
        if split != "train":
            ood[f"novelty_{split}"], ood[f"novelty_voice_{split}"] = novelty(
                ood[f"audio_{split}"], ood[f"pitch_{split}"], factory_x[train_voices], renderer, train_voices)
    np.savez(out / "out_of_domain.npz", **ood)
    manifest = {
        "version": DATASET_VERSION,
        "settings": settings,
        "notes": [list(n) for n in cfg.notes],
        "reference_level_db": reference_level_db,
        "bank_dir": str(bank_dir),
        "counts": {
            "in_domain": {s: int(len(arrays[f"x_{s}"])) for s in splits},
            "out_of_domain": {s: int(len(ood[f"audio_{s}"])) for s in prog_split},
        },
        "ood_programs": {s: [int(p) for p in v] for s, v in prog_split.items()},
        "factory_split": {s: [arrays["factory_names"][i] for i in v] for s, v in splits.items()},
        "split": {
            "method": cfg.split,
            "group_threshold": float(cfg.group_threshold),
            "group_by_name": bool(cfg.group_by_name),
            "num_groups": int(len(np.unique(clusters))),
            "group_sizes": sorted(np.bincount(clusters).tolist(), reverse=True),
            "straddling_groups": straddling,
            "factory_cluster": [int(c) for c in clusters],
        },
        "novelty": {
            dom: {s: _summary(src[f"novelty_{s}"]) for s in ("valid", "test")}
            for dom, src in (("in_domain", arrays), ("out_of_domain", ood))
        },
    }
    manifest_path.write_text(json.dumps(manifest, indent=2))
    say(f"dataset written to {out}")
    _ensure_corpus(cfg, out, force=force, progress=progress)
    return out


def novelty(audio: np.ndarray, pitch: np.ndarray, train_x: np.ndarray, renderer: DexedRenderer,
            train_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Novelty of sounds: the LSD (dB, :func:`deepafx.metrics.lsd_db`) to the nearest training voice at their pitch.

    Each training voice is rendered with its transpose set to ``pitch − 60`` (once per distinct pitch;
    multi-note datasets play every sound at 60) and compared with every sound of that pitch.

    Args:
        audio: ``(M, notes, samples)`` sounds as ``renderer`` renders them.
        pitch: ``(M,)`` MIDI pitch of each sound, 36–84.
        train_x: ``(V, 145)`` normalized training factory voices.
        renderer: The dataset's renderer.
        train_ids: ``(V,)`` factory index of each training voice (default ``0 … V−1``).

    Returns:
        ``(novelty_db (M,) float64, nearest (M,) int64 factory index)``; empty arrays for ``M = 0``.

    Raises:
        ValueError: mismatched lengths, no training voice.
    """
    audio = np.asarray(audio)
    pitch = np.asarray(pitch, dtype=np.int64)
    ids = np.arange(len(train_x)) if train_ids is None else np.asarray(train_ids, dtype=np.int64)
    if len(audio) != len(pitch) or len(ids) != len(train_x) or len(train_x) == 0:
        raise ValueError(f"need one pitch per sound and at least one training voice with one id each, got "
                         f"{len(audio)} sounds, {len(pitch)} pitches, {len(train_x)} voices, {len(ids)} ids")
    lsd = np.zeros(len(audio))
    nearest = np.zeros(len(audio), dtype=np.int64)
    for p in np.unique(pitch):
        rows = np.flatnonzero(pitch == p)
        voices = renderer.render_batch(set_transpose(train_x, int(p) - 60))
        lsd[rows], j = nearest_lsd(audio[rows], voices)
        nearest[rows] = ids[j]
    return lsd, nearest


def _summary(values: np.ndarray) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return {"n": 0}
    q = np.quantile(v, [0.0, 1 / 3, 0.5, 2 / 3, 1.0])
    return {"n": int(len(v)), "min": float(q[0]), "tercile_1": float(q[1]), "median": float(q[2]),
            "tercile_2": float(q[3]), "max": float(q[4])}


def _straddling_groups(groups: np.ndarray, splits: Mapping[str, np.ndarray]) -> list[int]:
    """Ids of the groups whose voices lie in more than one split (none for the grouped split)."""
    where = np.empty(len(groups), dtype=object)
    for s, idx in splits.items():
        where[np.asarray(idx, dtype=np.int64)] = s
    return [int(k) for k in np.unique(groups) if len(set(where[groups == k])) > 1]


def _ensure_corpus(cfg: DataConfig, out: Path, force: bool, progress: bool) -> None:
    """Build ``out/corpus`` from the training factory voices when ``corpus_size > 0`` and it is missing or stale."""
    if cfg.corpus_size <= 0:
        return
    from deepafx.recipes.dexed_matching.corpus import build_corpus

    meta_path = out / "corpus" / "meta.json"
    if meta_path.exists() and not force:
        if _stored_settings(json.loads(meta_path.read_text()).get("settings")) == cfg.corpus_settings:
            if progress:
                print(f"corpus in {out / 'corpus'} is up to date")
            return
    ind = np.load(out / "in_domain.npz")
    train_ids = np.unique(ind["source_train"])
    factory_train = ind["factory_x"][train_ids]
    if progress:
        print(f"rendering a corpus of {cfg.corpus_size} presets from {len(factory_train)} training voices "
              f"on {cfg.num_workers} worker(s)")
    build_corpus(out / "corpus", factory_train, size=int(cfg.corpus_size), radii=cfg.corpus_radii,
                 random_fraction=float(cfg.corpus_random_fraction), seed=int(cfg.seed), sample_rate=cfg.sample_rate,
                 notes=cfg.notes, note_duration_seconds=cfg.note_duration_seconds, duration_seconds=cfg.duration_seconds,
                 feature=cfg.feature_settings(), min_level_db=cfg.min_level_db, num_workers=int(cfg.num_workers),
                 progress=progress, settings=cfg.corpus_settings, source_ids=train_ids)


def _stored_settings(settings: Any) -> Any:
    """Data settings read back from a manifest or corpus written before a key was renamed, with today's keys."""
    from deepafx.config import upgrade_keys

    return upgrade_keys(settings, "data") if isinstance(settings, Mapping) else settings


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


@dataclass
class RecipeData:
    """A built dataset loaded in memory.

    Attributes:
        config: The :class:`DataConfig` it was built with.
        x: ``{split: (M, 145)}`` normalized in-domain presets (transpose set from the pitch).
        pitch: ``{split: (M,)}`` MIDI pitch of each in-domain preset.
        source: ``{split: (M,)}`` index of the factory voice each preset comes from.
        ood_audio: ``{split: (M, C, N)}`` out-of-domain notes.
        ood_pitch: ``{split: (M,)}``; ood_program: ``{split: (M,)}``.
        reference_level_db: Median RMS level of the factory voices, dBFS.
        factory_names: Names of the kept factory voices.
        factory_cluster: ``(F,)`` group id of each kept factory voice (empty for datasets of version 1).
        novelty: ``{"in_domain" | "out_of_domain": {"valid" | "test": (M,)}}`` LSD in dB of each held-out
            sound to the nearest training factory voice (empty for datasets of version 1).
    """

    config: DataConfig
    x: dict[str, np.ndarray]
    pitch: dict[str, np.ndarray]
    source: dict[str, np.ndarray]
    ood_audio: dict[str, np.ndarray]
    ood_pitch: dict[str, np.ndarray]
    ood_program: dict[str, np.ndarray]
    reference_level_db: float
    factory_names: np.ndarray = field(default_factory=lambda: np.array([]))
    factory_cluster: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    novelty: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def load_dataset(data_dir: str | Path) -> RecipeData:
    """Load a dataset written by :func:`build_dataset`.

    Raises:
        FileNotFoundError: ``data_dir`` holds no dataset (says which command builds it).
    """
    d = Path(data_dir)
    if not (d / "manifest.json").exists():
        raise FileNotFoundError(f"no Dexed dataset in {d}; build it with `deepafx data --config CONFIG --out {d}`")
    manifest = json.loads((d / "manifest.json").read_text())
    settings = dict(_stored_settings(manifest["settings"]))
    if int(manifest.get("version", 1)) < 2:  # built before the grouped split existed: split by index
        settings.setdefault("split", "index")
    cfg = DataConfig.from_dict(settings)
    ind = np.load(d / "in_domain.npz")
    ood = np.load(d / "out_of_domain.npz")
    splits = ("train", "valid", "test")
    novelty = {dom: {s: src[f"novelty_{s}"] for s in ("valid", "test") if f"novelty_{s}" in src.files}
               for dom, src in (("in_domain", ind), ("out_of_domain", ood))}
    return RecipeData(
        config=cfg,
        x={s: ind[f"x_{s}"] for s in splits},
        pitch={s: ind[f"pitch_{s}"] for s in splits},
        source={s: ind[f"source_{s}"] for s in splits},
        ood_audio={s: ood[f"audio_{s}"] for s in splits},
        ood_pitch={s: ood[f"pitch_{s}"] for s in splits},
        ood_program={s: ood[f"program_{s}"] for s in splits},
        reference_level_db=float(manifest["reference_level_db"]),
        factory_names=ind["factory_names"],
        factory_cluster=ind["factory_cluster"] if "factory_cluster" in ind.files else np.zeros(0, dtype=np.int64),
        novelty={dom: v for dom, v in novelty.items() if v},
    )


__all__ = [
    "DEFAULT_SOUNDFONT",
    "DataConfig",
    "RecipeData",
    "build_dataset",
    "load_dataset",
    "novelty",
    "rms_db",
]
