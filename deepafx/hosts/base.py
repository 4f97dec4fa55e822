"""The hosting interface: one :class:`Processor` API over several plugin backends.

A processor instance lives in exactly one process (normally a render worker, see
:mod:`deepafx.workers`). It is *stateful*: consecutive :meth:`Processor.process`
calls continue the same signal (compressor envelopes, filter states, reverb
tails persist) until :meth:`Processor.reset`.

Backends register themselves by name with :func:`register_backend`; a
:class:`ProcessorSpec` (picklable, declarative: backend name + options) is turned
into a live instance by :func:`build_processor` inside the process that uses it.
No backend is selected by if/elif on strings: the registry is the single lookup.
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from deepafx.params import ParamTable, ParameterError


class PluginError(RuntimeError):
    """A plugin is missing, cannot be loaded, or misbehaved while rendering."""


class NonFiniteOutputError(PluginError):
    """A processor rendered NaN/Inf samples (often at parameter values where its DSP is undefined).

    Args:
        message: What rendered them.
        output: The rendered block ``(channels_out, samples)`` float32, NaN/Inf included
            (kept as :attr:`output`).
    """

    def __init__(self, message: str, output: np.ndarray | None = None):
        super().__init__(message)
        self.output = output


class AudioError(ValueError):
    """Audio has the wrong shape, channel count or sample rate, or holds NaN/Inf."""


@dataclass(frozen=True)
class ProcessorSpec:
    """Declarative, picklable description of one processor in a chain.

    Args:
        backend: Registered backend name, e.g. ``"pedalboard.Compressor"``,
            ``"vst3"``, ``"dawdreamer"``, ``"faust"``, ``"dexed"``
            (``deepafx plugins`` lists them).
        name: Unique name of this processor inside its chain (prefix of its
            parameter names, e.g. ``"comp"`` → ``"comp.threshold_db"``).
        options: Backend options (plugin path, Faust code, mono-only flag …).
        learn: Names of the parameters the network predicts, in order;
            ``None`` means every parameter of the table.
        fixed: ``{name: plugin value}`` for parameters held constant (not learned);
            parameters neither learned nor fixed stay at their default.
        ranges: ``{name: (min, max)}`` narrowing of learned parameter ranges.
    """

    backend: str
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    learn: tuple[str, ...] | None = None
    fixed: Mapping[str, float] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ProcessorSpec":
        """Build from a config mapping ``{backend, name, options?, learn?, fixed?, ranges?}``.

        Raises:
            ValueError: on missing or unknown keys.
        """
        known = {"backend", "name", "options", "learn", "fixed", "ranges"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"processor entry has unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
        for key in ("backend", "name"):
            if key not in d:
                raise ValueError(f"processor entry {dict(d)} lacks {key!r}")
        learn = d.get("learn")
        return cls(
            backend=str(d["backend"]),
            name=str(d["name"]),
            options=dict(d.get("options") or {}),
            learn=None if learn is None else tuple(learn),
            fixed={k: float(v) for k, v in (d.get("fixed") or {}).items()},
            ranges={k: (float(v[0]), float(v[1])) for k, v in (d.get("ranges") or {}).items()},
        )


class Processor(abc.ABC):
    """A live, stateful audio processor (effect or instrument) in one backend.

    Subclasses set ``param_table``, ``sample_rate``, ``num_input_channels``,
    ``num_output_channels`` and implement :meth:`_render` and :meth:`reset`.
    The public :meth:`process` validates, applies parameter values and
    guarantees the output has exactly as many samples as the input.

    Attributes:
        param_table: Ordered table of the processor's parameters (plugin units).
        sample_rate: Rate in Hz the processor runs at.
        num_input_channels: Channels the processor accepts (``None``: any);
            :meth:`process` rejects other counts. Backends hosting mono-only
            plugins declare ``None`` and run one internal instance per channel
            (documented in the backend).
        latency_samples: Reported latency in samples (0 if unknown). Output
            sample ``t`` reflects input sample ``t - latency_samples``.
        is_instrument: True for synthesizers (input audio only sets length).
        fusable_board: A pedalboard plugin object (``Pedalboard``, ``Mix`` or one
            plugin) that renders exactly what :meth:`_render` renders, with this
            processor's state and parameters, or ``None``. A
            :class:`~deepafx.chain.Chain` renders consecutive processors that have
            one in a single pedalboard call (one Python round trip and one buffer
            conversion instead of one per processor).
    """

    param_table: ParamTable
    sample_rate: float
    num_input_channels: int | None = None
    latency_samples: int = 0
    is_instrument: bool = False
    fusable_board: Any = None

    def __init__(self) -> None:
        self._pending: np.ndarray | None = None  # output FIFO for plugins that return fewer samples

    # -- to implement -------------------------------------------------------
    @abc.abstractmethod
    def set_values(self, values: np.ndarray) -> None:
        """Apply plugin values ``(num_params,)`` in plugin units (already validated)."""

    @abc.abstractmethod
    def _render(self, audio: np.ndarray) -> np.ndarray:
        """Render ``(channels, samples)`` float32, continuing the internal state.

        May return fewer samples than given (latency); :meth:`process` pads.
        """

    @abc.abstractmethod
    def reset(self) -> None:
        """Clear all internal state (envelopes, filters, tails, latency buffers)."""

    # -- provided -----------------------------------------------------------
    def process(self, audio: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        """Process one block, keeping state from previous blocks.

        Args:
            audio: ``(channels, samples)`` float32 at ``sample_rate`` Hz.
            values: Plugin values ``(num_params,)`` in plugin units, or ``None``
                to keep the current ones.

        Returns:
            ``(channels_out, samples)`` float32: always as many samples as the
            input. When the plugin returns fewer samples (latency), the missing
            samples come first as zeros and the rest is carried to the next call,
            so consecutive blocks concatenate to the one-shot output.

        Raises:
            AudioError: wrong rank, NaN/Inf, or a channel count the plugin cannot take.
            ParameterError: values of the wrong size or out of range.
        """
        audio = check_audio(audio, self.num_input_channels)
        if values is not None:
            values = np.asarray(values, dtype=np.float64)
            self.param_table.normalize(values)  # validates, names the parameter
        return self.render_block(audio, values)

    def render_block(self, audio: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        """:meth:`process` for callers that validated ``audio`` and ``values`` already.

        :class:`~deepafx.chain.Chain` checks the audio once at its input and maps
        normalized parameters into range itself, so it skips the per-processor
        checks. The channel count, the output length and finite output are still
        guaranteed here.

        Args:
            audio: ``(channels, samples)`` contiguous float32 without NaN/Inf.
            values: ``(num_params,)`` float64 plugin values inside the table's
                ranges, or ``None`` to keep the current ones.

        Returns:
            ``(channels_out, samples)`` float32, as :meth:`process`.

        Raises:
            AudioError: a channel count the plugin cannot take.
            NonFiniteOutputError: NaN/Inf output (a :class:`PluginError`; the block is attached).
        """
        if self.num_input_channels is not None and audio.shape[0] != self.num_input_channels:
            raise AudioError(f"processor takes {self.num_input_channels} channel(s), got {audio.shape[0]}")
        if values is not None:
            self.set_values(values)
        out, self._pending = fit_length(self._render(audio), audio.shape[-1], self._pending)
        if not np.all(np.isfinite(out)):
            raise NonFiniteOutputError(f"{type(self).__name__} produced NaN/Inf output", out)
        return out

    def clear_pending(self) -> None:
        self._pending = None


def fit_length(out: np.ndarray, num_samples: int, pending: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Give a rendered block exactly ``num_samples`` samples, streaming what a plugin delays.

    A plugin with latency may return fewer samples than it was given: the
    missing ones come first as zeros, and what it returns beyond a block later is
    carried to the next call, so consecutive blocks concatenate to the one-shot
    output.

    Args:
        out: The plugin's output ``(channels_out, samples_out)`` (or ``(samples_out,)`` for mono).
        num_samples: Samples of the input block.
        pending: Samples carried from the previous call ``(channels_out, k)``, or ``None``.

    Returns:
        ``(block, pending)``: ``(channels_out, num_samples)`` contiguous float32 and what to carry next.
    """
    out = np.asarray(out, dtype=np.float32)
    if out.ndim == 1:
        out = out[None]
    if pending is not None:
        out = np.concatenate([pending, out], axis=-1)
        pending = None
    if out.shape[-1] < num_samples:
        pad = np.zeros((out.shape[0], num_samples - out.shape[-1]), dtype=np.float32)
        out = np.concatenate([pad, out], axis=-1)
    elif out.shape[-1] > num_samples:
        pending = out[:, num_samples:].copy()
        out = out[:, :num_samples]
    return np.ascontiguousarray(out), pending


