"""The recipe contract: the same checks for every registered recipe and every packaged config.

The tests are parametrized over :data:`deepafx.recipes.RECIPES` and
:func:`deepafx.assets.packaged_configs`, so a recipe gets them by registering;
what it declares for them is :attr:`deepafx.recipes.Recipe.tiny_overrides`
(its configs shrunk to a run of seconds). For every recipe:

* every packaged config binds, and unknown sections and keys are errors naming them;
* its quick config trains on tiny data (every other packaged config: ``-m slow``);
* a run stopped by ``train.max_steps`` and resumed equals the uninterrupted run
  (history and final weights), and a fresh run into a used folder keeps the earlier run;
* two DDP ranks (``torchrun``, gloo on CPU) hold the same weights after every record;
* ``evaluate`` on the tiny test split writes finite numbers.

Each recipe's tiny data is rendered once (module-scoped fixture), and its
uninterrupted quick run is shared by the train, resume, DDP and evaluate tests.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from deepafx.assets import packaged_configs, resolve_config
from deepafx.config import apply_overrides, load_config
from deepafx.recipes import RECIPES, Recipe, RecipeConfig, get_recipe
from deepafx.seeds import aggregate
from deepafx.trainer import train

from conftest import torchrun_train

#: The config of every recipe that the default suite trains (the others train under ``-m slow``).
QUICK = "quick"
CONFIGS = packaged_configs()
NAMES = RECIPES.names()
#: Keys of history records that hold wall-clock time (left out when runs are compared).
CLOCK_WORDS = ("seconds", "time")


@dataclasses.dataclass
class Tiny:
    """A packaged config with its recipe's tiny overrides, and its data folder."""

    recipe: Recipe
    name: str  # packaged name, "<recipe>/<stem>"
    overrides: list[str]
    config: RecipeConfig
    data_dir: Path

    def bound(self, *extra: str) -> RecipeConfig:
        return self.recipe.bind(load_config(self.name, self.overrides + list(extra)))

    def train(self, run_dir: Path, *extra: str, resume: bool = False) -> dict[str, Any]:
        """``deepafx train`` in process: the recipe's task on the shared engine."""
        cfg = self.bound(*extra)
        return train(self.recipe.task(cfg, self.data_dir), run_dir, cfg, resume=resume)


def tiny(name: str, data_dir: Path) -> Tiny:
    raw = load_config(name)
    recipe = get_recipe(str(raw["recipe"]))
    overrides = recipe.tiny(raw)
    assert overrides, f"recipe {recipe.name!r} declares no tiny_overrides (deepafx.recipes.Recipe)"
    t = Tiny(recipe, name, overrides, recipe.bind(load_config(name, overrides)), data_dir)
    soundfont = getattr(t.config.sections.get("data"), "soundfont", None)
    if soundfont and not Path(soundfont).is_file():
        pytest.skip(f"{name}: the General MIDI SoundFont {soundfont} is absent (apt-get install fluid-soundfont-gm)")
    return t


def records(history: list[dict]) -> list[dict]:
    """History records without wall-clock values: two runs of one seed must agree on the rest."""
    return [{k: v for k, v in h.items() if not any(w in k for w in CLOCK_WORDS)} for h in history]


def losses(history: list[dict]) -> list[float]:
    return [v for h in history for k, v in h.items() if "loss" in k and isinstance(v, (int, float))]


def read_history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def last_checkpoint(run_dir: Path) -> dict[str, Any]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)


# --------------------------------------------------------------------------- registry and configs
def test_every_recipe_ships_a_quick_config_and_tiny_overrides():
    assert NAMES, "no recipe registered"
    for name in NAMES:
        assert f"{name}/{QUICK}" in CONFIGS, f"recipe {name!r} ships no recipes/{name}/{QUICK}.yaml"
        raw = load_config(f"{name}/{QUICK}")
        assert get_recipe(name).tiny(raw), f"recipe {name!r} declares no tiny_overrides (deepafx.recipes.Recipe)"
    assert {c.split("/")[0] for c in CONFIGS} <= set(NAMES), "a packaged config folder names no registered recipe"


