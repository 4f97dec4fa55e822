"""Amp-emulation dataset: real scores played dry on sampled guitars and basses (DI) → a tube amp (target).

DI inputs
---------
Pieces come from the score corpus that ships with ``music21``
(:func:`deepafx.data.pieces.list_candidates`): folk tunes
(O'Neill's 1850 collection, Ryan's Mammoth Collection, the Essen folksong
collection) and Bach chorales. Each piece gets one *role*, drawn per piece:

* ``melody`` — a folk tune on a guitar;
* ``chords`` — a chorale's four voices on a guitar, notes that start together
  strummed low to high (``strum_ms`` per string, drawn per piece);
* ``bass`` — a chorale's bass voice, or a folk tune two octaves down, on a bass.

Guitars are General MIDI programs 24–27 (nylon, steel, jazz, clean electric),
basses 33–34 (finger, pick) of Debian's FluidR3_GM SoundFont, rendered by
FluidSynth (a fresh synthesizer per piece; reverb and chorus off, sends at 0,
pan centred: dry), averaged to mono, 44.1 kHz. Parts are moved by octaves into
the instrument's range (guitar melodies: median MIDI pitch in [60, 72); chords:
lowest note >= 40, E2; bass: median in [36, 48)).

The spread a player gives: a per-piece base velocity drawn from
``velocity_range``, a piecewise-linear dynamic curve (±``dynamics_db``
velocity steps over the piece), the score's own dynamic marks, per-note jitter
and a per-piece articulation (note-length factor); the score's metronome mark
(±15 %) or a drawn tempo. Every DI is then scaled so that its sample peak sits
at a level drawn uniformly from ``level_dbfs_range`` (−32 … −8 dBFS by default:
24 dB), because an amplifier's sound depends on how hard it is driven.

Targets
-------
The same DI through a tube amplifier that the learned chain does not contain.
By default the Faust amp ``plugins/faust/tube_amp.dsp`` (three 12AX7 preamp
stages, the JCM-800 tone stack and a push-pull 6V6 power stage, from guitarix's
``tubes.lib`` and ``tonestacks.lib``), rendered by dawdreamer (backend
``faust``) with the values of the preset ``amp`` (:data:`AMP_SETTINGS`:
``clean`` or ``driven``) updated by ``amp_values``. ``target`` replaces it with
any chain (a mapping or a chain file name such as ``guitarix_amp``, every
parameter fixed), e.g. ZamTube through pedalboard::

    target: {name: zamtube, processors: [{backend: vst3, name: tube,
             options: {path: /usr/lib/vst3/ZamTube.vst3}, fixed: {tube_drive: 6}}]}
    invert_target: true

A target is rendered in one pass over the whole piece from reset state, with
its reported latency removed (so DI and target are sample-aligned), e.g. the
128 samples of the guitarix amplifier of ``plugins/chains/guitarix_amp.yaml``
(``target: guitarix_amp``, through LV2, at its default settings). ZamTube and
that guitarix amp invert polarity (measured: band-limited noise comes out
negatively correlated); the learned chains cannot, so ``invert_target: true``
flips such a target back.

Splits and caching
------------------
Splits are held out *by piece*: a piece's split is a pure function of the seed,
its identifier and the split fractions. Pieces are drawn in a seeded order
until every split holds its share of audio. Everything is seeded per piece, so
the same settings give byte-identical files whatever else is rendered; a piece
already rendered with the same settings is reused, and only the targets are
re-rendered when only the amplifier changes.

Layout written by :func:`build_dataset` (that of :mod:`deepafx.automation.task`)::

    out_dir/manifest.json
    out_dir/{train,valid,test}/<piece>_input.wav    # DI, mono float32 WAV
    out_dir/{train,valid,test}/<piece>_target.wav   # amplifier output, mono float32 WAV
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

from deepafx.data.pieces import (SPLITS, PieceSpec, find_cached, hashed_split, move_piece, parse_score, piece_order,
                                 piece_rng, read_json, remove_unplanned)
from deepafx.data.soundfont import DEFAULT_SOUNDFONT, load_synth, write_float

log = logging.getLogger(__name__)

__all__ = ["AMP_SETTINGS", "AmpDataConfig", "DiPiece", "Performance", "build_dataset", "draw_performance", "load_split",
           "piece_split", "render_di", "target_chain"]

#: Version of the DI render code (part of every input cache key).
DI_VERSION = 2
#: Version of the target render code (part of every target cache key).
TARGET_VERSION = 2
ROLES = ("melody", "chords", "bass")

#: Settings of the built-in amp ``tube_amp.dsp`` (plugin units; unnamed parameters keep the DSP defaults).
AMP_SETTINGS: dict[str, dict[str, float]] = {
    # Near-linear: the tubes compress only the loudest peaks; the tone stack shapes the sound.
    "clean": {"input_gain_db": 0.0, "drive_db": 6.0, "treble": 0.6, "middle": 0.5, "bass": 0.5, "master_db": 0.0,
              "output_gain_db": -6.0},
    # Crunch to high gain depending on the input level: 12 dB more into the first and between stages.
    "driven": {"input_gain_db": 12.0, "drive_db": 12.0, "treble": 0.7, "middle": 0.4, "bass": 0.6, "master_db": 6.0,
               "output_gain_db": -12.0},
}

_GUITAR = (24, 25, 26, 27)
_BASS = (33, 34)


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class AmpDataConfig:
    """The ``data:`` section of the amp-emulation recipe.

    Attributes:
        sample_rate: Output rate in Hz.
        train_minutes: Minutes of *training* audio (valid/test get their fractions of the total on top).
        max_piece_seconds: Longest piece in seconds (longer scores are cut; notes released, tail kept).
        min_piece_seconds: Shortest piece in seconds (short tunes are repeated up to 4 times; still
            shorter ones are skipped).
        seed: Seed of every draw (piece order, splits, roles, performance).
        valid_fraction: Fraction of all audio held out for validation, [0, 0.5).
        test_fraction: Fraction of all audio held out for testing, [0, 0.5).
        level_dbfs_range: ``(min, max)`` sample peak of a DI in dBFS, drawn per piece (<= 0).
        velocity_range: ``(min, max)`` base MIDI velocity per piece, on [1, 127].
        dynamics: Largest velocity offset of the dynamic curve (velocity steps, >= 0).
        role_weights: Relative weights of the roles ``melody``, ``chords``, ``bass`` (>= 0, not all 0).
        guitar_programs: General MIDI programs of the guitars (24–27 in GM).
        bass_programs: General MIDI programs of the basses (32–39 in GM).
        amp: Preset of the built-in amp: ``"clean"`` or ``"driven"`` (:data:`AMP_SETTINGS`).
        amp_values: Values replacing the preset's, in plugin units (``{drive_db: 9}``).
        target: A chain replacing the built-in amp (mapping or chain file name; every
            parameter fixed or at its default), or ``None``.
        invert_target: Flip the target's polarity (for an amp that inverts, such as
            ``guitarix_amp``: the learned chains cannot invert, and ESR is polarity-sensitive).
        soundfont: General MIDI SoundFont (.sf2).
    """

    sample_rate: int = 44100
    train_minutes: float = 5.0
    max_piece_seconds: float = 12.0
    min_piece_seconds: float = 6.0
    seed: int = 0
    valid_fraction: float = 0.12
    test_fraction: float = 0.15
    level_dbfs_range: tuple[float, float] = (-32.0, -8.0)
    velocity_range: tuple[float, float] = (45.0, 115.0)
    dynamics: float = 15.0
    role_weights: tuple[float, float, float] = (0.4, 0.3, 0.3)
    guitar_programs: tuple[int, ...] = _GUITAR
    bass_programs: tuple[int, ...] = _BASS
    amp: str = "driven"
    amp_values: dict = field(default_factory=dict)
    target: Any = None
    invert_target: bool = False
    soundfont: str = DEFAULT_SOUNDFONT

    def __post_init__(self) -> None:
        if self.sample_rate < 8000:
            raise ValueError(f"sample_rate must be >= 8000 Hz, got {self.sample_rate}")
        if not self.train_minutes > 0:
            raise ValueError(f"train_minutes must be > 0 minutes, got {self.train_minutes}")
        if not 1.0 <= self.min_piece_seconds <= self.max_piece_seconds:
            raise ValueError(f"need 1 s <= min_piece_seconds ({self.min_piece_seconds}) <= max_piece_seconds "
                             f"({self.max_piece_seconds})")
        for name in ("valid_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 0.5:
                raise ValueError(f"{name} must be in [0, 0.5), got {getattr(self, name)}")
        lo, hi = self.level_dbfs_range
        if not lo <= hi <= 0.0:
            raise ValueError(f"level_dbfs_range must be (min, max) dBFS with min <= max <= 0, "
                             f"got {self.level_dbfs_range}")
        vlo, vhi = self.velocity_range
        if not 1 <= vlo <= vhi <= 127:
            raise ValueError(f"velocity_range must be (min, max) on [1, 127], got {self.velocity_range}")
        if len(self.role_weights) != 3 or min(self.role_weights) < 0 or sum(self.role_weights) <= 0:
            raise ValueError(f"role_weights must be 3 weights >= 0 for {ROLES}, not all 0; got {self.role_weights}")
        for name in ("guitar_programs", "bass_programs"):
            progs = getattr(self, name)
            if not progs or any(not 0 <= int(p) <= 127 for p in progs):
                raise ValueError(f"{name} must be General MIDI programs on [0, 127], got {progs}")
        if self.target is None and self.amp not in AMP_SETTINGS:
            raise ValueError(f"unknown amp preset {self.amp!r}; choose from {sorted(AMP_SETTINGS)} or set data.target")
        if self.target is not None and not isinstance(self.target, (str, Mapping)):
            raise ValueError(f"data.target must be a chain mapping or a chain file name, "
                             f"got {type(self.target).__name__}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "AmpDataConfig":
        """Build from the ``data:`` mapping (lists become tuples).

        Raises:
            ValueError: unknown keys (the allowed ones are listed) or bad values.
        """
        from deepafx.config import bind

        d = dict(d or {})
        for key in ("level_dbfs_range", "velocity_range", "role_weights"):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        for key in ("guitar_programs", "bass_programs"):
            if key in d:
                d[key] = tuple(int(v) for v in d[key])
        return bind(cls, d, "data")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of all fields."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def di_settings(self) -> dict[str, Any]:
        """The settings a DI depends on (its cache key's)."""
        d = self.to_dict()
        for key in ("amp", "amp_values", "target", "invert_target", "train_minutes", "valid_fraction", "test_fraction"):
            d.pop(key)
        return d


def target_chain(config: AmpDataConfig):
    """The target's :class:`~deepafx.chain.ChainSpec` (every parameter fixed; nothing learned).

    The built-in amp (``tube_amp.dsp``, one mono engine) with preset ``config.amp``
    updated by ``config.amp_values``, or ``config.target``.

    Raises:
        ValueError: a malformed target chain.
        FileNotFoundError: a chain file name that does not resolve.
    """
    from deepafx.chain import ChainSpec

    if config.target is None:
        fixed = {**AMP_SETTINGS[config.amp], **{k: float(v) for k, v in config.amp_values.items()}}
        spec = {"name": f"tube_amp_{config.amp}", "sample_rate": config.sample_rate,
                "processors": [{"backend": "faust", "name": "amp",
                                "options": {"dsp": "tube_amp.dsp", "channels": 1}, "fixed": fixed}]}
        return ChainSpec.from_dict(spec)
    chain = ChainSpec.from_file(config.target) if isinstance(config.target, str) else ChainSpec.from_dict(config.target)
    # Nothing is learned in a target: parameters not fixed stay at their defaults.
    return ChainSpec(tuple(dataclasses.replace(ps, learn=()) for ps in chain.processors), float(config.sample_rate),
                     chain.name)


# --------------------------------------------------------------------------- pieces
@dataclass(frozen=True)
class DiPiece:
    """One DI piece: a corpus score and the role it is played in.

    Attributes:
        piece_id: File-name-safe identifier (``<corpus piece>`` + role).
        source: ``"folk"`` or ``"bach_chorales"``.
        corpus_path: Path inside music21's corpus.
        number: Tune number inside an ABC collection, else None.
        role: ``"melody"``, ``"chords"`` or ``"bass"``.
    """

    piece_id: str
    source: str
    corpus_path: str
    number: str | None
    role: str

    @property
    def corpus_id(self) -> str:
        """The score's identity, shared by every role it is played in (the unit of the split)."""
        return f"{self.corpus_path}#{self.number or ''}"


def piece_split(corpus_id: str, config: AmpDataConfig) -> str:
    """Split of a corpus piece: a pure function of the seed, the piece and the split fractions."""
    return hashed_split("amp-split", config.seed, corpus_id, config.valid_fraction, config.test_fraction)


def _piece_order(config: AmpDataConfig) -> list[DiPiece]:
    """Pieces in a seeded order: each draw picks a role by weight, then the next score that can play it."""
    w = np.asarray(config.role_weights, dtype=float)

    def choose(rng: np.random.Generator, available: list[str]) -> tuple[str, str]:
        role = ROLES[int(rng.choice(3, p=w / w.sum()))]
        if role == "melody":
            source = "folk"
        elif role == "chords":
            source = "bach_chorales"
        else:
            source = "bach_chorales" if rng.uniform() < 0.6 else "folk"
        if source not in available:  # that source is used up: the other one plays
            source = "folk" if source == "bach_chorales" else "bach_chorales"
            if role == "melody" or role == "chords":
                role = "melody" if source == "folk" else "chords"
        return source, role

    used: set[str] = set()
    order: list[DiPiece] = []
    for spec, role in piece_order(("folk", "bach_chorales"), config.seed, shuffle_tag=23, draw_tag=29, choose=choose):
        if spec.piece_id in used:
            continue
        used.add(spec.piece_id)
        order.append(DiPiece(f"{spec.piece_id}_{role}", spec.source, spec.corpus_path, spec.number, role))
    return order


# --------------------------------------------------------------------------- performance
def _octave_shift(pitches: np.ndarray, lo: float, hi: float, stat: str = "median") -> int:
    """Semitones (a multiple of 12) that move ``median`` (or ``min``) of ``pitches`` into ``[lo, hi)``."""
    ref = float(np.median(pitches) if stat == "median" else np.min(pitches))
    shift = 0
    while ref + shift < lo:
        shift += 12
    while ref + shift >= hi:
        shift -= 12
    return shift


@dataclass
class Performance:
    """Drawn performance of one piece (plain JSON types).

    Attributes:
        program: General MIDI program.
        tempo_bpm: Quarter notes per minute.
        base_velocity: Base MIDI velocity.
        legato: Note-length factor on (0, 1].
        strum_ms: Delay between strings of a strummed chord, ms (0 outside ``chords``).
        transpose: Semitones applied to every note.
        level_dbfs: Sample peak of the DI in dBFS.
        dynamics_curve: ``[(fraction of piece, velocity offset), ...]``.
    """

    program: int
    tempo_bpm: float
    base_velocity: float
    legato: float
    strum_ms: float
    transpose: int
    level_dbfs: float
    dynamics_curve: list[tuple[float, float]]


def _notes_for_role(piece: DiPiece, score) -> list:
    """The notes the role plays: a melody (first part), all voices (chords) or the lowest voice (bass)."""
    if piece.role == "chords":
        return [n for p in score.parts for n in p.notes]
    if piece.role == "bass" and piece.source == "bach_chorales":
        return min(score.parts, key=lambda p: p.median_pitch).notes
    return score.parts[0].notes


def draw_performance(piece: DiPiece, config: AmpDataConfig, pitches: np.ndarray | None = None,
                     score_tempo_bpm: float | None = None) -> Performance:
    """Draw how a piece is played: a pure function of the seed, the piece and the settings.

    Args:
        piece: The piece and its role.
        config: Dataset settings (programs, velocity and level ranges, dynamics).
        pitches: MIDI pitches of the notes the role plays (their octave placement); ``None``: no transposition.
        score_tempo_bpm: The score's metronome mark in quarter notes per minute, if any.

    Returns:
        :class:`Performance`.
    """
    rng = piece_rng(config.seed, piece.piece_id, "performance")
    pitches = np.array([60.0]) if pitches is None or len(pitches) == 0 else np.asarray(pitches, dtype=float)
    if piece.role == "bass":
        program = int(rng.choice(config.bass_programs))
        transpose = _octave_shift(pitches, 36, 48)
    elif piece.role == "chords":
        program = int(rng.choice(config.guitar_programs))
        transpose = _octave_shift(pitches, 40, 52, stat="min")
    else:
        program = int(rng.choice(config.guitar_programs))
        transpose = _octave_shift(pitches, 60, 72)
    lo, hi = (60, 100) if piece.source == "bach_chorales" else (80, 140)
    tempo = float(rng.uniform(lo, hi))
    if score_tempo_bpm is not None:
        tempo = float(np.clip(score_tempo_bpm * (0.85 + 0.3 * (tempo - lo) / (hi - lo)), 50.0, 180.0))
    base_vel = float(rng.uniform(*config.velocity_range))
    legato = float(rng.uniform(0.55, 1.0))
    strum = float(rng.uniform(4.0, 20.0))
    level = float(rng.uniform(*config.level_dbfs_range))
    k = int(rng.integers(3, 7))
    offsets = rng.uniform(-config.dynamics, config.dynamics, k)
    curve = [(float(x), float(v)) for x, v in zip(np.linspace(0, 1, k), offsets)]
    return Performance(program, tempo, base_vel, legato, strum if piece.role == "chords" else 0.0, transpose, level,
                       curve)


def _perform(piece: DiPiece, score, config: AmpDataConfig) -> tuple[list[tuple[int, int, int, int]], int, Performance]:
    """Timed note events ``(sample, on=1/off=0, pitch, velocity)``, total samples and the drawn performance."""
    sr = config.sample_rate
    notes = _notes_for_role(piece, score)
    perf = draw_performance(piece, config, np.array([n.pitch for n in notes], dtype=float), score.tempo_bpm)
    rng = piece_rng(config.seed, piece.piece_id, "notes")
    tempo, base_vel, legato, strum_ms, transpose, curve = (perf.tempo_bpm, perf.base_velocity, perf.legato,
                                                           perf.strum_ms, perf.transpose, perf.dynamics_curve)

    sec_per_q = 60.0 / tempo
    tail_s = 1.5
    body_limit = config.max_piece_seconds - tail_s
    piece_s = score.length_q * sec_per_q
    repeats = 1
    while piece_s * repeats < config.min_piece_seconds and repeats < 4:
        repeats += 1
    total_body = min(piece_s * repeats, body_limit)
    marks = [n.marking for n in notes]
    med_mark = float(np.median(marks)) if marks else 0.55
    cx, cv = zip(*curve)
    events: list[tuple[int, int, int, int]] = []
    last_off = 0.0
    for r in range(repeats):
        onsets: dict[float, int] = {}
        for note in sorted(notes, key=lambda n: (n.onset_q, n.pitch)):
            t_on = (note.onset_q + r * score.length_q) * sec_per_q
            if piece.role == "chords":  # strum low to high
                rank = onsets.get(note.onset_q, 0)
                onsets[note.onset_q] = rank + 1
                t_on += rank * strum_ms * 1e-3
            if t_on >= body_limit:
                continue
            t_off = min(max(t_on + note.dur_q * sec_per_q * legato, t_on + 0.05), body_limit)
            vel = (base_vel + float(np.interp(t_on / max(total_body, 1e-9), cx, cv))
                   + float(np.clip(15.0 * np.log2(max(note.marking, 0.05) / max(med_mark, 0.05)), -15, 15))
                   + rng.normal(0.0, 6.0))
            pitch = int(np.clip(note.pitch + transpose, 0, 127))
            events.append((int(round(t_on * sr)), 1, pitch, int(np.clip(round(vel), 10, 127))))
            events.append((int(round(t_off * sr)), 0, pitch, 0))
            last_off = max(last_off, t_off)
    if not events:
        raise ValueError("no notes before the length limit")
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    return events, int(round((last_off + tail_s) * sr)), perf


def _synthesize(events: list[tuple[int, int, int, int]], total: int, program: int, config: AmpDataConfig) -> np.ndarray:
    """Render events on channel 0 with a fresh, dry FluidSynth → ``(samples,)`` float32 mono."""
    synth, sfid = load_synth(config.soundfont, config.sample_rate, gain=0.5, reverb=False, chorus=False, quiet=True,
                             **{"synth.cpu-cores": 1, "synth.polyphony": 64})
    left = np.zeros(total, dtype=np.float32)
    right = np.zeros(total, dtype=np.float32)
    pos = 0
    try:
        synth.program_select(0, sfid, 0, int(program))
        for cc, value in ((7, 100), (10, 64), (91, 0), (93, 0)):
            synth.cc(0, cc, value)

        def render_to(stop: int) -> None:
            nonlocal pos
            while pos < stop:
                n = min(stop - pos, 1 << 16)
                write_float(synth, left[pos : pos + n], right[pos : pos + n])
                pos += n

        for sample, on, pitch, velocity in events:
            render_to(min(sample, total))
            if on:
                synth.noteon(0, pitch, velocity)
            else:
                synth.noteoff(0, pitch)
        render_to(total)
    finally:
        synth.delete()
    return 0.5 * (left + right)


@dataclass
class RenderedDi:
    """Result of :func:`render_di`.

    Attributes:
        audio: ``(1, samples)`` float32 DI at ``sample_rate`` Hz, sample peak ``performance.level_dbfs``.
        performance: The drawn :class:`Performance`.
        seconds: Duration in seconds.
    """

    audio: np.ndarray
    performance: Performance
    seconds: float


def render_di(piece: DiPiece, config: AmpDataConfig) -> RenderedDi:
    """Parse a corpus piece and play it dry on a sampled guitar or bass.

    Args:
        piece: The piece and its role.
        config: Dataset settings.

    Returns:
        :class:`RenderedDi` with ``audio`` of shape ``(1, samples)``.

    Raises:
        ValueError: the score cannot be parsed, has no notes for the role, renders
            silent, or is shorter than ``min_piece_seconds`` even when repeated.
        FileNotFoundError: the SoundFont is missing (the message says how to install it).
    """
    max_q = config.max_piece_seconds * 190.0 / 60.0  # enough quarters at the fastest tempo (180 bpm)
    spec = PieceSpec(piece.piece_id, piece.source, piece.corpus_path, piece.number)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            score = parse_score(spec, max_q)
    except ValueError:
        raise
    except Exception as exc:  # music21 raises many exception types on odd files
        raise ValueError(f"{piece.corpus_path}: music21 could not parse it ({type(exc).__name__}: {exc})") from exc
    events, total, perf = _perform(piece, score, config)
    if total < config.min_piece_seconds * config.sample_rate:
        raise ValueError(f"{piece.corpus_path}: {total / config.sample_rate:.1f} s even when repeated, shorter than "
                         f"min_piece_seconds ({config.min_piece_seconds} s)")
    mono = _synthesize(events, total, perf.program, config).astype(np.float64)
    peak = float(np.max(np.abs(mono)))
    if not peak > 1e-6:
        raise ValueError(f"{piece.corpus_path}: the DI rendered silent")
    mono *= 10.0 ** (perf.level_dbfs / 20.0) / peak
    return RenderedDi(mono[None].astype(np.float32), perf, total / config.sample_rate)


def _render_aligned(live, di: np.ndarray) -> np.ndarray:
    """Render ``(1, samples)`` through a live target chain from reset state, its reported latency removed.

    The input is extended by ``latency`` samples of silence and the first
    ``latency`` output samples are dropped, so output sample ``t`` answers input
    sample ``t`` (0 latency: one plain render).
    """
    live.reset()
    lat = int(live.latency_samples)
    x = np.ascontiguousarray(di, dtype=np.float32)
    if lat > 0:
        x = np.concatenate([x, np.zeros((x.shape[0], lat), np.float32)], axis=1)
    return np.ascontiguousarray(live.process(x)[:, lat:])


# --------------------------------------------------------------------------- dataset
def _key(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _input_key(config: AmpDataConfig, piece: DiPiece) -> str:
    sf_path = Path(config.soundfont)
    return _key({"version": DI_VERSION, "piece": dataclasses.asdict(piece), "settings": config.di_settings(),
                 "soundfont": [sf_path.name, sf_path.stat().st_size if sf_path.is_file() else -1]})


def _target_key(input_key: str, chain_dict: Mapping[str, Any], invert: bool) -> str:
    return _key({"version": TARGET_VERSION, "input": input_key, "chain": chain_dict, "invert": bool(invert)})


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """32-bit float WAV, atomically. scipy writes no PEAK chunk: libsndfile's carries a time stamp,
    which would make identical audio differ in bytes."""
    from scipy.io import wavfile

    tmp = path.with_name(path.name + ".tmp")
    data = np.ascontiguousarray(audio.T, dtype=np.float32)
    with open(tmp, "wb") as f:
        wavfile.write(f, int(sample_rate), data[:, 0] if data.shape[1] == 1 else data)
    os.replace(tmp, path)


def _manifest_up_to_date(out_dir: Path, config: AmpDataConfig) -> bool:
    manifest = read_json(out_dir / "manifest.json")
    if not manifest or manifest.get("recipe") != "amp_emulation" or manifest.get("settings") != config.to_dict():
        return False
    if manifest.get("versions") != {"di": DI_VERSION, "target": TARGET_VERSION}:
        return False
    return all((out_dir / p["split"] / f"{p['piece_id']}_{kind}.wav").is_file()
               for p in manifest.get("pieces", []) for kind in ("input", "target"))


def build_dataset(config: AmpDataConfig | Mapping[str, Any], out_dir: str | Path, force: bool = False) -> Path:
    """Render the amp-emulation dataset (cached; deterministic).

    Nothing is done when ``manifest.json`` already describes these settings and
    all its files exist. Otherwise pieces rendered before with the same DI
    settings are reused (their targets re-rendered when the amplifier changed),
    a piece whose split changed is moved, and pieces of an older build that are
    no longer planned are deleted (only this module's files).

    Args:
        config: An :class:`AmpDataConfig` or a ``data:`` mapping.
        out_dir: Dataset folder (created).
        force: Re-render every piece.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: bad settings, or no training piece could be rendered.
        FileNotFoundError: the SoundFont is missing.
        deepafx.hosts.base.PluginError: the target amp cannot be loaded.
    """
    from tqdm import tqdm

    cfg = config if isinstance(config, AmpDataConfig) else AmpDataConfig.from_dict(config)
    out_dir = Path(out_dir)
    if not force and _manifest_up_to_date(out_dir, cfg):
        log.info("dataset in %s is up to date (force=True re-renders)", out_dir)
        return out_dir
    for split in SPLITS:
        (out_dir / split).mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    chain = target_chain(cfg)
    chain_dict = chain.to_dict()
    live = chain.build()  # one instance for the whole build, reset per piece
    target_latency = live.latency_samples
    fractions = {"valid": cfg.valid_fraction, "test": cfg.test_fraction}
    fractions["train"] = 1.0 - cfg.valid_fraction - cfg.test_fraction
    total_seconds = cfg.train_minutes * 60.0 / fractions["train"]
    want = {s: total_seconds * fractions[s] for s in SPLITS}
    have = {s: 0.0 for s in SPLITS}
    planned: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    counts = {"rendered": 0, "cached": 0, "targets_rendered": 0}
    progress = tqdm(total=sum(want.values()), desc="amp dataset (seconds of audio)", unit="s", leave=False)
    try:
        for piece in _piece_order(cfg):
            if all(have[s] >= want[s] - 1e-6 for s in SPLITS):
                break
            split = piece_split(piece.corpus_id, cfg)
            if have[split] >= want[split] - 1e-6:
                continue
            in_key = _input_key(cfg, piece)
            tg_key = _target_key(in_key, chain_dict, cfg.invert_target)
            cached = None if force else find_cached(out_dir, piece.piece_id)
            meta = None
            if cached is not None and cached[1].get("input_key") == in_key:
                old, meta = cached
                if old != split:
                    move_piece(out_dir, piece.piece_id, old, split)
                if not (out_dir / split / f"{piece.piece_id}_input.wav").is_file():
                    meta = None
            in_path = out_dir / split / f"{piece.piece_id}_input.wav"
            tg_path = out_dir / split / f"{piece.piece_id}_target.wav"
            di = None
            if meta is None:
                try:
                    rendered = render_di(piece, cfg)
                except ValueError as exc:
                    log.warning("skipping %s: %s", piece.piece_id, exc)
                    skipped.append({"piece_id": piece.piece_id, "reason": str(exc)})
                    continue
                di = rendered.audio
                _write_wav(in_path, di, cfg.sample_rate)
                meta = {**dataclasses.asdict(piece), "input_key": in_key, "target_key": None,
                        "seconds": rendered.seconds, "performance": dataclasses.asdict(rendered.performance)}
                counts["rendered"] += 1
            else:
                counts["cached"] += 1
            if meta.get("target_key") != tg_key or not tg_path.is_file():
                if di is None:
                    di = sf.read(str(in_path), dtype="float32", always_2d=True)[0].T
                target = _render_aligned(live, di)
                if cfg.invert_target:
                    target = -target
                _write_wav(tg_path, target, cfg.sample_rate)
                meta["target_key"] = tg_key
                meta["target_peak_dbfs"] = float(20 * np.log10(max(float(np.abs(target).max()), 1e-12)))
                counts["targets_rendered"] += 1
            meta["split"] = split
            (out_dir / split / f"{piece.piece_id}.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
            planned.append(meta)
            have[split] += meta["seconds"]
            progress.update(meta["seconds"])
    finally:
        progress.close()
        live.close()
    if not any(m["split"] == "train" for m in planned):
        raise ValueError("no training piece could be rendered; check the music21 corpus and the SoundFont")
    remove_unplanned(out_dir, {(m["split"], m["piece_id"]) for m in planned})
    levels = [m["performance"]["level_dbfs"] for m in planned]
    manifest = {
        "recipe": "amp_emulation",
        "format": {"layout": "{split}/{piece}_{input,target}.wav", "subtype": "FLOAT", "channels": 1},
        "settings": cfg.to_dict(),
        "versions": {"di": DI_VERSION, "target": TARGET_VERSION},
        "target_chain": chain_dict,
        "target_latency_samples": int(target_latency),
        "splits": {s: {"pieces": [m["piece_id"] for m in planned if m["split"] == s],
                       "seconds": round(have[s], 3), "minutes": round(have[s] / 60.0, 3)} for s in SPLITS},
        "di_level_dbfs": {"min": float(min(levels)), "max": float(max(levels))},
        "pieces": [{k: m[k] for k in ("piece_id", "split", "source", "corpus_path", "number", "role", "seconds")}
                   | {"program": m["performance"]["program"], "level_dbfs": round(m["performance"]["level_dbfs"], 2)}
                   for m in planned],
        "skipped": skipped,
        "render": {"wall_seconds": round(time.perf_counter() - t_start, 3), **counts},
    }
    tmp = out_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out_dir / "manifest.json")
    log.info("amp dataset %s: %s", out_dir, ", ".join(f"{s} {have[s] / 60:.2f} min" for s in SPLITS))
    return out_dir


def load_split(dataset_dir: str | Path, split: str) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]]]:
    """Piece ids and ``(input, target)`` pairs of one split, in manifest order.

    Args:
        dataset_dir: Folder holding ``manifest.json``.
        split: ``"train"``, ``"valid"`` or ``"test"``.

    Returns:
        ``(piece_ids, pairs)``; each array ``(channels, samples)`` float32.

    Raises:
        FileNotFoundError: no manifest (run ``deepafx data`` first) or a missing file.
        ValueError: an unknown split.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    dataset_dir = Path(dataset_dir)
    manifest = read_json(dataset_dir / "manifest.json")
    if manifest is None:
        raise FileNotFoundError(f"{dataset_dir / 'manifest.json'} not found; build the dataset with "
                                "`deepafx data --config amp_emulation/quick`")
    ids = list(manifest["splits"][split]["pieces"])
    pairs = []
    for pid in ids:
        pair = []
        for kind in ("input", "target"):
            p = dataset_dir / split / f"{pid}_{kind}.wav"
            if not p.is_file():
                raise FileNotFoundError(f"{p} listed in the manifest is missing; rebuild with `deepafx data --force`")
            pair.append(np.ascontiguousarray(sf.read(str(p), dtype="float32", always_2d=True)[0].T))
        pairs.append((pair[0], pair[1]))
    return ids, pairs
