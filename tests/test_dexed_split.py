"""Dexed grouped split: voice names, distances and groups of the real factory banks, whole groups per split,
novelty against the training voices only, and refinement that keeps its best point by LSD."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deepafx.hosts.dexed_host import DexedRenderer
from deepafx.metrics import lsd_db
from deepafx.recipes.dexed_matching.presets import load_factory_presets, sample_around, set_transpose
from deepafx.recipes.dexed_matching.split import (
    DEFAULT_GROUP_THRESHOLD,
    grouped_split,
    normalize_voice_name,
    voice_clusters,
    voice_distances,
)

#: Near-twins of the DX7 + TX7 ROMs (names as the banks spell them, spaces collapsed) and their measured
#: mean absolute normalized-parameter distance.
TWINS = [("VIOLINS A", "VIOLINS B", 0.0001), ("STRINGS 2", "STRINGS 4", 0.0004),
         ("TRUMPET A", "TOUCH TMPT", 0.0015), ("E.BASS B", "BASS 1", 0.0017)]


QUICK = Path(__file__).resolve().parent.parent / "recipes" / "dexed_matching" / "quick.yaml"
#: 14 factory voices, 6 GM programs: a dataset of a few seconds.
TINY_DATA = ["data.max_factory_presets=14", "data.samples_per_preset=1", "data.pitches=[60, 64]",
             "data.ood_programs=[0, 24, 40, 56, 71, 73]", "data.ood_test_programs=2", "data.ood_valid_programs=1",
             "data.ood_pitches=[60]", "data.test_fraction=0.2", "data.valid_fraction=0.1"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: two beside other jobs on a 2-core machine make these tests several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _build(bank_dir, out, *extra):
    import yaml

    from deepafx.config import apply_overrides
    from deepafx.recipes.dexed_matching.data import build_dataset

    cfg = apply_overrides(yaml.safe_load(QUICK.read_text()), TINY_DATA + [f"data.hexter_dir={bank_dir}", *extra])
    return build_dataset(cfg, out, progress=False)


@pytest.fixture(scope="module")
def grouped(bank_dir, tmp_path_factory):
    """The quick config's dataset (grouped split, the default) on 14 voices."""
    return _build(bank_dir, tmp_path_factory.mktemp("dexed_grouped"))


@pytest.fixture(scope="module")
def voices(bank_dir):
    v = load_factory_presets(bank_dir)
    return np.stack([x.x for x in v]), [x.name for x in v]


def _index(names, name):
    hits = [i for i, n in enumerate(names) if " ".join(n.split()) == name]
    assert len(hits) == 1, (name, hits)
    return hits[0]


@pytest.mark.parametrize("name, family", [
    ("VIOLINS  A", "VIOLINS"), ("VIOLINS  B", "VIOLINS"), ("STRINGS 2 ", "STRINGS"), ("HARMONICA1", "HARMONICA"),
    ("SAX BC    ", "SAX"), ("BRASS 6 BC", "BRASS"), ("BC FLUTE  ", "FLUTE"), ("CLAV.    A", "CLAV"),
    ("TOUCH TMPT", "TOUCH TMPT"), ("E.P.& BR A", "E.P.& BR"), ("ST.HELENS ", "ST.HELENS"), ("7", ""),
])
def test_voice_names_lose_the_banks_variant_suffixes(name, family):
    assert normalize_voice_name(name) == family


