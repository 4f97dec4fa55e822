"""Every shipped recipe config binds to the code's dataclasses and names a loadable chain."""

from pathlib import Path

import pytest

from deepafx.chain import ChainSpec
from deepafx.config import apply_overrides, bind, load_config
from deepafx.automation.model import ModelConfig
from deepafx.recipes.mastering.train import TrainConfig

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.mark.parametrize("path", sorted((RECIPES / "mastering").glob("*.yaml")), ids=lambda p: p.name)
def test_mastering_configs_bind(path):
    cfg = load_config(path)
    assert cfg["recipe"] == "mastering"
    bind(TrainConfig, cfg.get("train"), "train")
    bind(ModelConfig, cfg.get("model"), "model")
    chain = cfg["chain"]
    spec = ChainSpec.from_file(chain) if isinstance(chain, str) else ChainSpec.from_dict(chain)
    assert spec.sample_rate == 44100 and len(spec.processors) >= 3


def test_unknown_keys_and_overrides_are_checked():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['epochz'\].*allowed"):
        bind(TrainConfig, {"epochz": 3}, "train")
    cfg = apply_overrides({"recipe": "mastering", "train": {"epochs": 5}}, ["train.epochs=2", "model.encoder_kwargs={width_mult: 0.5}"])
    assert cfg["train"]["epochs"] == 2 and cfg["model"]["encoder_kwargs"] == {"width_mult": 0.5}
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides({}, ["train.epochs"])
    with pytest.raises(FileNotFoundError, match="config not found"):
        load_config("recipes/mastering/nope.yaml")
