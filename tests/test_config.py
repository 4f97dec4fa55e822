"""Config binding: renamed and removed keys fail with one line naming what to write instead."""

import dataclasses

import pytest
import yaml

from deepafx import config as config_mod
from deepafx.config import bind, load_config, renamed_key_error, upgrade_keys
from deepafx.recipes import get_recipe


@dataclasses.dataclass
class _Section:
    num_workers: int = 1
    timeout_seconds: float = 10.0


@pytest.fixture
def table(monkeypatch):
    monkeypatch.setattr(config_mod, "RENAMED_KEYS", {
        ("train", "workers"): "render.num_workers",
        ("train", "timeout_s"): "train.timeout_seconds",
        ("evaluate", "workers"): ("evaluate.num_workers", "render.num_workers"),
    })


def test_an_old_key_names_its_replacement_and_value_in_one_line(table):
    with pytest.raises(ValueError) as moved:
        bind(_Section, {"workers": 2}, "train")
    assert str(moved.value) == "[train] 'workers' was removed: write render.num_workers: 2"
    with pytest.raises(ValueError) as renamed:
        bind(_Section, {"timeout_s": 30.0, "num_workers": 1}, "train")
    assert str(renamed.value) == "[train] 'timeout_s' was renamed: write train.timeout_seconds: 30.0"
    assert bind(_Section, {"timeout_seconds": 30.0}, "train").timeout_seconds == 30.0


def test_a_key_with_several_replacements_gets_the_one_its_section_has(table):
    @dataclasses.dataclass
    class NoWorkers:
        seed: int = 0

    with pytest.raises(ValueError, match=r"^\[evaluate\] 'workers' was renamed: write evaluate.num_workers: 4$"):
        bind(_Section, {"workers": 4}, "evaluate")
    with pytest.raises(ValueError, match=r"^\[evaluate\] 'workers' was removed: write render.num_workers: 4$"):
        bind(NoWorkers, {"workers": 4}, "evaluate")


def test_a_current_key_is_never_reported_as_old(table):
    @dataclasses.dataclass
    class StillHasWorkers:
        workers: int = 1

    assert bind(StillHasWorkers, {"workers": 3}, "train").workers == 3
    assert renamed_key_error("train", {"workers": 3}, {"workers"}) is None


def test_stored_settings_are_read_with_todays_keys(table):
    assert upgrade_keys({"timeout_s": 5.0, "workers": 2, "seed": 1}, "train") == {"timeout_seconds": 5.0, "seed": 1}


def test_an_old_key_in_a_yaml_file_or_an_override_fails_at_binding(table, tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"recipe": "mastering", "train": {"workers": 2}}))
    recipe = get_recipe("mastering")
    with pytest.raises(ValueError, match=r"^\[train\] 'workers' was removed: write render.num_workers: 2$"):
        recipe.bind(load_config(path))
    path.write_text(yaml.safe_dump({"recipe": "mastering"}))
    with pytest.raises(ValueError, match=r"^\[train\] 'workers' was removed: write render.num_workers: 3$"):
        recipe.bind(load_config(path, ["train.workers=3"]))


# -- the table itself ---------------------------------------------------------------------------
def _sections():
    """``(recipe, section name, field names)`` of every dataclass section of every recipe."""
    from deepafx.recipes import RECIPES

    for name in RECIPES.names():
        for section, cls in get_recipe(name).sections.items():
            if dataclasses.is_dataclass(cls):
                yield name, section, {f.name for f in dataclasses.fields(cls)}


def test_every_old_key_is_gone_and_its_replacement_exists():
    sections = list(_sections())
    for (section, old), new in config_mod.RENAMED_KEYS.items():
        if section == "options":  # chain entry options: checked by the backends
            continue
        assert all(old not in fields for _, s, fields in sections if s == section), f"{section}.{old} still exists"
        for candidate in (new,) if isinstance(new, str) else new:
            target, _, key = candidate.rpartition(".")
            assert any(s == target and key in fields for _, s, fields in sections), f"{candidate} does not exist"


def test_train_workers_names_the_render_section():
    path = "mastering/quick"
    for overrides in (["train.workers=2"], ["train.workers=null"]):
        with pytest.raises(ValueError) as err:
            get_recipe("mastering").bind(load_config(path, overrides))
        assert str(err.value).startswith("[train] 'workers' was removed: write render.num_workers: ")


