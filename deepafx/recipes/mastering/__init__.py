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


def _item_scores(eval_dir: Path, split: str) -> dict:
    import json

    from deepafx.recipes.mastering.evaluate import SCORED
    from deepafx.seeds import track_scores

    results = json.loads((Path(eval_dir) / "results.json").read_text())
    scores = track_scores(results, split, SCORED)
    if (results.get("settings", {}).get("oracle") or {}).get("alias"):
        scores.pop("oracle_cmaes", None)  # a copy of the largest budget's row, listed under its own name too
    return scores


def _process(checkpoint, input_path, output_path, **options):
    from deepafx.automation.process import process_file

    return process_file(checkpoint, input_path, output_path, recipe="mastering", **options)


#: Any mastering config in seconds (:attr:`deepafx.recipes.Recipe.tiny_overrides`): about 15 s of music
#: in 3-6 s pieces, a quarter-width encoder on 0.5 s of context, 2 pretrain steps and 2 epochs of 3 steps
#: on one render worker; evaluation with an oracle of 8 renders on 2 s excerpts of at most 2 test pieces,
#: without the matchering and loudness rows and the figure.
TINY_OVERRIDES = (
    "data.train_minutes=0.25", "data.max_piece_seconds=6", "data.min_piece_seconds=3",
    "model.context_seconds=0.5", "model.frame_seconds=0.25", "model.hop_length=2048", "model.n_mels=32",
    "model.encoder_kwargs={width_mult: 0.25}",
    "train.batch_size=2", "train.epochs=2", "train.steps_per_epoch=3", "train.valid_steps=2",
    "train.pretrain_steps=2", "train.num_threads=1", "train.seed=3", "render.num_workers=1",
    "evaluate.cmaes_renders=8", "evaluate.excerpt_seconds=2", "evaluate.preroll_seconds=0.5",
    "evaluate.max_tracks=2", "evaluate.bootstrap_resamples=200", "evaluate.matchering=false",
    "evaluate.loudness_lufs=null", "evaluate.plot=false",
)


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
    tiny_overrides=TINY_OVERRIDES,
    item_scores=_item_scores,
    metric_names={"mfcc_cosine": "MFCC cosine ↓", "mrstft": "MR-STFT ↓", "lufs_error": "loudness error [LU] ↓",
                  "true_peak_dbtp": "true peak [dBTP]"},
)