def test_factory_distances_groups_and_split(voices):
    x, names = voices
    d = voice_distances(x)
    assert d.shape == (186, 186) and np.allclose(d, d.T) and np.all(np.diag(d) == 0)
    nearest = np.sort(np.where(np.eye(len(d), dtype=bool), np.inf, d).min(1))
    # the figures the module docstring and the README quote
    assert np.quantile(nearest, 0.10) == pytest.approx(0.0073, abs=5e-5)
    assert np.quantile(nearest, 0.25) == pytest.approx(0.0329, abs=5e-5)
    for a, b, dist in TWINS:
        assert d[_index(names, a), _index(names, b)] == pytest.approx(dist, abs=5e-5)
    groups = voice_clusters(x, names, DEFAULT_GROUP_THRESHOLD)
    sizes = np.bincount(groups)
    assert len(sizes) == 95 and (sizes == 1).sum() == 64 and sorted(sizes)[-2:] == [11, 12]
    assert groups[0] == 0 and np.all(np.diff(np.maximum.accumulate(groups)) <= 1)  # numbered by first voice
    # single linkage: any two voices within the threshold share a group
    i, j = np.nonzero(d <= DEFAULT_GROUP_THRESHOLD)
    assert np.all(groups[i] == groups[j])
    splits = {}
    for seed in (0, 1, 2):
        s = grouped_split(groups, 0.1, 0.2, np.random.default_rng(seed))
        assert {k: len(v) for k, v in s.items()} == {"test": 37, "valid": 19, "train": 130}  # the index split's sizes
        assert np.array_equal(np.sort(np.concatenate(list(s.values()))), np.arange(186))
        where = np.empty(186, dtype=object)
        for k, idx in s.items():
            where[idx] = k
        for g in np.unique(groups):  # no group straddles two splits
            assert len(set(where[groups == g])) == 1, [names[k] for k in np.flatnonzero(groups == g)]
        for a, b, _ in TWINS:
            assert where[_index(names, a)] == where[_index(names, b)], (a, b)
        again = grouped_split(groups, 0.1, 0.2, np.random.default_rng(seed))
        assert all(np.array_equal(s[k], again[k]) for k in s)  # deterministic for a seed
        splits[seed] = s
    assert not np.array_equal(splits[0]["test"], splits[1]["test"])


def test_grouping_and_split_reject_bad_input(voices):
    x, names = voices
    with pytest.raises(ValueError, match="group_threshold"):
        voice_clusters(x, names, 1.5)
    with pytest.raises(ValueError, match="names"):
        voice_clusters(x, names[:-1])
    with pytest.raises(ValueError, match="finite"):
        voice_distances(np.full((3, 145), np.nan))
    with pytest.raises(ValueError, match="test_fraction"):
        grouped_split(np.arange(10), 0.1, 0.6, np.random.default_rng(0))
    # one group holding every voice cannot give held-out voices: the message names the fix
    with pytest.raises(ValueError, match="Lower data.group_threshold"):
        grouped_split(np.zeros(20, dtype=np.int64), 0.1, 0.2, np.random.default_rng(0))
    # at threshold 0 only the name families group voices; without names every voice is alone
    assert len(np.unique(voice_clusters(x, None, 0.0))) == 186


def test_dataset_records_groups_and_novelty_against_training_voices_only(grouped):
    from deepafx.recipes.dexed_matching.data import load_dataset

    out = grouped
    manifest = json.loads((out / "manifest.json").read_text())
    d = load_dataset(out)
    assert d.config.split == "grouped" and manifest["split"]["method"] == "grouped"
    assert manifest["split"]["factory_cluster"] == d.factory_cluster.tolist() and len(d.factory_cluster) == 14
    assert manifest["split"]["straddling_groups"] == []
    train_groups = set(d.factory_cluster[d.source["train"]].tolist())
    for s in ("valid", "test"):
        assert train_groups.isdisjoint(d.factory_cluster[d.source[s]].tolist())
    # novelty: the LSD to the nearest *training* factory voice at the sound's pitch, by deepafx.metrics.lsd_db
    ind = np.load(out / "in_domain.npz")
    renderer = d.config.renderer()
    train_ids = np.unique(d.source["train"])
    for s in ("valid", "test"):
        for k, (x, p) in enumerate(zip(d.x[s], d.pitch[s])):
            target = renderer.render(x)
            ref = [lsd_db(renderer.render(set_transpose(ind["factory_x"][t], int(p) - 60)), target) for t in train_ids]
            assert d.novelty["in_domain"][s][k] == pytest.approx(min(ref), abs=1e-4)
            assert ind[f"novelty_voice_{s}"][k] == train_ids[int(np.argmin(ref))]
            # a held-out sound is a factory voice: against all voices (itself included) it would be 0
            assert d.novelty["in_domain"][s][k] > 1.0
    ood = np.load(out / "out_of_domain.npz")
    a, p = d.ood_audio["test"][0], int(d.ood_pitch["test"][0])
    ref = min(lsd_db(renderer.render(set_transpose(ind["factory_x"][t], p - 60)), a) for t in train_ids)
    assert ood["novelty_test"][0] == pytest.approx(ref, abs=1e-4) and ood["novelty_voice_test"][0] in train_ids
    assert manifest["novelty"]["in_domain"]["test"]["n"] == len(d.x["test"])


