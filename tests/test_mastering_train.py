"""Mastering training: the gain augmentation keeps the reference engineer's targets exact; the level augmentation.

Exact resume, DDP agreement, tiny training and evaluation of every recipe: tests/test_recipe_contract.py.
"""

import numpy as np

from conftest import music_like


def test_gain_augmentation_is_exact_for_the_reference_engineer(rng):
    """The trainer scales inputs and keeps targets: valid because the engineer is level-invariant."""
    from deepafx.recipes.mastering.engineer import master

    x = music_like(rng, 2, 5 * 44100) * 0.3
    ref = master(x, 44100)
    for g_db in (-12.0, 4.0):
        y = master(x * 10 ** (g_db / 20), 44100)
        assert np.abs(y - ref).max() < 2e-3 * np.abs(ref).max()


def _augmenting_task(**settings):
    import types

    from deepafx.recipes.mastering.train import MasteringTask, TrainConfig

    task = MasteringTask.__new__(MasteringTask)
    task.settings = TrainConfig(seed=5, **settings)
    task.dist = types.SimpleNamespace(rank=0)
    task.chain = types.SimpleNamespace(sample_rate=44100)
    return task


def test_level_augmentation_draws_loudness_in_range_keeps_targets_and_caps_peaks(rng):
    from deepafx import metrics

    tracks = [((music_like(rng, 2, 3 * 44100) * a).astype(np.float32), np.full((2, 10), k, np.float32))
              for k, a in enumerate((0.01, 0.1, 0.5))]
    task = _augmenting_task(level_augment_lufs=(-30.0, -20.0))
    out = task.augment(tracks, epoch=0)
    for (x, y), (x2, y2) in zip(tracks, out):
        assert y2 is y  # the target is kept
        lufs, peak = metrics.lufs(x2, 44100), metrics.sample_peak_dbfs(x2)
        assert peak <= -0.1 + 1e-3
        assert -30.0 - 1e-3 <= lufs <= -20.0 + 1e-3 or abs(peak + 0.1) < 1e-3  # in range, or peak-capped
        g = x2.astype(np.float64) / np.where(x == 0, 1, x)
        assert np.allclose(g[x != 0], g[x != 0].flat[0], rtol=1e-4)  # gain only
    again = task.augment(tracks, epoch=0)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(out, again))  # seeded per epoch
    other = task.augment(tracks, epoch=1)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(out, other))


def test_augmentations_are_exclusive_and_checked():
    import pytest

    with pytest.raises(ValueError, match="exclusive"):
        _augmenting_task(level_augment_lufs=(-30.0, -20.0), gain_augment_db=(-6.0, 6.0))
    with pytest.raises(ValueError, match="min <= max"):
        _augmenting_task(level_augment_lufs=(-10.0, -20.0))
