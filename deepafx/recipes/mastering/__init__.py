"""Automatic mastering recipe: an encoder drives a multiband compressor → graphic EQ → limiter chain (DeepAFx).

Modules: :mod:`~deepafx.recipes.mastering.music` (real-music dataset),
:mod:`~deepafx.recipes.mastering.engineer` (the reference engineer),
:mod:`~deepafx.recipes.mastering.pairs` (the user's own pairs),
:mod:`~deepafx.automation.model`, :mod:`~deepafx.recipes.mastering.train`,
:mod:`~deepafx.recipes.mastering.evaluate`, :mod:`~deepafx.automation.oracle`,
:mod:`~deepafx.automation.process`, :mod:`~deepafx.automation.plots`.
"""

from __future__ import annotations

from pathlib import Path

from deepafx.recipes import Recipe
from deepafx.recipes.mastering.evaluate import EvaluateConfig
from deepafx.automation.model import ModelConfig
from deepafx.recipes.mastering.music import MusicDataConfig
from deepafx.recipes.mastering.train import ChainConfig, TrainConfig
from deepafx.workers import RenderConfig


def _data(config, out_dir: Path, force: bool = False) -> Path:
    from deepafx.recipes.mastering.music import build_dataset

    return build_dataset(config.data, out_dir, force=force)


def _task(config, data_dir: Path, pairs=None):
    from deepafx.recipes.mastering.train import MasteringTask

    return MasteringTask(config, data_dir, pairs=tuple(pairs) if pairs else None)


def _evaluate(config, checkpoint: Path, out_dir: Path, split: str, data_dir: Path) -> dict:
    from deepafx.recipes.mastering.evaluate import evaluate_from_config

    return evaluate_from_config(config, checkpoint, out_dir, split=split, data_dir=data_dir)


def _item_scores(results: dict, split: str) -> dict:
    from deepafx.recipes.mastering.evaluate import SCORED
    from deepafx.seeds import track_scores

    scores = track_scores(results, split, SCORED)
    if (results.get("settings", {}).get("oracle") or {}).get("alias"):
        scores.pop("oracle_cmaes", None)  # a copy of the largest budget's row, listed under its own name too
    return scores


def _process(checkpoint, input_path, output_path, **options):
    from deepafx.automation.process import process_file

    return process_file(checkpoint, input_path, output_path, recipe="mastering", **options)


RECIPE = Recipe(
    name="mastering",
    summary="automatic mastering: an encoder drives a real mastering chain (DeepAFx)",
    sections={"data": MusicDataConfig, "chain": ChainConfig, "model": ModelConfig, "train": TrainConfig,
              "evaluate": EvaluateConfig, "render": RenderConfig},
    data=_data,
    task=_task,
    evaluate=_evaluate,
    process=_process,
    train_options=("pairs",),
    item_scores=_item_scores,
    metric_names={"mfcc_cosine": "MFCC cosine ↓", "mrstft": "MR-STFT ↓", "lufs_error": "loudness error [LU] ↓",
                  "true_peak_dbtp": "true peak [dBTP]"},
)
