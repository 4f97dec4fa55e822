"""The real Dexed (DX7) engine as a deepafx instrument, through ``dexed-py``.

Backend ``"dexed"``: a stateless FM synthesizer. Every :meth:`DexedProcessor.process`
call renders each configured MIDI note from a fresh voice (note-on at sample 0,
note-off after ``note_duration_seconds``), one output channel per note; the input
audio only sets the number of samples.

Parameters (:func:`dexed_param_table`) follow the 145-value ``dexed.Preset``
vector in its order, in DX7 panel units: envelope rates/levels, output levels,
LFO and key-scaling depths on 0–99 (continuous in the table; the engine rounds
to the DX7 integer grid), and every field with at most 32 values declared
discrete (``values=``): algorithm 1–32, feedback 0–7, coarse frequency 0–31,
detune −7…+7, sensitivities, curves, waves and switches. That split is the
*NumCat++* representation of Le Vaillant et al. (every parameter with ≤ 32
values is categorical) — see `Le Vaillant, Dutoit, Dekeyser, "Improving
synthesizer programming from variational autoencoders latent space", DAFx 2021
<https://arxiv.org/abs/2104.09210>`_.

With this table the normalized vector equals the ``dexed.Preset`` array except
for its integer fields (``Preset`` keeps those as integers; normalized they are
``index / (num_values - 1)``): :func:`preset_array_from_normalized` and
:func:`normalized_from_preset_array` convert without loading anything.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from deepafx.config import renamed_key_error
from deepafx.hosts.base import PluginError, Processor, ProcessorSpec, register_backend
from deepafx.params import Param, ParamTable

try:  # dexed-py is a hard dependency, but give a clear message if it is broken
    import dexed as _dexed
except ImportError as exc:  # pragma: no cover - exercised only without dexed-py
    raise ImportError(f"the 'dexed' backend needs dexed-py (pip install dexed-py==0.3.0): {exc}") from exc

#: Number of values in the Dexed preset vector (``dexed.Preset.to_array()``).
NUM_DEXED_PARAMS = 145
#: Default notes: one C4 at velocity 100.
DEFAULT_NOTES: tuple[tuple[int, int], ...] = ((60, 100),)
#: The six (MIDI pitch, velocity) pairs of Le Vaillant et al. (DAFx 2021).
MULTI_NOTES: tuple[tuple[int, int], ...] = ((40, 85), (50, 85), (60, 42), (60, 85), (60, 127), (70, 85))

_ENV_STAGES = (1, 2, 3, 4)
_OPS = (1, 2, 3, 4, 5, 6)


def _discrete(name: str, lo: int, hi: int, default: int, unit: str = "") -> Param:
    return Param(name, lo, hi, default, unit, values=tuple(range(lo, hi + 1)))


def _continuous(name: str, hi: float, default: float, unit: str = "") -> Param:
    return Param(name, 0.0, float(hi), float(default), unit)


@lru_cache(maxsize=1)
def _build_table() -> tuple[ParamTable, np.ndarray]:
    """(table, int_max) where ``int_max[j] > 0`` marks Preset integer fields (their max)."""
    params: list[Param] = []
    int_max: list[int] = []

    def add(p: Param, preset_int_max: int = 0) -> None:
        params.append(p)
        int_max.append(preset_int_max)

    add(_discrete("feedback", 0, 7, 0))
    add(_discrete("transpose_semitones", -24, 24, 0, "st"))
    add(_discrete("pitch_mod_sensitivity", 0, 7, 0))
    add(_continuous("lfo_speed", 99, 35))
    add(_continuous("lfo_delay", 99, 0))
    add(_continuous("lfo_pitch_mod_depth", 99, 0))
    add(_continuous("lfo_amp_mod_depth", 99, 0))
    for s in _ENV_STAGES:
        add(_continuous(f"pitch_env_rate{s}", 99, 99))
    for s in _ENV_STAGES:
        add(_continuous(f"pitch_env_level{s}", 99, 50))
    for op in _OPS:
        for s in _ENV_STAGES:
            add(_continuous(f"op{op}_env_rate{s}", 99, 99))
    for op in _OPS:
        for s in _ENV_STAGES:
            add(_continuous(f"op{op}_env_level{s}", 99, 0 if s == 4 else 99))
    per_op = (
        ("output_level", lambda op: _continuous(f"op{op}_output_level", 99, 99)),
        ("frequency_coarse", lambda op: _discrete(f"op{op}_frequency_coarse", 0, 31, 1)),
        ("frequency_fine", lambda op: _continuous(f"op{op}_frequency_fine", 99, 0)),
        ("detune", lambda op: _discrete(f"op{op}_detune", -7, 7, 0)),
        ("velocity_sensitivity", lambda op: _discrete(f"op{op}_velocity_sensitivity", 0, 7, 0)),
        ("amp_mod_sensitivity", lambda op: _discrete(f"op{op}_amp_mod_sensitivity", 0, 3, 0)),
        ("rate_scaling", lambda op: _discrete(f"op{op}_rate_scaling", 0, 7, 0)),
        ("breakpoint", lambda op: _continuous(f"op{op}_breakpoint", 99, 39)),
        ("left_depth", lambda op: _continuous(f"op{op}_left_depth", 99, 0)),
        ("right_depth", lambda op: _continuous(f"op{op}_right_depth", 99, 0)),
    )
    for _, make in per_op:
        for op in _OPS:
            add(make(op))
    add(_discrete("osc_key_sync", 0, 1, 1), 1)
    add(_discrete("lfo_sync", 0, 1, 0), 1)
    add(_discrete("algorithm", 1, 32, 1), 31)
    add(_discrete("lfo_wave", 0, 5, 4), 5)  # triangle, saw down, saw up, square, sine, sample&hold
    for op in _OPS:
        add(_discrete(f"op{op}_frequency_mode", 0, 1, 0), 1)  # 0 ratio, 1 fixed
    for op in _OPS:
        add(_discrete(f"op{op}_left_curve", 0, 3, 0), 3)  # -lin, -exp, +exp, +lin
    for op in _OPS:
        add(_discrete(f"op{op}_right_curve", 0, 3, 0), 3)
    table = ParamTable(tuple(params))
    if len(table) != NUM_DEXED_PARAMS:  # pragma: no cover - guards the layout above
        raise AssertionError(f"dexed table has {len(table)} entries, expected {NUM_DEXED_PARAMS}")
    return table, np.asarray(int_max, dtype=np.float64)


def dexed_param_table() -> ParamTable:
    """The ordered 145-entry table of the Dexed preset vector (see module docstring)."""
    return _build_table()[0]


def _int_max() -> np.ndarray:
    return _build_table()[1]


def discrete_mask() -> np.ndarray:
    """Boolean ``(145,)``: True where the parameter is discrete (NumCat++ categorical)."""
    return np.array([p.is_discrete for p in dexed_param_table()], dtype=bool)


def preset_array_from_normalized(x: np.ndarray) -> np.ndarray:
    """Normalized table vector(s) ``(..., 145)`` on [0, 1] → ``dexed.Preset`` array(s) ``(..., 145)`` float32.

    Continuous fields pass through (``Preset`` is normalized too); integer fields
    become ``round(x * max)``. Values are clipped to [0, 1] first.

    Raises:
        ValueError: if the last dimension is not 145 or a value is NaN/Inf.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1:] != (NUM_DEXED_PARAMS,):
        raise ValueError(f"expected a (..., {NUM_DEXED_PARAMS}) normalized Dexed vector, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("normalized Dexed vector holds NaN or Inf")
    x = np.clip(x, 0.0, 1.0)
    m = _int_max()
    out = np.where(m > 0, np.rint(x * np.maximum(m, 1)), x)
    return out.astype(np.float32)


def normalized_from_preset_array(arr: np.ndarray) -> np.ndarray:
    """``dexed.Preset`` array(s) ``(..., 145)`` → normalized table vector(s) ``(..., 145)`` float64 on [0, 1].

    Raises:
        ValueError: if the last dimension is not 145.
    """
    arr = np.asarray(arr, dtype=np.float64)
    if arr.shape[-1:] != (NUM_DEXED_PARAMS,):
        raise ValueError(f"expected a (..., {NUM_DEXED_PARAMS}) Dexed preset array, got shape {arr.shape}")
    m = _int_max()
    return np.clip(np.where(m > 0, arr / np.maximum(m, 1), arr), 0.0, 1.0)


def quantize_normalized(x: np.ndarray) -> np.ndarray:
    """Snap normalized vector(s) ``(..., 145)`` to the DX7 integer grid (what the engine plays).

    Continuous fields snap to ``k / max`` (the engine rounds ``x * max``), discrete
    fields to ``k / (num_values - 1)``.
    """
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    steps = np.array([(p.num_values - 1) if p.is_discrete else p.max for p in dexed_param_table()])
    return np.rint(x * steps) / steps


def check_notes(notes: Sequence[Sequence[int]]) -> tuple[tuple[int, int], ...]:
    """Validate ``[[pitch, velocity], ...]`` (MIDI 0–127 and 1–127).

    Raises:
        ValueError: empty list, wrong pair shape or out-of-range values.
    """
    try:
        pairs = tuple((int(p), int(v)) for p, v in notes)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"notes must be a list of [pitch, velocity] pairs, got {notes!r}") from exc
    if not pairs:
        raise ValueError("notes must hold at least one [pitch, velocity] pair")
    for p, v in pairs:
        if not (0 <= p <= 127 and 1 <= v <= 127):
            raise ValueError(f"note [pitch={p}, velocity={v}]: pitch must be in 0..127 and velocity in 1..127")
    return pairs


