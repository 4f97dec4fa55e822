"""VST2/VST3 *instruments* through dawdreamer: backend ``"dawdreamer.instrument"``.

An instrument renders MIDI notes from its parameter values. Like the ``dexed``
backend it is a stateless :class:`~deepafx.hosts.base.Processor` with
``is_instrument = True``: the input audio only sets the length ``N``; every
call renders each configured note from silence and returns ``(num_notes, N)``
(one channel per note, the synth's output channels averaged). dawdreamer clears
plugin state at every ``render()`` (see :mod:`deepafx.hosts.dawdreamer_host`),
which is exactly this contract; :meth:`reset` has nothing to clear.

Options: ``path`` (required; a ``.so``/``.vst3`` path or a name found in the
usual VST folders), ``notes`` (list of ``[midi_pitch, velocity]``, default
``[[60, 100]]``), ``note_duration_seconds`` (seconds the key is held, default 1.0),
``param_map`` and ``exclude`` as for the ``dawdreamer`` backend, ``block_size``.
Parameters are discovered from the plugin (values in the units its display
shows), with host-only and non-automatable ones excluded.

Tested with amsynth (Debian ``amsynth``, ``/usr/lib/vst/amsynth_vst.so``).
Some synths free-run their oscillators, so two renders of the same note may
differ slightly: check determinism before comparing outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from deepafx.config import renamed_key_error
from deepafx.hosts.base import PluginError, ProcessorSpec, register_backend
from deepafx.hosts.dawdreamer_host import (
    _CREATE_LOCK, DEFAULT_BLOCK_SIZE, VSTDawDreamerProcessor, _Voice, find_vst2,
)
from deepafx.hosts.fpenv import float_env_guard


class VSTInstrumentDawDreamer(VSTDawDreamerProcessor):
    """A VST instrument rendering fixed MIDI notes (module docstring: options and contract).

    Raises:
        PluginError: missing plugin, a plugin that takes audio input (use backend
            ``"dawdreamer"``), bad notes or duration.
    """

    is_instrument = True
    render_clears_state = True

    def __init__(self, path: str | Path, sample_rate: float, notes: Sequence[Sequence[int]] = ((60, 100),),
                 note_duration_seconds: float = 1.0, param_map: str | Path | None = None,
                 exclude: Sequence[str] = (), block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        # no replay context: each render starts from silence by design
        super(VSTDawDreamerProcessor, self).__init__(sample_rate, 0.0, block_size, 1)
        self.notes = [(int(p), int(v)) for p, v in notes]
        if not self.notes or any(not (0 <= p <= 127 and 1 <= v <= 127) for p, v in self.notes):
            raise PluginError(f"notes must be [[pitch 0-127, velocity 1-127], ...], got {notes}")
        if not note_duration_seconds > 0:
            raise PluginError(f"note_duration_seconds must be > 0 seconds, got {note_duration_seconds}")
        self.note_duration_seconds = float(note_duration_seconds)
        self.path = find_vst2(path)
        self.label = f"instrument {self.path.name}"
        first = self._new_voice()
        if int(first.node.get_num_input_channels()) != 0:
            raise PluginError(f"{self.path} takes audio input: it is an effect, use backend 'dawdreamer'")
        self.mono_only = False
        self.num_input_channels = None
        self._init_table(first.node, param_map, exclude)
        self.latency_samples = 0
        self._build_voices(None)  # discovery touched the probe's parameters: start fresh

    def _new_voice(self) -> _Voice:
        import dawdreamer

        with _CREATE_LOCK, float_env_guard(clean=True):
            engine = dawdreamer.RenderEngine(self.sample_rate, self.block_size)
            node = self._make_node(engine)
            engine.load_graph([(node, [])])
        return _Voice(engine, node, None)

    def _render(self, audio: np.ndarray) -> np.ndarray:
        n = audio.shape[1]
        voice = self._voices[0]
        out = np.zeros((len(self.notes), n), np.float32)
        duration = (n + 0.5) / self.sample_rate  # dawdreamer truncates duration * rate
        for i, (pitch, velocity) in enumerate(self.notes):
            voice.node.clear_midi()
            voice.node.add_midi_note(pitch, velocity, 0.0, min(self.note_duration_seconds, n / self.sample_rate))
            voice.engine.render(duration)
            y = np.asarray(voice.engine.get_audio(), dtype=np.float32)
            out[i, : min(n, y.shape[1])] = y[:, :n].mean(0)
        return out

    def reset(self) -> None:
        """Nothing persists between renders (dawdreamer clears state at every render)."""
        self.clear_pending()


_OPTIONS = frozenset({"path", "notes", "note_duration_seconds", "param_map", "exclude", "block_size"})


@register_backend("dawdreamer.instrument")
def build_dawdreamer_instrument(spec: ProcessorSpec, sample_rate: float) -> VSTInstrumentDawDreamer:
    """Factory for backend ``"dawdreamer.instrument"``."""
    opts: dict[str, Any] = dict(spec.options)
    old = renamed_key_error("options", opts, _OPTIONS)
    if old:
        raise PluginError(f"processor {spec.name!r} (dawdreamer.instrument): {old}")
    unknown = set(opts) - _OPTIONS
    if unknown or "path" not in opts:
        raise PluginError(f"processor {spec.name!r} (dawdreamer.instrument): unknown options {sorted(unknown)}"
                          f"{'' if 'path' in opts else ', missing path'}; allowed: {sorted(_OPTIONS)}")
    return VSTInstrumentDawDreamer(sample_rate=sample_rate, **opts)
