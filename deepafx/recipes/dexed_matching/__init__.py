"""Dexed / DX7 sound matching: estimate DX7 presets from audio with SPSA through the real Dexed engine.

Modules: :mod:`~deepafx.recipes.dexed_matching.presets` (factory banks, sampling, ``.syx``),
:mod:`~deepafx.recipes.dexed_matching.data` (dataset build), :mod:`~deepafx.recipes.dexed_matching.spectral`
(float32 spectral distances), :mod:`~deepafx.recipes.dexed_matching.search` (retrieval, SPSA
refinement, CMA-ES), :mod:`~deepafx.recipes.dexed_matching.model`, :mod:`~deepafx.recipes.dexed_matching.train`,
:mod:`~deepafx.recipes.dexed_matching.evaluate`.
"""

from __future__ import annotations

from pathlib import Path

from deepafx.recipes import Recipe
from deepafx.recipes.dexed_matching.data import DataConfig
from deepafx.recipes.dexed_matching.evaluate import EvalConfig
from deepafx.recipes.dexed_matching.model import ModelConfig
from deepafx.recipes.dexed_matching.train import SynthConfig, TrainConfig
from deepafx.workers import RenderConfig


def _data(config, out_dir: Path, force: bool = False) -> Path:
    import dataclasses

    from deepafx.recipes.dexed_matching.data import build_dataset

    return build_dataset({"data": dataclasses.asdict(config.data)}, out_dir, force=force)


def _task(config, data_dir: Path):
    from deepafx.recipes.dexed_matching.train import DexedTask

    return DexedTask(config, data_dir)


def _evaluate(config, checkpoint: Path, out_dir: Path, split: str, data_dir: Path) -> dict:
    import json

    from deepafx.recipes.dexed_matching.evaluate import evaluate_from_config

    return json.loads(Path(evaluate_from_config(config, checkpoint, out_dir, split=split, data_dir=data_dir)).read_text())


def _match(args) -> int:
    from deepafx.recipes.dexed_matching.match import run

    return run(args)


RECIPE = Recipe(
    name="dexed_matching",
    summary="DX7 sound matching: estimate Dexed presets from audio (DiffSynth schedule, SPSA through Dexed)",
    sections={"data": DataConfig, "synth": SynthConfig, "model": ModelConfig, "train": TrainConfig,
              "evaluate": EvalConfig, "render": RenderConfig},
    data=_data,
    task=_task,
    evaluate=_evaluate,
    match=_match,
)