@pytest.mark.parametrize("name", CONFIGS)
def test_config_binds_with_and_without_the_tiny_overrides(name):
    raw = load_config(name)
    assert raw["recipe"] == name.split("/")[0]
    recipe = get_recipe(raw["recipe"])
    cfg = recipe.bind(raw)
    assert cfg.recipe == recipe.name and cfg.stem == Path(name).stem and set(cfg.sections) == set(recipe.sections)
    assert Path(cfg.path) == resolve_config(name)
    chain = cfg.sections.get("chain")
    if chain is not None:  # a chain section names a loadable chain
        assert chain.sample_rate > 0 and len(chain.processors) >= 1
    recipe.bind(load_config(name, recipe.tiny(raw)))


@pytest.mark.parametrize("recipe_name", NAMES)
def test_unknown_sections_and_keys_are_named(recipe_name):
    recipe = get_recipe(recipe_name)
    with pytest.raises(ValueError, match=r"unknown config section\(s\) \['nonsense'\].*allowed"):
        recipe.bind({"recipe": recipe_name, "nonsense": {}})
    with pytest.raises(ValueError, match="is for recipe"):
        recipe.bind({"recipe": next((n for n in NAMES if n != recipe_name), "other")})
    for section, cls in recipe.sections.items():
        if dataclasses.is_dataclass(cls):
            with pytest.raises(ValueError, match=rf"\[{section}\] unknown key\(s\) \['epochz'\].*allowed"):
                recipe.bind({"recipe": recipe_name, section: {"epochz": 3}})


def test_overrides_are_checked():
    cfg = apply_overrides({"recipe": "mastering", "train": {"epochs": 5}},
                          ["train.epochs=2", "model.encoder_kwargs={width_mult: 0.5}"])
    assert cfg["train"]["epochs"] == 2 and cfg["model"]["encoder_kwargs"] == {"width_mult": 0.5}
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides({}, ["train.epochs"])
    with pytest.raises(FileNotFoundError, match="config not found"):
        load_config("recipes/mastering/nope.yaml")


# --------------------------------------------------------------------------- tiny runs of each quick config
@pytest.fixture(scope="module", params=NAMES)
def quick(request, tmp_path_factory) -> Tiny:
    """The recipe's quick config with its tiny overrides, its data rendered once."""
    t = tiny(f"{request.param}/{QUICK}", tmp_path_factory.mktemp(f"{request.param}_data"))
    t.recipe.data(t.config, t.data_dir, force=False)
    return t


