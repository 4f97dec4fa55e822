"""The mastering recipe's data sources behind one ``data:`` section.

``data.source`` picks the dataset:

* ``soundtracks`` — real, professionally produced masters (Debian's free game
  soundtracks) as targets, "unmastered" inputs, split by album
  (:mod:`deepafx.recipes.mastering.soundtracks`);
* ``scores`` (the default, and what a section without ``source`` means) — scores
  rendered by FluidSynth and mastered by the reference engineer
  (:mod:`deepafx.recipes.mastering.music`).

Both write the same layout (``manifest.json``, ``{split}/<piece>_{input,target}.wav``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from deepafx.recipes.mastering.music import MusicDataConfig
from deepafx.recipes.mastering.soundtracks import SoundtrackDataConfig

__all__ = ["DataSection", "build_dataset", "load_training"]

SOURCES = ("soundtracks", "scores")


class DataSection:
    """The ``data:`` section: binds to a :class:`SoundtrackDataConfig` or a :class:`MusicDataConfig`."""

    @staticmethod
    def from_dict(values: Mapping[str, Any] | None) -> SoundtrackDataConfig | MusicDataConfig:
        """Bind by ``source`` (default ``scores``).

        Raises:
            ValueError: an unknown source (naming the known ones) or the chosen config's own errors.
        """
        d = dict(values or {})
        source = d.get("source", "scores")
        if source == "soundtracks":
            return SoundtrackDataConfig.from_dict(d)
        if source == "scores":
            d.pop("source", None)
            return MusicDataConfig.from_dict(d)
        raise ValueError(f"source: unknown data source {source!r}; choose from {list(SOURCES)}")


def build_dataset(config: SoundtrackDataConfig | MusicDataConfig | Mapping[str, Any], out_dir: str | Path,
                  force: bool = False) -> Path:
    """Build (or find cached) the dataset of either source in ``out_dir``; returns ``out_dir``."""
    cfg = config if isinstance(config, (SoundtrackDataConfig, MusicDataConfig)) else DataSection.from_dict(config)
    if isinstance(cfg, SoundtrackDataConfig):
        from deepafx.recipes.mastering.soundtracks import build_dataset as build

        return build(cfg, out_dir, force=force)
    from deepafx.recipes.mastering.music import build_dataset as build

    return build(cfg, out_dir, force=force)


def load_training(config: SoundtrackDataConfig | MusicDataConfig, data_dir: str | Path) -> tuple[list, list]:
    """``(train, valid)`` lists of ``(input, target)`` ``(channels, samples)`` float32 pairs of a built dataset."""
    from deepafx.automation.task import load_tracks

    data_dir = Path(data_dir)
    if isinstance(config, SoundtrackDataConfig):
        from deepafx.recipes.mastering.soundtracks import load_training as load

        return load(data_dir)
    return load_tracks(data_dir / "train"), load_tracks(data_dir / "valid")
