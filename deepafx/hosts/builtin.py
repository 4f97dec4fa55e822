"""pedalboard built-in effects: the embedded default backend (no system packages).

Backends registered here:

* ``pedalboard.<Effect>`` for single built-ins: ``Compressor``, ``Limiter``,
  ``BrickwallLimiter``, ``Gain``, ``PeakFilter``, ``LowShelfFilter``, ``HighShelfFilter``,
  ``HighpassFilter``, ``LowpassFilter``, ``Distortion``, ``NoiseGate``,
  ``Clipping``, ``Reverb``, ``Invert`` (polarity flip, no parameters: for a
  target that inverts, such as an odd number of tube stages).
* ``builtin.multiband_compressor`` — three-band compressor assembled from
  pedalboard built-ins: complementary bands that sum back exactly to the
  input, one ``Compressor`` + makeup ``Gain`` per band, bands summed with
  ``Mix``; learnable crossovers; neutral (identity) at its defaults.
* ``builtin.graphic_eq`` — ``PeakFilter`` bands at fixed centre frequencies
  (octave bands by default), one ``gain_db`` per band.

State: every effect keeps its state across :meth:`Processor.process` calls
(pedalboard ``reset=False``; chunked processing is bit-identical to one call);
:meth:`reset` clears it. Latency: 0 samples, except ``BrickwallLimiter``
(its 5 ms look-ahead). pedalboard objects do not pickle,
so instances are always built inside the process that renders them.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pedalboard

from deepafx.hosts.base import NonFiniteOutputError, Processor, ProcessorSpec, fit_length, register_backend
from deepafx.params import Param, ParamTable

Setter = Callable[[float], None]

# Declared tables for single built-ins: (attribute, Param). The attribute is the
# pedalboard property; the Param name carries the unit.
_FREQ = dict(min=20.0, max=20000.0, unit="Hz", scale="log")
BUILTIN_TABLES: dict[str, list[Param]] = {
    "Compressor": [
        Param("threshold_db", -60.0, 0.0, -12.0, "dB"),
        Param("ratio", 1.0, 20.0, 2.0, "", "log"),
        Param("attack_ms", 0.1, 100.0, 5.0, "ms", "log"),
        Param("release_ms", 10.0, 1000.0, 100.0, "ms", "log"),
    ],
    "Limiter": [
        Param("threshold_db", -24.0, 0.0, -6.0, "dB"),
        Param("release_ms", 10.0, 1000.0, 100.0, "ms", "log"),
    ],
    "BrickwallLimiter": [
        Param("ceiling_db", -12.0, 0.0, 0.0, "dB"),
        Param("release_ms", 10.0, 1000.0, 100.0, "ms", "log"),
    ],
    "Gain": [Param("gain_db", -24.0, 24.0, 0.0, "dB")],
    "PeakFilter": [
        Param("cutoff_frequency_hz", default=1000.0, **_FREQ),
        Param("gain_db", -12.0, 12.0, 0.0, "dB"),
        Param("q", 0.1, 10.0, 0.707, "", "log"),
    ],
    "LowShelfFilter": [
        Param("cutoff_frequency_hz", default=120.0, **_FREQ),
        Param("gain_db", -12.0, 12.0, 0.0, "dB"),
        Param("q", 0.1, 10.0, 0.707, "", "log"),
    ],
    "HighShelfFilter": [
        Param("cutoff_frequency_hz", default=8000.0, **_FREQ),
        Param("gain_db", -12.0, 12.0, 0.0, "dB"),
        Param("q", 0.1, 10.0, 0.707, "", "log"),
    ],
    "HighpassFilter": [Param("cutoff_frequency_hz", default=30.0, **_FREQ)],
    "LowpassFilter": [Param("cutoff_frequency_hz", default=18000.0, **_FREQ)],
    "Distortion": [Param("drive_db", 0.0, 40.0, 10.0, "dB")],
    "NoiseGate": [
        Param("threshold_db", -80.0, 0.0, -60.0, "dB"),
        Param("ratio", 1.0, 20.0, 10.0, "", "log"),
        Param("attack_ms", 0.1, 100.0, 1.0, "ms", "log"),
        Param("release_ms", 10.0, 1000.0, 100.0, "ms", "log"),
    ],
    "Clipping": [Param("threshold_db", -40.0, 0.0, -6.0, "dB")],
    "Reverb": [
        Param("room_size", 0.0, 1.0, 0.5),
        Param("damping", 0.0, 1.0, 0.5),
        Param("wet_level", 0.0, 1.0, 0.33),
        Param("dry_level", 0.0, 1.0, 0.4),
        Param("width", 0.0, 1.0, 1.0),
    ],
    "Invert": [],
}
# Param name → pedalboard attribute where they differ.
_ATTR = {"cutoff_frequency_hz": "cutoff_frequency_hz"}


class PedalboardProcessor(Processor):
    """A pedalboard built-in board with a declared table and one setter list per parameter.

    Parameters are written only when they change: :meth:`set_values` compares
    with the values written last and calls the setters of the changed ones
    (writing a property makes pedalboard recompute the effect's coefficients on
    the next block). The board is the processor's
    :attr:`~deepafx.hosts.base.Processor.fusable_board`, so a chain renders runs
    of built-ins in one pedalboard call.

    Args:
        board: The pedalboard object (``Pedalboard``, ``Mix`` or a single plugin).
        table: Declared parameters (plugin units).
        setters: For each parameter, callables taking the plugin value.
        sample_rate: Hz.
    """

    def __init__(self, board: Any, table: ParamTable, setters: Sequence[Sequence[Setter]], sample_rate: float):
        super().__init__()
        if len(setters) != len(table):
            raise ValueError("one setter list per parameter is required")
        self.board = self.fusable_board = board
        self.param_table = table
        self.sample_rate = float(sample_rate)
        self._setters = [list(s) for s in setters]
        self._written = np.full(len(table), np.nan)
        self.set_values(table.defaults())

    def set_values(self, values: np.ndarray) -> None:
        """Write plugin values ``(num_params,)``; values equal to the ones written last are skipped."""
        values = np.asarray(values, dtype=np.float64)
        for j in np.flatnonzero(values != self._written):
            v = float(values[j])
            for fn in self._setters[j]:
                fn(v)
            self._written[j] = v

    def _render(self, audio: np.ndarray) -> np.ndarray:
        return self.board.process(audio, self.sample_rate, reset=False)

    def reset(self) -> None:
        """Clear the board's state (envelopes, filter memories, look-ahead); parameter values are kept."""
        self.board.reset()


