"""Pieces of music21's score corpus and the per-piece cache of a dataset folder.

Shared by the recipes that play the corpus (the mastering mixes, the amp
emulation's DI parts); each recipe keeps its own arrangement, rendering and
settings.

Corpus
------
* :data:`SOURCES`, :class:`PieceSpec`, :func:`list_candidates` — which corpus
  files make up a source (Bach chorales, folk tunes …) and the pieces in them.
* :func:`parse_score` — a piece as note lists (:class:`ParsedScore`).

Seeded draws
------------
Every draw about a piece is a pure function of the seed and the piece, so a
piece renders the same whatever else is rendered and in whatever order:

* :func:`stable_uniform`, :func:`piece_rng` — a number / a generator hashed
  (SHA-256) from the seed, the piece and a tag;
* :func:`hashed_split` — a piece's split from such a number and the split fractions;
* :func:`piece_order` — the candidates of several sources shuffled per source
  and interleaved by a seeded choice (by source weight, or by a recipe's rule).

Per-piece cache
---------------
A dataset folder holds, per split, ``<piece>_input.wav``, ``<piece>_target.wav``
and the sidecar ``<piece>.json`` (the settings and cache keys it was rendered
with): :func:`read_json`, :func:`find_cached`, :func:`move_piece`,
:func:`remove_unplanned`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import numpy as np

__all__ = [
    "PIECE_FILES",
    "SOURCES",
    "SPLITS",
    "CorpusSource",
    "ParsedScore",
    "PieceSpec",
    "ScoreNote",
    "ScorePart",
    "by_source_weight",
    "find_cached",
    "hashed_split",
    "list_candidates",
    "move_piece",
    "parse_score",
    "piece_order",
    "piece_rng",
    "read_json",
    "remove_unplanned",
    "stable_uniform",
]

#: Split folders of a dataset, in this order.
SPLITS = ("train", "valid", "test")
#: File-name suffixes of one cached piece in its split folder.
PIECE_FILES = ("_input.wav", "_target.wav", ".json")


# --------------------------------------------------------------------------- corpus sources
@dataclass(frozen=True)
class CorpusSource:
    """A group of files in music21's corpus.

    Attributes:
        prefixes: Corpus path prefixes (``"bach/"``).
        family: Kind of music (``"chorale"``, ``"vocal"``, ``"quartet"``, ``"folk"``,
            ``"keyboard"``): how a recipe arranges it.
        weight: Relative share of the source's pieces in a mixed order (:func:`by_source_weight`).
        pattern: Regular expression a corpus path must match (``""``: any file under the prefixes).
    """

    prefixes: tuple[str, ...]
    family: str
    weight: float
    pattern: str = ""


#: Corpus sources by name.
SOURCES: dict[str, CorpusSource] = {
    "bach_chorales": CorpusSource(("bach/",), "chorale", 0.24, r"^bach/bwv[0-9.]+\.(mxl|xml)$"),
    "palestrina": CorpusSource(("palestrina/",), "vocal", 0.12),
    "monteverdi": CorpusSource(("monteverdi/",), "vocal", 0.08, r"\.(mxl|xml)$"),
    "string_quartets": CorpusSource(("mozart/", "beethoven/", "haydn/"), "quartet", 0.2, r"\.mxl$"),
    "renaissance": CorpusSource(("josquin/", "trecento/", "luca/", "ciconia/"), "vocal", 0.06),
    "folk": CorpusSource(("oneills1850/", "ryansMammoth/", "essenFolksong/"), "folk", 0.18),
    "keyboard": CorpusSource(("joplin/", "chopin/", "schoenberg/"), "keyboard", 0.04),
    "misc": CorpusSource(("corelli/", "handel/", "schubert/", "verdi/", "weber/", "cpebach/"), "chorale", 0.08),
}

_SCORE_EXTENSIONS = (".mxl", ".xml", ".musicxml", ".krn", ".abc")


@dataclass(frozen=True)
class PieceSpec:
    """One piece of the corpus.

    Attributes:
        piece_id: File-name-safe identifier (e.g. ``bach_bwv66.6``).
        source: Source name (a key of :data:`SOURCES`).
        corpus_path: Path relative to music21's corpus (``bach/bwv66.6.mxl``).
        number: Tune number inside an opus file (folk collections), else None.
    """

    piece_id: str
    source: str
    corpus_path: str
    number: str | None = None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.\-]+", "_", text).strip("_")


def _abc_tune_numbers(path: Path) -> list[str]:
    """Reference numbers (``X:`` fields) of the tunes in an ABC file."""
    text = path.read_text(encoding="latin-1")
    return re.findall(r"^X:\s*(\d+)", text, flags=re.MULTILINE)


def list_candidates(sources: Sequence[str]) -> list[PieceSpec]:
    """All pieces of the requested sources in music21's corpus, sorted by source and id.

    Lists the corpus files (fast; no metadata is unpickled). ABC files that
    hold several tunes (folk collections) yield one piece per tune, addressed
    by its ``X:`` reference number. When the same work exists in several
    formats, MusicXML is preferred over Humdrum over ABC. A source's pieces do
    not depend on which other sources are listed.

    Args:
        sources: Source names (keys of :data:`SOURCES`).

    Returns:
        The pieces, sorted by ``(source, piece_id)``.

    Raises:
        ValueError: an unknown source name.
        ImportError: music21 is not installed.
    """
    from music21 import corpus

    for s in sources:
        if s not in SOURCES:
            raise ValueError(f"unknown source {s!r}; choose from {sorted(SOURCES)}")
    rank = {".mxl": 0, ".xml": 0, ".musicxml": 0, ".krn": 1, ".abc": 2}
    best: dict[tuple[str, str], tuple[int, PieceSpec]] = {}
    for full in corpus.corpora.CoreCorpus().getPaths():
        full = Path(full)
        parts = full.as_posix().split("/corpus/")
        if len(parts) < 2:
            continue
        path = parts[-1]
        ext = full.suffix.lower()
        if ext not in _SCORE_EXTENSIONS:
            continue
        for name in sources:
            src = SOURCES[name]
            if not path.startswith(src.prefixes) or (src.pattern and not re.search(src.pattern, path)):
                continue
            stem = os.path.splitext(path)[0].replace("/", "_")
            numbers: list[str | None] = [None]
            if ext == ".abc":
                found = _abc_tune_numbers(full)
                if len(found) > 1:
                    numbers = list(dict.fromkeys(found))
            for number in numbers:
                piece_id = _slug(stem + (f"_{number}" if number else ""))
                spec = PieceSpec(piece_id=piece_id, source=name, corpus_path=path, number=number)
                key = (name, piece_id)
                if key not in best or rank[ext] < best[key][0]:
                    best[key] = (rank[ext], spec)
    return sorted((v[1] for v in best.values()), key=lambda p: (p.source, p.piece_id))


# --------------------------------------------------------------------------- seeded draws
def stable_uniform(*parts: Any) -> float:
    """A uniform number on [0, 1) hashed from the parts (stable across runs, processes and machines).

    Args:
        *parts: Values joined by their ``str`` (e.g. a tag, the seed, a piece id).

    Returns:
        The first 8 bytes of the SHA-256 of the joined parts, divided by 2**64.
    """
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def piece_rng(seed: int, piece_id: str, tag: str) -> np.random.Generator:
    """A numpy generator seeded from the SHA-256 of ``(seed, piece_id, tag)``.

    Args:
        seed: Dataset seed.
        piece_id: The piece.
        tag: What is drawn (``"arrangement"``, ``"notes"`` …): one stream per tag.

    Returns:
        ``numpy.random.default_rng`` seeded with the digest's first 16 bytes.
    """
    digest = hashlib.sha256(f"{seed}\x1f{piece_id}\x1f{tag}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def hashed_split(tag: str, seed: int, key: str, valid_fraction: float, test_fraction: float) -> str:
    """Split of a piece: a pure function of a tag, the seed, the piece and the split fractions.

    The piece's :func:`stable_uniform` number ``u`` of ``(tag, seed, key)``
    gives ``"test"`` below ``test_fraction``, ``"valid"`` below
    ``test_fraction + valid_fraction`` and ``"train"`` otherwise, so a piece's
    split never depends on the dataset's size.

    Args:
        tag: Recipe's tag (different tags give independent splits).
        seed: Dataset seed.
        key: The piece's identity (its id, or its score's path).
        valid_fraction: Share of pieces held out for validation, on [0, 1).
        test_fraction: Share of pieces held out for testing, on [0, 1).

    Returns:
        ``"train"``, ``"valid"`` or ``"test"``.
    """
    u = stable_uniform(tag, seed, key)
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"


#: ``choose(rng, available) -> (source, label)`` of :func:`piece_order`.
Chooser = Callable[[np.random.Generator, list[str]], tuple[str, Any]]


def by_source_weight(rng: np.random.Generator, available: list[str]) -> tuple[str, None]:
    """The default chooser of :func:`piece_order`: a source drawn by its :data:`SOURCES` weight.

    Args:
        rng: The order's generator (one ``choice`` draw is taken).
        available: Sources that still have pieces.

    Returns:
        ``(source, None)``.
    """
    w = np.array([SOURCES[n].weight for n in available])
    return available[int(rng.choice(len(available), p=w / w.sum()))], None


def piece_order(sources: Sequence[str], seed: int, *, shuffle_tag: int, draw_tag: int,
                choose: Chooser | None = None) -> list[tuple[PieceSpec, Any]]:
    """Every candidate of ``sources`` in one seeded order that interleaves the sources.

    Each source's pieces (:func:`list_candidates`) are shuffled by
    ``numpy.random.default_rng([seed, shuffle_tag, i])`` (``i``: the source's
    position in ``sources``). Then, with one generator
    ``numpy.random.default_rng([seed, draw_tag])``, ``choose(rng, available)``
    is called until every queue is empty: it names the source whose next piece
    comes next (one of ``available``, the sources with pieces left, in the
    order of ``sources``) and a label kept beside that piece (e.g. the role it
    is played in). Recipes use different tags, so their orders are independent.

    Args:
        sources: Source names (keys of :data:`SOURCES`).
        seed: Dataset seed.
        shuffle_tag: Tag of the per-source shuffles.
        draw_tag: Tag of the interleaving generator.
        choose: The interleaving rule (default :func:`by_source_weight`, label ``None``).

    Returns:
        ``[(piece, label), ...]``: every candidate once.

    Raises:
        ValueError: an unknown source, or ``choose`` named a source without pieces left.
        ImportError: music21 is not installed.
    """
    choose = by_source_weight if choose is None else choose
    per_source: dict[str, list[PieceSpec]] = {s: [] for s in sources}
    for c in list_candidates(sources):
        per_source[c.source].append(c)
    queues = {}
    for i, name in enumerate(sources):
        items = per_source[name]
        perm = np.random.default_rng([seed, shuffle_tag, i]).permutation(len(items))
        queues[name] = [items[j] for j in perm]
    rng = np.random.default_rng([seed, draw_tag])
    order: list[tuple[PieceSpec, Any]] = []
    available = [n for n in sources if queues[n]]
    while available:
        name, label = choose(rng, list(available))
        if name not in available:
            raise ValueError(f"piece_order: the chooser picked {name!r}, which has no pieces left "
                             f"(available: {available})")
        order.append((queues[name].pop(0), label))
        if not queues[name]:
            available.remove(name)
    return order


# --------------------------------------------------------------------------- score → notes
@dataclass
class ScoreNote:
    """One note of a parsed score (ties merged).

    Attributes:
        onset_q: Start in quarter notes from the beginning.
        dur_q: Duration in quarter notes.
        pitch: MIDI note number on [0, 127].
        marking: Volume scalar of the dynamic mark in force, on [0, 1] (0.55, mf, when unmarked).
    """

    onset_q: float
    dur_q: float
    pitch: int
    marking: float


@dataclass
class ScorePart:
    """One part (voice or instrument) of a parsed score.

    Attributes:
        name: Part name from the score (``part<i>`` when it has none).
        notes: Its notes in score order.
    """

    name: str
    notes: list[ScoreNote]

    @property
    def median_pitch(self) -> float:
        """Median MIDI pitch of the part's notes."""
        return float(np.median([n.pitch for n in self.notes]))


