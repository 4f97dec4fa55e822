"""Grouped train/valid/test split of the DX7 factory voices, and the novelty of held-out sounds.

The factory banks hold near-copies: hexter's ``dx7_roms`` + ``tx7_roms`` have 186
unique voices, yet 10 % of them have another voice within a mean absolute
normalized-parameter distance of 0.0073 and 25 % within 0.033 (VIOLINS A/B
0.0001, STRINGS 2/4 0.0004, TRUMPET A / TOUCH TMPT 0.0015, E.BASS B / BASS 1
0.0017). A split by voice index puts such a twin in training and its sibling in
test, which flatters every method that can return a training voice. Here the
voices are grouped first and whole groups are split.

**Groups** (:func:`voice_clusters`): the connected components of the graph whose
edges join two voices

* within ``threshold`` of each other in :func:`voice_distances` (mean absolute
  difference of the 145 normalized Dexed values, transpose included): single
  linkage at ``threshold``;
* or whose names are equal after :func:`normalize_voice_name` (the bank's variant
  suffixes removed: "VIOLINS  A"/"VIOLINS  B" → "VIOLINS", "STRINGS 2"/"STRINGS 4"
  → "STRINGS", "SAX BC" → "SAX").

**Threshold 0.04** (:data:`DEFAULT_GROUP_THRESHOLD`), measured on the 186 voices
rendered with the medium config's six notes (4 s at 16 kHz) and compared by the
evaluation's six-note LSD. The median voice's nearest other voice lies 10.96 dB
away. Voice pairs closer than 0.04 in parameters sound closer than that: by
distance bin [0, 0.01), [0.01, 0.02), [0.02, 0.03) and [0.03, 0.04), the median
pair LSD is 9.78, 9.87, 8.93 and 10.20 dB, and 80 %, 80 %, 58 % and 79 % of the
pairs lie under 10.96 dB. Beyond it they do not: [0.04, 0.05) 12.79 dB (23 %),
[0.05, 0.06) 12.70 dB (33 %), [0.06, 0.08) 14.77 dB (24 %), [0.08, 0.1) 18.14 dB
(2 %), all pairs 24.4 dB. The same distance is what the corpus treats as the
voice itself: its perturbations at radius 0.1 lie a median 0.042 from their
source. Same-name pairs lie far apart in parameters (median 0.146) but sound
closer than other pairs (median LSD 15.1 dB against 24.5 dB), so they are
grouped too. At 0.04 with names the 186 voices form 95 groups (64 of one voice; the largest:
the 12 STRINGS/CELLOS/ORCHESTRA voices and the 11 BRASS/HORN voices).

**Split** (:func:`grouped_split`): the groups in a seeded random order; each
goes to test while it fits in ``round(n · test_fraction)`` voices, else to
validation while it fits in ``round(n · valid_fraction)``, else to training. The
held-out splits hit their sizes exactly when enough small groups exist (the
186 voices: 37 test, 19 valid, as the index split). A group larger than a
held-out split's size can only land in training, so held-out voices lean
slightly towards small groups.

**Novelty** (:func:`nearest_lsd`): of a held-out sound, the LSD (dB) to the
nearest *training* factory voice rendered at the same pitch — how far the
sound is from anything the training set can return intact.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

#: Default grouping threshold on :func:`voice_distances` (see the module docstring for the measurement).
DEFAULT_GROUP_THRESHOLD = 0.04
#: Values of ``data.split``.
SPLIT_METHODS = ("grouped", "index")
#: Held-out split names, in the order they are filled.
HELD_OUT = ("test", "valid")

_BC = re.compile(r"(^BC\s+)|(\s+BC$)")
_VARIANT = re.compile(r"(\s+[AB]|\s*\d+)$")


def normalize_voice_name(name: str) -> str:
    """A DX7 voice name without the bank's variant suffixes, for grouping by name.

    Steps: upper case; runs of spaces become one; a breath-controller marker ``BC``
    as the first or last word is removed ("SAX BC", "BRASS 6 BC", "BC FLUTE"); then
    one trailing variant marker is removed: a single ``A`` or ``B`` after a space
    (the TX7 bank's pairs, "VIOLINS  A") or a trailing number ("STRINGS 2",
    "HARMONICA1"); finally trailing dots, hyphens and spaces ("CLAV.  A" → "CLAV").
    Spellings are not unified ("HRMNCA2 BC" → "HRMNCA", "HARMONICA1" → "HARMONICA").

    Args:
        name: Voice name (the DX7's 10 characters, any padding).

    Returns:
        The normalized name; ``""`` when nothing is left (such voices are not grouped by name).
    """
    s = " ".join(str(name).upper().split())
    s = _BC.sub("", s).strip()
    s = _VARIANT.sub("", s)
    return s.rstrip(".- ")


def voice_distances(x: np.ndarray) -> np.ndarray:
    """Mean absolute normalized-parameter distance between every pair of voices.

    Args:
        x: ``(V, num_params)`` normalized Dexed vectors on [0, 1] (``num_params`` = 145).

    Returns:
        ``(V, V)`` float64, symmetric, 0 on the diagonal, values on [0, 1].

    Raises:
        ValueError: not 2-D, or NaN/Inf.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"need a finite (V, num_params) matrix of normalized presets, got shape {x.shape}")
    return np.abs(x[:, None, :] - x[None, :, :]).mean(axis=2)


