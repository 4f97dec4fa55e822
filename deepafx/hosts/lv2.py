"""Backend ``"lv2"``: LV2 plugins hosted through liblilv, stateful (block-exact with fixed runs).

LV2 is Linux's native plugin format (Debian ships LSP ``lsp-plugins-lv2``, Zam
``zam-plugins``, x42 ``x42-plugins`` and the guitarix amplifiers
``guitarix-lv2``). Plugins are found and instantiated through liblilv
(Debian ``liblilv-0-0``), reached with :mod:`ctypes` (no Python binding for lilv
exists in Debian 12 or on PyPI). The LV2 world (every installed bundle's
``manifest.ttl``, found along ``LV2_PATH`` or the default ``~/.lv2``,
``/usr/local/lib/lv2``, ``/usr/lib/lv2`` …) is loaded once per process.
The binding (library, world, ports, instances, host features) is
:mod:`deepafx.hosts.lilv`; this module is the processor on top of it.

Options (``ProcessorSpec.options``):

* ``uri`` (required): the plugin URI, e.g.
  ``http://lsp-plug.in/plugins/lv2/compressor_stereo`` (``deepafx plugins`` or
  ``lv2ls`` list them).
* ``channels`` (default 2): for plugins with one audio input and one audio
  output, how many independent instances to hold (one per input channel).
* ``block_size`` (default :data:`DEFAULT_BLOCK_SIZE`): the longest ``run()`` in
  samples (``bufsz:maxBlockLength``); longer blocks are run in chunks.
* ``fixed_block`` (default false): run every ``run()`` with exactly
  ``block_size`` samples through a host FIFO (see **State**; adds ``block_size``
  samples of latency; a block with another channel count restarts the FIFO).
* ``unreported_latency`` (default 0): samples of delay the plugin has but does
  not report on a latency port (measured by the user, e.g. by cross-correlating
  a click's output with its input); added to :attr:`LV2Processor.latency_samples`
  so that alignment (training losses, oracles, evaluation) accounts for it.
  guitarix's circuit-model amps (``gx_jcm800pre``) resample internally and
  delay their output by 38 samples at 44.1 kHz without reporting it.
* ``param_map``: a parameter-map YAML file, or the same content inline as a
  mapping (:class:`~deepafx.hosts.plugin_params.ParamMap`: ``only_listed``,
  ``exclude``, ``params`` with ``name``/``min``/``max``/``default``/``scale``/
  ``values`` overrides), keyed by the port symbol or by the table name.
* ``exclude``: port symbols or table names to leave out of the table.

**Parameters.** One table entry per control input port, in port order
(:func:`discover_params`): the name is the port's ``lv2:name`` with its unit
(``units:unit``) as suffix (``Attack time`` in ms → ``attack_time_ms``); range
and default from ``lv2:minimum``/``lv2:maximum``/``lv2:default`` (multiplied by
the sample rate for ``lv2:sampleRate`` ports). ``lv2:toggled`` ports take
``{min, max}``, ``lv2:enumeration`` ports the values of their scale points,
``lv2:integer`` ports every integer of their range (above
:data:`MAX_INTEGER_VALUES` values: continuous, rounded when set); a
``pprops:logarithmic`` port with a positive range is normalized on a log scale.
LSP gives gains and thresholds as linear gain (its own unit ``G``, 0 … 1000 for
-inf … +60 dB); such ports are presented in dB (``Attack threshold`` →
``attack_threshold_db``), with :data:`GAIN_FLOOR_DB` standing for a gain of 0.
Host-managed ports are not in the table and stay at their defaults: the
``lv2:enabled`` (bypass), ``lv2:freeWheeling`` and ``time:`` designations and
``pprops:trigger`` buttons. The general exclusion rules of
:mod:`deepafx.hosts.plugin_params` (meters by name …) apply too.

**State.** An LV2 instance keeps its state between ``run()`` calls (LV2 core:
``run`` processes a block of a continuous stream), so consecutive
:meth:`LV2Processor.process` calls continue one signal with no replay. Each call
is run in runs of at most ``block_size`` samples, so where runs begin depends on
the caller's block sizes, and some plugins depend on it. Measured (0.5–1 s of
noise, blocks of 7 to 5000 samples vs one call): LSP compressor, multiband
compressor (at ratio 1) and graphic EQ within 7e-7 (float rounding); LSP
multiband compressor while compressing up to 0.11; LSP limiter up to 7e-3;
x42-eq up to 2.6e-3 while it glides to new parameter values (exact when runs
are multiples of 64 samples); guitarix amps up to 1.2 (they print "buffersize
changed" and re-initialise when the run length changes). With option
``fixed_block`` every ``run()`` has exactly ``block_size`` samples: a host FIFO
holds the input until a full run is there and the output starts with
``block_size`` silent samples, so output is bit-identical for any caller block
sizes, ``block_size`` samples later (added to :attr:`LV2Processor.latency_samples`).
:meth:`LV2Processor.reset` makes fresh instances (``deactivate``, ``cleanup``,
``instantiate``, ``activate``) and primes them as at load, so the output after
``reset()`` equals a fresh processor's given the same values.

**Latency.** A plugin's latency output port (``lv2:reportsLatency`` or
``lv2:designation lv2:latency``) is read after the silent priming run that
follows every instantiation (:data:`PRIME_SAMPLES`, or ``block_size`` with
``fixed_block``) and again after every block:
:attr:`LV2Processor.latency_samples` is the value reported last plus the FIFO's
``block_size`` with ``fixed_block`` (the plugin's part can change with
parameters, e.g. LSP look-ahead). Output sample ``t`` reflects input sample
``t - latency_samples``; every call returns as many samples as it is given.

**Channels.** A plugin with one audio input and one output runs as one instance
per input channel (``channels``), each with its own state; any other plugin
declares ``num_input_channels`` = its number of main audio inputs (2 for stereo
plugins) and outputs its own number of channels. Side-chain inputs
(``lv2:isSideChain``) and CV inputs receive silence.

**Host features** (:data:`PROVIDED_FEATURES`): URID map/unmap, options
(``bufsz:minBlockLength``/``maxBlockLength``/``nominalBlockLength``/
``sequenceSize``, ``param:sampleRate``), ``bufsz:boundedBlockLength``, worker
(work requested during a ``run()`` is done synchronously right after it and its
responses are delivered before the next ``run()``; ``end_run`` follows every
``run()``), and log (messages kept, see :meth:`LV2Processor.log_messages`); with
option ``fixed_block`` also ``bufsz:fixedBlockLength`` and
``bufsz:powerOf2BlockLength``. No installed plugin requires a state feature
(``state:mapPath`` … are optional for the 339 plugins of the Debian packages
above), so none is given. A plugin requiring
any other feature, or a required option the host does not give, fails with a
:class:`~deepafx.hosts.base.PluginError` naming it. Atom ports get an empty
sequence on input and a cleared buffer on output before every ``run()``.

References:
    LV2 specifications, https://lv2plug.in/ns/ (lv2core, urid, options,
    buf-size, worker, atom, port-props, units, state, log).
    D. Robillard, "Lilv" (C library for LV2 hosts), https://drobilla.gitlab.io/lilv/.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from deepafx.hosts.base import AudioError, PluginError, Processor, ProcessorSpec, register_backend
from deepafx.hosts.lilv import (  # noqa: F401  (URID_MAP and the world/port names are re-exported)
    _EXT,
    _LV2,
    FIXED_BLOCK,
    FIXED_BLOCK_FEATURES,
    GIVEN_OPTIONS,
    LILV_LIBRARY,
    POWER_OF_2_BLOCK,
    PROVIDED_FEATURES,
    SATISFIED_FEATURES,
    UNIT_LABELS,
    URID_MAP,
    LV2World,
    PortInfo,
    _Instance,
    list_plugins,
    lv2_world,
    read_ports,
)
from deepafx.hosts.plugin_params import (
    DiscoveredParam,
    ParamMap,
    ValueMap,
    build_table,
    sanitize_name,
    unique_names,
)

#: Default longest ``run()`` in samples (``bufsz:maxBlockLength``).
DEFAULT_BLOCK_SIZE = 4096

#: Silent samples run after every instantiation (latency is then reported).
PRIME_SAMPLES = 64

#: Integer ports with more values than this are continuous (rounded when set).
MAX_INTEGER_VALUES = 128

#: dB value standing for a linear gain of 0 on gain ports shown in dB.
GAIN_FLOOR_DB = -120.0

#: Decimals of dB bounds and defaults of gain ports shown in dB (LSP stores ``0.063100``
#: for -24 dB: the table says -24, the port gets the clipped gain).
DB_DECIMALS = 2

OPTIONS = frozenset({"uri", "channels", "block_size", "fixed_block", "unreported_latency", "param_map", "exclude"})

# -- parameters ---------------------------------------------------------------------------

#: Designations whose ports the host manages (not in the table, left at their default).
HOST_DESIGNATIONS = (_LV2 + "enabled", _LV2 + "freeWheeling", _LV2 + "latency", _EXT + "time#")


@dataclass(frozen=True)
class PortParam:
    """How a table value becomes a control-port value.

    Attributes:
        port: Port index.
        gain_db: True when the table shows dB for a linear-gain port
            (port value ``10 ** (dB / 20)``, 0 at or below :data:`GAIN_FLOOR_DB`).
        integer: True when the port value is rounded to an integer.
        labels: ``{value: label}`` of the port's scale points.
        lo, hi: The port's range (after ``lv2:sampleRate`` scaling); port values are clipped to it.
    """

    port: int
    gain_db: bool = False
    integer: bool = False
    labels: Mapping[float, str] = field(default_factory=dict)
    lo: float = -math.inf
    hi: float = math.inf

    def to_port(self, value: float) -> float:
        """Port value for table value ``value``, clipped to the port's ``[lo, hi]``."""
        if self.gain_db:
            v = 0.0 if value <= GAIN_FLOOR_DB else 10.0 ** (value / 20.0)
        else:
            v = float(round(value)) if self.integer else float(value)
        return min(self.hi, max(self.lo, v))


