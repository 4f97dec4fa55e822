"""Mastering training: the gain augmentation keeps the reference engineer's targets exact.

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
