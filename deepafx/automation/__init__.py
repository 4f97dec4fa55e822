"""Automation recipes' shared pieces: an encoder drives a chain frame by frame (DeepAFx).

* :mod:`~deepafx.automation.model` — the context encoder, per-frame parameter
  prediction with smoothing, block-wise rendering of the automation;
* :mod:`~deepafx.automation.task` — its training task on the shared engine
  (pretrain to the chain's defaults, then SPSA through the chain);
* :mod:`~deepafx.automation.process` — ``deepafx process``: files in, audio,
  automation (JSON/CSV, plugin units) and a PNG out, atomically;
* :mod:`~deepafx.automation.oracle` — the per-track CMA-ES oracle baseline;
* :mod:`~deepafx.automation.plots` — spectrograms and parameter curves.

Used by the mastering recipe; any recipe whose model is "context encoder →
chain parameters per frame" subclasses :class:`~deepafx.automation.task.AutomationTask`.
"""
