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


#: Per-sound metrics pooled over seeds, per domain (``lsd_in_domain`` …): key → display name. The LSD per
#: novelty tercile (``lsd_in_domain_novelty_low`` …) is pooled too and shown under its key: a tercile can be
#: empty on a small evaluation, and every name listed here must be present in each seed's scores.
POOLED_METRICS = {f"{key}_{dom}": f"{name} {label}" for dom, label in (("in_domain", "in domain"),
                                                                        ("out_of_domain", "out of domain"))
                  for key, name in (("lsd", "LSD [dB] ↓"), ("mss", "MSS ↓"), ("mfcc_l1", "MFCC L1 ↓"))}


def _item_scores(eval_dir: Path, split: str) -> dict:
    """Per-sound scores of one seed from ``details.json``: ``{method: {"<metric>_<domain>": {index: value}}}``,
    and ``"lsd_<domain>_novelty_<bin>"`` for the sounds of each novelty tercile (rows with ``novelty_bin``)."""
    import json

    details = json.loads((Path(eval_dir) / "details.json").read_text())
    out: dict = {}
    for method, per_domain in details.items():
        for dom, rows in per_domain.items():
            for i, row in enumerate(rows):
                for key in ("lsd", "mss", "mfcc_l1"):
                    if key in row:
                        out.setdefault(method, {}).setdefault(f"{key}_{dom}", {})[str(i)] = row[key]
                if "novelty_bin" in row and "lsd" in row:
                    out.setdefault(method, {}).setdefault(f"lsd_{dom}_novelty_{row['novelty_bin']}", {})[str(i)] = row["lsd"]
    return out


def _match(args) -> int:
    from deepafx.recipes.dexed_matching.match import run

    return run(args)


def _tiny_overrides(config) -> list[str]:
    """Any Dexed config in seconds (:attr:`deepafx.recipes.Recipe.tiny_overrides`).

    14 factory voices at 2 pitches, 6 instruments out of domain, a tiny network, 3 P-loss steps and
    2 + 1 + 2 spectral steps on one render worker, 1 + 1 targets with 6 refinement renders; a config
    with a cached corpus (it needs ``multi_note``) gets one of 48 presets and 2 voice-classifier steps.
    """
    tiny = [
        "data.max_factory_presets=14", "data.samples_per_preset=1", "data.pitches=[60, 64]",
        "data.ood_programs=[0, 24, 40, 56, 71, 73]", "data.ood_test_programs=2", "data.ood_valid_programs=1",
        "data.ood_pitches=[60]", "data.test_fraction=0.2", "data.valid_fraction=0.1",
        "model.conv_channels=[8, 16]", "model.frame_dim=32", "model.gru_hidden=32", "model.cnn_channels=[8, 16]",
        "model.hidden=32", "train.batch_size=2", "train.spectral_batch_size=2", "train.ploss_steps=3",
        "train.crossfade_steps=2", "train.synth_steps=1", "train.real_steps=2", "train.num_threads=1",
        "train.log_every=1", "render.num_workers=1", "evaluate.num_in_domain=1", "evaluate.num_out_of_domain=1",
        "evaluate.refine_renders=6", "evaluate.num_workers=1",
    ]
    if (config.get("data") or {}).get("corpus_size"):
        tiny += ["data.corpus_size=48", "data.num_workers=1", "train.voice_steps=2"]
    return tiny


RECIPE = Recipe(
    name="dexed_matching",
    summary="DX7 sound matching: estimate Dexed presets from audio (DiffSynth schedule, SPSA through Dexed)",
    sections={"data": DataConfig, "synth": SynthConfig, "model": ModelConfig, "train": TrainConfig,
              "evaluate": EvalConfig, "render": RenderConfig},
    data=_data,
    task=_task,
    evaluate=_evaluate,
    match=_match,
    tiny_overrides=_tiny_overrides,
    item_scores=_item_scores,
    metric_names=POOLED_METRICS,
    reference_method="real",
    # each stage trained through Dexed against the network it starts from, the final network against the
    # network the spectral stages start from (P-loss, or the voice classifier with train.spectral_start: voice);
    # the networks against retrieval (over the training voices, and over the corpus), refined and not; and
    # each refined network against its start (what the per-sound SPSA search through Dexed gains)
    pooled_pairs=(("synth", "ploss"), ("synth", "voice"), ("real", "synth"), ("real", "ploss"), ("real", "voice"),
                  ("voice", "retrieval"), ("synth", "retrieval"), ("voice", "retrieval_corpus"),
                  ("voice+refine", "retrieval"), ("voice+refine", "retrieval+refine"),
                  ("voice+refine", "voice"), ("ploss+refine", "ploss"), ("synth+refine", "synth")),
)