def voice_clusters(x: np.ndarray, names: Sequence[str] | None = None,
                   threshold: float = DEFAULT_GROUP_THRESHOLD) -> np.ndarray:
    """Group voices by single linkage at ``threshold`` and, with ``names``, by normalized name.

    Args:
        x: ``(V, num_params)`` normalized presets on [0, 1].
        names: ``V`` voice names (:func:`normalize_voice_name` decides equality); ``None``: distance only.
        threshold: Largest :func:`voice_distances` value that joins two voices, on [0, 1] (0: only
            identical voices).

    Returns:
        ``(V,)`` int64 group ids ``0 … K−1``, numbered in order of each group's first voice.

    Raises:
        ValueError: bad ``x``, ``threshold`` outside [0, 1], or ``len(names) != V``.
    """
    from scipy.sparse.csgraph import connected_components

    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"group_threshold must be on [0, 1] (mean absolute normalized-parameter distance), got {threshold}")
    d = voice_distances(x)
    adj = d <= float(threshold)
    if names is not None:
        if len(names) != len(d):
            raise ValueError(f"got {len(names)} names for {len(d)} voices")
        keys = np.array([normalize_voice_name(n) for n in names], dtype=object)
        adj |= (keys[:, None] == keys[None, :]) & (keys[:, None] != "")
    _, labels = connected_components(adj, directed=False)
    _, first = np.unique(labels, return_index=True)
    order = labels[np.sort(first)]  # component labels in order of their first voice
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[labels]


def _split_size(n: int, fraction: float) -> int:
    return max(1, int(round(n * fraction)))


def grouped_split(groups: np.ndarray, valid_fraction: float, test_fraction: float,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Split items into train/valid/test keeping every group whole.

    Groups are visited in the order ``rng.permutation`` gives; each goes to ``test`` if it fits in
    ``max(1, round(n · test_fraction))`` items, else to ``valid`` if it fits in
    ``max(1, round(n · valid_fraction))``, else to ``train``.

    Args:
        groups: ``(n,)`` non-negative int group id per item (:func:`voice_clusters`).
        valid_fraction, test_fraction: Target fractions of items held out, each on (0, 0.5).
        rng: Random generator (one ``permutation`` call over the groups).

    Returns:
        ``{"test", "valid", "train": sorted item indices}``.

    Raises:
        ValueError: bad fractions or groups; a held-out split or the training split comes out empty
            (the message names the largest groups and the fix).
    """
    g = np.asarray(groups)
    if g.ndim != 1 or len(g) == 0 or not np.issubdtype(g.dtype, np.integer) or g.min() < 0:
        raise ValueError(f"groups must be a non-empty 1-D array of non-negative integers, got shape {g.shape}, dtype {g.dtype}")
    for name, f in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0 < f < 0.5:
            raise ValueError(f"{name} must be in (0, 0.5), got {f}")
    n = len(g)
    target = {"test": _split_size(n, test_fraction), "valid": _split_size(n, valid_fraction)}
    ids = np.unique(g)
    sizes = np.bincount(g)
    filled = {s: 0 for s in HELD_OUT}
    where: dict[int, str] = {}
    for k in ids[rng.permutation(len(ids))]:
        where[int(k)] = "train"
        for s in HELD_OUT:
            if filled[s] + sizes[k] <= target[s]:
                where[int(k)], filled[s] = s, filled[s] + int(sizes[k])
                break
    split = np.array([where[int(k)] for k in g])
    out = {s: np.flatnonzero(split == s) for s in ("test", "valid", "train")}
    empty = [s for s, idx in out.items() if len(idx) == 0]
    if empty:
        big = sorted(sizes[ids].tolist(), reverse=True)[:5]
        raise ValueError(f"the grouped split leaves {', '.join(empty)} empty: {n} items in {len(ids)} groups "
                         f"(largest {big}), held-out sizes {target}. Lower data.group_threshold, raise "
                         "the held-out fractions, use more voices, or use data.split: index")
    return out


def nearest_lsd(targets: np.ndarray, voices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Novelty of each target: the LSD (dB) to the nearest of ``voices`` and which one it is.

    :func:`deepafx.metrics.lsd_db` for every pair (:func:`~deepafx.recipes.dexed_matching.spectral.lsd_matrix`).

    Args:
        targets: ``(M, channels, samples)`` audio.
        voices: ``(V, channels, samples)`` audio, rendered like the targets (same notes and pitch).

    Returns:
        ``(lsd_db (M,) float64, index (M,) int64 into voices)``.

    Raises:
        ValueError: shape mismatch or empty inputs.
    """
    from deepafx.recipes.dexed_matching.spectral import lsd_matrix

    table = lsd_matrix(targets, voices)
    idx = np.argmin(table, axis=1)
    return table[np.arange(len(table)), idx], idx.astype(np.int64)


__all__ = ["DEFAULT_GROUP_THRESHOLD", "SPLIT_METHODS", "grouped_split", "nearest_lsd", "normalize_voice_name",
           "voice_clusters", "voice_distances"]
