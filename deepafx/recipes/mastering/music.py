"""Real-music dataset for the mastering recipe: scores → unmastered mixes → mastered targets.

Pieces come from the score corpus that ships with ``music21`` (Bach chorales,
Palestrina masses, Monteverdi madrigals, Mozart/Beethoven/Haydn string-quartet
movements, Josquin and Trecento music, Irish and German folk tunes, piano rags
…). Every piece is arranged and rendered into a stereo mix that sounds like an
*unmastered* production, then mastered by the hidden reference engineer
(:mod:`deepafx.recipes.mastering.engineer`) to make the target.

Arrangement (all draws seeded per piece, see :func:`arrange_piece`)
--------------------------------------------------------------------
* **Instrumentation**: a General MIDI ensemble per piece, drawn from the ones
  that suit its family (organ, strings, string ensemble, brass, woodwinds,
  saxophones, choir, piano, harpsichord, guitars, or a register-aware mix);
  each part gets the ensemble instrument that fits its median pitch. Folk
  tunes get a melody instrument (fiddle, flute, accordion, bagpipe …) and,
  often, an octave-lower doubling (guitar, cello, harp …).
* **Tempo**: the score's explicit metronome mark (±15 %) or a family range,
  with a slow random tempo drift of a few per cent (rubato).
* **Dynamics**: per-part base velocity, a piecewise-linear dynamic curve
  (crescendi/diminuendi), the score's own dynamic marks where present, and a
  small per-note jitter; per-part articulation (note-length factor).
* **Mix**: per-part level (CC7) and pan (CC10) spread across the stereo field,
  reverb send (CC91) into FluidSynth's reverb with a drawn room, optional
  chorus; then a drawn spectral colouring (low shelf, high shelf and a
  mid-range peak, ±6 dB, pedalboard filters) and an overall loudness drawn in
  ``input_lufs_range`` (−30 … −14 LUFS by default), with the sample peak kept
  at or below −1 dBFS as an unmastered mix would be.

Rendering uses FluidSynth (``pyfluidsynth`` bindings, float output) with
Debian's FluidR3_GM SoundFont, a fresh synthesizer per piece, so a piece's
audio depends only on its settings: same seed → byte-identical files,
whatever else is rendered and in whatever order. Long pieces are cut at
``max_piece_seconds`` (the last notes are released and the reverb tail
kept); short ones (folk tunes) are repeated, as they are played, up to
``min_piece_seconds``.

Splits are held out *by piece*: a piece's split is a pure function of the
seed, its identifier and the split fractions, so it never changes with the
dataset size: with the same seed and fractions (the presets share them), no
piece of the quick dataset's valid or test split is in the full dataset's
training split. Pieces are drawn in a seeded order across sources until every
split holds its share of audio.

Layout written by :func:`build_dataset`::

    out_dir/manifest.json
    out_dir/{train,valid,test}/<piece>_input.wav    # unmastered mix, 24-bit PCM
    out_dir/{train,valid,test}/<piece>_target.wav   # engineer's master, 24-bit PCM
    out_dir/{train,valid,test}/<piece>.json         # per-piece settings and cache keys
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import soundfile as sf

from deepafx.data.pieces import (  # noqa: F401  (PieceSpec, SOURCES, list_candidates, parse_score re-exported)
    SOURCES,
    SPLITS,
    ParsedScore,
    PieceSpec,
    ScorePart,
    find_cached,
    hashed_split,
    list_candidates,
    move_piece,
    parse_score,
    piece_order,
    piece_rng,
    read_json,
    remove_unplanned,
)
from deepafx.data.soundfont import DEFAULT_SOUNDFONT, load_synth, write_float
from deepafx.recipes.mastering import engineer

logger = logging.getLogger(__name__)

__all__ = [
    "FULL_PRESET",
    "MusicDataConfig",
    "PRESETS",
    "QUICK_PRESET",
    "PieceSpec",
    "build_dataset",
    "list_candidates",
    "load_split",
    "parse_score",
    "piece_split",
    "render_piece",
]

#: Version of the arrangement/render code; part of every cache key.
RENDER_VERSION = 1


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class MusicDataConfig:
    """Settings of the real-music mastering dataset.

    Exactly one of ``train_minutes`` and ``num_pieces`` decides the size
    (``num_pieces`` wins when both are set).

    Attributes:
        sample_rate: Output sample rate in Hz.
        train_minutes: Minutes of *training* audio to render (valid/test get
            their fractions of the total on top).
        num_pieces: Total number of pieces over all splits (alternative size).
        max_piece_seconds: Longest piece in seconds (longer scores are cut).
        min_piece_seconds: Shortest piece in seconds (short tunes are repeated
            up to 4 times; still shorter pieces are skipped). Default
            ``min(12, max_piece_seconds)``.
        seed: Seed of every random draw (piece order, splits, arrangements).
        valid_fraction: Fraction of all audio held out for validation, [0, 0.5).
        test_fraction: Fraction of all audio held out for testing, [0, 0.5).
        input_lufs_range: (min, max) loudness of the unmastered mixes in LUFS.
        input_peak_dbfs: Sample-peak ceiling of the unmastered mixes in dBFS.
        tilt_db: Bound in dB on each drawn colouring filter gain (shelves, peak).
        target_lufs: Integrated loudness of the targets in LUFS (engineer).
        true_peak_dbtp: True-peak ceiling of the targets in dBTP (engineer).
        reverb: Enable FluidSynth's reverb (sends drawn per part).
        chorus: Enable FluidSynth's chorus (used on some pieces).
        sources: Names of the corpus sources to draw from (see :data:`deepafx.data.pieces.SOURCES`).
        soundfont: Path of the General MIDI SoundFont (.sf2).
    """

    sample_rate: int = 44100
    train_minutes: float | None = 4.0
    num_pieces: int | None = None
    max_piece_seconds: float = 30.0
    min_piece_seconds: float | None = None
    seed: int = 0
    valid_fraction: float = 0.125
    test_fraction: float = 0.125
    input_lufs_range: tuple[float, float] = (-30.0, -14.0)
    input_peak_dbfs: float = -1.0
    tilt_db: float = 6.0
    target_lufs: float = -14.0
    true_peak_dbtp: float = -1.0
    reverb: bool = True
    chorus: bool = True
    sources: tuple[str, ...] = (
        "bach_chorales",
        "palestrina",
        "monteverdi",
        "string_quartets",
        "renaissance",
        "folk",
        "keyboard",
        "misc",
    )
    soundfont: str = DEFAULT_SOUNDFONT

    def __post_init__(self) -> None:
        if self.min_piece_seconds is None:
            object.__setattr__(self, "min_piece_seconds", min(12.0, float(self.max_piece_seconds)))
        if self.sample_rate < 8000:
            raise ValueError(f"sample_rate must be >= 8000 Hz, got {self.sample_rate}")
        if self.num_pieces is None and (self.train_minutes is None or self.train_minutes <= 0):
            raise ValueError("set train_minutes (> 0 minutes of training audio) or num_pieces (>= 1)")
        if self.num_pieces is not None and self.num_pieces < 1:
            raise ValueError(f"num_pieces must be >= 1, got {self.num_pieces}")
        if not 1.0 <= self.min_piece_seconds <= self.max_piece_seconds:
            raise ValueError(
                f"need 1 s <= min_piece_seconds ({self.min_piece_seconds}) "
                f"<= max_piece_seconds ({self.max_piece_seconds})"
            )
        for name in ("valid_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v < 0.5:
                raise ValueError(f"{name} must be in [0, 0.5), got {v}")
        lo, hi = self.input_lufs_range
        if not lo <= hi <= -5.0:
            raise ValueError(
                f"input_lufs_range must be (min, max) LUFS with min <= max <= -5, got {self.input_lufs_range}"
            )
        if self.true_peak_dbtp > 0 or self.input_peak_dbfs > 0:
            raise ValueError("true_peak_dbtp and input_peak_dbfs must be <= 0 dB")
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown or not self.sources:
            raise ValueError(f"unknown sources {unknown}; choose from {sorted(SOURCES)}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "MusicDataConfig":
        """Build from a config mapping (a recipe's ``data:`` section).

        ``preset: quick|full`` selects :data:`PRESETS` defaults that the other
        keys override.

        Raises:
            ValueError: unknown keys (the message lists the allowed ones) or an
                unknown preset.
        """
        d = dict(d or {})
        preset = d.pop("preset", None)
        base: dict[str, Any] = {}
        if preset is not None:
            if preset not in PRESETS:
                raise ValueError(f"unknown data preset {preset!r}; choose from {sorted(PRESETS)}")
            base = dict(PRESETS[preset])
        from deepafx.config import bind

        base.update(d)
        if "input_lufs_range" in base:
            base["input_lufs_range"] = tuple(float(v) for v in base["input_lufs_range"])
        return bind(cls, base, "data")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of all fields."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


#: Quick preset: ~4 minutes of training audio (renders in well under a minute).
QUICK_PRESET: dict[str, Any] = {
    "train_minutes": 4.0, "max_piece_seconds": 30.0, "valid_fraction": 0.125, "test_fraction": 0.125,
}
#: Full preset: >= 36 minutes of training audio in up-to-60-second pieces.
FULL_PRESET: dict[str, Any] = {
    "train_minutes": 36.0, "max_piece_seconds": 60.0, "valid_fraction": 0.125, "test_fraction": 0.125,
}
PRESETS: dict[str, dict[str, Any]] = {"quick": QUICK_PRESET, "full": FULL_PRESET}


# --------------------------------------------------------------------------- pieces
def piece_split(piece_id: str, config: MusicDataConfig) -> str:
    """Split of a piece: a pure function of seed, piece id and the split fractions."""
    return hashed_split("split", config.seed, piece_id, config.valid_fraction, config.test_fraction)


def _piece_order(config: MusicDataConfig) -> list[PieceSpec]:
    """Candidates in a seeded order that interleaves the sources by weight."""
    return [spec for spec, _ in piece_order(config.sources, config.seed, shuffle_tag=7, draw_tag=11)]


# --------------------------------------------------------------------------- arrangement
#: Register-aware ensembles: (lowest median MIDI pitch, GM program) from high to low.
ENSEMBLES: dict[str, list[tuple[int, int]]] = {
    "strings": [(65, 40), (53, 41), (40, 42), (0, 43)],  # violin, viola, cello, contrabass
    "string_ensemble": [(0, 48)],
    "organ": [(0, 19)],  # church organ
    "reed_organ": [(0, 20)],
    "brass": [(67, 56), (57, 60), (45, 57), (0, 58)],  # trumpet, horn, trombone, tuba
    "woodwinds": [(72, 73), (64, 68), (55, 71), (0, 70)],  # flute, oboe, clarinet, bassoon
    "saxophones": [(67, 64), (58, 65), (50, 66), (0, 67)],
    "choir": [(0, 52)],
    "piano": [(0, 0)],
    "bright_piano": [(0, 1)],
    "electric_piano": [(0, 4)],
    "harpsichord": [(0, 6)],
    "guitars": [(60, 24), (48, 25), (0, 32)],  # nylon, steel, acoustic bass
    "mallets": [(60, 11), (48, 12), (0, 32)],  # vibraphone, marimba, acoustic bass
}
#: Instruments a register-aware "mixed" ensemble draws from: (lowest median pitch, program).
_MIXED_POOL = [
    (62, 40), (62, 73), (62, 68), (62, 71), (62, 56), (62, 74), (62, 11), (62, 24), (62, 0),
    (50, 41), (50, 71), (50, 60), (50, 65), (50, 25), (50, 0), (50, 46), (50, 69),
    (0, 42), (0, 70), (0, 57), (0, 58), (0, 32), (0, 43), (0, 0), (0, 19), (0, 46),
]
#: Ensembles per family with relative weights.
FAMILY_ENSEMBLES: dict[str, dict[str, float]] = {
    "chorale": {"organ": 3, "strings": 2, "string_ensemble": 1, "brass": 2, "woodwinds": 2, "choir": 1, "piano": 1,
                "saxophones": 1, "guitars": 1, "mallets": 0.5, "harpsichord": 0.5, "mixed": 2},
    "vocal": {"choir": 2, "organ": 2, "reed_organ": 0.5, "strings": 2, "string_ensemble": 1, "brass": 2,
              "woodwinds": 2, "guitars": 1, "harpsichord": 0.5, "mixed": 1},
    "quartet": {"strings": 6, "woodwinds": 1, "saxophones": 1, "brass": 0.5, "piano": 1, "mixed": 1},
    "keyboard": {"piano": 4, "bright_piano": 1, "electric_piano": 1, "harpsichord": 1, "guitars": 0.5},
}
#: Quarter-note tempo range (BPM) per family when the score has no metronome mark.
_FAMILY_TEMPO_BPM = {
    "chorale": (60, 100), "vocal": (100, 160), "quartet": (80, 140), "keyboard": (70, 120), "folk": (90, 140),
}
_FOLK_MELODY = [40, 110, 73, 21, 22, 109, 74, 75, 105, 24, 71, 68, 46, 11, 0]  # fiddle, flute, accordion, bagpipe …
_FOLK_DOUBLING = [25, 42, 70, 46, 32, 21, 0, 24]
_DRUM_CHANNEL = 9


@dataclass
class _PartMix:
    program: int
    level_cc: int  # CC7 volume
    pan_cc: int  # CC10 pan (0 = left, 64 = centre, 127 = right)
    reverb_cc: int  # CC91 reverb send
    chorus_cc: int  # CC93 chorus send
    base_velocity: float
    legato: float  # note-length factor
    transpose: int = 0


@dataclass
class Arrangement:
    """Drawn arrangement and mix of one piece (all values plain JSON types).

    Attributes:
        ensemble: Ensemble name (a key of ``ENSEMBLES``, ``"mixed"`` or ``"folk"``).
        tempo_bpm: Base tempo in quarter notes per minute.
        parts: Per-part mix settings (program, CC levels, velocity, legato).
        reverb: FluidSynth reverb settings (room size, damping, width, level).
        colour: Post-mix colouring (low/high shelf and peak: Hz and dB).
        lufs: Drawn loudness of the unmastered mix in LUFS.
    """

    ensemble: str
    tempo_bpm: float
    parts: list[dict[str, Any]]
    reverb: dict[str, float]
    colour: dict[str, float]
    lufs: float
    dynamics_curve: list[tuple[float, float]] = field(default_factory=list)
    tempo_drift: list[tuple[float, float]] = field(default_factory=list)


def _program_for(ensemble: list[tuple[int, int]], median_pitch: float) -> int:
    for low, program in ensemble:
        if median_pitch >= low:
            return program
    return ensemble[-1][1]


def arrange_piece(spec: PieceSpec, score: ParsedScore, config: MusicDataConfig) -> Arrangement:
    """Draw instrumentation, tempo, dynamics and mix for a piece (seeded by seed and piece id)."""
    rng = piece_rng(config.seed, spec.piece_id, "arrangement")
    family = SOURCES[spec.source].family
    # Tempo.
    if score.tempo_bpm is not None and family != "folk":
        tempo_bpm = float(np.clip(score.tempo_bpm * rng.uniform(0.85, 1.15), 40.0, 200.0))
    else:
        lo, hi = _FAMILY_TEMPO_BPM.get(family, (70, 130))
        tempo_bpm = float(rng.uniform(lo, hi))
    # Instrumentation.
    if family == "folk":
        ensemble = "folk"
        melody = score.parts[0]
        programs = [int(rng.choice(_FOLK_MELODY))]
        if rng.uniform() < 0.6:
            score.parts.append(ScorePart(name="doubling", notes=[dataclasses.replace(n) for n in melody.notes]))
            programs.append(int(rng.choice(_FOLK_DOUBLING)))
        transposes = [0] + [-12] * (len(programs) - 1)
    else:
        names = list(FAMILY_ENSEMBLES[family])
        w = np.array([FAMILY_ENSEMBLES[family][n] for n in names], dtype=float)
        ensemble = names[int(rng.choice(len(names), p=w / w.sum()))]
        programs = []
        for part in score.parts:
            if ensemble == "mixed":
                tier = max(low for low, _ in _MIXED_POOL if part.median_pitch >= low)
                pool = [p for low, p in _MIXED_POOL if low == tier]
                programs.append(int(rng.choice(pool)))
            else:
                programs.append(_program_for(ENSEMBLES[ensemble], part.median_pitch))
        transposes = [0] * len(programs)
    n = len(programs)
    # Stereo placement: spread in [-width, width], high parts left by default, sometimes shuffled.
    width = rng.uniform(0.2, 0.9)
    slots = np.linspace(-width, width, n) if n > 1 else np.zeros(1)
    if rng.uniform() < 0.4:
        slots = rng.permutation(slots)
    reverb_base = rng.uniform(15, 90) if config.reverb else 0.0
    use_chorus = config.chorus and rng.uniform() < 0.3
    parts = []
    for i in range(n):
        pan = float(np.clip(slots[i] + rng.normal(0, 0.08), -1, 1))
        mix = _PartMix(
            program=programs[i],
            level_cc=int(np.clip(rng.normal(100, 12), 60, 127)),
            pan_cc=int(round(64 + 63 * pan)),
            reverb_cc=int(np.clip(reverb_base + rng.normal(0, 10), 0, 127)) if config.reverb else 0,
            chorus_cc=int(rng.uniform(10, 50)) if use_chorus else 0,
            base_velocity=float(rng.uniform(60, 105)),
            legato=float(1.0 if programs[i] in (19, 20) else rng.uniform(0.8, 1.0)),
            transpose=transposes[i],
        )
        parts.append(dataclasses.asdict(mix))
    reverb = {
        "room_size": float(rng.uniform(0.2, 0.9)),
        "damping": float(rng.uniform(0.0, 0.6)),
        "width": float(rng.uniform(0.3, 1.0)),
        "level": float(rng.uniform(0.4, 0.9)),
    }
    t = config.tilt_db
    colour = {
        "low_shelf_hz": float(np.exp(rng.uniform(np.log(80), np.log(300)))),
        "low_shelf_db": float(rng.uniform(-t, t)),
        "high_shelf_hz": float(np.exp(rng.uniform(np.log(2000), np.log(8000)))),
        "high_shelf_db": float(rng.uniform(-t, t)),
        "peak_hz": float(np.exp(rng.uniform(np.log(250), np.log(2500)))),
        "peak_db": float(rng.uniform(-t / 2, t * 2 / 3)),
        "peak_q": float(rng.uniform(0.7, 1.5)),
    }
    lufs = float(rng.uniform(*config.input_lufs_range))
    # Dynamic curve: anchors (fraction of piece, velocity offset) and tempo drift anchors.
    k = int(rng.integers(3, 7))
    dyn = [(float(x), float(v)) for x, v in zip(np.linspace(0, 1, k), rng.uniform(-18, 18, k))]
    m = int(rng.integers(2, 5))
    drift = [(float(x), float(v)) for x, v in zip(np.linspace(0, 1, m), rng.uniform(-0.04, 0.04, m))]
    return Arrangement(ensemble, tempo_bpm, parts, reverb, colour, lufs, dyn, drift)


@dataclass
class _Event:
    sample: int
    order: int  # 0 note-off, 1 note-on
    channel: int
    pitch: int
    velocity: int


def _schedule(
    score: ParsedScore, arr: Arrangement, config: MusicDataConfig, rng: np.random.Generator
) -> tuple[list[_Event], int, bool]:
    """Turn notes into timed MIDI events; returns (events, total_samples, truncated)."""
    sr = config.sample_rate
    tail_seconds = 2.0
    # Quarter position → seconds with tempo drift (piecewise-linear relative deviation).
    length_q = score.length_q
    grid_q = np.arange(0.0, length_q + 0.125, 0.125)
    dx, dv = zip(*arr.tempo_drift)
    bpm = arr.tempo_bpm * (1.0 + np.interp(grid_q / max(length_q, 1e-9), dx, dv))
    sec = np.concatenate([[0.0], np.cumsum(0.125 * 60.0 / bpm[:-1])])

    def to_seconds(q: float) -> float:
        return float(np.interp(q, grid_q, sec))

    body_limit = config.max_piece_seconds - tail_seconds
    piece_seconds = to_seconds(length_q)
    repeats = 1
    while piece_seconds * repeats < config.min_piece_seconds and repeats < 4:
        repeats += 1
    channels = [c for c in range(16) if c != _DRUM_CHANNEL]
    ax, av = zip(*arr.dynamics_curve)
    total_body = piece_seconds * repeats
    events: list[_Event] = []
    truncated = False
    last_off = 0.0
    medians = [np.median([n.marking for n in p.notes]) for p in score.parts]
    for pi, part in enumerate(score.parts):
        mix = arr.parts[pi]
        ch = channels[pi % len(channels)]
        for r in range(repeats):
            for note in part.notes:
                t_on = to_seconds(note.onset_q) + r * piece_seconds
                if t_on >= body_limit:
                    truncated = True
                    continue
                t_off = to_seconds(note.onset_q + note.dur_q * mix["legato"]) + r * piece_seconds
                t_off = max(t_off, t_on + 0.05)
                if t_off > body_limit:
                    t_off, truncated = body_limit, True
                curve = float(np.interp(t_on / max(min(total_body, body_limit), 1e-9), ax, av))
                mark = 15.0 * np.log2(max(note.marking, 0.05) / max(medians[pi], 0.05))
                vel = mix["base_velocity"] + curve + float(np.clip(mark, -20, 20)) + rng.normal(0.0, 4.0)
                pitch = note.pitch + mix["transpose"]
                if pitch < 12:
                    pitch += 12
                events.append(_Event(int(round(t_on * sr)), 1, ch, pitch, int(np.clip(round(vel), 15, 127))))
                events.append(_Event(int(round(t_off * sr)), 0, ch, pitch, 0))
                last_off = max(last_off, t_off)
    if not events:
        raise ValueError("piece has no notes before the length limit")
    events.sort(key=lambda e: (e.sample, e.order, e.channel, e.pitch))
    total = int(round((last_off + tail_seconds) * sr))
    return events, total, truncated


# --------------------------------------------------------------------------- rendering
def _synthesize(events: list[_Event], total: int, arr: Arrangement, config: MusicDataConfig) -> np.ndarray:
    """Render events with a fresh FluidSynth instance → ``(2, total)`` float32."""
    settings = {
        "synth.cpu-cores": 1,
        "synth.polyphony": 256,
        "synth.reverb.room-size": arr.reverb["room_size"],
        "synth.reverb.damp": arr.reverb["damping"],
        "synth.reverb.width": arr.reverb["width"],
        "synth.reverb.level": arr.reverb["level"],
    }
    synth, sfid = load_synth(config.soundfont, config.sample_rate, gain=0.2, reverb=config.reverb,
                             chorus=config.chorus, **settings)
    try:
        channels = [c for c in range(16) if c != _DRUM_CHANNEL]
        for pi, mix in enumerate(arr.parts[: len(channels)]):
            ch = channels[pi]
            synth.program_select(ch, sfid, 0, mix["program"])
            synth.cc(ch, 7, mix["level_cc"])
            synth.cc(ch, 10, mix["pan_cc"])
            synth.cc(ch, 91, mix["reverb_cc"])
            synth.cc(ch, 93, mix["chorus_cc"])
        out = np.zeros((2, total), dtype=np.float32)
        pos = 0

        def render_to(stop: int) -> None:
            nonlocal pos
            while pos < stop:
                n = min(stop - pos, 1 << 16)
                left = out[0, pos : pos + n]
                right = out[1, pos : pos + n]
                write_float(synth, left, right)
                pos += n

        for ev in events:
            render_to(min(ev.sample, total))
            if ev.order == 1:
                synth.noteon(ev.channel, ev.pitch, ev.velocity)
            else:
                synth.noteoff(ev.channel, ev.pitch)
        render_to(total)
    finally:
        synth.delete()
    return out


def _colour_and_level(mix: np.ndarray, arr: Arrangement, config: MusicDataConfig) -> tuple[np.ndarray, float]:
    """Apply the drawn spectral colouring and loudness; returns (audio, actual LUFS)."""
    import pedalboard

    c = arr.colour
    board = pedalboard.Pedalboard(
        [
            pedalboard.LowShelfFilter(cutoff_frequency_hz=c["low_shelf_hz"], gain_db=c["low_shelf_db"], q=0.707),
            pedalboard.HighShelfFilter(cutoff_frequency_hz=c["high_shelf_hz"], gain_db=c["high_shelf_db"], q=0.707),
            pedalboard.PeakFilter(cutoff_frequency_hz=c["peak_hz"], gain_db=c["peak_db"], q=c["peak_q"]),
        ]
    )
    y = board(mix, float(config.sample_rate)).astype(np.float64)
    lufs = engineer.integrated_loudness(y, config.sample_rate)
    if not np.isfinite(lufs):
        raise ValueError("rendered mix is silent")
    y *= 10.0 ** ((arr.lufs - lufs) / 20.0)
    ceiling = 10.0 ** (config.input_peak_dbfs / 20.0)
    peak = float(np.max(np.abs(y)))
    if peak > ceiling:
        y *= ceiling / peak
    return y.astype(np.float32), engineer.integrated_loudness(y, config.sample_rate)


@dataclass
class RenderedPiece:
    """Result of :func:`render_piece`.

    Attributes:
        audio: ``(2, samples)`` float32 unmastered mix at ``sample_rate`` Hz.
        arrangement: The drawn :class:`Arrangement`.
        input_lufs: Measured loudness of ``audio`` in LUFS.
        truncated: Whether the score was cut at ``max_piece_seconds``.
        timings: Seconds spent parsing, synthesizing and mixing.
    """

    audio: np.ndarray
    arrangement: Arrangement
    input_lufs: float
    truncated: bool
    timings: dict[str, float]


def render_piece(spec: PieceSpec, config: MusicDataConfig) -> RenderedPiece:
    """Parse, arrange and render one piece into an unmastered stereo mix.

    Args:
        spec: The corpus piece.
        config: Dataset settings (sample rate, length limits, seed, ranges).

    Returns:
        :class:`RenderedPiece` with ``audio`` of shape ``(2, samples)``.

    Raises:
        ValueError: the score cannot be parsed, has no pitched notes, or is
            shorter than ``min_piece_seconds`` even when repeated.
        FileNotFoundError: the SoundFont is missing (message says how to install it).
    """
    t0 = time.perf_counter()
    max_q = config.max_piece_seconds * 210.0 / 60.0  # enough quarters at the fastest tempo (200 bpm + drift)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # music21 warns about overfull measures and the like
            score = parse_score(spec, max_q)
    except ValueError:
        raise
    except Exception as exc:  # music21 raises many exception types on odd files
        raise ValueError(f"{spec.corpus_path}: music21 could not parse it ({type(exc).__name__}: {exc})") from exc
    t1 = time.perf_counter()
    arr = arrange_piece(spec, score, config)
    events, total, truncated = _schedule(score, arr, config, piece_rng(config.seed, spec.piece_id, "notes"))
    if total < config.min_piece_seconds * config.sample_rate:
        raise ValueError(
            f"{spec.corpus_path}: {total / config.sample_rate:.1f} s even when repeated, "
            f"shorter than min_piece_seconds ({config.min_piece_seconds} s)"
        )
    mix = _synthesize(events, total, arr, config)
    t2 = time.perf_counter()
    audio, lufs = _colour_and_level(mix, arr, config)
    t3 = time.perf_counter()
    return RenderedPiece(audio, arr, lufs, truncated, {"parse": t1 - t0, "synth": t2 - t1, "mix": t3 - t2})


# --------------------------------------------------------------------------- dataset
def _settings_key(config: MusicDataConfig, spec: PieceSpec) -> str:
    sf_path = Path(config.soundfont)
    sf_size = sf_path.stat().st_size if sf_path.is_file() else -1
    relevant = {
        "render_version": RENDER_VERSION,
        "piece": dataclasses.asdict(spec),
        "sample_rate": config.sample_rate,
        "max_piece_seconds": config.max_piece_seconds,
        "min_piece_seconds": config.min_piece_seconds,
        "seed": config.seed,
        "input_lufs_range": list(config.input_lufs_range),
        "input_peak_dbfs": config.input_peak_dbfs,
        "tilt_db": config.tilt_db,
        "reverb": config.reverb,
        "chorus": config.chorus,
        "soundfont": [sf_path.name, sf_size],
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:20]


def _target_key(input_key: str, config: MusicDataConfig) -> str:
    relevant = {
        "input": input_key,
        "engineer_version": engineer.ENGINEER_VERSION,
        "target_lufs": config.target_lufs,
        "true_peak_dbtp": config.true_peak_dbtp,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:20]


_MANIFEST_PIECE_KEYS = ("piece_id", "split", "source", "corpus_path", "number", "seconds", "input_lufs", "truncated")


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    sf.write(str(tmp), np.ascontiguousarray(audio.T), sample_rate, subtype="PCM_24", format="WAV")
    os.replace(tmp, path)


def build_dataset(config: Mapping[str, Any] | MusicDataConfig, out_dir: Path | str, force: bool = False) -> Path:
    """Render the real-music mastering dataset (cached; deterministic).

    When ``manifest.json`` already describes these settings and all its files
    exist, nothing is done. Otherwise pieces already rendered with the same
    settings (same per-piece cache key) are reused; a piece whose split changed
    is moved; pieces of an older build that are no longer part of the plan are
    deleted from the split folders (only this module's ``<piece>_input.wav``,
    ``<piece>_target.wav`` and ``<piece>.json`` files).

    Args:
        config: A :class:`MusicDataConfig`, a mapping for
            :meth:`MusicDataConfig.from_dict` (a recipe's ``data:`` section), or
            a whole recipe config (its ``data`` section is used).
        out_dir: Dataset folder (created).
        force: Re-render every piece even if cached.

    Returns:
        ``out_dir`` (holding ``manifest.json`` and the split folders).

    Raises:
        ValueError: bad settings, or the corpus cannot supply enough pieces.
        FileNotFoundError: the SoundFont is missing.
    """
    from tqdm import tqdm

    if isinstance(config, MusicDataConfig):
        cfg = config
    elif "recipe" in config and isinstance(config.get("data"), Mapping):
        cfg = MusicDataConfig.from_dict(config["data"])
    else:
        cfg = MusicDataConfig.from_dict(config)
    out_dir = Path(out_dir)
    if not force and _manifest_up_to_date(out_dir, cfg):
        logger.info("dataset in %s is up to date (force=True re-renders)", out_dir)
        return out_dir
    for split in SPLITS:
        (out_dir / split).mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    order = _piece_order(cfg)
    fractions = {"valid": cfg.valid_fraction, "test": cfg.test_fraction}
    fractions["train"] = 1.0 - cfg.valid_fraction - cfg.test_fraction
    if cfg.num_pieces is not None:
        want_count = {s: (round(cfg.num_pieces * fractions[s]) if fractions[s] > 0 else 0) for s in ("valid", "test")}
        for s in ("valid", "test"):
            if fractions[s] > 0 and cfg.num_pieces >= 3:
                want_count[s] = max(1, want_count[s])
        want_count["train"] = cfg.num_pieces - want_count["valid"] - want_count["test"]
        want_seconds = None
    else:
        total_seconds = cfg.train_minutes * 60.0 / fractions["train"]
        want_seconds = {s: total_seconds * fractions[s] for s in SPLITS}
        want_count = None

    have_seconds = {s: 0.0 for s in SPLITS}
    have_count = {s: 0 for s in SPLITS}

    def split_full(s: str) -> bool:
        if want_count is not None:
            return have_count[s] >= want_count[s]
        return have_seconds[s] >= want_seconds[s] - 1e-6

    planned: list[tuple[PieceSpec, str]] = []
    pieces_meta: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    n_rendered = n_cached = 0
    audio_seconds_rendered = 0.0
    timings = {"parse": 0.0, "synth": 0.0, "mix": 0.0, "master": 0.0}
    goal = sum(want_seconds.values()) if want_seconds is not None else None
    progress = tqdm(total=goal, desc="mastering dataset (seconds of audio)", unit="s", leave=False)
    try:
        for spec in order:
            if all(split_full(s) for s in SPLITS):
                break
            split = piece_split(spec.piece_id, cfg)
            if split_full(split):
                continue
            in_key = _settings_key(cfg, spec)
            tg_key = _target_key(in_key, cfg)
            cached = None if force else find_cached(out_dir, spec.piece_id)
            meta: dict[str, Any] | None = None
            if cached is not None and cached[1].get("input_key") == in_key:
                old_split, meta = cached
                if old_split != split:
                    move_piece(out_dir, spec.piece_id, old_split, split)
                paths_ok = (out_dir / split / f"{spec.piece_id}_input.wav").is_file()
                if not paths_ok:
                    meta = None
            in_path = out_dir / split / f"{spec.piece_id}_input.wav"
            tg_path = out_dir / split / f"{spec.piece_id}_target.wav"
            if meta is None:
                progress.set_postfix_str(spec.piece_id)
                try:
                    rendered = render_piece(spec, cfg)
                except ValueError as exc:
                    logger.warning("skipping %s: %s", spec.piece_id, exc)
                    skipped.append({"piece_id": spec.piece_id, "reason": str(exc)})
                    continue
                for k, v in rendered.timings.items():
                    timings[k] += v
                _write_wav(in_path, rendered.audio, cfg.sample_rate)
                meta = {
                    "piece_id": spec.piece_id,
                    "source": spec.source,
                    "corpus_path": spec.corpus_path,
                    "number": spec.number,
                    "input_key": in_key,
                    "target_key": None,
                    "seconds": rendered.audio.shape[1] / cfg.sample_rate,
                    "input_lufs": rendered.input_lufs,
                    "truncated": rendered.truncated,
                    "arrangement": dataclasses.asdict(rendered.arrangement),
                    "render_timings_seconds": rendered.timings,
                }
                audio = rendered.audio
                n_rendered += 1
                audio_seconds_rendered += meta["seconds"]
            else:
                audio = None
                n_cached += 1
            if meta.get("target_key") != tg_key or not tg_path.is_file():
                if audio is None:
                    audio = sf.read(str(in_path), dtype="float32", always_2d=True)[0].T
                t0 = time.perf_counter()
                target, info = engineer.master(
                    audio, cfg.sample_rate, cfg.target_lufs, cfg.true_peak_dbtp, return_info=True
                )
                timings["master"] += time.perf_counter() - t0
                _write_wav(tg_path, target, cfg.sample_rate)
                meta["target_key"] = tg_key
                meta["target"] = {
                    "output_lufs": info.output_lufs,
                    "output_true_peak_dbtp": info.output_true_peak_dbtp,
                    "gain_db": info.gain_db,
                    "max_gain_reduction_db": info.max_gain_reduction_db,
                    "eq_centers_hz": [round(float(f), 2) for f in info.eq_centers_hz],
                    "eq_gains_db": [round(float(g), 3) for g in info.eq_gains_db],
                }
            meta["split"] = split
            (out_dir / split / f"{spec.piece_id}.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
            planned.append((spec, split))
            pieces_meta.append(meta)
            have_seconds[split] += meta["seconds"]
            have_count[split] += 1
            if goal is not None:  # seconds counted up to each split's goal (its last piece overshoots)
                after = have_seconds[split]
                progress.update(min(after, want_seconds[split]) - min(after - meta["seconds"], want_seconds[split]))
            else:
                progress.update(1)
    finally:
        progress.close()
    if have_count["train"] == 0 or not all(split_full(s) for s in SPLITS):
        logger.warning("corpus exhausted before every split was full: %s", have_seconds)
        if have_count["train"] == 0:
            raise ValueError("no training piece could be rendered; check data.sources and the music21 corpus")

    # Remove pieces of older builds that are not in this plan.
    remove_unplanned(out_dir, {(split, spec.piece_id) for spec, split in planned})

    wall = time.perf_counter() - t_start
    cpu = time.process_time() - cpu_start
    from music21 import __version__ as music21_version

    manifest = {
        "recipe": "mastering",
        "format": {"layout": "{split}/{piece}_{input,target}.wav", "subtype": "PCM_24", "channels": 2},
        "settings": cfg.to_dict(),
        "software": {
            "render_version": RENDER_VERSION,
            "engineer_version": engineer.ENGINEER_VERSION,
            "music21": music21_version,
            "soundfont": cfg.soundfont,
        },
        "splits": {
            s: {
                "pieces": [m["piece_id"] for m in pieces_meta if m["split"] == s],
                "seconds": round(have_seconds[s], 3),
                "minutes": round(have_seconds[s] / 60.0, 3),
            }
            for s in SPLITS
        },
        "pieces": [
            {k: m[k] for k in _MANIFEST_PIECE_KEYS}
            | {"ensemble": m["arrangement"]["ensemble"], "tempo_bpm": round(m["arrangement"]["tempo_bpm"], 2)}
            for m in pieces_meta
        ],
        "skipped": skipped,
        "render": {
            "wall_seconds": round(wall, 3),
            "cpu_seconds": round(cpu, 3),
            "pieces_rendered": n_rendered,
            "pieces_cached": n_cached,
            "audio_seconds_rendered": round(audio_seconds_rendered, 3),
            "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
            "realtime_factor_wall": round(audio_seconds_rendered / max(wall, 1e-9), 2) if n_rendered else None,
            "realtime_factor_cpu": round(audio_seconds_rendered / max(cpu, 1e-9), 2) if n_rendered else None,
        },
    }
    path = out_dir / "manifest.json"
    tmp = path.with_name("manifest.json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)
    logger.info(
        "dataset %s: %s",
        out_dir,
        ", ".join(f"{s} {have_seconds[s] / 60:.2f} min ({have_count[s]} pieces)" for s in SPLITS),
    )
    return out_dir


def _manifest_up_to_date(out_dir: Path, cfg: MusicDataConfig) -> bool:
    """Whether ``out_dir/manifest.json`` was written with these settings and all its files exist."""
    manifest = read_json(out_dir / "manifest.json")
    if not manifest or manifest.get("settings") != json.loads(json.dumps(cfg.to_dict())):
        return False
    software = manifest.get("software", {})
    versions = (software.get("render_version"), software.get("engineer_version"))
    if versions != (RENDER_VERSION, engineer.ENGINEER_VERSION):
        return False
    for piece in manifest.get("pieces", []):
        for kind in ("input", "target"):
            if not (out_dir / piece["split"] / f"{piece['piece_id']}_{kind}.wav").is_file():
                return False
    return True


def load_split(dataset_dir: Path | str, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Load a split written by :func:`build_dataset` as ``(input, target)`` pairs.

    Args:
        dataset_dir: Folder holding ``manifest.json``.
        split: ``"train"``, ``"valid"`` or ``"test"``.

    Returns:
        List of ``(input, target)``, each ``(channels, samples)`` float32, in
        manifest order (ready for :class:`deepafx.data.stateful.StatefulBatcher`).

    Raises:
        FileNotFoundError: no manifest (run ``deepafx data`` first) or a missing file.
        ValueError: an unknown split name.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    dataset_dir = Path(dataset_dir)
    manifest_path = dataset_dir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found; build the dataset with `deepafx data --config ...`")
    manifest = json.loads(manifest_path.read_text())
    out = []
    for piece_id in manifest["splits"][split]["pieces"]:
        pair = []
        for kind in ("input", "target"):
            p = dataset_dir / split / f"{piece_id}_{kind}.wav"
            if not p.is_file():
                raise FileNotFoundError(f"{p} listed in {manifest_path} is missing; rebuild with --force")
            pair.append(np.ascontiguousarray(sf.read(str(p), dtype="float32", always_2d=True)[0].T))
        out.append((pair[0], pair[1]))
    return out