@pytest.mark.parametrize("recipe, path", [("mastering", "mastering/quick"), ("amp_emulation", "amp_emulation/quick")])
def test_evaluate_workers_names_the_render_section(recipe, path):
    with pytest.raises(ValueError) as err:
        get_recipe(recipe).bind(load_config(path, ["evaluate.workers=2"]))
    assert str(err.value) == "[evaluate] 'workers' was removed: write render.num_workers: 2"


@pytest.mark.parametrize("override, message", [
    ("train.render_workers=2", "[train] 'render_workers' was removed: write render.num_workers: 2"),
    ("train.spsa_epsilon=0.01", "[train] 'spsa_epsilon' was renamed: write train.epsilon: 0.01"),
    ("train.spsa_perturbations=2", "[train] 'spsa_perturbations' was renamed: write train.num_perturbations: 2"),
    ("data.corpus_workers=4", "[data] 'corpus_workers' was renamed: write data.num_workers: 4"),
    ("data.duration_s=4.0", "[data] 'duration_s' was renamed: write data.duration_seconds: 4.0"),
    ("evaluate.workers=2", "[evaluate] 'workers' was renamed: write evaluate.num_workers: 2"),
])
def test_dexed_old_keys_name_their_replacements(override, message):
    with pytest.raises(ValueError) as err:
        get_recipe("dexed_matching").bind(load_config("dexed_matching/quick", [override]))
    assert str(err.value) == message


def test_a_dexed_yaml_with_old_keys_fails_on_the_first_one(tmp_path):
    raw = yaml.safe_load(open(load_config("dexed_matching/quick")["_path"]))
    raw["train"]["render_workers"] = raw.pop("render")["num_workers"]
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"^\[train\] 'render_workers' was removed: write render.num_workers: 2$"):
        get_recipe("dexed_matching").bind(load_config(path))


def test_a_dexed_dataset_manifest_written_with_old_keys_is_still_current():
    from deepafx.recipes.dexed_matching.data import DataConfig, _stored_settings

    new = dataclasses.asdict(DataConfig())
    old = {{"duration_seconds": "duration_s", "note_duration_seconds": "note_duration_s",
             "num_workers": "corpus_workers"}.get(k, k): v for k, v in new.items()}
    assert _stored_settings(old) == new
    assert DataConfig.from_dict(_stored_settings(old)) == DataConfig()


def test_an_old_chain_option_names_its_replacement():
    pytest.importorskip("dexed")
    from deepafx.hosts.base import PluginError, ProcessorSpec, build_processor

    with pytest.raises(PluginError, match=r"\[options\] 'note_duration_s' was renamed: write "
                                          r"options.note_duration_seconds: 0.5$"):
        build_processor(ProcessorSpec("dexed", "dx", {"note_duration_s": 0.5}), 16000)


@pytest.mark.parametrize("recipe, override, message", [
    ("mastering", "train.timeout_s=60", "[train] 'timeout_s' was renamed: write train.timeout_seconds: 60"),
    ("amp_emulation", "evaluate.timeout_s=30.0", "[evaluate] 'timeout_s' was renamed: write evaluate.timeout_seconds: 30.0"),
])
def test_seconds_are_seconds(recipe, override, message):
    with pytest.raises(ValueError) as err:
        get_recipe(recipe).bind(load_config(f"{recipe}/quick", [override]))
    assert str(err.value) == message


def test_old_chain_options_name_their_replacements():
    from deepafx.hosts.base import PluginError, ProcessorSpec, build_processor

    with pytest.raises(ValueError, match=r"\[options\] 'min_decay_s' was renamed: write options.min_decay_seconds: 0.1$"):
        build_processor(ProcessorSpec("ddsp.reverb", "verb", {"min_decay_s": 0.1}), 44100)
    pytest.importorskip("dawdreamer")
    with pytest.raises(PluginError, match=r"\[options\] 'context_s' was renamed: write options.context_seconds: 1.0$"):
        build_processor(ProcessorSpec("faust", "f", {"code": "process = _;", "context_s": 1.0}), 44100)


def test_a_stored_config_is_read_with_todays_keys():
    stored = {"recipe": "mastering", "train": {"workers": None, "timeout_s": 120.0, "lr": 0.001},
              "evaluate": {"workers": None, "timeout_s": 120.0}, "render": {"num_workers": None}}
    today = get_recipe("mastering").bind(load_config("mastering/quick")).to_dict()
    assert config_mod.upgrade_config(stored, like=today) == {
        "recipe": "mastering", "train": {"timeout_seconds": 120.0, "lr": 0.001},
        "evaluate": {"timeout_seconds": 120.0}, "render": {"num_workers": None}}