def check_audio(audio: np.ndarray, num_channels: int | None = None) -> np.ndarray:
    """Validate ``(channels, samples)`` audio and return it as contiguous float32.

    Raises:
        AudioError: not 2-D, empty, NaN/Inf, or a channel count other than ``num_channels``.
    """
    audio = np.asarray(audio)
    if audio.ndim != 2:
        raise AudioError(f"audio must be (channels, samples), got shape {audio.shape}")
    if audio.shape[-1] == 0:
        raise AudioError("audio has no samples")
    if num_channels is not None and audio.shape[0] != num_channels:
        raise AudioError(f"processor takes {num_channels} channel(s), got {audio.shape[0]}")
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if not np.all(np.isfinite(audio)):
        raise AudioError("audio contains NaN or Inf")
    return audio


BackendFactory = Callable[[ProcessorSpec, float], Processor]
_BACKENDS: dict[str, BackendFactory] = {}
# Modules that register backends on import; imported lazily so a missing optional
# host library (dawdreamer, dexed) only matters when that backend is used.
_BACKEND_MODULES = (
    "deepafx.hosts.builtin",
    "deepafx.hosts.vst3",
    "deepafx.hosts.dawdreamer_host",
    "deepafx.hosts.dawdreamer_instrument",
    "deepafx.hosts.dexed_host",
    "deepafx.hosts.lv2",
    "deepafx.hosts.testing",
)
# Backends by name prefix whose module is imported only when such a backend is asked for (torch for
# ``ddsp.``: a render worker that hosts plugins only does not load it).
_PREFIX_MODULES = {"ddsp.": "deepafx.ddsp"}


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    """Decorator registering ``factory(spec, sample_rate) -> Processor`` under ``name``."""

    def deco(factory: BackendFactory) -> BackendFactory:
        _BACKENDS[name] = factory
        return factory

    return deco


