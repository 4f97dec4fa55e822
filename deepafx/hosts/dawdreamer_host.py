"""Backends ``"dawdreamer"`` (VST2 ``.so`` and VST3 plugins) and ``"faust"`` (Faust DSP).

Both render through a dawdreamer ``RenderEngine`` holding a playback processor
(the input block) feeding the plugin or Faust processor.

**State.** ``RenderEngine.render()`` resets its graph before rendering
(JUCE ``AudioProcessorGraph::reset()``: each plugin is deactivated and
re-activated; a Faust processor clears all its delay lines and recursions).
Measured here: rendering the same 1 s of noise twice on one engine gave identical
output for Faust and for DPF plugins (ZamCompX2, ZaMultiCompX2, 3BandEQ: state
fully cleared) and outputs 0.04–0.08 apart for the LSP compressor and Dragonfly
reverbs (partly cleared); rendering 1 s as ten renders of 0.1 s differed from one
render by 0.13–1.6 (peak) for compressors, limiters, the tube and reverbs. So
block-to-block state cannot come from the engine. Instead each processor keeps
the last ``context_seconds`` seconds of its input and re-renders them before every
block, returning only the new block: output block ``k`` is the end of one render
of ``[context, block k]``. A stream starts with ``context_seconds`` seconds of silence
as its context, so every render has the same length and the plugin has settled
on silence before the first sample, whatever the previous render left in it.

With a finite context, the difference from one uninterrupted render is what the
plugin remembers from longer ago (compressor release, reverb tail) plus what it
keeps across renders, decayed over the context. LSP compressor (threshold -40 dB,
ratio 10, release 200 ms, 0.5 s of noise peaking at 0.29 out, blocks of 100 to
5000 samples), peak difference from the one-shot output: 0.11 without context,
0.034 / 0.0073 / 0.00034 with 0.25 / 0.5 / 1 s. DPF plugins were bit-exact from
0.25 s on. With ``context_seconds: null`` the whole input since the last
:meth:`~DawDreamerProcessor.reset` is replayed with no silence before it:
bit-exact for plugins that clear on render (DPF, Faust), cost growing with the
stream. Cost: each block renders ``context_seconds`` seconds more audio (LSP
mastering chain, 1 s context, 1024-sample blocks: about 4.6 s per second of
audio on this machine; use a shorter context where the plugins forget faster).

The replayed context is rendered with the *current* parameter values
(dawdreamer's per-sample automation costs about 1 ms per parameter per second
of audio, more than the render itself), so after a parameter change the state
is the one the new values would have built over the context.

**Reset.** ``reset()`` forgets the context; for VST plugins it also builds a
fresh engine and plugin (about 0.15 s for an LSP plugin), since they keep part
of their state across renders; Faust needs no rebuild.

**Parameters.** VST parameters are normalized 0..1 in dawdreamer; each table
entry maps plugin values to normalized ones through a
:class:`~deepafx.hosts.plugin_params.ValueMap` sampled at load from the plugin's
display text (``get_parameter_text`` at 1001 normalized values, about 2 µs each;
33 values for parameters slow to set),
so LSP's ``at`` (attack, shown as ``0.000`` … ``2000`` ms on a curved scale) is
set in milliseconds. Faust parameters take real values; ranges, steps and
defaults come from the DSP and ``[unit:…]``/``[scale:log]`` metadata from its
source. Faust does not clamp (out-of-range values gave NaN), which
:meth:`~deepafx.hosts.base.Processor.process` prevents by validating values
against the table. Parameter maps (:class:`~deepafx.hosts.plugin_params.ParamMap`)
select and rename as for ``vst3``.

**Channels.** A plugin or DSP with one input runs one engine per input channel
(option ``channels``, default 2), each with its own state; a two-input plugin
declares ``num_input_channels = 2``.

**Threads.** Creating plugin processors from two threads at once deadlocked:
every engine/processor creation and Faust compilation holds a module lock, and
runs in the default floating-point environment, restored afterwards
(:mod:`deepafx.hosts.fpenv`: DPF plugins switch on flush-to-zero at load, which
made the Faust compiler abort the interpreter).

Options, ``"dawdreamer"``: ``path`` (required; ``.so`` or ``.vst3``; a bare
name is searched in ``/usr/lib/vst``, ``/usr/lib/lxvst``, ``/usr/local/lib/vst``,
``~/.vst`` and their sub-folders), ``param_map``, ``exclude``, ``channels``,
``context_seconds``, ``block_size``. ``"faust"``: ``dsp`` (a ``.dsp`` file; a relative
name is tried from the working directory, then in the packaged ``faust/`` folder,
e.g. ``tube_preamp.dsp``) or ``code`` (Faust source), plus
``param_map``, ``exclude``, ``channels``, ``context_seconds``, ``block_size``.
"""