def test_index_split_stays_available_and_records_straddling_groups(bank_dir, grouped, tmp_path):
    from deepafx.recipes.dexed_matching.data import load_dataset

    index = _build(bank_dir, tmp_path / "i", "data.split=index")
    g, i = load_dataset(grouped), load_dataset(index)
    assert i.config.split == "index" and np.array_equal(g.factory_cluster, i.factory_cluster)
    m = json.loads((index / "manifest.json").read_text())["split"]
    where = {int(v): s for s in ("train", "valid", "test") for v in i.source[s]}
    straddling = [int(k) for k in np.unique(i.factory_cluster)
                  if len({where[v] for v in np.flatnonzero(i.factory_cluster == k)}) > 1]
    assert m["straddling_groups"] == straddling
    with pytest.raises(ValueError, match="split must be one of"):
        _build(bank_dir, tmp_path / "x", "data.split=random")


def test_refinement_keeps_the_best_point_by_lsd(voices):
    from deepafx.recipes.dexed_matching.search import cmaes_search, spsa_refine
    from deepafx.recipes.dexed_matching.spectral import LSDTarget, SpectralTarget

    x, _ = voices
    r = DexedRenderer(16000, [(60, 100)], 0.5, 1.0)
    target = r.render(x[10])
    np.testing.assert_allclose(LSDTarget(target)(np.stack([r.render(x[k]) for k in (3, 10)])),
                               [lsd_db(r.render(x[3]), target), 0.0], atol=1e-6)
    start = sample_around(x[10], np.random.default_rng(3), 0.08, 0.0, 0.0)
    by_lsd = spsa_refine(target, start, r, budget_renders=41, learning_rate=3e-3, seed=0)  # keep="lsd" by default
    by_mss = spsa_refine(target, start, r, budget_renders=41, learning_rate=3e-3, seed=0, keep="mss")
    assert by_lsd.metric == "lsd" and by_mss.metric == "mss"
    lsd = lambda p: lsd_db(r.render(p), target)  # noqa: E731
    mss = lambda p: float(SpectralTarget(target)(r.render(p))[0])  # noqa: E731
    # the loss and curve are in the kept metric; the start point is a candidate
    assert by_lsd.loss == pytest.approx(lsd(by_lsd.x), abs=1e-6) and by_lsd.start_loss == pytest.approx(lsd(start), abs=1e-6)
    assert by_lsd.loss <= by_lsd.start_loss and np.all(np.diff(by_lsd.curve) <= 0) and len(by_lsd.curve) == 41
    # the same descent (it follows the spectral loss either way), two selections: each is best by its own metric
    assert lsd(by_lsd.x) <= lsd(by_mss.x) + 1e-9 and mss(by_mss.x) <= mss(by_lsd.x) + 1e-9
    res = cmaes_search(target, x.mean(0), r, budget_renders=13, sigma0=0.2, seed=0)
    assert res.metric == "lsd" and res.loss == pytest.approx(lsd(res.x), abs=1e-6) and res.loss <= res.start_loss
    with pytest.raises(ValueError, match="keep must be one of"):
        spsa_refine(target, start, r, budget_renders=5, keep="mfcc")


def test_novelty_terciles_and_pooled_bins():
    from deepafx.recipes.dexed_matching import _item_scores
    from deepafx.recipes.dexed_matching.evaluate import novelty_terciles

    t = novelty_terciles(np.array([9.0, 15.0, 12.0, 20.0, 10.0, 13.0]))
    assert t["edges_db"] == pytest.approx([np.quantile([9, 10, 12, 13, 15, 20], 1 / 3),
                                           np.quantile([9, 10, 12, 13, 15, 20], 2 / 3)])
    assert t["bins"] == ["low", "high", "mid", "high", "low", "mid"]
    with pytest.raises(ValueError, match="finite"):
        novelty_terciles(np.array([1.0, np.nan]))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rows = [{"lsd": 10.0 + k, "mss": 1.0, "mfcc_l1": 2.0, "novelty_db": v, "novelty_bin": b}
                for k, (v, b) in enumerate(zip([9.0, 15.0, 12.0], ["low", "high", "mid"]))]
        (Path(tmp) / "details.json").write_text(json.dumps({"real": {"in_domain": rows}}))
        scores = _item_scores(Path(tmp), "test")["real"]
    assert scores["lsd_in_domain"] == {"0": 10.0, "1": 11.0, "2": 12.0}
    assert scores["lsd_in_domain_novelty_high"] == {"1": 11.0} and scores["lsd_in_domain_novelty_low"] == {"0": 10.0}
