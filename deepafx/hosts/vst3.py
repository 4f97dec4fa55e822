"""Backend ``"vst3"``: any VST3 effect hosted by pedalboard.

Options (``ProcessorSpec.options``):

* ``path`` (required): a ``.vst3`` bundle — an absolute path, a path relative to
  the working directory, or a bare name (``ZamCompX2`` / ``ZamCompX2.vst3``)
  looked up in ``/usr/lib/vst3``, ``/usr/local/lib/vst3`` and ``~/.vst3``.
* ``param_map``: a parameter-map YAML (:class:`~deepafx.hosts.plugin_params.ParamMap`);
  relative names are tried from the working directory, then in the packaged plugin
  folder and its ``param_maps/`` (:func:`~deepafx.hosts.plugin_params.resolve_asset`).
* ``exclude``: plugin parameter names to leave out of the table.
* ``channels`` (default 2): for mono-only plugins, how many independent
  instances to hold (one per input channel).

Parameter table: derived from the plugin's own parameters (pedalboard's sampled
``parameter.ranges``: real units, discrete values, booleans), minus host
pseudo-parameters, non-automatable outputs and meters (rules in
:mod:`deepafx.hosts.plugin_params`), then the parameter map.

Setting values: each table entry keeps the plugin's native parameter handle and
a :class:`~deepafx.hosts.plugin_params.ValueMap` built at load, so a set is one
lookup plus one ``raw_value`` write (about 0.4 µs; the same write through
pedalboard's Python wrapper costs about 4.6 µs and ``setattr(plugin, name, v)``
about 100 µs), and values that did not change since the last call are not
written. Measured ``set_values`` with every value changed: 8 µs for ZamCompX2's
9 parameters, 76 µs for ZamGEQ31's 30 parameters on two instances.

State and latency: blocks are processed with ``reset=False``, so state carries
from block to block (each instance is prepared once for the largest host block,
:data:`BUFFER_SIZE`, because pedalboard re-prepares a plugin on a longer call and
DPF plugins clear their state when re-prepared); :meth:`VST3Processor.reset`
calls the plugin's ``reset()``.
A plugin that reports latency (ZaMaximX2: 480 samples at 44.1 kHz) delays its
output: output sample ``t`` reflects input sample ``t - latency_samples``
(``latency_samples`` is set from pedalboard's ``reported_latency_samples``), and
consecutive blocks concatenate to the one-shot output. Each instance is primed
with one silent block after load and after every reset, so the delay line holds
silence and every call returns as many samples as it was given.

Channels: a plugin that only accepts one channel (most Zam ``*.vst3`` without
``X2``) is run as one instance per input channel, each with its own state; a
plugin that only accepts two channels declares ``num_input_channels = 2``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from deepafx.hosts.base import AudioError, PluginError, Processor, ProcessorSpec, register_backend
from deepafx.hosts.fpenv import float_env_guard
from deepafx.hosts.plugin_params import MAX_DISCRETE_VALUES, DiscoveredParam, ParamMap, ValueMap, build_table

#: Folders searched for a bare plugin name.
VST3_DIRS = (Path("/usr/lib/vst3"), Path("/usr/local/lib/vst3"), Path.home() / ".vst3")

#: VST3 bundles known to hang while loading (pedalboard and dawdreamer alike), with
#: what to use instead (key: lower-case bundle stem).
REFUSED = {
    "zamverb": "ZamVerb.vst3 hangs while loading in pedalboard; use its VST2 build through the "
    "'dawdreamer' backend instead: {backend: dawdreamer, options: {path: /usr/lib/vst/ZamVerb-vst.so}}",
}

#: Host block size in samples. pedalboard re-prepares a plugin whenever a call is
#: longer than every earlier one (up to this size), and DPF plugins (all Zam ones)
#: clear their state when re-prepared; so each instance is prepared once with a
#: full block at load and every call uses this same size.
BUFFER_SIZE = 8192

#: Raw-value resolution of pedalboard's parameter-range search (its ``search_steps``).
PEDALBOARD_SEARCH_STEPS = 1000

OPTIONS = frozenset({"path", "param_map", "exclude", "channels"})

# pedalboard/JUCE plugin creation is serialized within a process.
_LOAD_LOCK = threading.Lock()


def find_vst3(path: str | Path) -> Path:
    """Resolve a VST3 bundle path or bare name.

    Raises:
        PluginError: the bundle is nowhere to be found (lists each place tried
            and how to install the Zam plugins), or it is a known-bad plugin.
    """
    p = Path(path).expanduser()
    tried = [p]
    if not p.is_absolute() and len(p.parts) == 1:
        names = [p.name] if p.suffix == ".vst3" else [p.name + ".vst3", p.name]
        tried += [d / n for d in VST3_DIRS for n in names]
    found = next((c for c in tried if c.exists()), None)
    if found is None:
        raise PluginError(
            f"VST3 plugin {str(path)!r} not found; tried: {', '.join(map(str, tried))}. "
            "Give an existing .vst3 path, or install the plugins "
            "(Debian: apt-get install -y --no-install-recommends zam-plugins)."
        )
    check_not_refused(found)
    return found


def check_not_refused(path: Path) -> None:
    """Raise :class:`PluginError` for a VST3 bundle in :data:`REFUSED` (hangs in any JUCE host here)."""
    stem = path.name.split(".")[0].lower()
    if path.suffix == ".vst3" and stem in REFUSED:
        raise PluginError(f"refusing to load {path}: {REFUSED[stem]}")


def _load(path: Path) -> Any:
    import pedalboard

    with _LOAD_LOCK, float_env_guard():
        try:
            return pedalboard.VST3Plugin(str(path))
        except Exception as exc:  # pedalboard raises ImportError/RuntimeError with its reason
            raise PluginError(f"pedalboard could not load VST3 plugin {path}: {exc}") from exc


def _accepts(plugin: Any, channels: int, sample_rate: float) -> bool:
    try:
        plugin.process(np.zeros((channels, 64), np.float32), sample_rate, reset=True)
        return True
    except Exception as exc:
        if "support" in str(exc) and "channel" in str(exc):
            return False
        raise PluginError(f"plugin failed to process {channels} channel(s) of silence: {exc}") from exc


def _discover(plugin: Any) -> list[DiscoveredParam]:
    out = []
    for key, par in plugin.parameters.items():
        # pedalboard samples raw values in steps of 1/SEARCH_STEPS; each range ends where
        # the next begins, so its last sampled raw value is one step before that.
        ranges = sorted(par.ranges.items())
        intervals = [
            (lo, lo if j + 1 == len(ranges) else max(lo, ranges[j + 1][0][0] - 1.0 / PEDALBOARD_SEARCH_STEPS), v)
            for j, ((lo, _), v) in enumerate(ranges)
        ]
        steps = int(par.num_steps)
        vm = ValueMap.from_intervals(intervals, max(MAX_DISCRETE_VALUES, steps if steps <= 128 else 0))
        unit = (par.units or "").strip() if isinstance(par.units, str) else ""
        current = vm.to_value(par.raw_value) if vm is not None else 0.0
        out.append(
            DiscoveredParam(
                key=key,
                name=key,
                unit=unit,
                value_map=vm,
                current=current,
                handle=key,
                automatable=bool(getattr(par, "is_automatable", True)),
            )
        )
    return out


class VST3Processor(Processor):
    """A VST3 effect in pedalboard (see the module docstring for options and behaviour).

    Args:
        path: ``.vst3`` bundle path or bare name.
        sample_rate: Processing rate in Hz.
        param_map: Optional parameter-map YAML path.
        exclude: Plugin parameter names to leave out.
        channels: Instances to hold for a mono-only plugin (one per channel).

    Attributes:
        path: The resolved bundle path.
        bindings: One :class:`~deepafx.hosts.plugin_params.SelectedParam` per
            table entry (the plugin parameter behind it and its value map).
        mono_only: True when the plugin takes one channel (one instance per channel).

    Raises:
        PluginError: missing or refused plugin, load failure, instrument plugin.
        ParameterError: a parameter map or ``exclude`` entry that does not fit the plugin.
    """

    def __init__(
        self,
        path: str | Path,
        sample_rate: float,
        param_map: str | Path | None = None,
        exclude: tuple[str, ...] | list[str] = (),
        channels: int = 2,
    ) -> None:
        super().__init__()
        if int(channels) < 1:
            raise PluginError(f"option channels must be >= 1, got {channels}")
        self.path = find_vst3(path)
        self.sample_rate = float(sample_rate)
        first = _load(self.path)
        if first.is_instrument:
            raise PluginError(
                f"{self.path} is an instrument; backend 'vst3' hosts effects only. "
                "Host synthesizers with backend 'dawdreamer' (VST2/VST3) or 'dexed'."
            )
        stereo, mono = _accepts(first, 2, self.sample_rate), _accepts(first, 1, self.sample_rate)
        if not (stereo or mono):
            raise PluginError(f"{self.path} accepts neither 1 nor 2 input channels")
        self.mono_only = mono and not stereo
        self.num_input_channels = 2 if (stereo and not mono) else None
        self._instances = [first] + [_load(self.path) for _ in range(int(channels) - 1 if self.mono_only else 0)]
        pm = ParamMap.load(param_map) if param_map else None
        self.param_table, self.bindings = build_table(
            _discover(first), pm, tuple(exclude), plugin_label=f"VST3 {self.path.name}"
        )
        self._maps = [s.value_map for s in self.bindings]
        self._values = self.param_table.defaults()
        self._bind()
        self.reset()
        self.latency_samples = int(first.reported_latency_samples)

    def _bind(self) -> None:
        """Cache each selected parameter's native handle per instance and send every value.

        The handles are pedalboard's C++ parameter objects (``_get_parameter``):
        writing ``raw_value`` on them costs about 0.4 µs, against about 4.6 µs
        through the Python wrapper. They stay valid until the plugin is
        re-instantiated, which pedalboard's ``reset()`` does for plugins whose
        reload type is not ``ClearsAudioOnReset``; :meth:`reset` re-binds then.
        """
        self._handles = [
            [inst._get_parameter(inst.parameters[s.source.key].name) for inst in self._instances]
            for s in self.bindings
        ]
        self._raw = [float("nan")] * len(self.bindings)
        self.set_values(self._values)

    @property
    def num_instances(self) -> int:
        """Plugin instances held: ``channels`` for mono-only plugins, else 1."""
        return len(self._instances)

    def set_values(self, values: np.ndarray) -> None:
        """Apply plugin values ``(num_params,)``; unchanged values are not re-sent."""
        self._values = np.array(values, dtype=np.float64)
        raw = self._raw
        for k, (vmap, handles) in enumerate(zip(self._maps, self._handles)):
            r = vmap.to_raw(values[k])
            if r != raw[k]:
                for h in handles:
                    h.raw_value = r
                raw[k] = r

    def display_text(self, name: str) -> str:
        """The plugin's own display of table parameter ``name`` (first instance), e.g. ``"10.000000"``.

        Raises:
            ParameterError: unknown name (lists the known ones).
        """
        return str(self._handles[self.param_table.index(name)][0].string_value)

    def _render(self, audio: np.ndarray) -> np.ndarray:
        sr = self.sample_rate
        if not self.mono_only:
            if audio.shape[0] != self._primed_channels:  # pedalboard would re-prepare (and clear) mid-stream
                self._prime(audio.shape[0])
            return self._instances[0].process(audio, sr, buffer_size=BUFFER_SIZE, reset=False)
        if audio.shape[0] > len(self._instances):
            raise AudioError(
                f"{self.path.name} is mono-only and this processor holds {len(self._instances)} instance(s), "
                f"one per channel; got {audio.shape[0]} channels (raise option 'channels')"
            )
        outs = [
            inst.process(audio[c : c + 1], sr, buffer_size=BUFFER_SIZE, reset=False)
            for c, inst in enumerate(self._instances[: audio.shape[0]])
        ]
        n = min(o.shape[-1] for o in outs)
        return np.concatenate([o[:, o.shape[-1] - n :] for o in outs], axis=0)

    def reset(self) -> None:
        """Clear the state of every instance; parameter values are kept.

        Calls pedalboard's ``reset()``, then primes each instance with one silent
        :data:`BUFFER_SIZE` block so that it is prepared for every later block
        size (see :data:`BUFFER_SIZE`). A fresh instance goes through the same
        steps at load, so after ``reset()`` the output equals a fresh instance's.
        For a plugin with latency ``L`` the priming also fills its delay line with
        silence: every later call returns as many samples as it was given, the
        first ``L`` of them silent.
        """
        self._prime(1 if self.mono_only else 2)
        self.clear_pending()

    def _prime(self, channels: int) -> None:
        """Reset every instance and prepare it for ``channels`` channels and :data:`BUFFER_SIZE` blocks.

        A plugin that accepts any channel count is re-primed (its state cleared)
        when a block arrives with a different count, as pedalboard would clear it
        anyway on the change.
        """
        rebind = False
        with float_env_guard():  # pedalboard re-instantiates some plugins on reset
            for inst in self._instances:
                inst.reset()
                rebind |= "ClearsAudioOnReset" not in str(inst._reload_type)
        if rebind:  # the plugin was re-instantiated: native handles changed
            self._bind()
        silence = np.zeros((channels, BUFFER_SIZE), np.float32)
        for inst in self._instances:
            inst.process(silence, self.sample_rate, buffer_size=BUFFER_SIZE, reset=False)
        self._primed_channels = channels

    def close(self) -> None:
        self._handles = []
        self._instances = []


@register_backend("vst3")
def build_vst3(spec: ProcessorSpec, sample_rate: float) -> VST3Processor:
    """Factory for backend ``"vst3"`` (options in the module docstring)."""
    opts = dict(spec.options)
    unknown = set(opts) - OPTIONS
    if unknown or "path" not in opts:
        raise PluginError(
            f"processor {spec.name!r} (vst3): options need 'path' and may have {sorted(OPTIONS)}; "
            f"got {sorted(opts)}"
        )
    return VST3Processor(sample_rate=sample_rate, **opts)


__all__ = ["VST3Processor", "build_vst3", "check_not_refused", "find_vst3"]
