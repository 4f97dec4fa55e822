"""Real masters as mastering data (deepafx.recipes.mastering.soundtracks) and what evaluates on them.

The excerpts are cut from Debian's soundtrack packages, fetched with ``apt-get download`` (no root);
a machine without apt or without the package lists skips these tests, saying so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deepafx import metrics
from deepafx.automation.process import Automation
from deepafx.params import Param, ParamTable
from deepafx.recipes.mastering import soundtracks as st
from deepafx.recipes.mastering.evaluate import loudness_normalize

SR = 44100
TINY = {"train_albums": ["singularity"], "valid_albums": ["hyperrogue"], "test_albums": ["nexuiz"],
        "tracks_per_album": {"train": 2, "valid": 1, "test": 2}, "excerpts_per_track": 1, "excerpt_seconds": 6.0}


def _album_or_skip(name: str) -> list[Path]:
    from deepafx.data.debian import DebianFetchError

    try:
        return st.album_tracks(name)
    except DebianFetchError as exc:
        pytest.skip(f"Debian package of album {name} not available here: {exc}")


@pytest.fixture(scope="module")
def masters() -> list[np.ndarray]:
    """Three 8 s excerpts of real masters: two loud electronic/rock cues, one quiet orchestral one."""
    nexuiz = _album_or_skip("nexuiz")
    wesnoth = _album_or_skip("wesnoth")
    return [st.read_track(nexuiz[1], SR, 60.0, 8.0), st.read_track(nexuiz[4], SR, 60.0, 8.0),
            st.read_track(next(p for p in wesnoth if p.stem == "elvish-theme"), SR, 30.0, 8.0)]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    _album_or_skip("singularity")
    _album_or_skip("hyperrogue")
    _album_or_skip("nexuiz")
    return st.build_dataset(TINY, tmp_path_factory.mktemp("soundtracks"))


def test_target_is_gain_only_and_meets_loudness_or_the_ceiling(masters):
    for m in masters:
        y, info = st.make_target(m, SR, -14.0, -1.0)
        ratio = y[np.abs(m) > 1e-3] / m[np.abs(m) > 1e-3]
        assert np.allclose(ratio, ratio.flat[0], rtol=1e-5), "a target is the master times one gain"
        assert np.isclose(20 * np.log10(ratio.flat[0]), info["gain_db"], atol=1e-3)
        tp = metrics.true_peak_dbtp(y, SR)
        assert tp <= -1.0 + 0.02
        if info["peak_bound"]:
            assert metrics.lufs(y, SR) < -14.0 and abs(tp + 1.0) < 0.02
        else:
            assert abs(metrics.lufs(y, SR) + 14.0) < 0.02
    with pytest.raises(ValueError, match="silent"):
        st.make_target(np.zeros((2, SR), np.float32), SR)


def test_unmaster_draws_are_seeded_and_documented(masters):
    cfg = st.SoundtrackDataConfig(released_fraction=0.0)
    m = masters[0]
    a, ia = st.unmaster(m, SR, np.random.default_rng([0, 1]), cfg)
    b, ib = st.unmaster(m, SR, np.random.default_rng([0, 1]), cfg)
    c, _ = st.unmaster(m, SR, np.random.default_rng([0, 2]), cfg)
    assert np.array_equal(a, b) and ia == ib and not np.array_equal(a, c)
    assert not ia["released"] and set(ia) >= {"expansion", "eq", "width", "level", "input_lufs", "input_peak_dbfs"}
    assert ia["input_peak_dbfs"] <= cfg.input_peak_dbfs + 1e-3
    if not ia["level"]["peak_bound"]:
        assert abs(ia["input_lufs"] - ia["level"]["drawn_lufs"]) < 0.05
    else:
        assert ia["input_lufs"] < ia["level"]["drawn_lufs"]
    released, ir = st.unmaster(m, SR, np.random.default_rng(0), st.SoundtrackDataConfig(released_fraction=1.0))
    assert ir["released"] and np.array_equal(released, m)


def test_expansion_restores_dynamics(masters):
    """Upward expansion raises the crest factor (peak over loudness) that limiting took away."""
    cfg = st.SoundtrackDataConfig(released_fraction=0.0, expansion_ratio_range=(1.5, 1.5), tilt_db=0.0,
                                  num_bands=(0, 0))
    m = masters[0]
    x, info = st.unmaster(m, SR, np.random.default_rng(3), cfg)
    crest = metrics.sample_peak_dbfs(x) - metrics.lufs(x, SR)
    assert info["expansion"]["max_gain_db"] > 1.0
    assert crest > metrics.sample_peak_dbfs(m) - metrics.lufs(m, SR) + 0.5


def test_config_refuses_shared_or_unknown_albums():
    with pytest.raises(ValueError, match="both train_albums and test_albums"):
        st.SoundtrackDataConfig(train_albums=("wesnoth",), test_albums=("wesnoth",))
    with pytest.raises(ValueError, match="unknown album 'nope'"):
        st.SoundtrackDataConfig(valid_albums=("nope",))
    with pytest.raises(ValueError, match="excerpts_per_track.test"):
        st.SoundtrackDataConfig(excerpts_per_track={"train": 1, "valid": 1, "test": 0})
    from deepafx.recipes.mastering.data import DataSection

    with pytest.raises(ValueError, match="unknown data source"):
        DataSection.from_dict({"source": "radio"})
    assert isinstance(DataSection.from_dict({"source": "soundtracks"}), st.SoundtrackDataConfig)


def test_dataset_splits_by_album_and_is_deterministic(tiny_dataset, tmp_path):
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    albums = {s: {p["album"] for p in manifest["pieces"] if p["split"] == s} for s in ("train", "valid", "test")}
    assert albums == {"train": {"singularity"}, "valid": {"hyperrogue"}, "test": {"nexuiz"}}
    assert [len(manifest["splits"][s]["pieces"]) for s in ("train", "valid", "test")] == [2, 1, 2]
    for p in manifest["pieces"]:
        meta = json.loads((tiny_dataset / p["split"] / f"{p['piece_id']}.json").read_text())
        assert meta["album"] == p["album"] and abs(meta["seconds"] - 6.0) < 1e-3
        assert meta["target"]["target_lufs"] <= -14.0 + 0.02
    assert manifest["levels"]["excerpts"] == 5
    # the same settings elsewhere give the same samples (float WAV headers hold a time stamp); a bigger test split keeps the excerpts it had
    other = st.build_dataset(dict(TINY, tracks_per_album={"train": 2, "valid": 1, "test": 3}), tmp_path / "o")
    for p in manifest["pieces"]:
        if p["split"] == "test" and (other / "test" / f"{p['piece_id']}_input.wav").is_file():
            for kind in ("input", "target"):
                a = sf.read(str(tiny_dataset / "test" / f"{p['piece_id']}_{kind}.wav"))[0]
                assert np.array_equal(a, sf.read(str(other / "test" / f"{p['piece_id']}_{kind}.wav"))[0])
    # up to date: nothing is cut again
    stamp = (tiny_dataset / "manifest.json").stat().st_mtime_ns
    st.build_dataset(TINY, tiny_dataset)
    assert (tiny_dataset / "manifest.json").stat().st_mtime_ns == stamp


def test_scores_add_their_training_pieces_and_only_those(tiny_dataset, tmp_path):
    """``data.scores``: the score dataset's training split joins the real training excerpts; validation
    and test stay the real albums, and the real excerpts already cut are reused."""
    from deepafx.recipes.mastering.data import load_training

    shutil.copytree(tiny_dataset, tmp_path / "both")
    scores = {"train_minutes": 0.25, "max_piece_seconds": 6.0, "min_piece_seconds": 3.0}
    cfg = st.SoundtrackDataConfig.from_dict(dict(TINY, source="soundtracks", scores=scores))
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "both" / "train").glob("*.wav")}
    both = st.build_dataset(cfg, tmp_path / "both")
    assert {p.name: p.stat().st_mtime_ns for p in (both / "train").glob("*.wav")} == before
    manifest = json.loads((both / "manifest.json").read_text())
    smanifest = json.loads((both / "scores" / "manifest.json").read_text())
    n_scores = len(smanifest["splits"]["train"]["pieces"])
    assert n_scores >= 1 and manifest["scores"]["train_pieces"] == n_scores
    real_train, real_valid = load_training(st.SoundtrackDataConfig.from_dict(dict(TINY, source="soundtracks")),
                                           tiny_dataset)
    train, valid = load_training(cfg, both)
    assert len(train) == len(real_train) + n_scores and len(valid) == len(real_valid) == 1
    for (x, y), (rx, ry) in zip(train, real_train):
        assert np.array_equal(x, rx) and np.array_equal(y, ry)
    assert all(x.shape[0] == 2 and x.shape == y.shape for x, y in train)
    with pytest.raises(ValueError, match="scores.sample_rate"):
        st.SoundtrackDataConfig.from_dict(dict(TINY, scores=dict(scores, sample_rate=22050)))
    with pytest.raises(ValueError, match="scores must be a mapping"):
        st.SoundtrackDataConfig.from_dict(dict(TINY, scores=3))


def test_loudness_normalization_baseline_meets_loudness_and_ceiling(masters):
    for m in masters:
        quiet = m * np.float32(0.1)
        out = loudness_normalize(quiet, SR, -14.0, -1.0)
        assert metrics.true_peak_dbtp(out, SR) <= -1.0 + 1e-3
        assert abs(metrics.lufs(out, SR) + 14.0) < 0.1


def test_saturation_share_counts_frames_with_half_the_parameters_at_a_bound():
    table = ParamTable([Param(f"p{i}", 0.0, 1.0, 0.5, "") for i in range(4)])
    frames = np.array([
        [0.0, 1.0, 0.5, 0.5],     # 2 of 4 at a bound: counts
        [0.005, 0.5, 0.5, 0.5],   # 1 of 4: does not
        [0.02, 0.98, 0.5, 0.5],   # 2 within 2 % but not within 1 %: does not
        [1.0, 1.0, 1.0, 0.995],   # all: counts
    ])
    auto = Automation(np.arange(4) * 0.5, frames, table)
    assert auto.saturation_share() == 0.5
    assert auto.saturation_share(tolerance=0.025) == 0.75
    assert auto.saturation_share(fraction=1.0) == 0.25
    with pytest.raises(ValueError):
        auto.saturation_share(tolerance=0.5)


def test_evaluation_reports_albums_saturation_and_reuses_baselines(tiny_dataset, tmp_path):
    """A tiny model evaluated twice: per-album tables and whole-track saturation, baselines from the cache."""
    from deepafx.config import load_config
    from deepafx.recipes import get_recipe
    from deepafx.recipes.mastering import tiny_overrides
    from deepafx.trainer import train

    recipe = get_recipe("mastering")
    raw = load_config("mastering/quick")
    cfg = recipe.bind(load_config("mastering/quick", tiny_overrides(raw) + ["evaluate.loudness_lufs=-14"]))
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    # the second test track's source is gone: its saturation is reported as not read, the evaluation goes on
    manifest = json.loads((data / "manifest.json").read_text())
    test_pieces = [p for p in manifest["pieces"] if p["split"] == "test"]
    test_pieces[1]["source_path"] = str(tmp_path / "gone.ogg")
    (data / "manifest.json").write_text(json.dumps(manifest))
    run = tmp_path / "run"
    train(recipe.task(cfg, data), run, cfg)
    first = recipe.evaluate(cfg, run, tmp_path / "e1", split="test", data_dir=data)
    assert set(first["albums"]) == {"nexuiz"}
    assert first["settings"]["given_loudness"] == {"loudnorm": -14.0, "model_loudness": -14.0}
    assert "loudnorm" in first["test"] and first["test"]["loudnorm"]["true_peak_dbtp_max"] <= -1.0 + 1e-3
    sat = first["saturation"]
    assert len(sat["tracks"]) == 2 and sat["tracks"][0]["seconds"] > 45 and 0.0 <= sat["max_share"] <= 1.0
    assert sat["tracks"][1]["share"] is None and "gone.ogg" in sat["tracks"][1]["error"]
    assert sat["tracks_not_read"] == 1
    cache = Path(first["settings"]["baseline_cache"])
    assert cache.is_file()
    second = recipe.evaluate(cfg, run, tmp_path / "e2", split="test", data_dir=data)
    for t1, t2 in zip(first["tracks"][1:], second["tracks"][1:]):  # the first piece is the example: recomputed
        for m in ("unprocessed", "default", "loudnorm", "oracle_cmaes"):
            assert t1["methods"][m] == t2["methods"][m]
    text = (tmp_path / "e1" / "results.md").read_text()
    assert "loudnorm (given -14 LUFS)" in text and "Saturation of the model's automation" in text


def test_fetching_an_unknown_package_fails_clearly_and_leaves_nothing(tmp_path):
    import shutil as sh

    from deepafx.data.debian import DebianFetchError, fetch_package

    if sh.which("apt-get") is None:
        pytest.skip("apt-get not on PATH: not a Debian machine")
    with pytest.raises(DebianFetchError, match="apt-get download no-such-package-deepafx failed"):
        fetch_package("no-such-package-deepafx", tmp_path)
    assert list(tmp_path.iterdir()) == []
