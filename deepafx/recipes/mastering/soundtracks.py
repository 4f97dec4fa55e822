"""Real masters as mastering data: Debian's free game soundtracks, "unmastered" by a documented random process.

Albums
------
Debian ships professionally produced game soundtracks as free software
(:data:`ALBUMS`: package, genre, licence). The data command fetches each
package's files with :func:`deepafx.data.debian.fetch_package` (``apt-get
download`` + ``dpkg -x``, no root, cached), decodes the tracks (Ogg Vorbis and
Opus through libsndfile; the music inside a ``.pk3`` zip is unpacked first),
resamples them to ``sample_rate`` with soxr and makes them stereo.

Splits are **by album**: ``train_albums``, ``valid_albums`` and
``test_albums`` are disjoint (an error otherwise), so no track, and no track of
the same production, is heard both in training and in evaluation.

Excerpts
--------
From each track (at least ``min_track_seconds`` long, sample rate at least
``min_source_rate_hz``; at most ``tracks_per_album[split]`` tracks, drawn with a
seed) ``excerpts_per_track[split]`` excerpts of ``excerpt_seconds`` are cut, one
per equal part of the track between 5 % and 95 % of its length, the start drawn
uniformly within its part. An excerpt quieter than ``min_excerpt_lufs`` is
drawn again (three tries) or skipped. Every draw of an excerpt uses its own
generator, seeded by ``(seed, album, track, index)``: an excerpt never changes
when the dataset grows or other albums are added.

Target
------
The real master, **gain only**, to ``target_lufs`` integrated (BS.1770-4,
pyloudnorm) on the excerpt. A master that would peak above
``true_peak_dbtp`` at that loudness (a quiet, dynamic master such as an
orchestral cue) is raised only until its true peak meets the ceiling, so its
target stays quieter than ``target_lufs``: no limiter touches the target,
the ceiling is never exceeded. The manifest counts these peak-bound targets.

Input: the master "unmastered"
------------------------------
With probability ``released_fraction`` the input is the master exactly as
released (its own level and dynamics: a finished, often loud master, the
case a mastering model must not make louder still). Otherwise, in this order:

1. **Upward expansion** that undoes part of the limiting and compression: an
   RMS envelope of the channel mean (one-pole smoothing of the power with
   ``expansion_time_ms``) above a threshold at a drawn percentile
   (``expansion_percentile``) of the excerpt's envelope gets
   ``(ratio − 1) × (envelope − threshold)`` dB of gain, ratio uniform in
   ``expansion_ratio_range``, at most ``max_expansion_db``.
2. **EQ**: a tilt of uniform ±``tilt_db`` dB (low shelf at 250 Hz at −tilt/2
   and high shelf at 4 kHz at +tilt/2, pedalboard filters) and a uniform
   ``num_bands`` count of peak bands, centre log-uniform on 60 Hz … 12 kHz,
   gain uniform ±``band_gain_db`` dB, Q uniform on 0.7 … 2.
3. **Width** (optional): the side signal scaled by a uniform factor from
   ``width_range`` (default ``(1, 1)``: off, as the mastering chains have no
   width control to undo it with).
4. **Level**: integrated loudness uniform on ``input_lufs_range``; an input
   whose drawn loudness would put its sample peak above ``input_peak_dbfs``
   is turned down until it peaks there (the loudness it then has is recorded).

Every draw and every measured level is written to the excerpt's JSON and
summarized in the manifest (``levels``).

Layout written by :func:`build_dataset` (the same as
:mod:`deepafx.recipes.mastering.music`, so the trainer and evaluator read both)::

    out_dir/manifest.json
    out_dir/{train,valid,test}/<excerpt>_{input,target}.wav   # 32-bit float
    out_dir/{train,valid,test}/<excerpt>.json
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import os
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import soundfile as sf

from deepafx.data.pieces import SPLITS, read_json, remove_unplanned

log = logging.getLogger(__name__)

__all__ = [
    "ALBUMS",
    "Album",
    "SoundtrackDataConfig",
    "album_tracks",
    "build_dataset",
    "make_target",
    "read_track",
    "unmaster",
]

#: Version of the excerpt/unmastering code; a change rebuilds every dataset.
SOUNDTRACK_VERSION = 1


@dataclass(frozen=True)
class Album:
    """One Debian soundtrack package.

    Attributes:
        name: Short name used in configs and excerpt ids.
        package: Debian package name.
        pattern: Glob of its music files relative to the package root; ``ZIP!GLOB``
            for files inside a zip archive (``.pk3``) of the package.
        genre: Genre, as the README tables name it.
        licence: Licence of the music (from the package's copyright file).
    """

    name: str
    package: str
    pattern: str
    genre: str
    licence: str


#: The soundtracks checked for this recipe (contents and copyright files of Debian 12's packages).
ALBUMS: dict[str, Album] = {a.name: a for a in (
    Album("wesnoth", "wesnoth-1.16-music", "usr/share/games/wesnoth/1.16/data/core/music/*.ogg",
          "orchestral", "GPL-2+"),
    Album("nexuiz", "nexuiz-music", "usr/share/games/nexuiz/data/music.pk3!sound/cdtracks/*.ogg",
          "electronic / rock", "GPL-2+"),
    Album("warzone2100", "warzone2100-music", "usr/share/games/warzone2100/music/**/*.opus",
          "electronic / orchestral", "GPL-2+, CC-BY-SA-3.0"),
    Album("ufoai", "ufoai-music", "usr/share/games/ufoai/base/0music.pk3!music/*.ogg",
          "orchestral / electronic", "GPL-2+, CC-BY-3.0, CC-BY-SA-3.0"),
    Album("hyperrogue", "hyperrogue-music", "usr/share/hyperrogue/music/*.ogg",
          "ambient / world", "CC-BY-SA-3.0"),
    Album("singularity", "singularity-music", "usr/share/games/singularity/music/*.ogg",
          "ambient / electronic", "CC-BY-SA-3.0"),
    Album("supertux", "supertux-data", "usr/share/games/supertux2/music/**/*.ogg",
          "game pop / chiptune", "GPL-2+, CC-BY-SA"),
)}


# --------------------------------------------------------------------------- config
def _per_split(value: Any, name: str, allow_none: bool) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        value = {s: value for s in SPLITS}
    unknown = set(value) - set(SPLITS)
    if unknown:
        raise ValueError(f"{name}: unknown split(s) {sorted(unknown)}; use {list(SPLITS)}")
    out = {s: value.get(s) for s in SPLITS}
    for s, v in out.items():
        if v is None and allow_none:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
            raise ValueError(f"{name}.{s} must be an integer >= 1{' or null' if allow_none else ''}, got {v!r}")
        out[s] = int(v)
    return out


@dataclass(frozen=True)
class SoundtrackDataConfig:
    """The ``data:`` section of a mastering config with ``source: soundtracks`` (see the module docstring).

    Attributes:
        source: Always ``"soundtracks"`` (``"scores"`` selects
            :class:`~deepafx.recipes.mastering.music.MusicDataConfig`).
        sample_rate: Output sample rate, Hz.
        train_albums, valid_albums, test_albums: Album names (:data:`ALBUMS`) per split; disjoint.
        tracks_per_album: Most tracks taken per album, per split (``{train, valid, test}``
            or one int for all; ``null``: every track). Drawn with ``seed``.
        excerpts_per_track: Excerpts cut per track, per split (or one int).
        excerpt_seconds: Excerpt length, seconds (>= 5).
        min_track_seconds: Shorter tracks are skipped, seconds.
        min_source_rate_hz: Tracks stored at a lower rate are skipped, Hz.
        min_excerpt_lufs: Quieter excerpts are drawn again, LUFS.
        seed: Seed of every draw.
        target_lufs: Loudness the targets are turned to (gain only), LUFS.
        true_peak_dbtp: True-peak ceiling of the targets, dBTP (bounds the gain up).
        released_fraction: Probability that an input is the master as released, [0, 1].
        input_lufs_range: ``(min, max)`` integrated loudness of the unmastered inputs, LUFS.
        input_peak_dbfs: Sample-peak ceiling of the unmastered inputs, dBFS.
        expansion_ratio_range: Upward-expansion ratio range (>= 1).
        expansion_percentile: Range of the envelope percentile the expansion threshold sits at, %.
        expansion_time_ms: Time constant of the expansion's RMS envelope, ms.
        max_expansion_db: Largest expansion gain, dB.
        tilt_db: Bound of the spectral tilt, dB.
        num_bands: ``(min, max)`` count of random peak bands.
        band_gain_db: Bound of each peak band's gain, dB.
        width_range: Range of the side-signal scale (``(1, 1)``: off).
        scores: A :class:`~deepafx.recipes.mastering.music.MusicDataConfig` mapping whose
            *training* split (scores rendered by FluidSynth, mastered by the reference
            engineer) is added to the training excerpts (``null``: real masters only).
        package_dir: Cache of unpacked Debian packages (``null``:
            :func:`deepafx.data.debian.default_cache_dir`).

    Raises:
        ValueError: an unknown album, an album in two splits, an empty train or test
            split, or a value out of range (the message names the key).
    """

    source: str = "soundtracks"
    sample_rate: int = 44100
    train_albums: tuple[str, ...] = ("warzone2100", "ufoai", "supertux", "singularity")
    valid_albums: tuple[str, ...] = ("hyperrogue",)
    test_albums: tuple[str, ...] = ("nexuiz", "wesnoth")
    tracks_per_album: Any = None
    excerpts_per_track: Any = field(default_factory=lambda: {"train": 2, "valid": 1, "test": 1})
    excerpt_seconds: float = 20.0
    min_track_seconds: float = 45.0
    min_source_rate_hz: float = 32000.0
    min_excerpt_lufs: float = -45.0
    seed: int = 0
    target_lufs: float = -14.0
    true_peak_dbtp: float = -1.0
    released_fraction: float = 0.15
    input_lufs_range: tuple[float, float] = (-34.0, -8.0)
    input_peak_dbfs: float = -0.1
    expansion_ratio_range: tuple[float, float] = (1.0, 1.5)
    expansion_percentile: tuple[float, float] = (30.0, 70.0)
    expansion_time_ms: float = 20.0
    max_expansion_db: float = 9.0
    tilt_db: float = 4.0
    num_bands: tuple[int, int] = (1, 3)
    band_gain_db: float = 6.0
    width_range: tuple[float, float] = (1.0, 1.0)
    scores: Any = None
    package_dir: str | None = None

    def __post_init__(self) -> None:
        if self.source != "soundtracks":
            raise ValueError(f"source must be 'soundtracks' here, got {self.source!r}")
        object.__setattr__(self, "tracks_per_album", _per_split(self.tracks_per_album, "tracks_per_album", True))
        object.__setattr__(self, "excerpts_per_track", _per_split(self.excerpts_per_track, "excerpts_per_track",
                                                                  False))
        seen: dict[str, str] = {}
        for split in SPLITS:
            for a in getattr(self, f"{split}_albums"):
                if a not in ALBUMS:
                    raise ValueError(f"{split}_albums: unknown album {a!r}; choose from {sorted(ALBUMS)}")
                if a in seen:
                    raise ValueError(f"album {a!r} is in both {seen[a]}_albums and {split}_albums: "
                                     "splits are by album and must be disjoint")
                seen[a] = split
        if not self.train_albums or not self.test_albums:
            raise ValueError("train_albums and test_albums must each name at least one album")
        if self.sample_rate < 8000:
            raise ValueError(f"sample_rate must be >= 8000 Hz, got {self.sample_rate}")
        if not 5.0 <= self.excerpt_seconds <= self.min_track_seconds:
            raise ValueError(f"need 5 s <= excerpt_seconds ({self.excerpt_seconds}) <= min_track_seconds "
                             f"({self.min_track_seconds})")
        if not 0.0 <= self.released_fraction <= 1.0:
            raise ValueError(f"released_fraction must be in [0, 1], got {self.released_fraction}")
        lo, hi = self.input_lufs_range
        if not lo <= hi <= -5.0:
            raise ValueError(f"input_lufs_range must be (min, max) LUFS with min <= max <= -5, got "
                             f"{self.input_lufs_range}")
        if self.true_peak_dbtp > 0 or self.input_peak_dbfs > 0:
            raise ValueError("true_peak_dbtp and input_peak_dbfs must be <= 0 dB")
        r0, r1 = self.expansion_ratio_range
        if not 1.0 <= r0 <= r1 <= 4.0:
            raise ValueError(f"expansion_ratio_range must satisfy 1 <= min <= max <= 4, got {self.expansion_ratio_range}")
        p0, p1 = self.expansion_percentile
        if not 0.0 <= p0 <= p1 <= 100.0:
            raise ValueError(f"expansion_percentile must be within [0, 100], got {self.expansion_percentile}")
        b0, b1 = self.num_bands
        if not 0 <= b0 <= b1 <= 8:
            raise ValueError(f"num_bands must satisfy 0 <= min <= max <= 8, got {self.num_bands}")
        w0, w1 = self.width_range
        if not 0.0 <= w0 <= w1 <= 2.0:
            raise ValueError(f"width_range must be within [0, 2], got {self.width_range}")
        if min(self.tilt_db, self.band_gain_db, self.max_expansion_db) < 0 or self.expansion_time_ms <= 0:
            raise ValueError("tilt_db, band_gain_db and max_expansion_db must be >= 0 dB, expansion_time_ms > 0")
        if self.scores is not None:
            from deepafx.recipes.mastering.music import MusicDataConfig

            if not isinstance(self.scores, (Mapping, MusicDataConfig)):
                raise ValueError("scores must be a mapping of score-data settings (see MusicDataConfig) or null")
            sc = self.scores if isinstance(self.scores, MusicDataConfig) else MusicDataConfig.from_dict(self.scores)
            if sc.sample_rate != self.sample_rate:
                raise ValueError(f"scores.sample_rate ({sc.sample_rate}) must equal sample_rate ({self.sample_rate})")
            object.__setattr__(self, "scores", sc)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "SoundtrackDataConfig":
        """Bind a ``data:`` mapping (lists become tuples; unknown keys are an error naming the allowed ones)."""
        from deepafx.config import bind

        d = dict(d or {})
        for k in ("train_albums", "valid_albums", "test_albums", "input_lufs_range", "expansion_ratio_range",
                  "expansion_percentile", "num_bands", "width_range"):
            if isinstance(d.get(k), list):
                d[k] = tuple(d[k])
        return bind(cls, d, "data")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of all fields."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "scores" and v is not None:
                v = v.to_dict()
            out[f.name] = list(v) if isinstance(v, tuple) else (dict(v) if isinstance(v, Mapping) else v)
        return out

    def split_of(self, album: str) -> str | None:
        """The split an album belongs to (``None``: not used)."""
        for s in SPLITS:
            if album in getattr(self, f"{s}_albums"):
                return s
        return None


# --------------------------------------------------------------------------- tracks
def _package_root(album: Album, cfg: SoundtrackDataConfig) -> Path:
    from deepafx.data.debian import fetch_package

    return fetch_package(album.package, cfg.package_dir)


def album_tracks(album: str | Album, cfg: SoundtrackDataConfig | None = None) -> list[Path]:
    """Every music file of an album, sorted (fetching the package on first use).

    Files inside a zip archive are unpacked once next to it (``<archive>.d/``,
    atomically).

    Raises:
        KeyError: an unknown album name.
        deepafx.data.debian.DebianFetchError: the package cannot be fetched.
        FileNotFoundError: the package holds no file matching the album's pattern.
    """
    a = ALBUMS[album] if isinstance(album, str) else album
    root = _package_root(a, cfg or SoundtrackDataConfig())
    if "!" in a.pattern:
        archive, inner = a.pattern.split("!", 1)
        zpath = root / archive
        unpacked = zpath.parent / (zpath.name + ".d")
        if not (unpacked / ".complete").is_file():
            if root == Path("/"):  # an installed package: unpack into the cache instead of /usr
                from deepafx.data.debian import default_cache_dir

                unpacked = Path(cfg.package_dir if cfg and cfg.package_dir else default_cache_dir()) / (
                    f"{a.package}-installed-" + zpath.name + ".d")
            if not (unpacked / ".complete").is_file():
                tmp = unpacked.with_name(unpacked.name + f".tmp{os.getpid()}")
                with zipfile.ZipFile(zpath) as z:
                    names = [n for n in z.namelist() if fnmatch.fnmatch(n, inner)]
                    for n in names:
                        z.extract(n, tmp)
                (tmp / ".complete").write_text("\n".join(names))
                if unpacked.exists():
                    import shutil

                    shutil.rmtree(unpacked)
                os.replace(tmp, unpacked)
        files = sorted(unpacked.glob(inner))
    else:
        files = sorted(root.glob(a.pattern))
    if not files:
        raise FileNotFoundError(f"album {a.name}: no file matches {a.pattern} under {root}")
    return files


def read_track(path: str | Path, sample_rate: int, start_seconds: float = 0.0,
               seconds: float | None = None) -> np.ndarray:
    """Decode (part of) a track as stereo float32 ``(2, samples)`` at ``sample_rate`` Hz.

    Mono is duplicated and more than two channels are downmixed
    (:func:`deepafx.audio.downmix`); the rate is converted with soxr
    (:func:`deepafx.audio.resample`).

    Raises:
        soundfile.LibsndfileError: an unreadable file.
    """
    from deepafx.audio import downmix, resample

    path = Path(path)
    info = sf.info(str(path))
    start = int(round(start_seconds * info.samplerate))
    frames = -1 if seconds is None else int(round(seconds * info.samplerate))
    # libsndfile directly: Ogg headers of these packages may declare a few thousand frames more than decode
    # (e.g. wesnoth's northerners.ogg: 5,806 of 9.1 M), which deepafx.audio.read_audio rightly refuses for a
    # user's file; here the decodable audio is the track
    data, _ = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    audio = np.ascontiguousarray(data.T)
    if audio.shape[0] == 1:
        audio = np.repeat(audio, 2, axis=0)
    elif audio.shape[0] > 2:
        audio, _ = downmix(audio, 2)
    return resample(audio, info.samplerate, sample_rate)


# --------------------------------------------------------------------------- target and input
def make_target(master: np.ndarray, sample_rate: float, target_lufs: float = -14.0,
                true_peak_dbtp: float = -1.0) -> tuple[np.ndarray, dict[str, Any]]:
    """The master, gain only, at ``target_lufs`` or quieter where its true peak would pass the ceiling.

    Args:
        master: ``(channels, samples)`` float, the released master.
        sample_rate: Hz.
        target_lufs: Integrated loudness wanted, LUFS.
        true_peak_dbtp: Ceiling on the result's true peak, dBTP.

    Returns:
        ``(target, info)``: target float32 like ``master``; info holds ``master_lufs``,
        ``master_true_peak_dbtp``, ``gain_db``, ``target_lufs`` (reached) and ``peak_bound``.

    Raises:
        ValueError: silent audio (no measurable loudness).
    """
    from deepafx import metrics

    lufs = metrics.lufs(master, sample_rate)
    if not np.isfinite(lufs):
        raise ValueError("master excerpt is silent (no measurable loudness)")
    tp = metrics.true_peak_dbtp(master, sample_rate)
    gain = target_lufs - lufs
    bound = tp + gain > true_peak_dbtp
    if bound:
        gain = true_peak_dbtp - tp
    target = (master * np.float32(10 ** (gain / 20))).astype(np.float32)
    return target, {"master_lufs": float(lufs), "master_true_peak_dbtp": float(tp), "gain_db": float(gain),
                    "target_lufs": float(lufs + gain), "peak_bound": bool(bound)}


def _expand(x: np.ndarray, sample_rate: float, ratio: float, percentile: float, time_ms: float,
            max_db: float) -> tuple[np.ndarray, dict[str, float]]:
    from scipy.signal import lfilter

    power = np.mean(x.astype(np.float64) ** 2, axis=0)
    a = float(np.exp(-1.0 / (time_ms * 1e-3 * sample_rate)))
    env = lfilter([1.0 - a], [1.0, -a], power)
    env_db = 10 * np.log10(np.maximum(env, 1e-12))
    active = env_db[env_db > -70.0]
    thr = float(np.percentile(active, percentile)) if active.size else 0.0
    gain_db = np.clip((ratio - 1.0) * (env_db - thr), 0.0, max_db)
    y = x * (10 ** (gain_db / 20)).astype(np.float32)[None, :]
    return y.astype(np.float32), {"threshold_db": thr, "mean_gain_db": float(gain_db.mean()),
                                  "max_gain_db": float(gain_db.max())}


def unmaster(master: np.ndarray, sample_rate: float, rng: np.random.Generator,
             cfg: SoundtrackDataConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Draw an "unmastered" input from a master (the process of the module docstring).

    Args:
        master: ``(2, samples)`` float32, the released master.
        sample_rate: Hz.
        rng: The excerpt's own generator.
        cfg: The settings (ranges of every draw).

    Returns:
        ``(input, info)``: input ``(2, samples)`` float32; info holds every draw and
        the input's loudness (LUFS) and sample peak (dBFS).
    """
    import pedalboard

    from deepafx import metrics

    info: dict[str, Any] = {}
    if rng.uniform() < cfg.released_fraction:
        x = master.astype(np.float32)
        info["released"] = True
    else:
        info["released"] = False
        ratio = float(rng.uniform(*cfg.expansion_ratio_range))
        pct = float(rng.uniform(*cfg.expansion_percentile))
        x, info["expansion"] = _expand(master, sample_rate, ratio, pct, cfg.expansion_time_ms, cfg.max_expansion_db)
        info["expansion"].update(ratio=ratio, percentile=pct)
        tilt = float(rng.uniform(-cfg.tilt_db, cfg.tilt_db))
        n_bands = int(rng.integers(cfg.num_bands[0], cfg.num_bands[1] + 1))
        bands = [{"hz": float(np.exp(rng.uniform(np.log(60.0), np.log(12000.0)))),
                  "gain_db": float(rng.uniform(-cfg.band_gain_db, cfg.band_gain_db)),
                  "q": float(rng.uniform(0.7, 2.0))} for _ in range(n_bands)]
        board = pedalboard.Pedalboard(
            [pedalboard.LowShelfFilter(cutoff_frequency_hz=250.0, gain_db=-tilt / 2, q=0.707),
             pedalboard.HighShelfFilter(cutoff_frequency_hz=4000.0, gain_db=tilt / 2, q=0.707)]
            + [pedalboard.PeakFilter(cutoff_frequency_hz=min(b["hz"], 0.45 * sample_rate), gain_db=b["gain_db"],
                                     q=b["q"]) for b in bands])
        x = board(x, sample_rate)
        info["eq"] = {"tilt_db": tilt, "bands": bands}
        width = float(rng.uniform(*cfg.width_range))
        if width != 1.0:
            mid, side = (x[0] + x[1]) / 2, (x[0] - x[1]) / 2 * width
            x = np.stack([mid + side, mid - side]).astype(np.float32)
        info["width"] = width
        drawn = float(rng.uniform(*cfg.input_lufs_range))
        now = metrics.lufs(x, sample_rate)
        gain = drawn - now
        peak = metrics.sample_peak_dbfs(x) + gain
        info["level"] = {"drawn_lufs": drawn, "peak_bound": bool(peak > cfg.input_peak_dbfs)}
        if peak > cfg.input_peak_dbfs:
            gain -= peak - cfg.input_peak_dbfs
        x = (x * np.float32(10 ** (gain / 20))).astype(np.float32)
    info["input_lufs"] = float(metrics.lufs(x, sample_rate))
    info["input_peak_dbfs"] = float(metrics.sample_peak_dbfs(x))
    return np.ascontiguousarray(x, dtype=np.float32), info


# --------------------------------------------------------------------------- dataset
def _rng(cfg: SoundtrackDataConfig, *key: Any) -> np.random.Generator:
    words = [int(cfg.seed)] + [zlib.crc32(str(k).encode()) for k in key]
    return np.random.default_rng(words)


def _slug(path: Path) -> str:
    s = "".join(c if c.isalnum() else "_" for c in path.stem.lower()).strip("_")
    while "__" in s:
        s = s.replace("__", "_")
    return s or "track"


def _eligible(files: list[Path], cfg: SoundtrackDataConfig) -> tuple[list[tuple[Path, float]], list[dict]]:
    keep, skipped = [], []
    for f in files:
        try:
            info = sf.info(str(f))
        except (RuntimeError, sf.LibsndfileError) as exc:
            skipped.append({"file": f.name, "reason": f"unreadable: {exc}"})
            continue
        if info.duration < cfg.min_track_seconds:
            skipped.append({"file": f.name, "reason": f"{info.duration:.0f} s < min_track_seconds"})
        elif info.samplerate < cfg.min_source_rate_hz:
            skipped.append({"file": f.name, "reason": f"stored at {info.samplerate} Hz < min_source_rate_hz"})
        else:
            keep.append((f, float(info.duration)))
    return keep, skipped


def _write(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    sf.write(str(tmp), np.ascontiguousarray(audio.T), sample_rate, subtype="FLOAT", format="WAV")
    os.replace(tmp, path)


def _plan(cfg: SoundtrackDataConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every excerpt to cut: ``{id, split, album, track, path, index, part}``, and the skipped tracks."""
    plan, skipped = [], []
    for split in SPLITS:
        for name in getattr(cfg, f"{split}_albums"):
            tracks, skip = _eligible(album_tracks(name, cfg), cfg)
            skipped += [dict(s, album=name) for s in skip]
            n = cfg.tracks_per_album[split]
            if n is not None and n < len(tracks):
                pick = np.sort(_rng(cfg, "tracks", name).choice(len(tracks), size=n, replace=False))
                tracks = [tracks[i] for i in pick]
            slugs: dict[str, int] = {}
            for path, duration in tracks:
                slug = _slug(path)
                slugs[slug] = slugs.get(slug, 0) + 1
                if slugs[slug] > 1:
                    slug = f"{slug}_{slugs[slug]}"
                for k in range(cfg.excerpts_per_track[split]):
                    plan.append({"id": f"{name}-{slug}-{k}", "split": split, "album": name, "track": slug,
                                 "path": str(path), "duration": duration, "index": k,
                                 "parts": cfg.excerpts_per_track[split]})
    return plan, skipped


def _cut(item: Mapping[str, Any], cfg: SoundtrackDataConfig) -> tuple[np.ndarray, float] | None:
    """The excerpt's master audio and start (seconds), or ``None`` when every try was too quiet."""
    from deepafx import metrics

    rng = _rng(cfg, "excerpt", item["album"], item["track"], item["index"])
    lo, hi = 0.05 * item["duration"], 0.95 * item["duration"] - cfg.excerpt_seconds
    width = max(hi - lo, 0.0) / item["parts"]
    for _ in range(3):
        start = lo + width * (item["index"] + rng.uniform()) if hi > lo else max(0.0, (item["duration"] - cfg.excerpt_seconds) / 2)
        audio = read_track(item["path"], cfg.sample_rate, start, cfg.excerpt_seconds)
        loud = metrics.lufs(audio, cfg.sample_rate)
        if np.isfinite(loud) and loud >= cfg.min_excerpt_lufs:
            return audio, float(start)
    return None


def _settings_dict(cfg: SoundtrackDataConfig) -> dict[str, Any]:
    d = cfg.to_dict()
    d.pop("package_dir")
    return json.loads(json.dumps(d))


def build_dataset(config: SoundtrackDataConfig | Mapping[str, Any], out_dir: str | Path, force: bool = False) -> Path:
    """Cut, unmaster and write the soundtrack dataset (cached; deterministic).

    When ``manifest.json`` already describes these settings and all its files
    exist, nothing is done; otherwise excerpts whose JSON holds the same settings
    key are kept and the rest are cut again. With ``scores`` set, the score dataset
    is built in ``out_dir/scores`` (named in the manifest's ``scores``); the
    trainer adds its training pieces to this dataset's (:func:`load_training`).

    Args:
        config: Settings (or a ``data:`` mapping).
        out_dir: Dataset folder (created).
        force: Cut every excerpt again.

    Returns:
        ``out_dir``.

    Raises:
        deepafx.data.debian.DebianFetchError: a package cannot be fetched.
        ValueError: bad settings, or a split left without excerpts.
    """
    from tqdm import tqdm

    cfg = config if isinstance(config, SoundtrackDataConfig) else SoundtrackDataConfig.from_dict(config)
    out_dir = Path(out_dir)
    settings = _settings_dict(cfg)
    if not force and _up_to_date(out_dir, settings):
        log.info("dataset in %s is up to date (force=True rebuilds)", out_dir)
        return out_dir
    t0 = time.perf_counter()
    for split in SPLITS:
        (out_dir / split).mkdir(parents=True, exist_ok=True)
    plan, skipped_tracks = _plan(cfg)
    key = json.dumps({k: v for k, v in settings.items() if k != "scores"}, sort_keys=True)
    key = f"{SOUNDTRACK_VERSION}-{zlib.crc32(key.encode()):08x}"
    metas: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for item in tqdm(plan, desc="soundtrack excerpts", unit="excerpt", leave=False):
        split, eid = item["split"], item["id"]
        jpath = out_dir / split / f"{eid}.json"
        old = read_json(jpath)
        if (not force and old and old.get("key") == key and (out_dir / split / f"{eid}_input.wav").is_file()
                and (out_dir / split / f"{eid}_target.wav").is_file()):
            metas.append(old)
            continue
        cut = _cut(item, cfg)
        if cut is None:
            skipped.append({"id": eid, "reason": f"quieter than {cfg.min_excerpt_lufs} LUFS in 3 tries"})
            continue
        master, start = cut
        target, tinfo = make_target(master, cfg.sample_rate, cfg.target_lufs, cfg.true_peak_dbtp)
        x, uinfo = unmaster(master, cfg.sample_rate, _rng(cfg, "unmaster", item["album"], item["track"],
                                                             item["index"]), cfg)
        _write(out_dir / split / f"{eid}_input.wav", x, cfg.sample_rate)
        _write(out_dir / split / f"{eid}_target.wav", target, cfg.sample_rate)
        meta = {"piece_id": eid, "split": split, "album": item["album"], "track": item["track"],
                "file": Path(item["path"]).name, "source_path": item["path"], "start_seconds": start,
                "seconds": master.shape[1] / cfg.sample_rate, "key": key, "target": tinfo, "input": uinfo}
        jpath.write_text(json.dumps(meta, indent=1, sort_keys=True))
        metas.append(meta)
    scores_info = None
    if cfg.scores is not None:
        from deepafx.recipes.mastering.music import build_dataset as build_scores

        sdir = build_scores(cfg.scores, out_dir / "scores")
        smanifest = json.loads((sdir / "manifest.json").read_text())
        scores_info = {"dir": "scores", "train_pieces": len(smanifest["splits"]["train"]["pieces"]),
                       "train_minutes": smanifest["splits"]["train"]["minutes"]}
    remove_unplanned(out_dir, {(m["split"], m["piece_id"]) for m in metas})
    for split in SPLITS:
        if split != "valid" and not any(m["split"] == split for m in metas):
            raise ValueError(f"the {split} split has no excerpt; check {split}_albums and tracks_per_album")
    manifest = {
        "recipe": "mastering",
        "source": "soundtracks",
        "format": {"layout": "{split}/{piece}_{input,target}.wav", "subtype": "FLOAT", "channels": 2},
        "settings": settings,
        "software": {"soundtrack_version": SOUNDTRACK_VERSION, "libsndfile": sf.__libsndfile_version__},
        "albums": {name: dataclasses.asdict(ALBUMS[name]) | {"split": cfg.split_of(name)}
                   for s in SPLITS for name in getattr(cfg, f"{s}_albums")},
        "splits": {
            s: {"pieces": [m["piece_id"] for m in metas if m["split"] == s],
                "seconds": round(sum(m["seconds"] for m in metas if m["split"] == s), 3),
                "minutes": round(sum(m["seconds"] for m in metas if m["split"] == s) / 60, 3),
                "albums": sorted({m["album"] for m in metas if m["split"] == s})}
            for s in SPLITS
        },
        "pieces": [{"piece_id": m["piece_id"], "split": m["split"], "album": m["album"], "track": m["track"],
                    "source_path": m["source_path"], "seconds": m["seconds"]} for m in metas],
        "levels": _levels(metas),
        "scores": scores_info,
        "skipped": {"tracks": skipped_tracks, "excerpts": skipped},
        "build_seconds": round(time.perf_counter() - t0, 3),
    }
    tmp = out_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out_dir / "manifest.json")
    log.info("soundtrack dataset %s: %s", out_dir, ", ".join(
        f"{s} {manifest['splits'][s]['minutes']:.1f} min ({len(manifest['splits'][s]['pieces'])} excerpts)"
        for s in SPLITS))
    return out_dir


def _levels(metas: list[dict[str, Any]]) -> dict[str, Any]:
    """Distribution summary of the inputs' and targets' levels (for the README)."""
    def q(vals: list[float]) -> dict[str, float] | None:
        if not vals:
            return None
        p = np.percentile(vals, [0, 10, 50, 90, 100])
        return {"min": float(p[0]), "p10": float(p[1]), "median": float(p[2]), "p90": float(p[3]), "max": float(p[4])}

    return {
        "input_lufs": q([m["input"]["input_lufs"] for m in metas]),
        "master_lufs": q([m["target"]["master_lufs"] for m in metas]),
        "master_true_peak_dbtp": q([m["target"]["master_true_peak_dbtp"] for m in metas]),
        "target_lufs": q([m["target"]["target_lufs"] for m in metas]),
        "released_inputs": int(sum(m["input"]["released"] for m in metas)),
        "peak_bound_inputs": int(sum(m["input"].get("level", {}).get("peak_bound", False) for m in metas)),
        "peak_bound_targets": int(sum(m["target"]["peak_bound"] for m in metas)),
        "excerpts": len(metas),
    }


def _up_to_date(out_dir: Path, settings: Mapping[str, Any]) -> bool:
    manifest = read_json(out_dir / "manifest.json")
    if not manifest or manifest.get("settings") != settings:
        return False
    if manifest.get("software", {}).get("soundtrack_version") != SOUNDTRACK_VERSION:
        return False
    for s, info in manifest["splits"].items():
        for p in info["pieces"]:
            for kind in ("input", "target"):
                if not (out_dir / s / f"{p}_{kind}.wav").is_file():
                    return False
    return True


def whole_tracks(dataset_dir: str | Path, split: str = "test") -> list[dict[str, Any]]:
    """The source tracks of a split's excerpts, once each: ``{album, track, path}`` in manifest order."""
    manifest = json.loads((Path(dataset_dir) / "manifest.json").read_text())
    seen, out = set(), []
    for p in manifest["pieces"]:
        if p["split"] == split and (p["album"], p["track"]) not in seen:
            seen.add((p["album"], p["track"]))
            out.append({"album": p["album"], "track": p["track"], "path": p["source_path"]})
    return out


def load_training(dataset_dir: str | Path) -> tuple[list, list]:
    """``(train, valid)`` ``(input, target)`` pairs of a built dataset, the score pieces included when set.

    Returns:
        Lists of ``(channels, samples)`` float32 pairs: the training excerpts (then the
        score dataset's training pieces, with ``scores`` set) and the validation excerpts.
    """
    from deepafx.automation.task import load_tracks

    dataset_dir = Path(dataset_dir)
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    train = load_tracks(dataset_dir / "train")
    if manifest.get("scores"):
        train += load_tracks(dataset_dir / manifest["scores"]["dir"] / "train")
    return train, load_tracks(dataset_dir / "valid")