from __future__ import annotations

import abc
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepafx.config import renamed_key_error
from deepafx.hosts.base import AudioError, PluginError, Processor, ProcessorSpec, register_backend
from deepafx.hosts.fpenv import float_env_guard
from deepafx.hosts.plugin_params import (
    MAX_DISCRETE_VALUES,
    SAMPLE_STEPS,
    DiscoveredParam,
    ParamMap,
    ValueMap,
    build_table,
    excluded_by_rules,
    parse_number,
    resolve_asset,
    sanitize_name,
    unique_names,
)
from deepafx.hosts.vst3 import check_not_refused

#: Folders searched (recursively) for a bare VST2 plugin name.
VST2_DIRS = (Path("/usr/lib/vst"), Path("/usr/lib/lxvst"), Path("/usr/local/lib/vst"), Path.home() / ".vst")

#: Seconds of input replayed before each block by default (see the module docstring).
DEFAULT_CONTEXT_SECONDS = 1.0

#: dawdreamer engine block size in samples (its processing granularity; 512 was
#: fastest for the LSP multiband compressor among 256, 512, 2048 and 8192).
DEFAULT_BLOCK_SIZE = 512

#: Coarse sampling of a parameter's display text, and the per-point time above
#: which sampling stops there (see :func:`_sample_texts`).
COARSE_STEPS = 32
SLOW_SET_S = 1e-3

_CREATE_LOCK = threading.Lock()

_COMMON_OPTIONS = frozenset({"param_map", "exclude", "channels", "context_seconds", "block_size"})


def find_vst2(path: str | Path) -> Path:
    """Resolve a plugin path: as given, relative to :data:`VST2_DIRS`, or a bare name found in them.

    A bare name (``compressor-stereo``, ``ZamTube-vst.so``) is matched with and
    without ``.so`` / ``-vst.so`` in those folders and their sub-folders.

    Raises:
        PluginError: nothing found (lists the places tried and the Debian
            packages), or a VST3 bundle known to hang (ZamVerb.vst3).
    """
    found = _search_vst2(Path(path).expanduser(), tried := [])
    if found is not None:
        check_not_refused(found)
        return found
    raise PluginError(
        f"plugin {str(path)!r} not found; tried: {'; '.join(tried)}. Give an existing .so or .vst3 path, "
        "or install plugins (Debian: apt-get install -y --no-install-recommends lsp-plugins-vst "
        "dragonfly-reverb-vst dpf-plugins-vst zam-plugins)."
    )


def _search_vst2(p: Path, tried: list[str]) -> Path | None:
    if p.exists():
        return p
    tried.append(str(p))
    if p.is_absolute():
        return None
    for d in VST2_DIRS:
        tried.append(str(d / p))
        if (d / p).exists():
            return d / p
    if len(p.parts) == 1:
        names = {p.name, p.name + ".so", p.name + "-vst.so"}
        for d in VST2_DIRS:
            tried.append(f"{d}/**/{{{','.join(sorted(names))}}}")
            if d.is_dir():
                for cand in sorted(d.rglob("*")):
                    if cand.name in names:
                        return cand
    return None


@dataclass
class _Voice:
    engine: Any
    node: Any
    playback: Any