class FusedBoards:
    """Consecutive processors with a :attr:`~deepafx.hosts.base.Processor.fusable_board`, rendered in one call.

    One ``pedalboard.Pedalboard`` holds the processors' own boards, so each
    processor keeps its state, parameters and setters; only the render is
    shared. The output equals rendering the processors one after the other
    (bit for bit, checked in ``tests/test_chain_fusion.py``): pedalboard streams
    every board in the same blocks either way. Only the last processor may
    report latency (its delayed output is padded and carried like
    :meth:`~deepafx.hosts.base.Processor.process` does), so a chain splits runs
    after a processor with latency.

    Args:
        processors: Two or more processors sharing one sample rate, all with a
            ``fusable_board`` and no input channel restriction.

    Raises:
        ValueError: a processor without a board, with latency before the last
            position, or a different sample rate.
    """

    def __init__(self, processors: Sequence[Processor]):
        procs = list(processors)
        if any(p.fusable_board is None or p.num_input_channels is not None for p in procs):
            raise ValueError("FusedBoards takes processors with a fusable_board and any channel count")
        if any(p.latency_samples for p in procs[:-1]):
            raise ValueError("only the last fused processor may report latency")
        if len({p.sample_rate for p in procs}) != 1:
            raise ValueError("fused processors must share one sample rate")
        self.processors = procs
        self.sample_rate = procs[0].sample_rate
        self.board = pedalboard.Pedalboard([p.fusable_board for p in procs])
        self._pending: np.ndarray | None = None

    def render_block(self, audio: np.ndarray, values: Sequence[np.ndarray | None]) -> np.ndarray:
        """Set each processor's values (``None`` keeps them) and render ``audio`` through all of them.

        Args:
            audio: ``(channels, samples)`` contiguous float32 without NaN/Inf.
            values: One ``(num_params,)`` plugin-value vector (validated) or ``None`` per processor.

        Returns:
            ``(channels_out, samples)`` float32, as many samples as ``audio``.

        Raises:
            NonFiniteOutputError: NaN/Inf output (a ``PluginError`` naming the fused processors; the
                block is attached).
        """
        for proc, v in zip(self.processors, values):
            if v is not None:
                proc.set_values(v)
        out, self._pending = fit_length(self.board.process(audio, self.sample_rate, reset=False),
                                        audio.shape[-1], self._pending)
        if not np.all(np.isfinite(out)):
            names = ", ".join(type(p).__name__ for p in self.processors)
            raise NonFiniteOutputError(f"pedalboard built-ins ({names}) produced NaN/Inf output", out)
        return out

    def reset(self) -> None:
        """Clear every processor's state and the carried latency samples."""
        for p in self.processors:
            p.reset()
            p.clear_pending()
        self._pending = None


def _attr_setter(obj: Any, attr: str) -> Setter:
    def set_(v: float) -> None:
        setattr(obj, attr, v)

    return set_


def _single_factory(effect: str) -> Callable[[ProcessorSpec, float], Processor]:
    def factory(spec: ProcessorSpec, sample_rate: float) -> Processor:
        plugin = getattr(pedalboard, effect)()
        table = ParamTable(tuple(BUILTIN_TABLES[effect]))
        setters = [[_attr_setter(plugin, _ATTR.get(p.name, p.name))] for p in table]
        proc = PedalboardProcessor(pedalboard.Pedalboard([plugin]), table, setters, sample_rate)
        if effect == "BrickwallLimiter":  # look-ahead delay: streamed output lags the input
            proc.latency_samples = int(round(plugin.lookahead_ms * 1e-3 * sample_rate))
        return proc

    factory.__name__ = f"build_{effect}"
    return factory


