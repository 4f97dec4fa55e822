"""Dexed / DX7 sound matching: estimate DX7 presets from audio with SPSA through the real Dexed engine.

Modules: :mod:`~deepafx.recipes.dexed_matching.presets` (factory banks, sampling, ``.syx``),
:mod:`~deepafx.recipes.dexed_matching.data` (dataset build), :mod:`~deepafx.recipes.dexed_matching.spectral`
(float32 spectral distances), :mod:`~deepafx.recipes.dexed_matching.search` (retrieval, SPSA
refinement, CMA-ES), :mod:`~deepafx.recipes.dexed_matching.model`, :mod:`~deepafx.recipes.dexed_matching.train`,
:mod:`~deepafx.recipes.dexed_matching.evaluate`.
"""
