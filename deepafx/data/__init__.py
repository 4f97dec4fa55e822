"""Data pieces shared by recipes.

* :mod:`deepafx.data.stateful` — DeepAFx stateful batching (consecutive frames
  per batch slot, reset flags, resumable state).

Recipe-specific data lives in its recipe (e.g. :mod:`deepafx.recipes.mastering.music`).
Submodules are imported on use so that importing :mod:`deepafx.data` stays cheap.
"""