def _load_backend_modules(backend: str | None = None) -> list[str]:
    """Import the backend modules (and the prefix module of ``backend``, or every one when ``None``)."""
    errors = []
    extra = [m for prefix, m in _PREFIX_MODULES.items() if backend is None or backend.startswith(prefix)]
    for mod in (*_BACKEND_MODULES, *extra):
        try:
            importlib.import_module(mod)
        except ImportError as exc:  # optional host library absent
            errors.append(f"{mod}: {exc}")
    return errors


def available_backends() -> list[str]:
    """Names of all registered backends (importing the backend modules)."""
    _load_backend_modules()
    return sorted(_BACKENDS)


def build_processor(spec: ProcessorSpec, sample_rate: float) -> Processor:
    """Instantiate ``spec`` in the current process.

    Raises:
        PluginError: unknown backend (lists known ones and import failures) or
            a plugin that fails to load.
    """
    if spec.backend not in _BACKENDS:
        errors = _load_backend_modules(spec.backend)
    if spec.backend not in _BACKENDS:
        msg = f"unknown backend {spec.backend!r} for processor {spec.name!r}; known: {', '.join(sorted(_BACKENDS))}"
        if errors:
            msg += "; backend modules that failed to import: " + "; ".join(errors)
        raise PluginError(msg)
    return _BACKENDS[spec.backend](spec, float(sample_rate))


__all__ = [
    "AudioError",
    "NonFiniteOutputError",
    "ParameterError",
    "PluginError",
    "Processor",
    "ProcessorSpec",
    "available_backends",
    "build_processor",
    "check_audio",
    "fit_length",
    "register_backend",
]