class DawDreamerProcessor(Processor):
    """Common engine, replay and parameter logic of the dawdreamer backends.

    Subclasses set ``label`` and implement :meth:`_make_node`, :meth:`_send` and
    :meth:`_discover`, then call :meth:`_setup`.

    Args:
        sample_rate: Rate in Hz.
        context_seconds: Seconds of past input re-rendered before each block
            (``None``: everything since the last reset; ``0``: none).
        block_size: Engine block size in samples; the context length is rounded
            up to a multiple of it so blocks stay aligned with engine blocks.
        channels: Engines to hold for a one-input plugin (one per channel).

    Raises:
        PluginError: invalid options.
    """

    #: True when every ``render()`` clears all state, so reset needs no rebuild.
    render_clears_state = False
    #: True when :meth:`_discover` changes the node (then it is not used for audio).
    discovery_mutates = True
    label = "plugin"

    def __init__(self, sample_rate: float, context_seconds: float | None, block_size: int, channels: int) -> None:
        super().__init__()
        if sample_rate <= 0:
            raise PluginError(f"sample_rate must be positive, got {sample_rate}")
        if context_seconds is not None and not (float(context_seconds) >= 0):
            raise PluginError(f"option context_seconds must be >= 0 seconds or null, got {context_seconds}")
        if int(block_size) < 1 or int(channels) < 1:
            raise PluginError(f"options block_size and channels must be >= 1, got {block_size}, {channels}")
        self.sample_rate = float(sample_rate)
        self.block_size = int(block_size)
        self.channels = int(channels)
        self.context_samples: int | None = None
        if context_seconds is not None:
            n = int(round(float(context_seconds) * self.sample_rate))
            self.context_samples = -(-n // self.block_size) * self.block_size
        self._history: np.ndarray | None = None
        self._voices: list[_Voice] = []

    # -- backend hooks --------------------------------------------------------
    @abc.abstractmethod
    def _make_node(self, engine: Any) -> Any:
        """Create the plugin/Faust processor named ``"fx"`` on ``engine`` (lock held)."""

    @abc.abstractmethod
    def _send(self, node: Any, k: int, raw: float) -> None:
        """Set table entry ``k`` to host value ``raw`` on ``node``."""

    @abc.abstractmethod
    def _discover(self, node: Any, param_map: ParamMap | None, exclude: tuple[str, ...]) -> list[DiscoveredParam]:
        """The node's parameters, in its order (may change and must restore its values)."""

    # -- engines --------------------------------------------------------------
    def _new_voice(self) -> _Voice:
        import dawdreamer

        with _CREATE_LOCK, float_env_guard(clean=True):
            engine = dawdreamer.RenderEngine(self.sample_rate, self.block_size)
            node = self._make_node(engine)
            inputs = 1 if int(node.get_num_input_channels()) == 1 else 2
            playback = engine.make_playback_processor("input", np.zeros((inputs, self.block_size), np.float32))
            engine.load_graph([(playback, []), (node, ["input"])])
        return _Voice(engine, node, playback)

    def _setup(self, param_map: str | Path | None, exclude: Any) -> None:
        """Load a probe engine, choose the channel layout, build the table, then the engines.

        A VST probe is discarded: sampling every parameter's display text left
        traces in an LSP compressor's state (its output then differed from a
        fresh instance's by up to 6e-4), so processing starts on fresh engines.
        Faust discovery only reads, so its probe (one compilation) is kept.
        """
        first = self._new_voice()
        n_in = int(first.node.get_num_input_channels())
        if n_in == 0:
            raise PluginError(
                f"{self.label} has no audio input (an instrument or generator); backends 'dawdreamer' and "
                "'faust' host effects. Use backend 'dexed' for the DX7 synthesizer."
            )
        self.mono_only = n_in == 1
        self.num_input_channels = None if self.mono_only else 2
        self._init_table(first.node, param_map, exclude)
        self.latency_samples = self._latency(first.node)
        self._build_voices(None if self.discovery_mutates else first)

    def _init_table(self, node: Any, param_map: str | Path | None, exclude: Any) -> None:
        """Discover ``node``'s parameters and build the table, value maps and host values."""
        pm = ParamMap.load(param_map) if param_map else None
        exclude = tuple(exclude or ())
        self.param_table, self.bindings = build_table(self._discover(node, pm, exclude), pm, exclude,
                                                      plugin_label=self.label)
        self._maps = [s.value_map for s in self.bindings]
        self._handles = [s.source.handle for s in self.bindings]
        self._raw = [m.to_raw(v) for m, v in zip(self._maps, self.param_table.defaults())]

    def _latency(self, node: Any) -> int:
        """Latency in samples the node reports (0 when the host exposes none)."""
        return 0

    def _build_voices(self, first: _Voice | None = None) -> None:
        voices = [first] if first is not None else []
        voices += [self._new_voice() for _ in range((self.channels if self.mono_only else 1) - len(voices))]
        for v in voices:
            for k, raw in enumerate(self._raw):
                self._send(v.node, k, raw)
        self._voices = voices

    # -- Processor API ----------------------------------------------------------
    def set_values(self, values: np.ndarray) -> None:
        """Apply plugin values ``(num_params,)``; unchanged values are not re-sent."""
        for k, vmap in enumerate(self._maps):
            r = vmap.to_raw(values[k])
            if r != self._raw[k]:
                self._raw[k] = r
                for v in self._voices:
                    self._send(v.node, k, r)

    def display_text(self, name: str) -> str:
        """The host's display of table parameter ``name`` (first engine), e.g. ``"20.0"``.

        Raises:
            ParameterError: unknown name (lists the known ones).
        """
        k = self.param_table.index(name)
        return self._text(self._voices[0].node, k)

    def _text(self, node: Any, k: int) -> str:
        return str(node.get_parameter_text(self._handles[k]))

    def _render(self, audio: np.ndarray) -> np.ndarray:
        c, n = audio.shape
        if self.mono_only and c > len(self._voices):
            raise AudioError(
                f"{self.label} has one input and this processor holds {len(self._voices)} engine(s), one per "
                f"channel; got {c} channels (raise option 'channels')"
            )
        hist = self._history
        if hist is None or hist.shape[0] != c:  # start of a stream: a silent context
            hist = np.zeros((c, self.context_samples or 0), np.float32)
        full = np.concatenate([hist, audio], axis=1) if hist.shape[1] else audio
        if self.context_samples is None:
            self._history = full
        elif self.context_samples > 0:
            self._history = full[:, full.shape[1] - self.context_samples :]
        duration = (full.shape[1] + 0.5) / self.sample_rate  # dawdreamer truncates duration * rate
        groups = [full[i : i + 1] for i in range(c)] if self.mono_only else [full]
        outs = []
        for voice, data in zip(self._voices, groups):
            voice.playback.set_data(np.ascontiguousarray(data))
            voice.engine.render(duration)
            out = voice.engine.get_audio()
            outs.append(out[:, out.shape[1] - n :])
        return np.concatenate(outs, axis=0)

    def reset(self) -> None:
        """Forget the replay context; VST plugins are rebuilt fresh (module docstring)."""
        self._history = None
        self.clear_pending()
        if not self.render_clears_state:
            self._build_voices()

    def close(self) -> None:
        self._voices = []
        self._history = None


class VSTDawDreamerProcessor(DawDreamerProcessor):
    """A VST2 ``.so`` or VST3 plugin in dawdreamer (module docstring: options, state, units).

    Raises:
        PluginError: missing plugin, load failure, instrument plugin, bad options.
        ParameterError: a parameter-map or ``exclude`` entry that does not fit.
    """

    def __init__(
        self,
        path: str | Path,
        sample_rate: float,
        param_map: str | Path | None = None,
        exclude: tuple[str, ...] | list[str] = (),
        channels: int = 2,
        context_seconds: float | None = DEFAULT_CONTEXT_SECONDS,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        super().__init__(sample_rate, context_seconds, block_size, channels)
        self.path = find_vst2(path)
        self.label = f"plugin {self.path.name}"
        self._setup(param_map, exclude)

    def _latency(self, node: Any) -> int:
        return int(node.get_latency_samples())

    def _make_node(self, engine: Any) -> Any:
        try:
            return engine.make_plugin_processor("fx", str(self.path))
        except Exception as exc:
            raise PluginError(f"dawdreamer could not load {self.path}: {exc}") from exc

    def _send(self, node: Any, k: int, raw: float) -> None:
        node.set_parameter(self._handles[k], raw)

    def _discover(self, node: Any, param_map: ParamMap | None, exclude: tuple[str, ...]) -> list[DiscoveredParam]:
        desc = node.get_parameters_description()
        keys = [d["name"] for d in desc]
        units = [str(d.get("label") or "").strip() for d in desc]
        names = unique_names(sanitize_name(k, u) for k, u in zip(keys, units))
        listed = set(param_map.params) if param_map else set()
        dropped = set(exclude) | (set(param_map.exclude) if param_map else set())
        only_listed = bool(param_map and param_map.only_listed)
        out = []
        for i, (d, key, name, unit) in enumerate(zip(desc, keys, names, units)):
            named = {key, name}
            automatable = bool(d.get("isAutomatable", True))
            # sample only what build_table can keep: listed, or not dropped by a rule
            wanted = bool(named & listed) or not (
                only_listed or named & dropped or excluded_by_rules(key, name, automatable)
            )
            vm, current = None, 0.0
            if wanted:
                original = float(node.get_parameter(i))
                raws, texts = _sample_texts(node, i)
                node.set_parameter(i, original)
                vm = ValueMap.from_samples(raws, texts)
                if vm is not None:  # the default as displayed ("20.0"), else interpolated
                    shown = parse_number(node.get_parameter_text(i))
                    ok = shown is not None and not vm.discrete and vm.min <= shown <= vm.max
                    current = shown if ok else vm.to_value(original)
            out.append(DiscoveredParam(key, name, unit, vm, current, handle=i, automatable=automatable))
        return out


def _sample_texts(node: Any, index: int) -> tuple[np.ndarray, list[str]]:
    """Display texts of parameter ``index`` over normalized values on [0, 1].

    A coarse grid (:data:`COARSE_STEPS` + 1 points) is sampled first; when that
    took under :data:`SLOW_SET_S` per point (about 2 µs is usual), the full grid
    of :data:`~deepafx.hosts.plugin_params.SAMPLE_STEPS` + 1 points follows.
    Parameters that are slow to set keep the coarse grid: ZamVerb's ``Room``
    reloads an impulse response on every change (131 ms each), so 1001 samples
    would take more than two minutes.
    """

    def texts_at(grid: np.ndarray) -> list[str]:
        out = []
        for r in grid:
            node.set_parameter(index, float(r))
            out.append(node.get_parameter_text(index))
        return out

    coarse = np.linspace(0.0, 1.0, COARSE_STEPS + 1)
    start = time.perf_counter()
    texts = texts_at(coarse)
    if time.perf_counter() - start > SLOW_SET_S * len(coarse):
        return coarse, texts
    grid = np.linspace(0.0, 1.0, SAMPLE_STEPS + 1)
    return grid, texts_at(grid)


_WIDGET = re.compile(r'\b(hslider|vslider|nentry|checkbox|button)\s*\(\s*"([^"]*)"')
_META = re.compile(r"\[\s*([A-Za-z_]+)\s*:\s*([^\]]*)\]")


def faust_widget_metadata(code: str) -> dict[str, dict[str, str]]:
    """``{label: {"widget": kind, "unit": …, "scale": …}}`` from the ``[key:value]`` metadata in Faust source."""
    out: dict[str, dict[str, str]] = {}
    for kind, full in _WIDGET.findall(code):
        meta = {k.strip().lower(): v.strip() for k, v in _META.findall(full)}
        meta["widget"] = kind
        out[_META.sub("", full).strip()] = meta
    return out


class FaustProcessor(DawDreamerProcessor):
    """A Faust DSP compiled by dawdreamer (module docstring: options, state, units).

    Args:
        sample_rate: Rate in Hz.
        dsp: Path of a ``.dsp`` file; a relative name is tried from the working
            directory, then in the packaged ``faust/`` folder of
            :func:`deepafx.assets.plugins_dir` (``tube_preamp.dsp``).
        code: Faust source, instead of ``dsp``.
        param_map, exclude, channels, context_seconds, block_size: As for ``dawdreamer``.

    Raises:
        PluginError: neither or both of ``dsp``/``code``, missing file, compile
            error (with the Faust message), no audio input.
    """

    render_clears_state = True
    discovery_mutates = False

    def __init__(
        self,
        sample_rate: float,
        dsp: str | Path | None = None,
        code: str | None = None,
        param_map: str | Path | None = None,
        exclude: tuple[str, ...] | list[str] = (),
        channels: int = 2,
        context_seconds: float | None = DEFAULT_CONTEXT_SECONDS,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        super().__init__(sample_rate, context_seconds, block_size, channels)
        if (dsp is None) == (code is None):
            raise PluginError(
                "backend 'faust' needs exactly one of options 'dsp' (a .dsp file) or 'code' (Faust source)"
            )
        self.dsp_path = resolve_asset(dsp, ("faust",), what="Faust DSP") if dsp is not None else None
        self.code = self.dsp_path.read_text() if self.dsp_path else str(code)
        self.label = f"Faust {self.dsp_path.name if self.dsp_path else 'code'}"
        self._setup(param_map, exclude)

    def _make_node(self, engine: Any) -> Any:
        node = engine.make_faust_processor("fx")
        if self.dsp_path is not None:
            node.faust_libraries_paths = [str(self.dsp_path.parent)]
        node.set_dsp_string(self.code)
        try:
            ok = node.compile()
        except RuntimeError as exc:
            raise PluginError(f"{self.label} failed to compile: {exc}") from None
        if not ok:
            raise PluginError(f"{self.label} failed to compile")
        return node

    def _send(self, node: Any, k: int, raw: float) -> None:
        node.set_parameter(self._handles[k], raw)

    def _text(self, node: Any, k: int) -> str:
        return f"{node.get_parameter(self._handles[k]):g}"

    def _discover(self, node: Any, param_map: ParamMap | None, exclude: tuple[str, ...]) -> list[DiscoveredParam]:
        meta = faust_widget_metadata(self.code)
        found = []
        for d in node.get_parameters_description():
            address = d["name"]
            key = address.rsplit("/", 1)[-1]
            m = meta.get(key, {})
            lo, hi, step = float(d["min"]), float(d["max"]), float(d.get("step") or 0.0)
            if m.get("widget") in ("checkbox", "button"):
                vm = ValueMap(values=(0.0, 1.0), raws=(0.0, 1.0), discrete=True)
            elif step >= 1 and float(step).is_integer() and hi > lo and (hi - lo) / step + 1 <= MAX_DISCRETE_VALUES:
                vals = tuple(float(v) for v in np.arange(lo, hi + step / 2, step))
                vm = ValueMap(values=vals, raws=vals, discrete=True)
            else:
                vm = ValueMap.identity(lo, hi) if hi > lo else None
            unit = m.get("unit", "")
            found.append((key, unit, vm, float(d["value"]), address, m.get("scale")))
        order = list(meta)  # dawdreamer lists parameters alphabetically; use the source order
        found.sort(key=lambda f: order.index(f[0]) if f[0] in order else len(order))
        names = unique_names(sanitize_name(key, unit) for key, unit, *_ in found)
        return [
            DiscoveredParam(key, name, unit, vm, value, handle=address, scale=scale)
            for name, (key, unit, vm, value, address, scale) in zip(names, found)
        ]


def _options(spec: ProcessorSpec, allowed: frozenset[str], required: tuple[str, ...]) -> dict[str, Any]:
    opts = dict(spec.options)
    old = renamed_key_error("options", opts, allowed)
    if old:
        raise PluginError(f"processor {spec.name!r} ({spec.backend}): {old}")
    unknown = set(opts) - allowed
    missing = [r for r in required if r not in opts]
    if unknown or missing:
        raise PluginError(
            f"processor {spec.name!r} ({spec.backend}): unknown options {sorted(unknown)}, missing {missing}; "
            f"allowed: {sorted(allowed)}"
        )
    return opts


@register_backend("dawdreamer")
def build_dawdreamer(spec: ProcessorSpec, sample_rate: float) -> VSTDawDreamerProcessor:
    """Factory for backend ``"dawdreamer"`` (VST2/VST3 through dawdreamer)."""
    return VSTDawDreamerProcessor(sample_rate=sample_rate, **_options(spec, _COMMON_OPTIONS | {"path"}, ("path",)))


@register_backend("faust")
def build_faust(spec: ProcessorSpec, sample_rate: float) -> FaustProcessor:
    """Factory for backend ``"faust"`` (Faust ``dsp`` file or ``code``)."""
    return FaustProcessor(sample_rate=sample_rate, **_options(spec, _COMMON_OPTIONS | {"dsp", "code"}, ()))


__all__ = [
    "DawDreamerProcessor",
    "FaustProcessor",
    "VSTDawDreamerProcessor",
    "build_dawdreamer",
    "build_faust",
    "faust_widget_metadata",
    "find_vst2",
]
