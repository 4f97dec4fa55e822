"""The user's own data: unmastered/mastered file pairs, matched, resampled and aligned.

:func:`load_pairs` reads two folders, matches files by name (stem, so
``song.wav`` pairs with ``song.flac``), brings both files of a pair to one
sample rate (``soxr``) and channel count, and aligns them in time by
cross-correlation with a bounded lag (mastering adds latency: limiters and
linear-phase EQs delay the signal, exports add or trim silence). Nothing is
written to disk.

Conventions:

* **Channels**: a mono file paired with a stereo one is duplicated to stereo
  (the other way round would throw away the stereo image of the target);
  other mismatches (e.g. 2 vs 6 channels) are errors.
* **Lag**: ``lag_samples > 0`` means the mastered file is *late*: mastered
  sample ``t + lag`` matches unmastered sample ``t``. The lag is estimated on
  the mono sums over an excerpt of at most ``align_excerpt_seconds`` from the
  loudest region, by FFT cross-correlation restricted to
  ``|lag| <= max_lag_seconds``, as the argmax of the *absolute* correlation;
  a polarity flip is reported (``polarity = -1``) but the audio is left as is
  (the delay-invariant loss is polarity-invariant).
* **Length**: after alignment both files are cut to their overlap; if the
  overlap is shorter than either aligned file by more than
  ``max_length_mismatch_seconds`` the pair is rejected (they are probably not
  the same take or the same edit).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.signal

from deepafx.audio import SILENCE_DBFS, read_audio, resample, silence_warning
from deepafx.hosts.base import AudioError

logger = logging.getLogger(__name__)

__all__ = ["Pair", "estimate_lag", "load_pairs"]

#: File extensions read (anything libsndfile decodes).
AUDIO_EXTENSIONS = (".wav", ".flac", ".aif", ".aiff", ".ogg", ".mp3")


@dataclass
class Pair:
    """One aligned unmastered/mastered pair.

    Attributes:
        name: Shared file stem.
        input: ``(channels, samples)`` float32 unmastered audio.
        target: ``(channels, samples)`` float32 mastered audio, same shape,
            aligned with ``input``.
        sample_rate: Sample rate of both in Hz.
        lag_samples: Estimated delay of the mastered file relative to the
            unmastered one (samples at ``sample_rate``; > 0: mastered is late).
        polarity: +1, or -1 when the mastered file is polarity-inverted.
        correlation: Normalized cross-correlation at the lag, [0, 1].
        input_path: Source file of ``input``.
        target_path: Source file of ``target``.
        notes: What was done to the files (resampling, channel changes, trims).
    """

    name: str
    input: np.ndarray
    target: np.ndarray
    sample_rate: int
    lag_samples: int
    polarity: int
    correlation: float
    input_path: Path
    target_path: Path
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return self.input.shape[1] / self.sample_rate


def _list_audio(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{role} folder {folder} does not exist or is not a folder")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS:
            if path.stem in files:
                raise ValueError(
                    f"{role} folder {folder} has two files named {path.stem!r} "
                    f"({files[path.stem].name}, {path.name}); keep one per name"
                )
            files[path.stem] = path
    if not files:
        raise ValueError(f"{role} folder {folder} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return files


def _read(path: Path, sample_rate: int, notes: list[str]) -> np.ndarray:
    """Read ``path`` (:func:`deepafx.audio.read_audio`) as ``(channels, samples)`` float32 at ``sample_rate`` Hz.

    Raises:
        AudioError: unreadable, truncated, empty, NaN/Inf, or silent (a silent
            file cannot be aligned or learned from).
    """
    src = read_audio(path)
    silent = silence_warning(src.audio, str(path), SILENCE_DBFS)
    if silent:
        raise AudioError(f"{silent}; a silent file cannot be aligned or learned from: remove the pair")
    for w in src.warnings:
        logger.warning(w)
        notes.append(w)
    audio = src.audio
    if src.sample_rate != sample_rate:
        msg = f"{path.name}: resampled {src.sample_rate} Hz -> {sample_rate} Hz (soxr)"
        logger.warning(msg)
        warnings.warn(msg, stacklevel=3)
        notes.append(msg)
        audio = resample(audio, src.sample_rate, sample_rate)
    return audio


def _match_channels(x: np.ndarray, y: np.ndarray, name: str, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    cx, cy = x.shape[0], y.shape[0]
    if cx == cy:
        return x, y
    if cx == 1:
        notes.append(f"{name}: unmastered file is mono, mastered has {cy} channels: mono duplicated to {cy}")
        logger.info(notes[-1])
        return np.repeat(x, cy, axis=0), y
    if cy == 1:
        notes.append(f"{name}: mastered file is mono, unmastered has {cx} channels: mono duplicated to {cx}")
        logger.info(notes[-1])
        return x, np.repeat(y, cx, axis=0)
    raise AudioError(
        f"{name}: unmastered file has {cx} channels but mastered has {cy}; convert one so both match "
        "(mono files are duplicated automatically)"
    )


def estimate_lag(
    reference: np.ndarray,
    delayed: np.ndarray,
    max_lag_samples: int,
    excerpt_samples: int | None = None,
) -> tuple[int, int, float]:
    """Delay of ``delayed`` relative to ``reference`` by bounded cross-correlation.

    Args:
        reference: ``(channels, samples)`` or ``(samples,)`` audio.
        delayed: ``(channels, samples)`` or ``(samples,)`` audio that should be
            ``reference`` delayed by the lag (and possibly processed).
        max_lag_samples: Largest absolute lag searched, in samples (>= 0).
        excerpt_samples: Correlate only this many samples of ``reference``
            around its loudest second (None: all of it).

    Returns:
        ``(lag, polarity, correlation)``: ``delayed[t + lag] ≈ polarity *
        reference[t]``; ``correlation`` is the normalized absolute correlation
        at that lag on the excerpt, [0, 1].
    """
    ref = np.asarray(reference, dtype=np.float64)
    dly = np.asarray(delayed, dtype=np.float64)
    ref = ref.mean(axis=0) if ref.ndim == 2 else ref
    dly = dly.mean(axis=0) if dly.ndim == 2 else dly
    max_lag = int(max_lag_samples)
    start, stop = 0, len(ref)
    if excerpt_samples is not None and excerpt_samples < len(ref):
        # Centre the excerpt on the loudest 1/10 of the excerpt length.
        win = max(1, excerpt_samples // 10)
        energy = np.convolve(ref**2, np.ones(win), mode="valid")
        centre = int(np.argmax(energy)) + win // 2
        start = int(np.clip(centre - excerpt_samples // 2, 0, len(ref) - excerpt_samples))
        stop = start + excerpt_samples
    seg = ref[start:stop]
    lo = max(0, start - max_lag)
    hi = min(len(dly), stop + max_lag)
    window = dly[lo:hi]
    if len(window) == 0:
        return 0, 1, 0.0
    # corr[k] = sum_t seg[t] * window[t + k]; lag = lo + k - start.
    corr = scipy.signal.correlate(window, seg, mode="full", method="fft")
    ks = np.arange(-(len(seg) - 1), len(window))
    lags = lo + ks - start
    valid = np.abs(lags) <= max_lag
    corr, lags, ks = corr[valid], lags[valid], ks[valid]
    i = int(np.argmax(np.abs(corr)))
    lag, k = int(lags[i]), int(ks[i])
    # Normalize by the energies of the overlapping parts at this lag.
    a0, a1 = max(0, -k), min(len(seg), len(window) - k)
    energy_seg = float(np.sum(seg[a0:a1] ** 2))
    energy_win = float(np.sum(window[a0 + k : a1 + k] ** 2))
    denom = np.sqrt(energy_seg * energy_win)
    correlation = float(abs(corr[i]) / denom) if denom > 0 else 0.0
    return lag, 1 if corr[i] >= 0 else -1, min(correlation, 1.0)


def load_pairs(
    unmastered_dir: Path | str,
    mastered_dir: Path | str,
    sample_rate: int,
    *,
    max_lag_seconds: float = 1.0,
    max_length_mismatch_seconds: float = 1.0,
    align_excerpt_seconds: float = 30.0,
    min_correlation: float = 0.2,
) -> list[Pair]:
    """Match, resample and align unmastered/mastered pairs from two folders.

    Args:
        unmastered_dir: Folder of unmastered mixes.
        mastered_dir: Folder of their masters, same file stems.
        sample_rate: Rate in Hz every file is brought to (soxr, with a warning).
        max_lag_seconds: Largest alignment lag searched, in seconds.
        max_length_mismatch_seconds: Largest difference in seconds between either
            aligned file and their overlap before the pair is rejected.
        align_excerpt_seconds: Length in seconds of the excerpt used for the
            cross-correlation (the loudest region of the unmastered file).
        min_correlation: Smallest normalized correlation at the found lag, [0, 1];
            below it the files are taken to be different music.

    Returns:
        Pairs sorted by name; ``input`` and ``target`` of each have equal shape.

    Raises:
        FileNotFoundError: a folder is missing.
        ValueError: names that do not match (the message lists the unmatched
            names of each folder), duplicate stems, empty folders, a pair whose
            lengths differ too much after alignment, or uncorrelated files
            (message names the files).
        AudioError: an unreadable, empty, NaN/Inf or silent file, or
            incompatible channel counts (message names the file).
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
    unmastered_dir, mastered_dir = Path(unmastered_dir), Path(mastered_dir)
    inputs = _list_audio(unmastered_dir, "unmastered")
    targets = _list_audio(mastered_dir, "mastered")
    only_in = sorted(set(inputs) - set(targets))
    only_tg = sorted(set(targets) - set(inputs))
    if only_in or only_tg:
        raise ValueError(
            "unmastered and mastered files must pair up by name (stem); "
            f"only in {unmastered_dir}: {only_in or 'none'}; only in {mastered_dir}: {only_tg or 'none'}"
        )
    max_lag = int(round(max_lag_seconds * sample_rate))
    tolerance = int(round(max_length_mismatch_seconds * sample_rate))
    pairs = []
    for name in sorted(inputs):
        notes: list[str] = []
        x = _read(inputs[name], sample_rate, notes)
        y = _read(targets[name], sample_rate, notes)
        x, y = _match_channels(x, y, name, notes)
        lag, polarity, corr = estimate_lag(x, y, max_lag, int(round(align_excerpt_seconds * sample_rate)))
        if corr < min_correlation:
            raise ValueError(
                f"{inputs[name]} and {targets[name]} do not look like the same music "
                f"(normalized correlation {corr:.3f} < {min_correlation} at the best lag within "
                f"±{max_lag_seconds} s); check the pairing or raise max_lag_seconds"
            )
        # Aligned: x[t] <-> y[t + lag].
        if lag >= 0:
            xa, ya = x, y[:, lag:]
        else:
            xa, ya = x[:, -lag:], y
        n = min(xa.shape[1], ya.shape[1])
        excess = max(xa.shape[1], ya.shape[1]) - n
        if excess > tolerance:
            raise ValueError(
                f"{name}: after aligning (lag {lag} samples) {inputs[name].name} has {xa.shape[1]} samples "
                f"and {targets[name].name} has {ya.shape[1]} ({excess / sample_rate:.2f} s apart, more than "
                f"{max_length_mismatch_seconds} s); are they the same edit of the song?"
            )
        if excess:
            notes.append(f"{name}: trimmed {excess} samples to the aligned overlap")
        if polarity < 0:
            notes.append(f"{name}: mastered file is polarity-inverted (left as is)")
        logger.info(
            "%s: lag %d samples (%.2f ms), polarity %+d, correlation %.3f",
            name, lag, 1e3 * lag / sample_rate, polarity, corr,
        )
        pairs.append(
            Pair(
                name=name,
                input=np.ascontiguousarray(xa[:, :n]),
                target=np.ascontiguousarray(ya[:, :n]),
                sample_rate=int(sample_rate),
                lag_samples=lag,
                polarity=polarity,
                correlation=corr,
                input_path=inputs[name],
                target_path=targets[name],
                notes=notes,
            )
        )
    return pairs
