"""Parameter discovery for third-party plugins: value lookups, names, parameter maps.

Plugin hosts expose a plugin parameter as a *raw* value on [0, 1] (VST2/VST3
normalized value) plus a display text ("-12.00", "80.000000", "RMS"). This module
turns what a host reports into an ordered :class:`~deepafx.params.ParamTable` in
real plugin units, and gives each parameter a fast ``plugin value -> raw`` lookup.

* :class:`ValueMap` — the monotone map between plugin values and raw values,
  built once at load from the plugin's own display texts sampled over the raw
  range (pedalboard's ``parameter.ranges``, or ``get_parameter_text`` sampling in
  dawdreamer). A map that is linear to within display rounding is stored as
  ``value = offset + slope * raw`` (exact, two float operations per set); any
  other monotone map uses piecewise-linear interpolation between the sampled
  points; text-valued parameters ("Peak"/"RMS") become discrete indices.
* :class:`ParamMap` — a YAML file that selects, renames and narrows parameters
  (packaged ones in ``param_maps/`` of :func:`deepafx.assets.plugins_dir`,
  format documented on the class).
* :func:`build_table` — discovered parameters + exclusions + parameter map ->
  the processor's table, with one :class:`SelectedParam` per table entry.

Exclusion rules (documented once here, used by every plugin backend):

1. host-managed pseudo-parameters (:data:`HOST_PARAMETERS`: buffer size, sample
   rate, program, bypass, latency);
2. parameters the plugin marks as not automatable (VST3 output parameters);
3. output meters, recognised by name (:data:`METER_NAME_PATTERN`:
   ``gain_reduction``, ``meter``, ``input_level``/``output_level``), because some
   plugins mark their meters automatable (ZaMultiCompX2's ``gain_reduction_1_db``);
4. the ``exclude`` list of the parameter map file and of the processor options;
5. parameters whose sampled display never changes or is not monotone in the raw
   value (no usable range).
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from deepafx.assets import resolve_plugin_asset
from deepafx.hosts.base import PluginError
from deepafx.params import Param, ParamTable, ParameterError

#: Pseudo-parameters a host manages itself; never learned or set by deepafx.
HOST_PARAMETERS = frozenset(
    {"buffer_size_frames", "sample_rate_frames", "current_program", "bypass", "latency_frames", "program"}
)

#: Names of output meters that some plugins expose as (automatable) parameters.
METER_NAME_PATTERN = re.compile(r"gain_?reduction|(^|_)meters?(_|$)|(^|_)(input|output)_level(_|$)")

#: Numeric parameters showing at most this many distinct values over the raw range are discrete.
MAX_DISCRETE_VALUES = 16

#: Number of raw-value steps sampled when a host does not provide ranges itself.
SAMPLE_STEPS = 1000

_NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf)\s*([A-Za-z%°]*)\s*$")

#: Suffix appended to a sanitized name for a unit label, so names carry units.
UNIT_SUFFIXES = {"db": "db", "ms": "ms", "hz": "hz", "khz": "khz", "s": "s", "sec": "s", "%": "pct", "m": "m"}

#: Units for which a wide positive range is normalized on a log scale by default.
LOG_UNITS = frozenset({"hz", "khz", "ms", "s"})


def parse_number(text: str | float | bool) -> float | None:
    """Parse a display text such as ``"-12.00"``, ``"80.000000"``, ``"-inf"`` or ``"20 Hz"``.

    Returns:
        The number (``±inf`` allowed), or ``None`` when the text is not numeric.
    """
    if isinstance(text, bool):
        return float(text)
    if isinstance(text, (int, float)):
        return float(text)
    m = _NUMBER.match(str(text))
    return float(m.group(1)) if m else None


@dataclass(frozen=True)
class ValueMap:
    """Monotone lookup between plugin values (real units) and raw values on [0, 1].

    Args:
        values: Plugin values in ascending order (unique), shape ``(k,)``.
        raws: Raw value on [0, 1] for each entry of ``values``.
        discrete: True when only ``values`` are valid (enums, switches, steps).
        labels: Display label of each value for text-valued parameters
            (value ``i`` is label ``i``); ``None`` for numeric parameters.
        linear: ``(offset, slope)`` when ``value = offset + slope * raw`` holds
            to within display rounding; then :meth:`to_raw` is exact arithmetic.
    """

    values: tuple[float, ...]
    raws: tuple[float, ...]
    discrete: bool = False
    labels: tuple[str, ...] | None = None
    linear: tuple[float, float] | None = None

    @property
    def min(self) -> float:
        return self.values[0]

    @property
    def max(self) -> float:
        return self.values[-1]

    def to_raw(self, value: float) -> float:
        """Host value that makes the plugin show ``value`` (plugin units).

        The host value is the normalized raw value on [0, 1] for VST hosts and
        the value itself for Faust (:meth:`identity`). Discrete parameters snap
        to the nearest valid value; continuous values are clipped to ``[min, max]``.
        """
        v = float(value)
        if self.discrete:
            i = bisect.bisect_left(self.values, v)
            if i == len(self.values) or (i > 0 and v - self.values[i - 1] <= self.values[i] - v):
                i -= 1
            return self.raws[i]
        if self.linear is not None:
            offset, slope = self.linear
            a, b = self.raws[0], self.raws[-1]
            return min(max(a, b), max(min(a, b), (v - offset) / slope))
        vals = self.values
        if v <= vals[0]:
            return self.raws[0]
        if v >= vals[-1]:
            return self.raws[-1]
        i = bisect.bisect_right(vals, v)
        v0, v1, r0, r1 = vals[i - 1], vals[i], self.raws[i - 1], self.raws[i]
        return r0 + (r1 - r0) * (v - v0) / (v1 - v0)

    def to_value(self, raw: float) -> float:
        """Plugin value shown for host value ``raw`` (nearest sampled or interpolated).

        A continuous value within 1e-7 of the range of a sampled display value is
        returned as that display value (``10.0``, not ``9.9999997``).
        """
        r = min(max(self.raws), max(min(self.raws), float(raw)))
        if self.linear is not None and not self.discrete:
            offset, slope = self.linear
            v = offset + slope * r
            i = min(bisect.bisect_left(self.values, v), len(self.values) - 1)
            near = min(self.values[max(i - 1, 0) : i + 1], key=lambda s: abs(s - v))
            return near if abs(near - v) <= 1e-7 * (self.max - self.min) else v
        order = np.argsort(self.raws)
        raws = np.asarray(self.raws)[order]
        vals = np.asarray(self.values)[order]
        if self.discrete:
            return float(vals[int(np.abs(raws - r).argmin())])
        return float(np.interp(r, raws, vals))

    @classmethod
    def identity(cls, lo: float, hi: float) -> "ValueMap":
        """The map of a host that takes real values directly (Faust): ``raw = value``."""
        return cls(values=(float(lo), float(hi)), raws=(float(lo), float(hi)), linear=(0.0, 1.0))

    @classmethod
    def from_intervals(
        cls, intervals: Sequence[tuple[float, float, Any]], max_discrete: int = MAX_DISCRETE_VALUES
    ) -> "ValueMap | None":
        """Build from ``(raw_lo, raw_hi, display)`` runs of equal display over the raw range.

        Args:
            intervals: Consecutive runs in ascending raw order covering [0, 1];
                ``raw_lo`` and ``raw_hi`` are the first and last sampled raw
                values showing ``display`` (a text, number or bool).
            max_discrete: Numeric parameters with at most this many distinct
                values are discrete (a host's step count can raise it).

        Returns:
            The map, or ``None`` when the parameter has no usable range (a single
            display value, only non-finite numbers, or a non-monotone numeric map).
        """
        if not intervals:
            return None
        numbers = [parse_number(d) for _, _, d in intervals]
        if any(n is None for n in numbers):  # text-valued: enum by label, in raw order
            labels: list[str] = []
            raws: list[float] = []
            for lo, hi, d in intervals:
                if str(d) in labels:  # a label repeating later makes the order ambiguous
                    return None
                labels.append(str(d))
                raws.append(0.5 * (lo + hi))
            if len(labels) < 2:
                return None
            return cls(values=tuple(float(i) for i in range(len(labels))), raws=tuple(raws), discrete=True,
                       labels=tuple(labels))
        points: list[tuple[float, float, float]] = []
        for (lo, hi, _), n in zip(intervals, numbers):
            if not math.isfinite(n):
                continue
            if points and points[-1][2] == n:  # "0.00" then "0.000": one run
                points[-1] = (points[-1][0], hi, n)
            else:
                points.append((lo, hi, n))
        if len(points) < 2:
            return None
        vals = np.array([p[2] for p in points])
        steps = np.diff(vals)
        if not (np.all(steps > 0) or np.all(steps < 0)):
            return None
        first, last = points[0][0], points[-1][1]
        if len(points) <= max_discrete:
            raws = [0.5 * (lo + hi) for lo, hi, _ in points]
            pairs = sorted(zip(vals.tolist(), raws))
            return cls(values=tuple(p[0] for p in pairs), raws=tuple(p[1] for p in pairs), discrete=True)
        # A run of equal text covers the raw interval [lo, hi]; the value it shows
        # (rounded for display) is best placed in its middle, except at the ends.
        raws_c = []
        for j, (lo, hi, _) in enumerate(points):
            raws_c.append(first if j == 0 else last if j == len(points) - 1 else 0.5 * (lo + hi))
        raws_a = np.array(raws_c)
        slope = (vals[-1] - vals[0]) / (raws_a[-1] - raws_a[0])
        offset = vals[0] - slope * raws_a[0]
        span = abs(vals[-1] - vals[0])
        linear = None
        if np.max(np.abs(offset + slope * raws_a - vals)) <= 2e-3 * span:
            slope, offset = np.polyfit(raws_a, vals, 1)
            linear = (float(offset), float(slope))
        order = np.argsort(vals)
        return cls(values=tuple(vals[order].tolist()), raws=tuple(raws_a[order].tolist()), linear=linear)

    @classmethod
    def from_samples(cls, raws: Sequence[float], displays: Sequence[Any]) -> "ValueMap | None":
        """Build from displays sampled at ascending raw values (see :meth:`from_intervals`)."""
        intervals: list[tuple[float, float, Any]] = []
        for r, d in zip(raws, displays):
            if intervals and intervals[-1][2] == d:
                intervals[-1] = (intervals[-1][0], float(r), d)
            else:
                intervals.append((float(r), float(r), d))
        return cls.from_intervals(intervals)


@dataclass(frozen=True)
class DiscoveredParam:
    """A plugin parameter as the host reports it, before selection and renaming.

    Args:
        key: The plugin's own parameter name (``"attack_ms"``, ``"at"``, ``"Dry Level"``).
        name: Sanitized identifier carrying its unit (``"at_ms"``, ``"dry_level_pct"``).
        unit: Unit label (``"dB"``, ``"ms"``; ``""`` if none).
        value_map: Raw <-> value lookup; ``None`` when the range is unusable.
        current: Plugin value at load (the plugin's default).
        handle: Backend handle used to set the parameter (index, name or object).
        automatable: False when the plugin marks it as an output / read-only.
        scale: Normalization the plugin suggests (``"log"`` from Faust
            ``[scale:log]``); ``None``: log for wide positive Hz/ms/s ranges.
    """

    key: str
    name: str
    unit: str
    value_map: ValueMap | None
    current: float
    handle: Any = None
    automatable: bool = True
    scale: str | None = None


@dataclass(frozen=True)
class SelectedParam:
    """A table entry bound to its plugin parameter: ``param`` (plugin units) + lookup + handle."""

    param: Param
    source: DiscoveredParam

    @property
    def value_map(self) -> ValueMap:
        assert self.source.value_map is not None
        return self.source.value_map


def sanitize_name(name: str, unit: str = "") -> str:
    """Identifier from a plugin's display name, with a unit suffix.

    ``("Dry Level", "%")`` -> ``"dry_level_pct"``; ``("Threshold", "dB")`` ->
    ``"threshold_db"``; names already ending with the unit keep it once.
    """
    base = re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_") or "param"
    suffix = UNIT_SUFFIXES.get(unit.strip().lower())
    if suffix and not base.endswith("_" + suffix) and base != suffix:
        base = f"{base}_{suffix}"
    return base


def unique_names(names: Iterable[str]) -> list[str]:
    """Make names unique by appending ``_2``, ``_3`` … to repeats (VST2 truncates names)."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0) + 1
        seen[n] = k
        out.append(n if k == 1 else f"{n}_{k}")
    return out


def is_meter_name(name: str) -> bool:
    """True for names of output meters (:data:`METER_NAME_PATTERN`)."""
    return bool(METER_NAME_PATTERN.search(name.lower()))


def excluded_by_rules(key: str, name: str, automatable: bool = True) -> bool:
    """True when rules 1–3 of the module docstring drop a parameter (host, not automatable, meter)."""
    return not automatable or key.lower() in HOST_PARAMETERS or name in HOST_PARAMETERS or is_meter_name(name)


@dataclass(frozen=True)
class ParamMap:
    """Per-plugin parameter selection and overrides, loaded from YAML.

    File format (every key optional)::

        plugin: ZaMultiCompX2           # informative: which plugin this is for
        only_listed: false              # true: keep only the parameters under `params`,
                                        #       in the listed order
        exclude: [listen_1, listen_2]   # plugin parameter names to drop
        params:                         # keyed by the plugin's name or our sanitized name
          attack1_ms: {name: low_attack_ms, min: 0.5, max: 100, scale: log}
          cr:         {name: ratio, default: 2.0}
          mode:       {values: [0, 1]}  # restrict a discrete parameter

    Override keys: ``name``, ``min``, ``max``, ``default``, ``unit``, ``scale``
    (``linear``/``log``), ``values`` (allowed plugin values). ``min``/``max``
    must lie inside the range the plugin reports. A listed parameter is kept
    even when an exclusion rule (host, not automatable, meter) would drop it.

    Raises:
        PluginError: on a missing file or malformed content (names the key).
    """

    path: Path | None = None
    plugin: str | None = None
    only_listed: bool = False
    exclude: tuple[str, ...] = ()
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    OVERRIDE_KEYS = frozenset({"name", "min", "max", "default", "unit", "scale", "values"})

    @classmethod
    def load(cls, path: str | Path) -> "ParamMap":
        """Load a map file.

        Args:
            path: Map file; a relative name is tried from the working directory,
                then in the plugin folder's ``param_maps/`` and the plugin folder
                itself (``ZamGEQ31.yaml`` or ``param_maps/ZamGEQ31.yaml``; see
                :func:`resolve_asset`).

        Raises:
            PluginError: missing file (places tried listed) or malformed content.
        """
        import yaml

        p = resolve_asset(path, ("param_maps",), what="parameter map")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, Mapping):
            raise PluginError(f"parameter map {p}: expected a mapping at top level, got {type(data).__name__}")
        unknown = set(data) - {"plugin", "only_listed", "exclude", "params"}
        if unknown:
            raise PluginError(
                f"parameter map {p}: unknown keys {sorted(unknown)}; allowed: plugin, only_listed, exclude, params"
            )
        params = data.get("params") or {}
        for key, ov in params.items():
            ov = ov or {}
            if not isinstance(ov, Mapping) or set(ov) - cls.OVERRIDE_KEYS:
                raise PluginError(
                    f"parameter map {p}: entry {key!r} must be a mapping with keys among "
                    f"{sorted(cls.OVERRIDE_KEYS)}, got {ov!r}"
                )
        return cls(
            path=p,
            plugin=data.get("plugin"),
            only_listed=bool(data.get("only_listed", False)),
            exclude=tuple(str(x) for x in data.get("exclude") or ()),
            params={str(k): dict(v or {}) for k, v in params.items()},
        )


def resolve_asset(path: str | Path, subdirs: Sequence[str], what: str) -> Path:
    """Find a plugin asset file given as is, or under the packaged plugin folder.

    Args:
        path: File path or name. A relative name is tried from the working
            directory, then as ``<plugins>/<subdir>/<path>`` for each of ``subdirs``,
            then as ``<plugins>/<path>`` (``<plugins>`` is
            :func:`deepafx.assets.plugins_dir`: the installed copy, or the
            repository's ``plugins/``); ``plugins/...`` spellings work too
            (:func:`deepafx.assets.resolve_plugin_asset`).
        subdirs: Sub-folders of ``<plugins>`` to try in order, e.g. ``("faust",)``.
        what: Kind of file, for the message (``"Faust DSP"``).

    Returns:
        Path of the file.

    Raises:
        PluginError: nothing matches; the message lists every place tried.
    """
    found, tried = resolve_plugin_asset(path, tuple(subdirs))
    if found is None:
        raise PluginError(f"{what} {str(path)!r} not found; tried: {', '.join(str(t) for t in tried)}")
    return found


def _default_scale(unit: str, lo: float, hi: float) -> str:
    return "log" if unit.strip().lower() in LOG_UNITS and lo > 0 and hi / lo >= 10 else "linear"


def _param_from(dp: DiscoveredParam, ov: Mapping[str, Any], where: str) -> Param:
    vm = dp.value_map
    assert vm is not None
    name = str(ov.get("name", dp.name))
    unit = str(ov.get("unit", dp.unit))
    values = None
    if "values" in ov:
        values = tuple(sorted(float(v) for v in ov["values"]))
        bad = [v for v in values if v < vm.min - 1e-9 or v > vm.max + 1e-9 or (vm.discrete and v not in vm.values)]
        if bad:
            allowed = vm.values if vm.discrete else f"[{vm.min}, {vm.max}]"
            raise ParameterError(f"{where}: parameter {dp.key!r}: values {bad} are not valid plugin values {allowed}")
    elif vm.discrete:
        values = vm.values
    lo = float(ov.get("min", vm.min))
    hi = float(ov.get("max", vm.max))
    if values is None and (lo < vm.min - 1e-9 * max(1.0, abs(vm.min)) or hi > vm.max + 1e-9 * max(1.0, abs(vm.max))):
        raise ParameterError(
            f"{where}: parameter {dp.key!r}: range [{lo}, {hi}] must lie inside the plugin's "
            f"[{vm.min}, {vm.max}] {dp.unit}"
        )
    if values is not None and ("min" in ov or "max" in ov):
        values = tuple(v for v in values if lo <= v <= hi)
    if values is not None:
        suggested = "linear"
    elif dp.scale == "log" and lo > 0:
        suggested = "log"
    else:
        suggested = _default_scale(unit, lo, hi)
    scale = str(ov.get("scale", suggested))
    if values is not None:
        default = float(ov.get("default", min(values, key=lambda v: abs(v - dp.current))))
    else:
        default = float(ov.get("default", min(hi, max(lo, dp.current))))
    try:
        return Param(name=name, min=lo, max=hi, default=default, unit=unit, scale=scale, values=values)
    except ParameterError as exc:
        raise ParameterError(f"{where}: parameter {dp.key!r}: {exc}") from None


def build_table(
    discovered: Sequence[DiscoveredParam],
    param_map: ParamMap | None = None,
    exclude: Iterable[str] = (),
    plugin_label: str = "plugin",
) -> tuple[ParamTable, list[SelectedParam]]:
    """Select, rename and range the discovered parameters (module docstring, rules 1–5).

    Args:
        discovered: Parameters in the plugin's order.
        param_map: Optional overrides and selection.
        exclude: Extra names (plugin or sanitized) to drop.
        plugin_label: Used in error messages.

    Returns:
        ``(table, selected)``: the table in plugin units and, per entry, its binding.

    Raises:
        ParameterError: a map entry or an ``exclude`` name matches no parameter
            (the message lists the known names), or an override is invalid.
    """
    pm = param_map or ParamMap()
    where = f"{plugin_label}" + (f" (map {pm.path})" if pm.path else "")
    by_name: dict[str, DiscoveredParam] = {}
    for dp in discovered:
        by_name.setdefault(dp.key, dp)
        by_name.setdefault(dp.name, dp)
    known = ", ".join(dp.key if dp.key == dp.name else f"{dp.key} ({dp.name})" for dp in discovered)
    drop = set(exclude) | set(pm.exclude)
    for n in list(drop) + list(pm.params):
        if n not in by_name:
            raise ParameterError(f"{where}: no plugin parameter named {n!r}; known parameters: {known}")
    dropped = {id(by_name[n]) for n in drop}

    def usable(dp: DiscoveredParam) -> bool:
        if id(dp) in dropped or dp.value_map is None:
            return False
        return not excluded_by_rules(dp.key, dp.name, dp.automatable)

    if pm.only_listed:
        chosen = [by_name[k] for k in pm.params]
        for dp in chosen:
            if dp.value_map is None:
                raise ParameterError(f"{where}: parameter {dp.key!r} has no usable range (its display never changes)")
            if id(dp) in dropped:
                raise ParameterError(f"{where}: parameter {dp.key!r} is both listed and excluded")
    else:
        chosen = [dp for dp in discovered if usable(dp)]
        chosen += [by_name[k] for k in pm.params if not usable(by_name[k]) and by_name[k].value_map is not None
                   and id(by_name[k]) not in dropped]
    overrides = {id(by_name[k]): v for k, v in pm.params.items()}
    selected = [SelectedParam(_param_from(dp, overrides.get(id(dp), {}), where), dp) for dp in chosen]
    try:
        table = ParamTable(tuple(s.param for s in selected))
    except ParameterError as exc:
        raise ParameterError(f"{where}: {exc} (rename one of them in the parameter map)") from None
    return table, selected


def describe_labels(selected: Sequence[SelectedParam]) -> str:
    """Lines listing the display labels of text-valued (enum) parameters: ``name: 0=Peak 1=RMS``."""
    lines = []
    for s in selected:
        labels = s.source.value_map.labels if s.source.value_map else None
        if labels:
            shown = [f"{int(v)}={labels[int(v)]}" for v in (s.param.values or ())]
            lines.append(f"{s.param.name}: " + " ".join(shown))
    return "\n".join(lines)


__all__ = [
    "DiscoveredParam",
    "HOST_PARAMETERS",
    "METER_NAME_PATTERN",
    "ParamMap",
    "SelectedParam",
    "ValueMap",
    "build_table",
    "describe_labels",
    "excluded_by_rules",
    "is_meter_name",
    "parse_number",
    "resolve_asset",
    "sanitize_name",
    "unique_names",
]
