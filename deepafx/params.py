"""Parameter tables: the bridge between normalized network outputs and plugin values.

Every hosted processor declares an ordered :class:`ParamTable` of :class:`Param`
entries (name with unit, min, max, default, unit, scale, discrete values). The
network only ever sees normalized values on ``[0, 1]``; :meth:`ParamTable.denormalize`
maps them to the plugin's own values and :meth:`ParamTable.normalize` maps back.
Both validate their input and name the offending parameter on error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Iterable, Mapping, Sequence

import numpy as np

SCALES = ("linear", "log")

#: Normalized values may exceed [0, 1] by this much (float rounding) before we raise.
NORMALIZED_TOLERANCE = 1e-5


class ParameterError(ValueError):
    """A parameter name, value or range is invalid. The message names the parameter."""


@dataclass(frozen=True)
class Param:
    """One plugin parameter.

    Args:
        name: Parameter name, carrying its unit where it has one (``threshold_db``).
        min: Smallest plugin value (in ``unit``).
        max: Largest plugin value (in ``unit``); must be ``> min`` unless the
            parameter is discrete with a single value.
        default: Plugin value used when nothing else is given; within ``[min, max]``.
        unit: Unit label (``"dB"``, ``"ms"``, ``"Hz"``, ``""`` for unitless).
        scale: ``"linear"`` or ``"log"``; with ``"log"`` a normalized step is a
            constant ratio (``min`` must be ``> 0``).
        values: For discrete parameters, the allowed plugin values in ascending
            order. Normalized ``x`` selects ``values[round(x * (len(values) - 1))]``.

    Raises:
        ParameterError: if the declaration is inconsistent.
    """

    name: str
    min: float
    max: float
    default: float
    unit: str = ""
    scale: str = "linear"
    values: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ParameterError(f"{self.name}: scale must be one of {SCALES}, got {self.scale!r}")
        if self.values is not None:
            vals = tuple(float(v) for v in self.values)
            if len(vals) == 0:
                raise ParameterError(f"{self.name}: discrete values must not be empty")
            if any(b <= a for a, b in zip(vals, vals[1:])):
                raise ParameterError(f"{self.name}: discrete values must be strictly ascending")
            object.__setattr__(self, "values", vals)
            object.__setattr__(self, "min", vals[0])
            object.__setattr__(self, "max", vals[-1])
        if not (math.isfinite(self.min) and math.isfinite(self.max)):
            raise ParameterError(f"{self.name}: min and max must be finite")
        if self.max < self.min or (self.max == self.min and self.values is None):
            raise ParameterError(f"{self.name}: need min < max, got [{self.min}, {self.max}]")
        if self.scale == "log" and self.min <= 0:
            raise ParameterError(f"{self.name}: log scale needs min > 0, got {self.min}")
        if not (self.min <= self.default <= self.max):
            raise ParameterError(
                f"{self.name}: default {self.default} {self.unit} outside [{self.min}, {self.max}]"
            )

    @property
    def is_discrete(self) -> bool:
        return self.values is not None

    @property
    def num_values(self) -> int | None:
        """Number of discrete values, or ``None`` for continuous parameters."""
        return None if self.values is None else len(self.values)

    def from_normalized(self, x: np.ndarray | float) -> np.ndarray:
        """Map normalized ``x`` on [0, 1] to plugin values (no range check; see ParamTable)."""
        x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
        if self.values is not None:
            idx = np.rint(x * (len(self.values) - 1)).astype(np.int64)
            return np.asarray(self.values, dtype=np.float64)[idx]
        if self.scale == "log":
            return self.min * (self.max / self.min) ** x
        return self.min + x * (self.max - self.min)

    def to_normalized(self, value: np.ndarray | float) -> np.ndarray:
        """Map plugin values to [0, 1]; discrete values snap to the nearest allowed one."""
        v = np.asarray(value, dtype=np.float64)
        if self.values is not None:
            vals = np.asarray(self.values)
            idx = np.abs(v[..., None] - vals).argmin(axis=-1)
            return idx / max(len(vals) - 1, 1)
        if self.scale == "log":
            return np.log(v / self.min) / math.log(self.max / self.min)
        return (v - self.min) / (self.max - self.min)

    def describe(self) -> str:
        rng = (
            f"{{{', '.join(f'{v:g}' for v in self.values)}}}"
            if self.values is not None and len(self.values) <= 8
            else f"[{self.min:g}, {self.max:g}]"
        )
        kind = f"{len(self.values)} values" if self.values is not None else self.scale
        return f"{self.name:<28} {rng:<24} default {self.default:<10g} {self.unit:<5} {kind}"


@dataclass(frozen=True)
class _VectorMap:
    """Arrays of a :class:`ParamTable`: ``mins``, ``spans`` (max − min), ``log`` mask, ``ratios`` (max / min
    where log) and ``discrete`` ``(index, allowed values)`` pairs."""

    mins: np.ndarray
    spans: np.ndarray
    log: np.ndarray
    ratios: np.ndarray
    discrete: tuple[tuple[int, np.ndarray], ...]


@dataclass(frozen=True)
class ParamTable:
    """An ordered table of :class:`Param` for one processor (or a whole chain).

    Args:
        params: The parameters, in the order of the normalized vector.

    Raises:
        ParameterError: on duplicate names.
    """

    params: tuple[Param, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(self.params))
        names = [p.name for p in self.params]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ParameterError(f"duplicate parameter names: {sorted(dup)}")

    def __len__(self) -> int:
        return len(self.params)

    def __iter__(self):
        return iter(self.params)

    def __getitem__(self, key: int | str) -> Param:
        if isinstance(key, str):
            return self.params[self.index(key)]
        return self.params[key]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def index(self, name: str) -> int:
        """Position of ``name``; raises :class:`ParameterError` listing the known names."""
        for i, p in enumerate(self.params):
            if p.name == name:
                return i
        raise ParameterError(f"unknown parameter {name!r}; known parameters: {', '.join(self.names)}")

    def defaults(self) -> np.ndarray:
        """Default plugin values, shape ``(num_params,)``."""
        return np.array([p.default for p in self.params], dtype=np.float64)

    def defaults_normalized(self) -> np.ndarray:
        """Default values normalized to [0, 1], shape ``(num_params,)``."""
        return self.normalize(self.defaults())

    def denormalize(self, x: np.ndarray | Sequence[float]) -> np.ndarray:
        """Normalized ``(..., num_params)`` on [0, 1] → plugin values ``(..., num_params)``.

        Raises:
            ParameterError: wrong last dimension, NaN/Inf, or a value outside
                [0, 1] (beyond a 1e-5 tolerance); the message names the parameter.
        """
        x = np.asarray(x, dtype=np.float64)
        if x.shape[-1:] != (len(self),):
            raise ParameterError(f"expected {len(self)} normalized parameters, got shape {x.shape}")
        bad = ~np.isfinite(x) | (x < -NORMALIZED_TOLERANCE) | (x > 1 + NORMALIZED_TOLERANCE)
        if bad.any():
            j = int(np.argwhere(bad.reshape(-1, len(self)).any(0))[0, 0])
            v = x[..., j][bad[..., j]].reshape(-1)[0]
            raise ParameterError(
                f"parameter {self.params[j].name!r}: normalized value {v} is not a finite number in [0, 1]"
            )
        m = self._mapping
        xc = np.clip(x, 0.0, 1.0)
        out = m.mins + xc * m.spans  # linear parameters, as Param.from_normalized
        if m.log.any():
            out[..., m.log] = m.mins[m.log] * m.ratios[m.log] ** xc[..., m.log]
        for j, vals in m.discrete:
            out[..., j] = vals[np.rint(xc[..., j] * (len(vals) - 1)).astype(np.int64)]
        return out

    @cached_property
    def _mapping(self) -> "_VectorMap":
        """The table's ranges as arrays, so :meth:`denormalize` maps every parameter in a few vector operations."""
        mins = np.array([p.min for p in self.params], dtype=np.float64)
        maxs = np.array([p.max for p in self.params], dtype=np.float64)
        log = np.array([p.scale == "log" and p.values is None for p in self.params], dtype=bool)
        ratios = np.where(log, maxs / np.where(log, mins, 1.0), 1.0)
        discrete = tuple((j, np.asarray(p.values, dtype=np.float64)) for j, p in enumerate(self.params) if p.values is not None)
        return _VectorMap(mins, maxs - mins, log, ratios, discrete)

    def normalize(self, values: np.ndarray | Sequence[float]) -> np.ndarray:
        """Plugin values ``(..., num_params)`` → normalized ``(..., num_params)`` on [0, 1].

        Raises:
            ParameterError: wrong last dimension, NaN/Inf or a value outside the
                parameter's [min, max]; the message names the parameter and its range.
        """
        v = np.asarray(values, dtype=np.float64)
        if v.shape[-1:] != (len(self),):
            raise ParameterError(f"expected {len(self)} parameter values, got shape {v.shape}")
        out = np.empty_like(v)
        for j, p in enumerate(self.params):
            col = v[..., j]
            span = (p.max - p.min) * 1e-6
            if not np.all(np.isfinite(col)) or np.any(col < p.min - span) or np.any(col > p.max + span):
                bad = col[~np.isfinite(col) | (col < p.min - span) | (col > p.max + span)].reshape(-1)[0]
                raise ParameterError(
                    f"parameter {p.name!r}: value {bad} {p.unit} outside [{p.min}, {p.max}]"
                )
            out[..., j] = p.to_normalized(np.clip(col, p.min, p.max))
        return np.clip(out, 0.0, 1.0)

    def values_from_mapping(self, values: Mapping[str, float], base: np.ndarray | None = None) -> np.ndarray:
        """Plugin values from ``{name: value}``; unnamed parameters keep ``base`` (default: defaults).

        Raises:
            ParameterError: unknown name or out-of-range value.
        """
        out = self.defaults() if base is None else np.array(base, dtype=np.float64)
        for name, value in values.items():
            out[self.index(name)] = float(value)
        self.normalize(out)  # validates ranges
        return out

    def narrowed(self, ranges: Mapping[str, tuple[float, float]]) -> "ParamTable":
        """A copy where each named parameter has the narrower range ``(min, max)``.

        The default is clipped into the new range. Discrete parameters keep the
        allowed values that fall inside the range.

        Raises:
            ParameterError: unknown name, or a range not inside the declared one.
        """
        params = list(self.params)
        for name, (lo, hi) in ranges.items():
            i = self.index(name)
            p = params[i]
            if lo < p.min or hi > p.max or lo >= hi:
                raise ParameterError(
                    f"parameter {name!r}: narrowed range [{lo}, {hi}] must lie inside [{p.min}, {p.max}] with min < max"
                )
            if p.values is not None:
                vals = tuple(v for v in p.values if lo <= v <= hi)
                if not vals:
                    raise ParameterError(f"parameter {name!r}: no discrete value inside [{lo}, {hi}]")
                default = min(vals, key=lambda v: abs(v - p.default))
                params[i] = replace(p, values=vals, default=default)
            else:
                params[i] = replace(p, min=float(lo), max=float(hi), default=float(np.clip(p.default, lo, hi)))
        return ParamTable(tuple(params))

    def subset(self, names: Iterable[str]) -> "ParamTable":
        """A table with only ``names``, in the given order."""
        return ParamTable(tuple(self[n] for n in names))

    def prefixed(self, prefix: str) -> "ParamTable":
        """A copy with every name prefixed ``f"{prefix}.{name}"``."""
        return ParamTable(tuple(replace(p, name=f"{prefix}.{p.name}") for p in self.params))

    def describe(self) -> str:
        return "\n".join(p.describe() for p in self.params)
