"""Shipped assets (plugins/, recipes/): found by name from any folder, packaged in the wheel, used by an installed copy."""

import os
import shutil
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from deepafx import assets
from deepafx.chain import ChainSpec
from deepafx.config import apply_overrides, load_config
from deepafx.hosts.base import PluginError
from deepafx.hosts.plugin_params import ParamMap, resolve_asset

REPO = Path(__file__).resolve().parent.parent
CHAINS = ["lsp_mastering", "zam_mastering"]


def test_asset_folders_and_packaged_names():
    # In a source checkout / editable install the repository folders are the assets.
    assert assets.plugins_dir() == REPO / "plugins" and assets.recipes_dir() == REPO / "recipes"
    assert assets.packaged_chains() == sorted(p.stem for p in (REPO / "plugins" / "chains").glob("*.yaml"))
    assert set(CHAINS) <= set(assets.packaged_chains())
    configs = assets.packaged_configs()
    assert configs == sorted(f"{p.parent.name}/{p.stem}" for p in (REPO / "recipes").glob("*/*.yaml"))
    assert {"mastering/quick", "mastering/full_zam", "dexed_matching/quick"} <= set(configs)


@pytest.mark.parametrize("name", ["mastering/quick", "mastering/quick.yaml", "recipes/mastering/quick.yaml"])
def test_configs_resolve_by_name_from_another_folder(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    packaged = assets.recipes_dir() / "mastering" / "quick.yaml"
    assert assets.resolve_config(name) == packaged
    cfg = load_config(name, ["train.epochs=2"])
    assert cfg["recipe"] == "mastering" and cfg["train"]["epochs"] == 2 and cfg["_path"] == str(packaged)


def test_user_files_win_over_packaged_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mastering").mkdir()
    (tmp_path / "mastering" / "quick.yaml").write_text("recipe: mastering\ntrain: {epochs: 7}\n")
    assert assets.resolve_config("mastering/quick.yaml") == Path("mastering/quick.yaml")
    assert load_config("mastering/quick.yaml")["train"]["epochs"] == 7
    assert assets.resolve_config("mastering/quick") == assets.recipes_dir() / "mastering" / "quick.yaml"

    (tmp_path / "mine").mkdir()
    mine = tmp_path / "mine" / "zam_mastering.yaml"  # same name as a packaged chain: the user's file is used
    mine.write_text("name: mine\nsample_rate: 48000\nprocessors:\n  - {backend: pedalboard.Gain, name: gain}\n")
    spec = ChainSpec.from_file("mine/zam_mastering.yaml")
    assert spec.name == "mine" and spec.sample_rate == 48000 and [p.backend for p in spec.processors] == ["pedalboard.Gain"]
    monkeypatch.chdir(REPO / "deepafx")  # an absolute path works from any folder
    assert ChainSpec.from_file(mine).name == "mine"


@pytest.mark.parametrize("name", ["zam_mastering", "zam_mastering.yaml", "chains/zam_mastering.yaml",
                                  "plugins/chains/zam_mastering.yaml"])
def test_chains_resolve_by_name_from_another_folder(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    assert assets.resolve_chain(name) == assets.plugins_dir() / "chains" / "zam_mastering.yaml"
    spec = ChainSpec.from_file(name)  # declarative only: no plugin is loaded
    assert spec.name == "zam_mastering" and spec.sample_rate == 44100
    assert [p.name for p in spec.processors] == ["comp", "eq", "limiter"]
    assert len(spec.processors[1].learn) == 29


def test_plugin_files_resolve_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dsp = assets.plugins_dir() / "faust" / "tube_preamp.dsp"
    for name in ("tube_preamp.dsp", "faust/tube_preamp.dsp", "plugins/faust/tube_preamp.dsp"):
        assert resolve_asset(name, ("faust",), "Faust DSP") == dsp
    for name in ("ZamGEQ31.yaml", "param_maps/ZamGEQ31.yaml"):
        pm = ParamMap.load(name)
        assert pm.path == assets.plugins_dir() / "param_maps" / "ZamGEQ31.yaml" and pm.plugin == "ZamGEQ31" and len(pm.params) == 30
    with pytest.raises(PluginError, match=r"'nope.dsp' not found; tried: nope.dsp, .*/faust/nope.dsp"):
        resolve_asset("nope.dsp", ("faust",), "Faust DSP")


def test_unknown_names_raise_one_line_errors_listing_packaged_items(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as chain_err:
        ChainSpec.from_file("x")
    msg = str(chain_err.value)
    assert "\n" not in msg
    assert msg.startswith(f"chain 'x' not found (tried {tmp_path / 'x'}, ")
    assert msg.endswith(f"); packaged chains: {', '.join(assets.packaged_chains())}")
    assert all(name in assets.packaged_chains() for name in ("lsp_mastering", "zam_mastering", "guitarix_amp"))

    # a recipe config naming an unknown chain (`--set chain=x`) fails the same way where the chain is loaded
    cfg = apply_overrides(load_config("mastering/quick"), ["chain=zam_masterin"])
    with pytest.raises(FileNotFoundError, match=r"^chain 'zam_masterin' not found .*packaged chains: .*zam_mastering$"):
        ChainSpec.from_file(cfg["chain"])

    for name in ("mastering/nope", "recipes/mastering/nope.yaml", str(tmp_path / "abs.yaml")):
        with pytest.raises(FileNotFoundError) as cfg_err:
            load_config(name)
        msg = str(cfg_err.value)
        assert "\n" not in msg and msg.startswith(f"config not found: {name!r} (tried ")
        assert msg.endswith(f"packaged configs: {', '.join(assets.packaged_configs())}")
        assert "mastering/quick" in msg and "dexed_matching/quick" in msg


def test_pyproject_lists_every_package():
    """``pyproject.toml`` lists packages explicitly (the asset mapping needs it): a new package must be added."""
    setuptools_cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools_cfg["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "deepafx").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    missing = sorted(on_disk - listed)
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml, or they will not be installed"
    stale = sorted(p for p in listed - on_disk if not p.startswith("deepafx._assets."))
    assert not stale, f"pyproject.toml lists packages that do not exist: {stale}"
    assert setuptools_cfg["package-dir"] == {"deepafx._assets.plugins": "plugins", "deepafx._assets.recipes": "recipes"}
    assert {"deepafx._assets.plugins", "deepafx._assets.recipes"} <= listed


# --- a regular (non-editable) install ----------------------------------------------------------------------

_TINY_TRAIN = [  # the packaged quick config trains on real masters: one short excerpt per split
    "data.train_albums=[singularity]", "data.valid_albums=[hyperrogue]", "data.test_albums=[nexuiz]",
    "data.tracks_per_album=1", "data.excerpts_per_track=1", "data.excerpt_seconds=5",
    "model.context_seconds=0.5", "model.frame_seconds=0.25", "model.n_mels=32", "model.encoder_kwargs={width_mult: 0.25}",
    "train.batch_size=2", "render.num_workers=1", "train.epochs=1", "train.steps_per_epoch=2", "train.valid_steps=1",
    "train.pretrain_steps=1", "train.num_threads=1",
]


def _run(cmd, cwd, env, timeout=120):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A wheel built from this tree, installed into a fresh venv; yields (wheel, venv, env, work_dir)."""
    root = tmp_path_factory.mktemp("install")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # Build from a copy: an in-tree build leaves build/lib in the repository, and setuptools would put
    # modules deleted since the last build into the next wheel.
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("deepafx", "plugins", "recipes"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", ".", "-w", root / "dist"],
         src, env)
    (wheel,) = (root / "dist").glob("deepafx-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", venv], root, env)  # torch & co. from the system
    (site_packages,) = venv.glob("lib/python*/site-packages")
    if sys.prefix != sys.base_prefix:  # the tests run in a venv: its packages, not the base interpreter's, hold torch & co.
        (site_packages / "outer_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([venv / "bin" / "pip", "install", "-q", "--no-deps", "--no-index", wheel], root, env)
    work = root / "work"  # a working directory outside the repository
    work.mkdir()
    # The editable install's finder sits in the system site-packages, which the venv also sees; it is
    # *appended* to sys.meta_path, so the ordinary path finder (venv site-packages first) finds the
    # installed copy before it. Checked here rather than assumed.
    out = _run([venv / "bin" / "python", "-c", "import deepafx.assets as a; print(a.__file__); print(a.plugins_dir())"],
               work, env).stdout.split()
    assert out == [str(site_packages / "deepafx" / "assets.py"), str(site_packages / "deepafx" / "_assets" / "plugins")]
    return wheel, venv, env, work


def test_wheel_ships_assets_and_installed_copy_lists_them(installed):
    wheel, venv, env, work = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("plugins/faust/tube_preamp.dsp", "plugins/chains/zam_mastering.yaml", "plugins/param_maps/ZamGEQ31.yaml",
              "recipes/mastering/quick.yaml", "recipes/dexed_matching/quick.yaml", "recipes/mastering/README.md"):
        assert f"deepafx/_assets/{f}" in names
    inits = {str(p.relative_to(REPO)) for p in (REPO / "deepafx").rglob("__init__.py") if "__pycache__" not in p.parts}
    assert inits and not inits - names, f"missing from the wheel: {sorted(inits - names)}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]

    out = _run([venv / "bin" / "deepafx", "plugins"], work, env, timeout=60).stdout
    packaged = next(venv.glob("lib/python*/site-packages/deepafx/_assets"))
    for f in ("plugins/faust/tube_preamp.dsp", "plugins/faust/tone_eq.dsp", "plugins/chains/zam_mastering.yaml",
              "plugins/chains/lsp_mastering.yaml", "recipes/mastering/quick.yaml"):
        assert str(packaged / f) in out
    assert str(REPO) not in out
    assert "  mastering/quick " in out and "  zam_mastering " in out


def test_installed_copy_trains_a_packaged_config_by_name(installed):
    _, venv, env, work = installed
    sets = [x for o in _TINY_TRAIN for x in ("--set", o)]
    _run([venv / "bin" / "deepafx", "train", "--config", "mastering/quick", *sets], work, env, timeout=300)
    assert list(work.rglob("*.pt")), f"no checkpoint under {work}"