@dataclass
class ParsedScore:
    """A score as note lists (:func:`parse_score`).

    Attributes:
        parts: Parts with at least one pitched note.
        tempo_bpm: The score's first metronome mark in quarter notes per minute, or None.
        length_q: End of the last note in quarter notes.
    """

    parts: list[ScorePart]
    tempo_bpm: float | None
    length_q: float


def _truncated_musicxml(path: Path, max_quarters: float) -> bytes | None:
    """MusicXML text of ``path`` keeping only the measures that start before ``max_quarters``.

    Parsing time in music21 grows with the whole file; a 60-second excerpt of a
    quartet movement parses about 10x faster this way. Returns None when the
    file is not partwise MusicXML or its time signatures cannot be read (the
    caller then parses the whole file).
    """
    import xml.etree.ElementTree as ET
    import zipfile

    try:
        if path.suffix.lower() == ".mxl":
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if not n.startswith("META-INF") and n.endswith((".xml", ".musicxml"))]
                if not names:
                    return None
                data = z.read(names[0])
        else:
            data = path.read_bytes()
        root = ET.fromstring(data)
        if root.tag != "score-partwise":
            return None
        for part in root.findall("part"):
            measures = part.findall("measure")
            quarters, measure_q, keep = 0.0, 4.0, len(measures)
            for i, m in enumerate(measures):
                t = m.find("attributes/time")
                if t is not None and t.find("beats") is not None and t.find("beat-type") is not None:
                    beats = sum(int(x) for x in t.find("beats").text.split("+"))
                    measure_q = beats * 4.0 / int(t.find("beat-type").text)
                if quarters >= max_quarters:
                    keep = i
                    break
                quarters += measure_q
            for m in measures[keep:]:
                part.remove(m)
        return ET.tostring(root)
    except (ValueError, TypeError, AttributeError, OSError, ET.ParseError, zipfile.BadZipFile):
        return None