class DexedRenderer:
    """Thin, fast renderer of normalized Dexed vectors (no validation beyond shape).

    Used where thousands of renders are needed in one process (data generation,
    retrieval, CMA-ES, test-time SPSA). Stateless: every note starts from a fresh
    voice, so the same vector always gives the same audio.

    Args:
        sample_rate: Output rate in Hz.
        notes: ``(pitch, velocity)`` pairs, one output channel each.
        note_duration_seconds: How long each note is held, seconds.
        duration_seconds: Rendered length, seconds (the release follows the note-off).
    """

    def __init__(
        self,
        sample_rate: float = 16000.0,
        notes: Sequence[Sequence[int]] = DEFAULT_NOTES,
        note_duration_seconds: float = 3.0,
        duration_seconds: float = 4.0,
    ) -> None:
        self.sample_rate = float(sample_rate)
        self.notes = check_notes(notes)
        self.note_duration_seconds = float(note_duration_seconds)
        self.duration_seconds = float(duration_seconds)
        self.num_samples = int(round(self.duration_seconds * self.sample_rate))
        self._synth = _dexed.DexedSynth(self.sample_rate)

    def render_preset_array(self, arr: np.ndarray, num_samples: int | None = None) -> np.ndarray:
        """Render a ``dexed.Preset`` array ``(145,)`` → ``(num_notes, samples)`` float32."""
        n = self.num_samples if num_samples is None else int(num_samples)
        self._synth.load_preset(_dexed.Preset.from_array(np.asarray(arr, dtype=np.float32)))
        out = np.zeros((len(self.notes), n), dtype=np.float32)
        dur = n / self.sample_rate
        for c, (pitch, vel) in enumerate(self.notes):
            y = self._synth.render(pitch, vel, self.note_duration_seconds, dur + 2.0 / self.sample_rate)
            m = min(n, y.shape[-1])
            out[c, :m] = y[:m]
        return out

    def render(self, x: np.ndarray, num_samples: int | None = None) -> np.ndarray:
        """Render a normalized vector ``(145,)`` on [0, 1] → ``(num_notes, samples)`` float32."""
        return self.render_preset_array(preset_array_from_normalized(x), num_samples)

    def render_batch(self, x: np.ndarray, num_samples: int | None = None) -> np.ndarray:
        """Render normalized vectors ``(batch, 145)`` → ``(batch, num_notes, samples)`` float32."""
        x = np.atleast_2d(x)
        return np.stack([self.render(row, num_samples) for row in x])


