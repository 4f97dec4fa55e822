"""Amp emulation on the automation task (:mod:`deepafx.automation.task`): its data, chain, loss and clock.

Stage ``pretrain`` pulls the encoder toward the chain's default parameters (or, with
``train.start: static``, toward one static preset CMA-ES finds on the training pieces);
stage ``spsa`` trains end to end through the black-box chain with SPSA
gradients (DeepAFx, Ramírez et al., ICASSP 2021) on DI → tube-amp pairs
(:mod:`deepafx.recipes.amp_emulation.data`).

Loss (``train.loss``): ``"esr"``, the error-to-signal ratio of the
pre-emphasised frames (Wright, Damskägg & Välimäki, 2019/2020; see
:func:`deepafx.recipes.amp_emulation.esr.esr_loss`; registered in
:data:`deepafx.losses.LOSSES` by this module), which the recipe's configs use,
or DeepAFx's delay-invariant loss (the code default), with the lag search
narrowed by ``train.max_delay_ms`` (0 by default here: the built-in chain has
no latency, and a lag the chain cannot make would only hide an error the
evaluation's ESR sees).

The task keeps a training clock: the wall time from the end of its set-up to
the latest checkpoint, plus the static start's search, summed over resumed sessions, saved in every checkpoint
(``checkpoint["task"]["train_seconds"]``). The evaluation gives the neural amp
baseline exactly that budget.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch.distributed as dist

from deepafx.automation.task import AutomationTask, AutomationTrainConfig, chain_section
from deepafx.losses import LOSSES
from deepafx.recipes.amp_emulation.esr import EsrLoss
from deepafx.trainer import train

log = logging.getLogger(__name__)

#: The embedded chain: multiband compressor → tanh distortion → graphic EQ → gain, mono.
DEFAULT_CHAIN = {
    "name": "builtin_amp",
    "sample_rate": 44100,
    "processors": [
        {"backend": "builtin.multiband_compressor", "name": "mbc"},
        {"backend": "pedalboard.Distortion", "name": "dist"},
        {"backend": "builtin.graphic_eq", "name": "eq"},
        {"backend": "pedalboard.Gain", "name": "gain"},
    ],
}

#: The ``chain:`` section (default :data:`DEFAULT_CHAIN`).
ChainConfig = chain_section(DEFAULT_CHAIN)

if "esr" not in LOSSES:
    @LOSSES.register("esr")
    def _esr(*, pre_emphasis: float = 0.95, reduction: str = "none", latency_samples: int = 0, **_: Any) -> EsrLoss:
        """Error-to-signal ratio of pre-emphasised frames (Wright et al. 2019/2020), after the chain's latency."""
        return EsrLoss(pre_emphasis=pre_emphasis, reduction=reduction, latency_samples=latency_samples)


@dataclass
class TrainConfig(AutomationTrainConfig):
    """The ``train:`` section (:class:`~deepafx.automation.task.AutomationTrainConfig`; here the
    delay search defaults to 0 ms, since the embedded chain has no latency)."""

    max_delay_ms: float = 0.0


class AmpEmulationTask(AutomationTask):
    """Amp emulation as a :class:`~deepafx.trainer.TrainingTask`; see the module docstring.

    Args:
        config: The bound recipe config (sections ``data``, ``chain``, ``model``, ``train``, ``evaluate``).
        data_dir: Dataset folder (rendered there first when missing or stale).
    """

    recipe = "amp_emulation"

    def __init__(self, config, data_dir: Path):
        super().__init__(config, data_dir)
        self._seconds_before = 0.0
        self._clock_start = time.perf_counter()

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self._seconds_before = self.start_seconds  # the static start's search counts as training time
        self._clock_start = time.perf_counter()

    def load_tracks(self) -> tuple[list, list]:
        from deepafx.recipes.amp_emulation.data import build_dataset, load_split

        if self.dist.is_main:
            build_dataset(self.config.data, self.data_dir)
        if self.dist.distributed:
            dist.barrier()
        train_tracks = load_split(self.data_dir, "train")[1]
        valid_tracks = load_split(self.data_dir, "valid")[1]
        if not valid_tracks:
            raise ValueError(f"{self.data_dir} has no validation pieces; raise data.valid_fraction")
        return train_tracks, valid_tracks

    @property
    def train_seconds(self) -> float:
        """Wall time trained so far, seconds (summed over resumed sessions)."""
        return self._seconds_before + time.perf_counter() - self._clock_start

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "train_seconds": self.train_seconds}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self._seconds_before = float(state.get("train_seconds", 0.0))
        self._clock_start = time.perf_counter()


def train_from_config(config, run_dir: Path, data_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train the amp-emulation recipe on the shared engine (:func:`deepafx.trainer.train`).

    Args:
        config: A bound :class:`~deepafx.recipes.RecipeConfig` or a raw config mapping.
        run_dir: Run folder (layout in :mod:`deepafx.recipes`).
        data_dir: Dataset folder.
        resume: Continue from ``checkpoints/last.pt``.

    Returns:
        ``{"history", "best_valid", "seconds"}``.
    """
    from deepafx.recipes import get_recipe

    if isinstance(config, Mapping):
        config = get_recipe("amp_emulation").bind(config)
    return train(AmpEmulationTask(config, data_dir), run_dir, config, resume=resume)


__all__ = ["AmpEmulationTask", "ChainConfig", "DEFAULT_CHAIN", "TrainConfig", "train_from_config"]
