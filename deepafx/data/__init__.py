"""Data for deepafx recipes.

* :mod:`deepafx.data.music` — real-music mastering dataset rendered from
  music21's score corpus through FluidSynth (unmastered mixes and targets).
* :mod:`deepafx.data.engineer` — the hidden reference mastering engineer that
  makes input-dependent targets; :func:`~deepafx.data.engineer.true_peak_dbtp`.
* :mod:`deepafx.data.pairs` — the user's own unmastered/mastered file pairs,
  matched by name and aligned.
* :mod:`deepafx.data.stateful` — DeepAFx stateful batching (consecutive frames
  per batch slot, reset flags, resumable state).

Submodules are imported on use so that importing :mod:`deepafx.data` stays cheap.
"""