class DexedProcessor(Processor):
    """Dexed as a :class:`~deepafx.hosts.base.Processor` (instrument, stateless).

    Options (``ProcessorSpec.options``):
        notes: ``[[pitch, velocity], ...]`` rendered one per output channel
            (default ``[[60, 100]]``; :data:`MULTI_NOTES` for the six-note input
            of Le Vaillant et al.).
        note_duration_seconds: Note-on time in seconds before the note-off (default 3.0).

    State: none. Each :meth:`process` call renders every note from note-on at the
    first sample, so consecutive calls do *not* continue a signal; :meth:`reset`
    is a no-op. Latency: 0.

    Raises:
        ValueError: bad ``notes`` or ``note_duration_seconds``.
    """

    is_instrument = True
    latency_samples = 0
    num_input_channels = None

    def __init__(self, sample_rate: float, notes: Sequence[Sequence[int]] = DEFAULT_NOTES,
                 note_duration_seconds: float = 3.0):
        super().__init__()
        if not (note_duration_seconds > 0):
            raise ValueError(f"note_duration_seconds must be > 0 seconds, got {note_duration_seconds}")
        self.param_table = dexed_param_table()
        self.sample_rate = float(sample_rate)
        self._renderer = DexedRenderer(sample_rate, notes, note_duration_seconds)
        self.num_output_channels = len(self._renderer.notes)
        self._preset = preset_array_from_normalized(self.param_table.defaults_normalized())

    @property
    def notes(self) -> tuple[tuple[int, int], ...]:
        return self._renderer.notes

    def set_values(self, values: np.ndarray) -> None:
        """Apply plugin values ``(145,)`` in DX7 panel units (see :func:`dexed_param_table`)."""
        self._preset = preset_array_from_normalized(self.param_table.normalize(values))

    def _render(self, audio: np.ndarray) -> np.ndarray:
        """Ignore the samples of ``audio`` ``(channels, samples)``; return ``(num_notes, samples)``."""
        n = audio.shape[-1]
        try:
            return self._renderer.render_preset_array(self._preset, n)
        except Exception as exc:  # engine failure: name the backend
            raise PluginError(f"dexed render failed: {exc}") from exc

    def reset(self) -> None:
        """No-op: every render starts from a fresh voice."""


@register_backend("dexed")
def _make_dexed(spec: ProcessorSpec, sample_rate: float) -> DexedProcessor:
    opts = dict(spec.options)
    old = renamed_key_error("options", opts, {"notes", "note_duration_seconds"})
    if old:
        raise PluginError(f"dexed processor {spec.name!r}: {old}")
    unknown = set(opts) - {"notes", "note_duration_seconds"}
    if unknown:
        raise PluginError(f"dexed processor {spec.name!r}: unknown options {sorted(unknown)}; allowed: notes, note_duration_seconds")
    try:
        return DexedProcessor(sample_rate, opts.get("notes", DEFAULT_NOTES), float(opts.get("note_duration_seconds", 3.0)))
    except ValueError as exc:
        raise PluginError(f"dexed processor {spec.name!r}: {exc}") from exc


__all__ = [
    "DEFAULT_NOTES",
    "MULTI_NOTES",
    "NUM_DEXED_PARAMS",
    "DexedProcessor",
    "DexedRenderer",
    "check_notes",
    "dexed_param_table",
    "discrete_mask",
    "normalized_from_preset_array",
    "preset_array_from_normalized",
    "quantize_normalized",
]