@pytest.fixture(scope="module")
def trained(quick, tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    """One uninterrupted tiny run of the quick config: ``(run folder, result)``."""
    run_dir = tmp_path_factory.mktemp(f"{quick.recipe.name}_runs") / "full"
    return run_dir, quick.train(run_dir)


def check_tiny_run(t: Tiny, run_dir: Path, result: dict[str, Any]) -> None:
    """Finite losses, recorded as they were returned; ``last.pt`` at the last recorded step."""
    history = result["history"]
    assert len(history) >= 2 and records(read_history(run_dir)) == records(history)
    values = losses(history)
    assert values and all(math.isfinite(v) for v in values), values
    ckpt = last_checkpoint(run_dir)
    assert ckpt["recipe"] == t.recipe.name and ckpt["config"]["recipe"] == t.recipe.name
    assert ckpt["state"]["global_step"] == history[-1]["step"] > 0
    assert (run_dir / "config.yaml").read_text().startswith(f"recipe: {t.recipe.name}\n")
    assert not [p for p in run_dir.rglob("*.tmp")]  # checkpoints are written atomically


def test_quick_config_trains_on_tiny_data(quick, trained):
    check_tiny_run(quick, *trained)


def stop_step(history: list[dict]) -> int:
    """A step inside the uninterrupted run to stop at: the middle one among its records.

    Records are written at exact resume points (ends of epochs, steps of step-based stages).
    """
    final = history[-1]["step"]
    steps = sorted({h["step"] for h in history if 0 < h["step"] < final})
    assert steps, f"the tiny run records no step before its last ({final}); lengthen the tiny schedule"
    return steps[len(steps) // 2]


def test_resume_equals_the_uninterrupted_run(quick, trained, tmp_path):
    full_dir, full = trained
    stop = stop_step(full["history"])
    # the interrupted run starts as a fresh run in a folder holding a finished run: that run is kept whole
    run_dir = tmp_path / "b"
    shutil.copytree(full_dir, run_dir)
    earlier = (run_dir / "checkpoints" / "last.pt").read_bytes()
    first = quick.train(run_dir, f"train.max_steps={stop}")
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("b.previous-")]
    assert len(kept) == 1 and (kept[0] / "checkpoints" / "last.pt").read_bytes() == earlier
    stopped = last_checkpoint(run_dir)
    assert stopped["state"]["global_step"] == stop
    assert records(first["history"]) == records([h for h in full["history"] if h["step"] <= stop])

    resumed = quick.train(run_dir, resume=True)
    assert records(resumed["history"]) == records(full["history"])
    assert records(read_history(run_dir)) == records(full["history"])
    ended = last_checkpoint(run_dir)
    a, b = last_checkpoint(full_dir)["model"], ended["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not [p for p in run_dir.rglob("*.tmp")]  # checkpoints are written atomically
    # a task's clocks (task state ``*seconds``, e.g. the amp's training time) add up over sessions
    for key, value in stopped["task"].items():
        if key.endswith("seconds"):
            assert ended["task"][key] > value > 0, key


def test_two_ddp_ranks_agree(quick, trained, tmp_path):
    _, full = trained
    proc = torchrun_train(quick.name, tmp_path / "ddp", quick.data_dir, quick.overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = read_history(tmp_path / "ddp")
    sums = [h["param_checksums"] for h in history if "param_checksums" in h]
    assert sums and all(len(s) == 2 and s[0] == s[1] for s in sums), sums
    # the same schedule as one process: the ranks split the data, not the steps
    assert [(h["stage"], h.get("epoch"), h["step"]) for h in history] == \
        [(h["stage"], h.get("epoch"), h["step"]) for h in full["history"]]
    assert last_checkpoint(tmp_path / "ddp")["state"]["global_step"] == full["history"][-1]["step"]
    assert all(math.isfinite(v) for v in losses(history))


def numbers(tree: Any, path: str = "") -> list[tuple[str, float]]:
    """Every number in a JSON tree, with its path."""
    if isinstance(tree, dict):
        return [x for k, v in tree.items() for x in numbers(v, f"{path}/{k}")]
    if isinstance(tree, list):
        return [x for i, v in enumerate(tree) for x in numbers(v, f"{path}/{i}")]
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return [(path, float(tree))]
    return []


def test_evaluate_gives_finite_numbers(quick, trained, tmp_path):
    run_dir, _ = trained
    out = tmp_path / "eval"
    returned = quick.recipe.evaluate(quick.config, run_dir, out, split="test", data_dir=quick.data_dir)

    def refuse(constant):
        raise AssertionError(f"results.json holds {constant}")

    written = json.loads((out / "results.json").read_text(), parse_constant=refuse)
    found = numbers(written)
    assert len(found) >= 20, found
    assert all(math.isfinite(v) for _, v in numbers(returned))
    assert (out / "results.md").read_text().strip()
    # what `deepafx evaluate` pools over the seeds of a multi-seed run (deepafx.seeds)
    if quick.recipe.item_scores is not None:
        scores = quick.recipe.item_scores(out, "test")
        reference = scores[quick.recipe.reference_method]
        assert reference and all(len(per_item) >= 1 for per_item in reference.values())
        assert set(quick.recipe.metric_names or reference) <= set(reference)
        pooled = aggregate({0: scores, 1: scores})
        cell = next(iter(pooled["methods"][quick.recipe.reference_method].values()))
        assert cell["seed_std"] == 0.0 and cell["per_seed"]["0"] == cell["mean"]


# --------------------------------------------------------------------------- every other packaged config
@pytest.mark.slow
@pytest.mark.parametrize("name", [c for c in CONFIGS if Path(c).name != QUICK])
def test_other_configs_train_on_tiny_data(name, tmp_path):
    from deepafx.hosts.base import PluginError

    t = tiny(name, tmp_path / "data")
    chain = t.config.sections.get("chain")
    if chain is not None:
        try:
            chain.build().close()
        except PluginError as exc:
            pytest.skip(f"{name}: a plugin of its chain is not installed: {exc}")
    run_dir = tmp_path / "run"
    check_tiny_run(t, run_dir, t.train(run_dir))