def _to_db(g: float) -> float:
    """Linear gain → dB rounded to :data:`DB_DECIMALS` decimals (0 → :data:`GAIN_FLOOR_DB`)."""
    if g <= 10 ** (GAIN_FLOOR_DB / 20):
        return GAIN_FLOOR_DB
    return round(max(GAIN_FLOOR_DB, 20.0 * math.log10(g)), DB_DECIMALS)


def discover_params(ports: Sequence[PortInfo], sample_rate: float) -> list[DiscoveredParam]:
    """One :class:`~deepafx.hosts.plugin_params.DiscoveredParam` per control input port (module docstring).

    Host-managed ports (designations in :data:`HOST_DESIGNATIONS`, triggers) are
    returned as not automatable; ports without a usable range get no value map
    (both are left out of the table by :func:`~deepafx.hosts.plugin_params.build_table`).
    Each entry's ``handle`` is a :class:`PortParam`.
    """
    controls = [p for p in ports if p.kind == "control" and p.is_input]
    names = unique_names(_param_name(p) for p in controls)
    out = []
    for p, name in zip(controls, names):
        lo, hi, default = p.minimum, p.maximum, p.default
        if "sampleRate" in p.properties:
            lo, hi, default = lo * sample_rate, hi * sample_rate, default * sample_rate
        if "toggled" in p.properties:
            lo = 0.0 if not math.isfinite(lo) else lo
            hi = 1.0 if not math.isfinite(hi) or hi <= lo else hi
        host = any(d.startswith(h) for d in p.designations for h in HOST_DESIGNATIONS) or "trigger" in p.properties
        gain_db = p.unit == "gain" and math.isfinite(lo) and math.isfinite(hi) and lo >= 0 and hi > 0
        integer = bool({"integer", "enumeration", "toggled"} & p.properties)
        labels = {v: lab for v, lab in p.scale_points}
        unit = "dB" if gain_db else UNIT_LABELS.get(p.unit, ("", ""))[0]
        vm: ValueMap | None = None
        scale = None
        if not default == default:  # NaN: no default given
            default = lo if math.isfinite(lo) else 0.0
        lo_port = lo if math.isfinite(lo) else -math.inf
        hi_port = hi if math.isfinite(hi) else math.inf
        if math.isfinite(lo) and math.isfinite(hi) and hi > lo:
            default = min(hi, max(lo, default))
            if gain_db:
                lo, hi, default = _to_db(lo), _to_db(hi), _to_db(default)
                vm = ValueMap.identity(lo, hi)
            elif "toggled" in p.properties:
                vm = _discrete((lo, hi))
            elif "enumeration" in p.properties and p.scale_points:
                vals = tuple(sorted({v for v, _ in p.scale_points if lo <= v <= hi}))
                vm = _discrete(vals) if len(vals) >= 2 else None
                integer = False
            elif integer and hi - lo + 1 <= MAX_INTEGER_VALUES:
                vals = tuple(float(v) for v in range(math.ceil(lo), math.floor(hi) + 1))
                vm = _discrete(vals) if len(vals) >= 2 else None
            else:
                vm = ValueMap.identity(lo, hi)
            if "logarithmic" in p.properties and not gain_db and lo > 0:
                scale = "log"
        out.append(
            DiscoveredParam(
                key=p.symbol,
                name=name,
                unit=unit,
                value_map=vm,
                current=float(default),
                handle=PortParam(port=p.index, gain_db=gain_db, integer=integer, labels=labels,
                                 lo=lo_port, hi=hi_port),
                automatable=not host,
                scale=scale,
            )
        )
    return out


