"""Mastering on the automation task (:mod:`deepafx.automation.task`): its data, chain and augmentation.

Stage ``pretrain`` pulls the encoder toward the chain's default parameters;
stage ``spsa`` trains end to end through the black-box mastering chain with
SPSA gradients and the delay-invariant loss, on the real-music dataset
(:mod:`deepafx.recipes.mastering.music`) or the user's own pairs
(:mod:`deepafx.recipes.mastering.pairs`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch.distributed as dist

from deepafx.automation.task import AutomationTask, AutomationTrainConfig, chain_section
from deepafx.trainer import DistInfo, train

log = logging.getLogger(__name__)

DEFAULT_CHAIN = {
    "name": "builtin_mastering",
    "sample_rate": 44100,
    "processors": [
        {"backend": "builtin.multiband_compressor", "name": "mbc"},
        {"backend": "builtin.graphic_eq", "name": "geq"},
        {"backend": "pedalboard.Gain", "name": "gain", "ranges": {"gain_db": [-12, 24]}},
        {"backend": "pedalboard.BrickwallLimiter", "name": "lim"},
    ],
}


#: Sample-peak cap of ``train.level_augment_lufs`` (dBFS), the soundtrack data's ``input_peak_dbfs``.
LEVEL_AUGMENT_PEAK_DBFS = -0.1

#: The ``chain:`` section (default :data:`DEFAULT_CHAIN`).
ChainConfig = chain_section(DEFAULT_CHAIN)


@dataclass
class TrainConfig(AutomationTrainConfig):
    """The ``train:`` section of the mastering recipe (:class:`~deepafx.automation.task.AutomationTrainConfig` plus):

    Attributes:
        gain_augment_db: ``[min, max]`` dB: each epoch every training input is
            scaled by a seeded random gain from this range (capped so its peak
            stays at or below −0.5 dBFS) while its target is kept. Exact for
            level-invariant targets such as the reference engineer's (loudness
            normalization makes ``master(g·x) = master(x)``); without it the
            network sees only one loudness correction per piece. The soundtrack
            configs used −20…+10 dB until ``level_augment_lufs`` replaced it: a gain on top of
            an input already at −34 LUFS asks for more gain than the chain has, and on the
            validation album that config saturated every parameter (recipe README, "Choices").
            Off by default and in the score configs; leave it off for ``--pairs`` whose masters
            depend on the input level.
        level_augment_lufs: ``[min, max]`` LUFS: each epoch every training input
            is turned (gain only) to a seeded loudness drawn uniformly from this
            range, its sample peak capped at −0.1 dBFS like the data's inputs,
            its target kept. Unlike ``gain_augment_db`` the inputs stay inside
            the loudness range the data were drawn from (the soundtrack data:
            −34…−8 LUFS), so no input needs more gain than the chain has.
            Exclusive with ``gain_augment_db``.
    """

    gain_augment_db: tuple[float, float] | None = None
    level_augment_lufs: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        super_post = getattr(super(), "__post_init__", None)
        if super_post is not None:
            super_post()
        for name in ("gain_augment_db", "level_augment_lufs"):
            v = getattr(self, name)
            if v is not None and (len(v) != 2 or not float(v[0]) <= float(v[1])):
                raise ValueError(f"train.{name} must be [min, max] with min <= max, got {v}")
        if self.gain_augment_db is not None and self.level_augment_lufs is not None:
            raise ValueError("train.gain_augment_db and train.level_augment_lufs are exclusive: set one")


def prepare_data(data_config, data_dir: Path, pairs: tuple[str, str] | None, sample_rate: float,
                 dist_info: DistInfo) -> tuple[list, list]:
    """Train/valid ``(input, target)`` tracks, from the rendered corpus or from user pairs."""
    if pairs is not None:
        from deepafx.recipes.mastering.pairs import load_pairs

        loaded = load_pairs(pairs[0], pairs[1], sample_rate)
        tracks = [(p.input, p.target) for p in loaded]
        if len(tracks) < 2:
            raise ValueError("--pairs needs at least 2 matched files (one is held out for validation)")
        n_valid = max(1, len(tracks) // 10)
        return tracks[n_valid:], tracks[:n_valid]
    from deepafx.recipes.mastering.data import build_dataset, load_training

    if dist_info.is_main:
        build_dataset(data_config, data_dir)
    if dist_info.distributed:
        dist.barrier()
    return load_training(data_config, data_dir)


class MasteringTask(AutomationTask):
    """The mastering recipe as a :class:`~deepafx.trainer.TrainingTask`; see the module docstring.

    Args:
        config: The bound recipe config (sections ``data``, ``chain``, ``model``, ``train``, ``evaluate``).
        data_dir: Dataset folder (rendered there first when missing or stale).
        pairs: ``(unmastered_dir, mastered_dir)``: train on the user's own pairs instead.
    """

    recipe = "mastering"

    def __init__(self, config, data_dir: Path, pairs: tuple[str, str] | None = None):
        super().__init__(config, data_dir)
        self.pairs = pairs

    def load_tracks(self) -> tuple[list, list]:
        return prepare_data(self.config.data, self.data_dir, self.pairs, self.chain.sample_rate, self.dist)

    def augment(self, tracks: list, epoch: int) -> list:
        """Training tracks with this epoch's seeded input gains or loudness (targets unchanged)."""
        s = self.settings
        if not s.gain_augment_db and not s.level_augment_lufs:
            return tracks
        rng = np.random.default_rng([s.seed, epoch, self.dist.rank, 17])
        if s.level_augment_lufs:
            loudness = self._input_loudness(tracks)
        out = []
        for i, (x, y) in enumerate(tracks):
            peak_db = 20 * np.log10(max(float(np.abs(x).max()), 1e-9))
            if s.level_augment_lufs:
                # an input without measurable loudness (near silence) keeps its level
                g_db = rng.uniform(*s.level_augment_lufs) - loudness[i] if np.isfinite(loudness[i]) else 0.0
                g_db = min(g_db, LEVEL_AUGMENT_PEAK_DBFS - peak_db)
            else:
                g_db = min(rng.uniform(*s.gain_augment_db), -0.5 - peak_db)
            out.append(((x * np.float32(10 ** (g_db / 20))).astype(np.float32), y))
        return out

    def _input_loudness(self, tracks: list) -> list[float]:
        """Integrated loudness (LUFS) of every input of ``tracks``, measured once per list."""
        cached = getattr(self, "_loudness_cache", None)
        if cached is None or cached[0] is not tracks:
            from deepafx import metrics

            cached = (tracks, [float(metrics.lufs(x, self.chain.sample_rate)) for x, _ in tracks])
            self._loudness_cache = cached
        return cached[1]


def train_from_config(config, run_dir: Path, data_dir: Path, resume: bool = False,
                      pairs: tuple[str, str] | None = None) -> dict[str, Any]:
    """Train the mastering recipe on the shared engine (:func:`deepafx.trainer.train`).

    Args:
        config: A bound :class:`~deepafx.recipes.RecipeConfig` or a raw config mapping.
        run_dir: Run folder (layout in :mod:`deepafx.recipes`).
        data_dir: Dataset folder.
        resume: Continue from ``checkpoints/last.pt``.
        pairs: Train on the user's ``(unmastered_dir, mastered_dir)`` pairs.

    Returns:
        ``{"history", "best_valid", "seconds"}``.
    """
    from deepafx.recipes import get_recipe

    if isinstance(config, Mapping):
        config = get_recipe("mastering").bind(config)
    return train(MasteringTask(config, data_dir, pairs=pairs), run_dir, config, resume=resume)
