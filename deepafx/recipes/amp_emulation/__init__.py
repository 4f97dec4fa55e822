"""Amp emulation (DeepAFx, first task): an encoder drives ordinary plugins to sound like a tube amplifier.

An encoder listens to a clean DI guitar or bass and predicts, frame by frame,
the parameters of a chain of ordinary plugins (embedded: multiband compressor
→ distortion → graphic EQ → gain) so that the chain's output sounds like the
same DI through a tube amplifier the chain does not contain. The user gets
parameter automation for plugins they own, not a neural amp.

Modules: :mod:`~deepafx.recipes.amp_emulation.data` (DI from real scores →
tube-amp targets), :mod:`~deepafx.recipes.amp_emulation.train` (the automation
task), :mod:`~deepafx.recipes.amp_emulation.esr` (ESR metric and loss),
:mod:`~deepafx.recipes.amp_emulation.neural_amp` (the LSTM baseline),
:mod:`~deepafx.recipes.amp_emulation.evaluate`,
:mod:`~deepafx.recipes.amp_emulation.plots`; inference is
:mod:`deepafx.automation.process`.
"""

from __future__ import annotations

from pathlib import Path

from deepafx.automation.model import ModelConfig
from deepafx.recipes import Recipe
from deepafx.recipes.amp_emulation.data import AmpDataConfig
from deepafx.recipes.amp_emulation.evaluate import METRICS, EvaluateConfig
from deepafx.recipes.amp_emulation.train import ChainConfig, TrainConfig
from deepafx.workers import RenderConfig


def _data(config, out_dir: Path, force: bool = False) -> Path:
    from deepafx.recipes.amp_emulation.data import build_dataset

    return build_dataset(config.data, out_dir, force=force)


def _task(config, data_dir: Path):
    from deepafx.recipes.amp_emulation.train import AmpEmulationTask

    return AmpEmulationTask(config, data_dir)


def _evaluate(config, checkpoint: Path, out_dir: Path, split: str, data_dir: Path) -> dict:
    from deepafx.recipes.amp_emulation.evaluate import evaluate_from_config

    return evaluate_from_config(config, checkpoint, out_dir, split=split, data_dir=data_dir)


def _item_scores(eval_dir: Path, split: str) -> dict:
    from deepafx.seeds import track_scores

    return track_scores(eval_dir, split, tuple(k for k, _, _ in METRICS))


def _process(checkpoint, input_path, output_path, **options):
    from deepafx.automation.process import process_file

    return process_file(checkpoint, input_path, output_path, recipe="amp_emulation", **options)


#: Any amp-emulation config in seconds (:attr:`deepafx.recipes.Recipe.tiny_overrides`): about 20 s of DI
#: in 3-6 s pieces, a quarter-width encoder on 0.5 s of context, 2 pretrain steps and 2 epochs of 3 steps
#: on one render worker; evaluation with a spectral oracle of 8 renders on 2 s excerpts and a fair (ESR)
#: oracle of 4 and 8 renders on at most 2 whole test pieces, a static preset of 8 renders on 2 s of
#: training audio, and an LSTM baseline trained for at most 2 s.
TINY_OVERRIDES = (
    "data.train_minutes=0.3", "data.max_piece_seconds=6", "data.min_piece_seconds=3",
    "model.context_seconds=0.5", "model.frame_seconds=0.25", "model.hop_length=2048", "model.n_mels=32",
    "model.encoder_kwargs={width_mult: 0.25}",
    "train.batch_size=2", "train.epochs=2", "train.steps_per_epoch=3", "train.valid_steps=2",
    "train.pretrain_steps=2", "train.num_threads=1", "train.seed=3", "render.num_workers=1",
    "train.start_renders=8", "train.start_seconds=2",
    "evaluate.cmaes_renders=8", "evaluate.esr_oracle_renders=[4, 8]", "evaluate.excerpt_seconds=2",
    "evaluate.preroll_seconds=0.5",
    "evaluate.max_tracks=2", "evaluate.bootstrap=200",
    "evaluate.neural_amp={budget_seconds: 2, hidden_size: 8, segment_samples: 4000, batch_size: 4}",
)


RECIPE = Recipe(
    name="amp_emulation",
    summary="amp emulation: an encoder drives ordinary plugins to sound like a tube amplifier (DeepAFx)",
    sections={"data": AmpDataConfig, "chain": ChainConfig, "model": ModelConfig, "train": TrainConfig,
              "evaluate": EvaluateConfig, "render": RenderConfig},
    data=_data,
    task=_task,
    evaluate=_evaluate,
    process=_process,
    tiny_overrides=TINY_OVERRIDES,
    item_scores=_item_scores,
    metric_names={key: f"{name} ↓" for key, name, _ in METRICS},
)
