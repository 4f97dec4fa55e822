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
from typing import Any, Mapping

from deepafx.recipes import Recipe
from deepafx.recipes.mastering.evaluate import EvaluateConfig
from deepafx.automation.model import ModelConfig
from deepafx.recipes.mastering.data import DataSection
from deepafx.recipes.mastering.train import ChainConfig, TrainConfig
from deepafx.workers import RenderConfig


def _data(config, out_dir: Path, force: bool = False) -> Path:
    from deepafx.recipes.mastering.data import build_dataset

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


def _item_groups(eval_dir: Path, split: str) -> dict:
    import json

    results = json.loads((Path(eval_dir) / "results.json").read_text())
    return {str(t["piece"]): t["album"] for t in results["tracks"] if t.get("album") is not None}


def _process(checkpoint, input_path, output_path, **options):
    from deepafx.automation.process import process_file

    return process_file(checkpoint, input_path, output_path, recipe="mastering", **options)


#: Any mastering config in seconds (:attr:`deepafx.recipes.Recipe.tiny_overrides`): a quarter-width encoder
#: on 0.5 s of context, 2 pretrain steps and 2 epochs of 3 steps on one render worker; evaluation with an
#: oracle of 8 renders on 2 s excerpts of at most 2 test pieces, without the matchering and loudness rows
#: and the figure. The data: about 15 s of scores in 3-6 s pieces (:data:`TINY_SCORES`), or 2 training,
#: 1 validation and 2 test excerpts of 6 s from the three smallest soundtracks (:data:`TINY_SOUNDTRACKS`).
TINY_OVERRIDES = (
    "model.context_seconds=0.5", "model.frame_seconds=0.25", "model.hop_length=2048", "model.n_mels=32",
    "model.encoder_kwargs={width_mult: 0.25}",
    "train.batch_size=2", "train.epochs=2", "train.steps_per_epoch=3", "train.valid_steps=2",
    "train.pretrain_steps=2", "train.num_threads=1", "train.seed=3", "render.num_workers=1",
    "evaluate.cmaes_renders=8", "evaluate.excerpt_seconds=2", "evaluate.preroll_seconds=0.5",
    "evaluate.max_tracks=2", "evaluate.bootstrap_resamples=200", "evaluate.matchering=false",
    "evaluate.loudness_lufs=null", "evaluate.plot=false",
)
TINY_SCORES = ("data.train_minutes=0.25", "data.max_piece_seconds=6", "data.min_piece_seconds=3")
TINY_SOUNDTRACKS = (
    "data.train_albums=[singularity]", "data.valid_albums=[hyperrogue]", "data.test_albums=[nexuiz]",
    "data.tracks_per_album={train: 2, valid: 1, test: 2}", "data.excerpts_per_track=1",
    "data.excerpt_seconds=6", "data.scores=null",
)


def tiny_overrides(config: Mapping[str, Any]) -> list[str]:
    """:data:`TINY_OVERRIDES` plus the tiny data of the config's ``data.source``."""
    source = (config.get("data") or {}).get("source", "scores")
    return list(TINY_OVERRIDES) + list(TINY_SOUNDTRACKS if source == "soundtracks" else TINY_SCORES)


RECIPE = Recipe(
    name="mastering",
    summary="automatic mastering: an encoder drives a real mastering chain (DeepAFx)",
    sections={"data": DataSection, "chain": ChainConfig, "model": ModelConfig, "train": TrainConfig,
              "evaluate": EvaluateConfig, "render": RenderConfig},
    data=_data,
    task=_task,
    evaluate=_evaluate,
    process=_process,
    train_options=("pairs",),
    tiny_overrides=tiny_overrides,
    item_scores=_item_scores,
    item_groups=_item_groups,
    method_labels={"loudnorm": "loudnorm (given the loudness)", "model_loudness": "model_loudness (given the loudness)"},
    metric_names={"mfcc_cosine": "MFCC cosine ↓", "mrstft": "MR-STFT ↓", "lufs_error": "loudness error [LU] ↓",
                  "true_peak_dbtp": "true peak [dBTP]"},
)
