"""Dexed / DX7 sound matching: estimate DX7 presets from audio with SPSA through the real Dexed engine.

Modules: :mod:`~deepafx.dexed.presets` (factory banks, sampling, ``.syx``),
:mod:`~deepafx.dexed.data` (dataset build), :mod:`~deepafx.dexed.spectral`
(float32 spectral distances), :mod:`~deepafx.dexed.search` (retrieval, SPSA
refinement, CMA-ES), :mod:`~deepafx.dexed.model`, :mod:`~deepafx.dexed.train`,
:mod:`~deepafx.dexed.evaluate`.
"""