def parse_score(spec: PieceSpec, max_quarters: float) -> ParsedScore:
    """Parse a corpus piece into note lists (ties merged), up to ``max_quarters``.

    Args:
        spec: The corpus piece (:func:`list_candidates`).
        max_quarters: Notes starting at or after this many quarter notes are dropped.

    Returns:
        The :class:`ParsedScore`.

    Raises:
        ValueError: not a score, or no pitched notes.
        Exception: music21's own errors on files it cannot read (callers turn them
            into ``ValueError``).
    """
    from music21 import common, converter, corpus, dynamics, harmony, tempo

    score = None
    full_path = Path(common.getCorpusFilePath()) / spec.corpus_path
    if full_path.suffix.lower() in (".mxl", ".xml", ".musicxml"):
        data = _truncated_musicxml(full_path, max_quarters)
        if data is not None:
            score = converter.parseData(data, format="musicxml")
    if score is None:
        score = corpus.parse(spec.corpus_path, number=int(spec.number) if spec.number else None)
    if not hasattr(score, "parts"):
        raise ValueError(f"{spec.corpus_path}: not a score")
    tempo_bpm = None
    for mm in score.recurse().getElementsByClass(tempo.MetronomeMark):
        if mm.number is not None and mm.referent is not None:
            tempo_bpm = float(mm.number) * float(mm.referent.quarterLength)
            break
    parts = []
    for p_index, part in enumerate(score.parts):
        flat = part.flatten()
        marks = [(float(d.offset), float(d.volumeScalar)) for d in flat.getElementsByClass(dynamics.Dynamic)]
        mark_offsets = np.array([m[0] for m in marks])
        open_ties: dict[int, ScoreNote] = {}
        notes: list[ScoreNote] = []
        for el in flat.notes:
            if isinstance(el, harmony.Harmony):
                continue
            onset = float(el.offset)
            if onset >= max_quarters:
                break
            dur = float(el.quarterLength)
            if dur <= 0:  # grace notes
                continue
            k = int(np.searchsorted(mark_offsets, onset, side="right")) - 1 if marks else -1
            marking = marks[k][1] if k >= 0 else 0.55
            members = list(el.notes) if el.isChord else [el]
            for m in members:
                if not hasattr(m, "pitch"):
                    continue
                pitch = int(m.pitch.midi)
                tie = (m.tie or el.tie).type if (m.tie or el.tie) else None
                if tie in ("continue", "stop") and pitch in open_ties:
                    held = open_ties[pitch]
                    held.dur_q = onset + dur - held.onset_q
                    if tie == "stop":
                        del open_ties[pitch]
                    continue
                n = ScoreNote(onset, dur, pitch, marking)
                notes.append(n)
                if tie == "start":
                    open_ties[pitch] = n
        notes = [n for n in notes if 0 <= n.pitch <= 127]
        if notes:
            parts.append(ScorePart(name=str(part.partName or f"part{p_index}"), notes=notes))
    if not parts:
        raise ValueError(f"{spec.corpus_path}: no pitched notes")
    length_q = max(n.onset_q + n.dur_q for p in parts for n in p.notes)
    return ParsedScore(parts=parts, tempo_bpm=tempo_bpm, length_q=length_q)