for _effect in BUILTIN_TABLES:
    register_backend(f"pedalboard.{_effect}")(_single_factory(_effect))


@register_backend("builtin.multiband_compressor")
def build_multiband_compressor(spec: ProcessorSpec, sample_rate: float) -> Processor:
    """Three-band compressor from pedalboard built-ins, with perfect reconstruction.

    Bands are complementary: ``low = L₁(x)``, ``mid = L₂(x) − L₁(x)``,
    ``high = x − L₂(x)``, where ``L_k`` is a 12 dB/octave low-pass (two cascaded
    first-order sections) at crossover ``k``. They sum to exactly ``x``, so with
    neutral compressors (threshold 0 dB, ratio 1, makeup 0 dB — the defaults) the
    processor is the identity, with no latency or group delay.

    Parameters: ``low_crossover_hz`` [40, 600] Hz, ``high_crossover_hz``
    [1000, min(12000, 0.45·sr)] Hz, then per band ``{low,mid,high}_threshold_db``
    [−60, 0] dB, ``_ratio`` [1, 20], ``_attack_ms`` [0.1, 100] ms,
    ``_release_ms`` [10, 1000] ms, ``_makeup_db`` [−12, 12] dB (17 in all).
    """
    nyq_cap = min(12000.0, 0.45 * sample_rate)
    table = [
        Param("low_crossover_hz", 40.0, 600.0, 200.0, "Hz", "log"),
        Param("high_crossover_hz", 1000.0, nyq_cap, min(3000.0, nyq_cap), "Hz", "log"),
    ]
    # L₁ and L₂ each appear in two bands, two first-order sections per copy
    lp1 = [pedalboard.LowpassFilter() for _ in range(4)]
    lp2 = [pedalboard.LowpassFilter() for _ in range(4)]
    setters: list[list[Setter]] = [[_attr_setter(f, "cutoff_frequency_hz") for f in lp1],
                                   [_attr_setter(f, "cutoff_frequency_hz") for f in lp2]]
    inputs = {
        "low": pedalboard.Pedalboard(lp1[0:2]),
        "mid": pedalboard.Mix([pedalboard.Pedalboard(lp2[0:2]), pedalboard.Pedalboard([*lp1[2:4], pedalboard.Invert()])]),
        "high": pedalboard.Mix([pedalboard.Gain(0.0), pedalboard.Pedalboard([*lp2[2:4], pedalboard.Invert()])]),
    }
    neutral = {"threshold_db": 0.0, "ratio": 1.0}
    bands = []
    for band, split in inputs.items():
        comp, gain = pedalboard.Compressor(), pedalboard.Gain()
        bands.append(pedalboard.Pedalboard([split, comp, gain]))
        for p in BUILTIN_TABLES["Compressor"]:
            table.append(Param(f"{band}_{p.name}", p.min, p.max, neutral.get(p.name, p.default), p.unit, p.scale))
            setters.append([_attr_setter(comp, p.name)])
        table.append(Param(f"{band}_makeup_db", -12.0, 12.0, 0.0, "dB"))
        setters.append([_attr_setter(gain, "gain_db")])
    board = pedalboard.Pedalboard([pedalboard.Mix(bands)])
    return PedalboardProcessor(board, ParamTable(tuple(table)), setters, sample_rate)


OCTAVE_BANDS_HZ = (31.25, 62.5, 125.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0, 16000.0)


@register_backend("builtin.graphic_eq")
def build_graphic_eq(spec: ProcessorSpec, sample_rate: float) -> Processor:
    """Graphic EQ: one ``PeakFilter`` per band at fixed centre frequencies.

    Options: ``bands_hz`` (default octave bands 31.25 Hz … 16 kHz; bands above
    0.45·sample_rate are dropped), ``q`` (default 1.41, about one octave),
    ``max_gain_db`` (default 12). Parameters ``band_<f>hz_gain_db`` on
    [−max_gain_db, +max_gain_db] dB.
    """
    bands = [float(f) for f in spec.options.get("bands_hz", OCTAVE_BANDS_HZ) if float(f) < 0.45 * sample_rate]
    if not bands:
        raise ValueError(f"graphic_eq: no band below 0.45 × {sample_rate} Hz")
    q = float(spec.options.get("q", 1.41))
    g = float(spec.options.get("max_gain_db", 12.0))
    filters, table, setters = [], [], []
    for f in bands:
        pf = pedalboard.PeakFilter(cutoff_frequency_hz=f, gain_db=0.0, q=q)
        filters.append(pf)
        table.append(Param(f"band_{f:g}hz_gain_db", -g, g, 0.0, "dB"))
        setters.append([_attr_setter(pf, "gain_db")])
    return PedalboardProcessor(pedalboard.Pedalboard(filters), ParamTable(tuple(table)), setters, sample_rate)