def _discrete(values: Sequence[float]) -> ValueMap:
    vals = tuple(float(v) for v in values)
    return ValueMap(values=vals, raws=vals, discrete=True)


def _param_name(p: PortInfo) -> str:
    """Table name of a control port: its ``lv2:name`` (or symbol) with a unit suffix."""
    base = sanitize_name(p.name or p.symbol)
    suffix = "db" if p.unit == "gain" else UNIT_LABELS.get(p.unit, ("", ""))[1]
    if suffix and not base.endswith("_" + suffix) and base != suffix:
        base = f"{base}_{suffix}"
    return base


def _param_map(option: Any) -> ParamMap | None:
    """A :class:`ParamMap` from option ``param_map``: a file (path or packaged name) or an inline mapping.

    Raises:
        PluginError: malformed inline content (names the key).
    """
    if option is None:
        return None
    if not isinstance(option, Mapping):
        return ParamMap.load(option)
    unknown = set(option) - {"plugin", "only_listed", "exclude", "params"}
    if unknown:
        raise PluginError(f"inline param_map: unknown keys {sorted(unknown)}; allowed: plugin, only_listed, "
                          "exclude, params")
    params = option.get("params") or {}
    for key, ov in params.items():
        if not isinstance(ov or {}, Mapping) or set(ov or {}) - ParamMap.OVERRIDE_KEYS:
            raise PluginError(f"inline param_map: entry {key!r} must be a mapping with keys among "
                              f"{sorted(ParamMap.OVERRIDE_KEYS)}, got {ov!r}")
    return ParamMap(
        plugin=option.get("plugin"),
        only_listed=bool(option.get("only_listed", False)),
        exclude=tuple(str(x) for x in option.get("exclude") or ()),
        params={str(k): dict(v or {}) for k, v in params.items()},
    )