# --------------------------------------------------------------------------- per-piece cache
def read_json(path: Path) -> Any | None:
    """The JSON value in ``path``, or None when the file is missing or unreadable (e.g. half written).

    Args:
        path: A sidecar or manifest file.

    Returns:
        The parsed value, or None.
    """
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def find_cached(out_dir: Path, piece_id: str) -> tuple[str, dict[str, Any]] | None:
    """The split folder that holds a readable sidecar ``<piece_id>.json``, and that sidecar.

    Args:
        out_dir: Dataset folder.
        piece_id: The piece.

    Returns:
        ``(split, sidecar)`` for the first split in :data:`SPLITS` order that has
        it, or None.
    """
    for split in SPLITS:
        meta = read_json(Path(out_dir) / split / f"{piece_id}.json")
        if meta is not None:
            return split, meta
    return None


def move_piece(out_dir: Path, piece_id: str, src: str, dst: str) -> None:
    """Move a cached piece's files (:data:`PIECE_FILES`, those that exist) from one split folder to another.

    Args:
        out_dir: Dataset folder.
        piece_id: The piece.
        src: Split it is in.
        dst: Split it moves to (the folder is created).

    Raises:
        OSError: a file cannot be moved.
    """
    out_dir = Path(out_dir)
    (out_dir / dst).mkdir(parents=True, exist_ok=True)
    for suffix in PIECE_FILES:
        a = out_dir / src / f"{piece_id}{suffix}"
        if a.exists():
            os.replace(a, out_dir / dst / f"{piece_id}{suffix}")


def remove_unplanned(out_dir: Path, keep: Collection[tuple[str, str]]) -> None:
    """Delete the cached pieces (those with a sidecar) that are not in ``keep``.

    Only a piece's own files (:data:`PIECE_FILES`) are deleted; anything else in
    the split folders stays.

    Args:
        out_dir: Dataset folder.
        keep: ``(split, piece_id)`` pairs of the pieces of this build.

    Raises:
        OSError: a file cannot be deleted.
    """
    out_dir = Path(out_dir)
    for split in SPLITS:
        for path in (out_dir / split).glob("*.json"):
            if (split, path.stem) not in keep:
                for suffix in PIECE_FILES:
                    (out_dir / split / f"{path.stem}{suffix}").unlink(missing_ok=True)