# -- the processor ---------------------------------------------------------------------------


_LOAD_LOCK = threading.Lock()


class LV2Processor(Processor):
    """An LV2 effect hosted through liblilv (module docstring: options, parameters, state, latency).

    Args:
        uri: Plugin URI.
        sample_rate: Processing rate in Hz.
        channels: Instances to hold for a one-input, one-output plugin (one per channel).
        block_size: Longest ``run()`` in samples (with ``fixed_block``: the length of every ``run()``).
        fixed_block: Run every block with exactly ``block_size`` samples through a
            host FIFO, which delays the output by ``block_size`` samples (added to
            :attr:`latency_samples`); for plugins whose output depends on where
            ``run()`` calls begin (module docstring).
        unreported_latency: Samples of delay the plugin does not report (>= 0),
            added to :attr:`latency_samples` (module docstring).
        param_map: Parameter-map file or inline mapping.
        exclude: Port symbols or table names to leave out.

    Attributes:
        uri: The plugin URI.
        name: The plugin's ``doap:name``.
        ports: Every port (:class:`PortInfo`).
        bindings: One :class:`~deepafx.hosts.plugin_params.SelectedParam` per
            table entry (its ``source.handle`` is the :class:`PortParam`).
        mono_only: True when one instance runs per input channel.

    Raises:
        PluginError: liblilv missing, unknown URI, a required feature or option
            this host does not provide, no audio input, instantiation failure,
            invalid options.
        ParameterError: a parameter-map or ``exclude`` entry that does not fit.
    """

    def __init__(
        self,
        uri: str,
        sample_rate: float,
        channels: int = 2,
        block_size: int = DEFAULT_BLOCK_SIZE,
        fixed_block: bool = False,
        unreported_latency: int = 0,
        param_map: str | Path | Mapping[str, Any] | None = None,
        exclude: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if int(channels) < 1 or int(block_size) < 1:
            raise PluginError(f"options channels and block_size must be >= 1, got {channels}, {block_size}")
        if sample_rate <= 0:
            raise PluginError(f"sample_rate must be positive, got {sample_rate}")
        self.uri = str(uri)
        self.sample_rate = float(sample_rate)
        self.block_size = int(block_size)
        self.channels = int(channels)
        self.fixed_block = bool(fixed_block)
        try:
            ok = not isinstance(unreported_latency, bool) and int(unreported_latency) == float(unreported_latency) >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise PluginError(f"option unreported_latency must be a whole number of samples >= 0, got {unreported_latency!r}")
        self.unreported_latency = int(unreported_latency)
        self.plugin_latency_samples = 0
        self._instances: list[_Instance] = []
        self._fifo_in: np.ndarray | None = None
        self._fifo_out: np.ndarray | None = None
        world = self.world = lv2_world()
        self._plugin = world.plugin(self.uri)
        self.name = world.plugin_name(self._plugin)
        self.label = f"LV2 plugin {self.uri}"
        self._check_features()
        self.ports = read_ports(world, self._plugin)
        main_in = [p for p in self.ports if p.kind == "audio" and p.is_input and "sideChain" not in p.properties]
        outs = [p for p in self.ports if p.kind == "audio" and not p.is_input]
        if not main_in:
            raise PluginError(f"{self.label} ({self.name}) has no audio input (an instrument or generator); "
                              "backend 'lv2' hosts effects")
        if not outs:
            raise PluginError(f"{self.label} ({self.name}) has no audio output (an analyser?)")
        self._main_rows = [[p.index for p in self.ports if p.kind == "audio" and p.is_input].index(p.index)
                           for p in main_in]
        self.mono_only = len(main_in) == 1 and len(outs) == 1
        self.num_input_channels = None if self.mono_only else len(main_in)
        self.num_output_channels = len(outs)
        pm = _param_map(param_map)
        self.param_table, self.bindings = build_table(
            discover_params(self.ports, self.sample_rate), pm, tuple(exclude or ()), plugin_label=self.label
        )
        self._port_params: list[PortParam] = [s.source.handle for s in self.bindings]
        self._maps = [s.value_map for s in self.bindings]
        self._controls = np.zeros(len(self.ports), np.float32)
        for p in self.ports:
            if p.kind == "control" and p.is_input:
                d = p.default * (self.sample_rate if "sampleRate" in p.properties else 1.0)
                if _LV2 + "enabled" in p.designations:
                    d = 1.0  # lv2:enabled: processing on (0 would bypass)
                self._controls[p.index] = d if math.isfinite(d) else (p.minimum if math.isfinite(p.minimum) else 0.0)
        self._latency_port = (int(world.lib.lilv_plugin_get_latency_port_index(self._plugin))
                              if world.lib.lilv_plugin_has_latency(self._plugin) else None)
        self._values = self.param_table.defaults()
        self._write_controls(self._values)
        self._default_controls = self._controls.copy()
        self._build_instances()

    # -- set-up ------------------------------------------------------------------------------
    def _check_features(self) -> None:
        lib, world = self.world.lib, self.world
        required = world.nodes_as_strings(lib.lilv_plugin_get_required_features(self._plugin))
        provided = set(PROVIDED_FEATURES) | set(SATISFIED_FEATURES)
        if self.fixed_block:
            provided.add(FIXED_BLOCK)
            if self.block_size & (self.block_size - 1) == 0:
                provided.add(POWER_OF_2_BLOCK)
        missing = [f for f in required if f not in provided]
        if missing:
            hint = ""
            if set(missing) <= set(FIXED_BLOCK_FEATURES):
                hint = "; set option fixed_block: true (with a power-of-2 block_size for powerOf2BlockLength)"
            raise PluginError(
                f"{self.label} ({self.name}) requires LV2 feature(s) {', '.join(missing)} that backend 'lv2' "
                f"does not provide with these options (it provides: {', '.join(sorted(provided))}){hint}"
            )
        opts = world.nodes_as_strings(lib.lilv_world_find_nodes(
            world.ptr, lib.lilv_plugin_get_uri(self._plugin), world.node(_EXT + "options#requiredOption"), None))
        given = set(GIVEN_OPTIONS)
        missing = [o for o in opts if o not in given]
        if missing:
            raise PluginError(f"{self.label} ({self.name}) requires LV2 option(s) {', '.join(missing)} "
                              f"that backend 'lv2' does not give (it gives: {', '.join(sorted(given))})")

    def _build_instances(self) -> None:
        """Instantiate, connect, activate and prime every instance; read the latency.

        Every instance is primed at the table defaults (as at load) and then gets
        the current values, so a reset processor behaves like a fresh one given
        the current values with its first block (plugins that smooth parameter
        changes, such as x42-eq, glide from the defaults in both cases).
        """
        n = self.channels if self.mono_only else 1
        with _LOAD_LOCK:
            instances = []
            try:
                for _ in range(n):
                    instances.append(_Instance(self.world, self._plugin, self.ports, self.sample_rate,
                                               self.block_size, self._default_controls, self.label,
                                               self.fixed_block))
            except BaseException:
                for inst in instances:
                    inst.free()
                raise
        self._instances = instances
        prime = self.block_size if self.fixed_block else min(PRIME_SAMPLES, self.block_size)
        for inst in instances:
            inst.audio_in[:] = 0.0
            inst.run(prime)
        self._read_latency()
        self._fifo_in = self._fifo_out = None
        self.set_values(self._values)

    def _read_latency(self) -> None:
        """Set :attr:`plugin_latency_samples` from the latency port and :attr:`latency_samples` from it."""
        if self._latency_port is not None and self._instances:
            v = float(self._instances[0].controls[self._latency_port])
            self.plugin_latency_samples = int(round(v)) if math.isfinite(v) and v >= 0 else 0
        self.latency_samples = (self.plugin_latency_samples + (self.block_size if self.fixed_block else 0)
                                + self.unreported_latency)

    def _write_controls(self, values: np.ndarray) -> None:
        for k, (pp, vmap) in enumerate(zip(self._port_params, self._maps)):
            self._controls[pp.port] = pp.to_port(vmap.to_raw(values[k]))

    # -- Processor API -----------------------------------------------------------------------
    @property
    def num_instances(self) -> int:
        """Plugin instances held: ``channels`` for one-input, one-output plugins, else 1."""
        return len(self._instances)

    def set_values(self, values: np.ndarray) -> None:
        """Apply plugin values ``(num_params,)`` (table units) to every instance's control ports.

        Ports take effect at the next ``run()``; dB tables of gain ports are
        converted to linear gain, integer ports are rounded.
        """
        self._values = np.array(values, dtype=np.float64)
        self._write_controls(self._values)
        for inst in self._instances:
            for pp in self._port_params:
                inst.controls[pp.port] = self._controls[pp.port]

    def port_values(self, values: np.ndarray) -> list[tuple[int, float]]:
        """The control-port values :meth:`set_values` writes for table values, without writing them.

        Args:
            values: ``(num_params,)`` table values in table units (dB for LSP gain ports).

        Returns:
            ``(port index, port value)`` per table parameter, in table order: port
            units (linear gain for gain ports shown in dB, integers rounded, clipped
            to the port's range), what a host such as a DAW sets the port to.

        Raises:
            ValueError: ``values`` has not ``len(param_table)`` entries.
        """
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (len(self._port_params),):
            raise ValueError(f"{self.label}: expected {len(self._port_params)} table values, got shape {values.shape}")
        return [(pp.port, float(pp.to_port(vmap.to_raw(v))))
                for pp, vmap, v in zip(self._port_params, self._maps, values)]

    def port_value(self, symbol: str, instance: int = 0) -> float:
        """Current value of the control port ``symbol`` (inputs and outputs such as meters).

        Raises:
            PluginError: no control port has that symbol (lists them).
        """
        for p in self.ports:
            if p.symbol == symbol and p.kind == "control":
                return float(self._instances[instance].controls[p.index])
        known = ", ".join(p.symbol for p in self.ports if p.kind == "control")
        raise PluginError(f"{self.label}: no control port {symbol!r}; control ports: {known}")

    def describe_labels(self) -> str:
        """Lines naming the scale-point labels of discrete parameters: ``tube: 0=12ax7 1=12AU7 …``."""
        lines = []
        for s in self.bindings:
            labels = s.source.handle.labels
            if labels and s.param.values is not None:
                shown = [f"{v:g}={labels[v]}" for v in s.param.values if v in labels]
                if shown:
                    lines.append(f"{s.param.name}: " + " ".join(shown))
        return "\n".join(lines)

    def log_messages(self) -> list[tuple[str, str]]:
        """The last messages plugins logged in this process (``log:log``), ``(type URI, text)``."""
        return list(self.world.messages)

    def _render(self, audio: np.ndarray) -> np.ndarray:
        if self.mono_only and audio.shape[0] > len(self._instances):
            raise AudioError(
                f"{self.label} has one input and this processor holds {len(self._instances)} instance(s), one per "
                f"channel; got {audio.shape[0]} channels (raise option 'channels')"
            )
        if not self.fixed_block:
            return self._run_blocks(audio)
        # Host FIFO: full blocks of block_size only; the output starts with block_size zeros.
        c, n, bs = audio.shape[0], audio.shape[1], self.block_size
        if self._fifo_in is None or self._fifo_in.shape[0] != c:
            self._fifo_in = np.zeros((c, 0), np.float32)
            self._fifo_out = None
        full = np.concatenate([self._fifo_in, audio], axis=1)
        k = full.shape[1] // bs * bs
        self._fifo_in = full[:, k:]
        rendered = self._run_blocks(full[:, :k]) if k else None
        if self._fifo_out is None:
            c_out = rendered.shape[0] if rendered is not None else self._out_channels(c)
            self._fifo_out = np.zeros((c_out, bs), np.float32)
        out = self._fifo_out if rendered is None else np.concatenate([self._fifo_out, rendered], axis=1)
        self._fifo_out = out[:, n:]
        return out[:, :n]

    def _out_channels(self, c: int) -> int:
        return c if self.mono_only else self.num_output_channels

    def _run_blocks(self, audio: np.ndarray) -> np.ndarray:
        """Run ``(channels, samples)`` through the instances in runs of at most ``block_size``."""
        c, n = audio.shape
        insts = self._instances
        if self.mono_only:
            groups = [(inst, audio[i : i + 1]) for i, inst in enumerate(insts[:c])]
        else:
            groups = [(insts[0], audio)]
        outs = [np.empty((inst.audio_out.shape[0], n), np.float32) for inst, _ in groups]
        bs = self.block_size
        for (inst, x), out in zip(groups, outs):
            rows = self._main_rows
            for pos in range(0, n, bs):
                m = min(bs, n - pos)
                inst.audio_in[rows, :m] = x[:, pos : pos + m]
                inst.run(m)
                out[:, pos : pos + m] = inst.audio_out[:, :m]
        self._read_latency()
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)

    def reset(self) -> None:
        """Replace every instance by a fresh one (deactivate, cleanup, instantiate, activate, prime).

        Parameter values are kept; after ``reset()`` the output equals that of a
        fresh processor given the same values with its first block. The host
        FIFO of ``fixed_block`` restarts with ``block_size`` silent samples.
        """
        self._free_instances()
        self._build_instances()
        self.clear_pending()

    def _free_instances(self) -> None:
        for inst in self._instances:
            inst.free()
        self._instances = []

    def close(self) -> None:
        """Free every instance (the processor cannot render afterwards)."""
        self._free_instances()


@register_backend("lv2")
def build_lv2(spec: ProcessorSpec, sample_rate: float) -> LV2Processor:
    """Factory for backend ``"lv2"`` (options in the module docstring)."""
    opts = dict(spec.options)
    unknown = set(opts) - OPTIONS
    if unknown or "uri" not in opts:
        raise PluginError(
            f"processor {spec.name!r} (lv2): options need 'uri' and may have {sorted(OPTIONS)}; got {sorted(opts)}"
        )
    return LV2Processor(sample_rate=sample_rate, **opts)


__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "GAIN_FLOOR_DB",
    "LV2Processor",
    "LV2World",
    "PortInfo",
    "PortParam",
    "build_lv2",
    "discover_params",
    "list_plugins",
    "lv2_world",
    "read_ports",
]
