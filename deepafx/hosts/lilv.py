"""liblilv through :mod:`ctypes`: the LV2 binding under backend ``"lv2"`` (:mod:`deepafx.hosts.lv2`).

No Python binding for lilv exists in Debian 12 or on PyPI, so this module
declares the C prototypes it uses and loads the shared library (Debian
``liblilv-0-0``) once per process (:func:`lilv_library`). On top of it:

* :class:`LV2World` / :func:`lv2_world`: the process's LV2 world (every
  installed bundle's ``manifest.ttl``, found along ``LV2_PATH`` or the default
  ``~/.lv2``, ``/usr/local/lib/lv2``, ``/usr/lib/lv2`` …), plugin lookup by URI,
  URI nodes, the URID map/unmap and the log feature;
* :class:`PortInfo` / :func:`read_ports`: every port of a plugin as its Turtle
  data describes it (kind, direction, range, properties, designations, unit,
  scale points);
* ``_Instance``: one instantiated and activated plugin with its port buffers,
  the host features and options it is given (:data:`PROVIDED_FEATURES`,
  :data:`GIVEN_OPTIONS`) and the worker extension served synchronously.

The ctypes structures mirror the LV2 headers (``LV2_Feature``,
``LV2_Descriptor``, ``LV2_URID_Map``, ``LV2_Options_Option``,
``LV2_Worker_Schedule``/``Interface``, ``LV2_Log_Log``) and lilv's
``LilvInstance``.

References:
    LV2 specifications, https://lv2plug.in/ns/ (lv2core, urid, options,
    buf-size, worker, atom, port-props, units, log).
    D. Robillard, "Lilv" (C library for LV2 hosts), https://drobilla.gitlab.io/lilv/.
"""

from __future__ import annotations

import ctypes
import difflib
import math
import threading
from pathlib import Path
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from deepafx.hosts.base import PluginError
from deepafx.hosts.fpenv import float_env_guard

#: The shared library (Debian ``liblilv-0-0``).
LILV_LIBRARY = "liblilv-0.so.0"

#: Bytes of each atom port buffer unless the port asks for more (``rsz:minimumSize``).
ATOM_BUFFER_BYTES = 8192

_LV2 = "http://lv2plug.in/ns/lv2core#"
_EXT = "http://lv2plug.in/ns/ext/"
_UNITS = "http://lv2plug.in/ns/extensions/units#"
URID_MAP = _EXT + "urid#map"
URID_UNMAP = _EXT + "urid#unmap"
OPTIONS_FEATURE = _EXT + "options#options"
BOUNDED_BLOCK = _EXT + "buf-size#boundedBlockLength"
FIXED_BLOCK = _EXT + "buf-size#fixedBlockLength"
POWER_OF_2_BLOCK = _EXT + "buf-size#powerOf2BlockLength"
WORKER_SCHEDULE = _EXT + "worker#schedule"
WORKER_INTERFACE = _EXT + "worker#interface"
LOG_FEATURE = _EXT + "log#log"

#: Features this host passes to every instance.
PROVIDED_FEATURES = (URID_MAP, URID_UNMAP, OPTIONS_FEATURE, BOUNDED_BLOCK, WORKER_SCHEDULE, LOG_FEATURE)
#: Features passed in addition with option ``fixed_block`` (``powerOf2BlockLength`` when
#: ``block_size`` is a power of 2).
FIXED_BLOCK_FEATURES = (FIXED_BLOCK, POWER_OF_2_BLOCK)
#: Options (``opts:requiredOption``) this host gives every instance.
GIVEN_OPTIONS = tuple(_EXT + "buf-size#" + k for k in ("minBlockLength", "maxBlockLength", "nominalBlockLength",
                                                        "sequenceSize")) + (_EXT + "parameters#sampleRate",)
#: Plugin properties that some plugins list as required features; nothing to provide.
SATISFIED_FEATURES = (_LV2 + "hardRTCapable", _LV2 + "inPlaceBroken", _LV2 + "isLive")

#: ``units:unit`` URIs → (label, name suffix).
UNIT_LABELS = {
    "db": ("dB", "db"), "hz": ("Hz", "hz"), "khz": ("kHz", "khz"), "mhz": ("MHz", "mhz"),
    "ms": ("ms", "ms"), "s": ("s", "s"), "min": ("min", "min"), "pc": ("%", "pct"),
    "cent": ("cent", "cents"), "semitone12TET": ("semitones", "semitones"), "oct": ("oct", "oct"),
    "bpm": ("bpm", "bpm"), "beat": ("beats", "beats"), "bar": ("bars", "bars"), "frame": ("frames", "frames"),
    "degree": ("deg", "deg"), "midiNote": ("note", "note"), "m": ("m", "m"), "cm": ("cm", "cm"),
    "mm": ("mm", "mm"), "km": ("km", "km"), "inch": ("in", "in"), "mile": ("mi", "mi"), "coef": ("", ""),
}
#: Unit symbols of custom units (``units:symbol``) with the same meaning.
UNIT_SYMBOLS = {"dB": "db", "Hz": "hz", "kHz": "khz", "ms": "ms", "s": "s", "%": "pc", "ct": "cent",
                "st": "semitone12TET", "oct": "oct", "bpm": "bpm", "°": "degree", "min": "min"}

# -- the C library -----------------------------------------------------------------

_vp, _u32, _cp = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_char_p


class _Feature(ctypes.Structure):
    """``LV2_Feature``: a URI and its data."""

    _fields_ = [("URI", _cp), ("data", _vp)]


class _Descriptor(ctypes.Structure):
    """``LV2_Descriptor``: the plugin's entry points (LV2 core)."""

    _fields_ = [
        ("URI", _cp),
        ("instantiate", _vp),
        ("connect_port", ctypes.CFUNCTYPE(None, _vp, _u32, _vp)),
        ("activate", ctypes.CFUNCTYPE(None, _vp)),
        ("run", ctypes.CFUNCTYPE(None, _vp, _u32)),
        ("deactivate", ctypes.CFUNCTYPE(None, _vp)),
        ("cleanup", _vp),
        ("extension_data", ctypes.CFUNCTYPE(_vp, _cp)),
    ]


class _LilvInstance(ctypes.Structure):
    """``LilvInstance`` (its accessors are inline functions of ``lilv.h``)."""

    _fields_ = [("lv2_descriptor", ctypes.POINTER(_Descriptor)), ("lv2_handle", _vp), ("pimpl", _vp)]


_MAP_FN = ctypes.CFUNCTYPE(_u32, _vp, _cp)
_UNMAP_FN = ctypes.CFUNCTYPE(_vp, _vp, _u32)


class _URIDMap(ctypes.Structure):
    _fields_ = [("handle", _vp), ("map", _MAP_FN)]


class _URIDUnmap(ctypes.Structure):
    _fields_ = [("handle", _vp), ("unmap", _UNMAP_FN)]


class _Option(ctypes.Structure):
    """``LV2_Options_Option``."""

    _fields_ = [("context", _u32), ("subject", _u32), ("key", _u32), ("size", _u32), ("type", _u32),
                ("value", _vp)]


_RESPOND_FN = ctypes.CFUNCTYPE(ctypes.c_int, _vp, _u32, _vp)
_SCHEDULE_FN = ctypes.CFUNCTYPE(ctypes.c_int, _vp, _u32, _vp)


class _WorkerSchedule(ctypes.Structure):
    _fields_ = [("handle", _vp), ("schedule_work", _SCHEDULE_FN)]


class _WorkerInterface(ctypes.Structure):
    _fields_ = [
        ("work", ctypes.CFUNCTYPE(ctypes.c_int, _vp, _RESPOND_FN, _vp, _u32, _vp)),
        ("work_response", ctypes.CFUNCTYPE(ctypes.c_int, _vp, _u32, _vp)),
        ("end_run", ctypes.CFUNCTYPE(ctypes.c_int, _vp)),
    ]


# printf is variadic: the trailing arguments are ignored (only the format is kept).
_PRINTF_FN = ctypes.CFUNCTYPE(ctypes.c_int, _vp, _u32, _cp)
_VPRINTF_FN = ctypes.CFUNCTYPE(ctypes.c_int, _vp, _u32, _cp, _vp)


# LilvSetPortValueFunc: (port symbol, user data, value, size in bytes, value type URID)
_SET_PORT_VALUE_FN = ctypes.CFUNCTYPE(None, _cp, _vp, _vp, _u32, _u32)


class _Log(ctypes.Structure):
    _fields_ = [("handle", _vp), ("printf", _PRINTF_FN), ("vprintf", _VPRINTF_FN)]


_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "lilv_world_new": (_vp, []),
    "lilv_world_load_all": (None, [_vp]),
    "lilv_world_get_all_plugins": (_vp, [_vp]),
    "lilv_world_get": (_vp, [_vp, _vp, _vp, _vp]),
    "lilv_world_find_nodes": (_vp, [_vp, _vp, _vp, _vp]),
    "lilv_new_uri": (_vp, [_vp, _cp]),
    "lilv_node_free": (None, [_vp]),
    "lilv_node_as_string": (_cp, [_vp]),
    "lilv_node_as_uri": (_cp, [_vp]),
    "lilv_node_as_float": (ctypes.c_float, [_vp]),
    "lilv_node_is_uri": (ctypes.c_bool, [_vp]),
    "lilv_nodes_begin": (_vp, [_vp]),
    "lilv_nodes_is_end": (ctypes.c_bool, [_vp, _vp]),
    "lilv_nodes_next": (_vp, [_vp, _vp]),
    "lilv_nodes_get": (_vp, [_vp, _vp]),
    "lilv_nodes_free": (None, [_vp]),
    "lilv_plugins_begin": (_vp, [_vp]),
    "lilv_plugins_is_end": (ctypes.c_bool, [_vp, _vp]),
    "lilv_plugins_next": (_vp, [_vp, _vp]),
    "lilv_plugins_get": (_vp, [_vp, _vp]),
    "lilv_plugins_get_by_uri": (_vp, [_vp, _vp]),
    "lilv_plugin_get_uri": (_vp, [_vp]),
    "lilv_plugin_get_name": (_vp, [_vp]),
    "lilv_plugin_get_num_ports": (_u32, [_vp]),
    "lilv_plugin_get_port_by_index": (_vp, [_vp, _u32]),
    "lilv_plugin_get_port_ranges_float": (None, [_vp, _vp, _vp, _vp]),
    "lilv_plugin_get_required_features": (_vp, [_vp]),
    "lilv_plugin_has_latency": (ctypes.c_bool, [_vp]),
    "lilv_plugin_get_latency_port_index": (_u32, [_vp]),
    "lilv_plugin_instantiate": (_vp, [_vp, ctypes.c_double, _vp]),
    "lilv_instance_free": (None, [_vp]),
    "lilv_port_is_a": (ctypes.c_bool, [_vp, _vp, _vp]),
    "lilv_port_has_property": (ctypes.c_bool, [_vp, _vp, _vp]),
    "lilv_port_get_symbol": (_vp, [_vp, _vp]),
    "lilv_port_get_name": (_vp, [_vp, _vp]),
    "lilv_port_get": (_vp, [_vp, _vp, _vp]),
    "lilv_port_get_value": (_vp, [_vp, _vp, _vp]),
    "lilv_port_get_scale_points": (_vp, [_vp, _vp]),
    "lilv_scale_points_begin": (_vp, [_vp]),
    "lilv_scale_points_is_end": (ctypes.c_bool, [_vp, _vp]),
    "lilv_scale_points_next": (_vp, [_vp, _vp]),
    "lilv_scale_points_get": (_vp, [_vp, _vp]),
    "lilv_scale_points_free": (None, [_vp]),
    "lilv_scale_point_get_label": (_vp, [_vp]),
    "lilv_scale_point_get_value": (_vp, [_vp]),
    "lilv_state_new_from_file": (_vp, [_vp, _vp, _vp, _cp]),
    "lilv_state_get_plugin_uri": (_vp, [_vp]),
    "lilv_state_get_label": (_cp, [_vp]),
    "lilv_state_emit_port_values": (None, [_vp, _vp, _vp]),
    "lilv_state_free": (None, [_vp]),
}

_LIB: Any = None
_LIB_LOCK = threading.Lock()


def lilv_library() -> Any:
    """The loaded liblilv with its prototypes declared (loaded once per process).

    Raises:
        PluginError: the library is missing (names the Debian package).
    """
    global _LIB
    with _LIB_LOCK:
        if _LIB is None:
            try:
                lib = ctypes.CDLL(LILV_LIBRARY)
            except OSError as exc:
                raise PluginError(
                    f"cannot load {LILV_LIBRARY} ({exc}); backend 'lv2' needs liblilv "
                    "(Debian: apt-get install -y --no-install-recommends liblilv-0-0 lilv-utils)"
                ) from None
            for name, (restype, argtypes) in _PROTOTYPES.items():
                fn = getattr(lib, name)
                fn.restype, fn.argtypes = restype, argtypes
            _LIB = lib
        return _LIB


def _str(ptr: bytes | None) -> str:
    return ptr.decode("utf-8", "replace") if ptr else ""


# -- the world: plugins, URIs, URIDs, log ------------------------------------------


class LV2World:
    """The process-wide LV2 world: every installed plugin, URI nodes, URID map and log.

    Use :func:`lv2_world`; one instance per process (lilv worlds are not shared
    between processes, and render workers build their own).

    Attributes:
        lib: The liblilv handle.
        messages: The last plugin log messages (``(type URI, text)``), newest last.
    """

    def __init__(self) -> None:
        self.lib = lib = lilv_library()
        self.ptr = lib.lilv_world_new()
        lib.lilv_world_load_all(self.ptr)
        self.plugins = lib.lilv_world_get_all_plugins(self.ptr)
        self._nodes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._ids: dict[bytes, int] = {}
        self._uris: list[ctypes.Array] = [ctypes.create_string_buffer(b"")]  # URID 0 is invalid
        self.messages: deque[tuple[str, str]] = deque(maxlen=64)
        # C callbacks and structs live as long as the world (the process).
        self._map_fn = _MAP_FN(lambda _h, uri: self.map(uri))
        self._unmap_fn = _UNMAP_FN(self._unmap_c)
        self._urid_map = _URIDMap(None, self._map_fn)
        self._urid_unmap = _URIDUnmap(None, self._unmap_fn)
        self._printf = _PRINTF_FN(lambda _h, t, fmt: self._log(t, fmt, None))
        self._vprintf = _VPRINTF_FN(lambda _h, t, fmt, args: self._log(t, fmt, args))
        self._log_struct = _Log(None, self._printf, self._vprintf)
        try:
            self._libc = ctypes.CDLL("libc.so.6")
            self._libc.vsnprintf.argtypes = [_vp, ctypes.c_size_t, _cp, _vp]
        except OSError:
            self._libc = None

    # URIs and URIDs ----------------------------------------------------------------
    def node(self, uri: str) -> int:
        """A ``LilvNode*`` for ``uri``, kept for the life of the process."""
        n = self._nodes.get(uri)
        if n is None:
            n = self._nodes[uri] = self.lib.lilv_new_uri(self.ptr, uri.encode())
        return n

    def map(self, uri: bytes | str) -> int:
        """URID of ``uri`` (``urid:map``; thread-safe, stable for the process)."""
        key = uri.encode() if isinstance(uri, str) else bytes(uri)
        with self._lock:
            urid = self._ids.get(key)
            if urid is None:
                urid = self._ids[key] = len(self._uris)
                self._uris.append(ctypes.create_string_buffer(key))
            return urid

    def unmap(self, urid: int) -> str | None:
        """URI of ``urid`` (``urid:unmap``), ``None`` when unknown."""
        with self._lock:
            return self._uris[urid].value.decode() if 0 < urid < len(self._uris) else None

    def _unmap_c(self, _handle: Any, urid: int) -> int | None:
        with self._lock:
            return ctypes.addressof(self._uris[urid]) if 0 < urid < len(self._uris) else None

    def _log(self, type_urid: int, fmt: bytes | None, args: Any) -> int:
        text = _str(fmt)
        if args is not None and self._libc is not None and fmt:
            buf = ctypes.create_string_buffer(1024)
            self._libc.vsnprintf(buf, len(buf), fmt, args)
            text = _str(buf.value)
        self.messages.append((self.unmap(type_urid) or "", text.rstrip()))
        return len(text)

    # features --------------------------------------------------------------------------
    def shared_features(self) -> dict[str, int | None]:
        """Data pointers of the features shared by every instance (URID map/unmap, log)."""
        return {URID_MAP: ctypes.addressof(self._urid_map), URID_UNMAP: ctypes.addressof(self._urid_unmap),
                LOG_FEATURE: ctypes.addressof(self._log_struct), BOUNDED_BLOCK: None}

    # plugins ------------------------------------------------------------------------------
    def iter_plugins(self):
        lib, plugins = self.lib, self.plugins
        it = lib.lilv_plugins_begin(plugins)
        while not lib.lilv_plugins_is_end(plugins, it):
            yield lib.lilv_plugins_get(plugins, it)
            it = lib.lilv_plugins_next(plugins, it)

    def plugin_uri(self, plugin: int) -> str:
        return _str(self.lib.lilv_node_as_uri(self.lib.lilv_plugin_get_uri(plugin)))

    def plugin_name(self, plugin: int) -> str:
        node = self.lib.lilv_plugin_get_name(plugin)
        try:
            return _str(self.lib.lilv_node_as_string(node)) if node else ""
        finally:
            if node:
                self.lib.lilv_node_free(node)

    def list_plugins(self) -> list[tuple[str, str]]:
        """``(URI, name)`` of every installed LV2 plugin, sorted by URI (reads only the Turtle data)."""
        return sorted((self.plugin_uri(p), self.plugin_name(p)) for p in self.iter_plugins())

    def plugin(self, uri: str) -> int:
        """The ``LilvPlugin*`` for ``uri``.

        Raises:
            PluginError: no installed plugin has that URI (lists the closest URIs
                and the Debian packages).
        """
        p = self.lib.lilv_plugins_get_by_uri(self.plugins, self.node(uri))
        if not p:
            uris = [u for u, _ in self.list_plugins()]
            close = difflib.get_close_matches(uri, uris, n=5, cutoff=0.5)
            hint = f"closest installed: {', '.join(close)}; " if close else ""
            raise PluginError(
                f"no LV2 plugin with URI {uri!r} among the {len(uris)} installed; {hint}list them with "
                "`deepafx plugins` or `lv2ls`, or install plugins (Debian: apt-get install -y "
                "--no-install-recommends lsp-plugins-lv2 x42-plugins guitarix-lv2 zam-plugins)"
            )
        return p

    def read_preset(self, path: str | Path) -> dict[str, Any]:
        """Read an LV2 preset file the way a host does (``lilv_state_new_from_file``).

        Args:
            path: The preset's Turtle file (``.ttl``), e.g. one written by :mod:`deepafx.presets`.

        Returns:
            ``{"plugin": URI it applies to, "label": str, "values": {port symbol: value}}``
            (float port values; values of other types are skipped).

        Raises:
            PluginError: lilv cannot read a preset from the file.
        """
        from deepafx.hosts.base import PluginError

        lib = self.lib
        state = lib.lilv_state_new_from_file(self.ptr, ctypes.addressof(self._urid_map), None,
                                             str(Path(path).resolve()).encode())
        if not state:
            raise PluginError(f"lilv could not read an LV2 preset from {path}")
        float_urid = self.map("http://lv2plug.in/ns/ext/atom#Float")
        values: dict[str, float] = {}

        def take(symbol: bytes, _user: Any, value: int, size: int, vtype: int) -> None:
            if vtype == float_urid and size == 4 and value:
                values[_str(symbol)] = float(ctypes.cast(value, ctypes.POINTER(ctypes.c_float))[0])

        callback = _SET_PORT_VALUE_FN(take)
        try:
            lib.lilv_state_emit_port_values(state, ctypes.cast(callback, _vp), None)
            uri = lib.lilv_state_get_plugin_uri(state)
            return {"plugin": _str(lib.lilv_node_as_uri(uri)) if uri else "",
                    "label": _str(lib.lilv_state_get_label(state)), "values": values}
        finally:
            lib.lilv_state_free(state)

    def nodes_as_strings(self, nodes: int, free: bool = True) -> list[str]:
        """Strings of a ``LilvNodes*`` collection (freed unless ``free`` is False)."""
        lib, out = self.lib, []
        if not nodes:
            return out
        it = lib.lilv_nodes_begin(nodes)
        while not lib.lilv_nodes_is_end(nodes, it):
            out.append(_str(lib.lilv_node_as_string(lib.lilv_nodes_get(nodes, it))))
            it = lib.lilv_nodes_next(nodes, it)
        if free:
            lib.lilv_nodes_free(nodes)
        return out


_WORLD: LV2World | None = None
_WORLD_LOCK = threading.Lock()


def lv2_world() -> LV2World:
    """The process's :class:`LV2World`, created (and every bundle's manifest read) on first use.

    Raises:
        PluginError: liblilv is missing.
    """
    global _WORLD
    with _WORLD_LOCK:
        if _WORLD is None:
            _WORLD = LV2World()
        return _WORLD


def list_plugins() -> list[tuple[str, str]]:
    """``(URI, name)`` of every installed LV2 plugin (empty when liblilv is missing)."""
    try:
        return lv2_world().list_plugins()
    except PluginError:
        return []


# -- ports ---------------------------------------------------------------------------


@dataclass
class PortInfo:
    """One port of a plugin, as its Turtle data describes it.

    Attributes:
        index: Port index (``lv2:index``).
        symbol: ``lv2:symbol`` (unique in the plugin).
        name: ``lv2:name``.
        kind: ``"audio"``, ``"control"``, ``"cv"``, ``"atom"`` or ``"other"``.
        is_input: True for input ports.
        minimum, maximum, default: Control range (NaN when not given).
        properties: Short names of port properties present (``toggled``,
            ``integer``, ``enumeration``, ``logarithmic``, ``sampleRate``,
            ``trigger``, ``sideChain``, ``optional``).
        designations: ``lv2:designation`` URIs.
        unit: ``units:unit`` key of :data:`UNIT_LABELS` (``"ms"``), ``"gain"``
            for LSP's linear-gain unit, or ``""``.
        scale_points: ``[(value, label)]`` sorted by value.
        min_size: Requested buffer size in bytes for atom ports (``rsz:minimumSize``).
    """

    index: int
    symbol: str
    name: str
    kind: str
    is_input: bool
    minimum: float = math.nan
    maximum: float = math.nan
    default: float = math.nan
    properties: frozenset[str] = frozenset()
    designations: tuple[str, ...] = ()
    unit: str = ""
    scale_points: list[tuple[float, str]] = field(default_factory=list)
    min_size: int = 0


_PROPERTIES = {
    "toggled": _LV2 + "toggled",
    "integer": _LV2 + "integer",
    "enumeration": _LV2 + "enumeration",
    "sampleRate": _LV2 + "sampleRate",
    "sideChain": _LV2 + "isSideChain",
    "optional": _LV2 + "connectionOptional",
    "logarithmic": _EXT + "port-props#logarithmic",
    "trigger": _EXT + "port-props#trigger",
}


def read_ports(world: LV2World, plugin: int) -> list[PortInfo]:
    """Describe every port of ``plugin`` (``LilvPlugin*``) from its Turtle data."""
    lib = world.lib
    n = int(lib.lilv_plugin_get_num_ports(plugin))
    mins, maxs, defs = ((ctypes.c_float * n)() for _ in range(3))
    lib.lilv_plugin_get_port_ranges_float(plugin, mins, maxs, defs)
    classes = [("audio", _LV2 + "AudioPort"), ("control", _LV2 + "ControlPort"), ("cv", _LV2 + "CVPort"),
               ("atom", _EXT + "atom#AtomPort")]
    ports = []
    for i in range(n):
        port = lib.lilv_plugin_get_port_by_index(plugin, i)
        kind = next((k for k, uri in classes if lib.lilv_port_is_a(plugin, port, world.node(uri))), "other")
        name_node = lib.lilv_port_get_name(plugin, port)
        name = _str(lib.lilv_node_as_string(name_node)) if name_node else ""
        if name_node:
            lib.lilv_node_free(name_node)
        props = frozenset(k for k, uri in _PROPERTIES.items() if lib.lilv_port_has_property(plugin, port, world.node(uri)))
        designations = tuple(world.nodes_as_strings(lib.lilv_port_get_value(plugin, port, world.node(_LV2 + "designation"))))
        info = PortInfo(
            index=i,
            symbol=_str(lib.lilv_node_as_string(lib.lilv_port_get_symbol(plugin, port))),
            name=name,
            kind=kind,
            is_input=bool(lib.lilv_port_is_a(plugin, port, world.node(_LV2 + "InputPort"))),
            minimum=float(mins[i]),
            maximum=float(maxs[i]),
            default=float(defs[i]),
            properties=props,
            designations=designations,
        )
        if kind == "control":
            info.unit = _port_unit(world, plugin, port)
            info.scale_points = _scale_points(world, plugin, port)
        if kind == "atom":
            sizes = world.nodes_as_strings(lib.lilv_port_get_value(plugin, port, world.node(_EXT + "resize-port#minimumSize")))
            info.min_size = max([int(float(s)) for s in sizes if s] or [0])
        ports.append(info)
    return ports


def _port_unit(world: LV2World, plugin: int, port: int) -> str:
    lib = world.lib
    node = lib.lilv_port_get(plugin, port, world.node(_UNITS + "unit"))
    if not node:
        return ""
    try:
        if lib.lilv_node_is_uri(node):
            uri = _str(lib.lilv_node_as_uri(node))
            key = uri[len(_UNITS):] if uri.startswith(_UNITS) else ""
            return key if key in UNIT_LABELS else ""
        texts = {}
        for pred in ("units#symbol", "rdf-schema#label"):
            full = _UNITS + "symbol" if pred == "units#symbol" else "http://www.w3.org/2000/01/rdf-schema#label"
            val = lib.lilv_world_get(world.ptr, node, world.node(full), None)
            texts[pred] = _str(lib.lilv_node_as_string(val)) if val else ""
            if val:
                lib.lilv_node_free(val)
        if texts["units#symbol"] == "G" or texts["rdf-schema#label"].lower() == "gain":
            return "gain"
        return UNIT_SYMBOLS.get(texts["units#symbol"], "")
    finally:
        lib.lilv_node_free(node)


def _scale_points(world: LV2World, plugin: int, port: int) -> list[tuple[float, str]]:
    lib = world.lib
    sps = lib.lilv_port_get_scale_points(plugin, port)
    if not sps:
        return []
    out = []
    it = lib.lilv_scale_points_begin(sps)
    while not lib.lilv_scale_points_is_end(sps, it):
        sp = lib.lilv_scale_points_get(sps, it)
        out.append((float(lib.lilv_node_as_float(lib.lilv_scale_point_get_value(sp))),
                    _str(lib.lilv_node_as_string(lib.lilv_scale_point_get_label(sp)))))
        it = lib.lilv_scale_points_next(sps, it)
    lib.lilv_scale_points_free(sps)
    return sorted(out)


# -- one plugin instance -------------------------------------------------------------------

_WORKERS: dict[int, "_Instance"] = {}
_NEXT_ID = [1]


def _schedule(handle: int | None, size: int, data: int | None) -> int:
    inst = _WORKERS.get(handle or 0)
    if inst is None or inst.worker is None:
        return 1  # LV2_WORKER_ERR_UNKNOWN
    inst.requests.append(ctypes.string_at(data, size) if size else b"")
    return 0


def _respond(handle: int | None, size: int, data: int | None) -> int:
    inst = _WORKERS.get(handle or 0)
    if inst is None:
        return 1
    inst.responses.append(ctypes.string_at(data, size) if size else b"")
    return 0


_SCHEDULE_C = _SCHEDULE_FN(_schedule)
_RESPOND_C = _RESPOND_FN(_respond)


class _Instance:
    """One instantiated and activated plugin with its port buffers.

    Buffers (numpy, connected once): ``audio_in (n_audio_in, block)``,
    ``audio_out (n_audio_out, block)`` float32, ``controls (num_ports,)`` float32
    (every control port, inputs and outputs), CV buffers, atom buffers.
    """

    def __init__(self, world: LV2World, plugin: int, ports: Sequence[PortInfo], sample_rate: float,
                 block_size: int, controls: np.ndarray, label: str, fixed: bool = False) -> None:
        lib = world.lib
        self.world, self.lib, self.label = world, lib, label
        self.block_size = block_size
        self.requests: list[bytes] = []
        self.responses: list[bytes] = []
        self.worker = None
        self.id = _NEXT_ID[0]
        _NEXT_ID[0] += 1
        self.audio_in_ports = [p.index for p in ports if p.kind == "audio" and p.is_input]
        self.audio_out_ports = [p.index for p in ports if p.kind == "audio" and not p.is_input]
        self.audio_in = np.zeros((len(self.audio_in_ports), block_size), np.float32)
        self.audio_out = np.zeros((len(self.audio_out_ports), block_size), np.float32)
        self.controls = np.array(controls, dtype=np.float32)
        self._keep: list[Any] = []
        self._atom_out: list[tuple[np.ndarray, int]] = []
        self._atom_in: list[np.ndarray] = []
        features = self._features(sample_rate, block_size, fixed)
        with float_env_guard():
            self.ptr = lib.lilv_plugin_instantiate(plugin, float(sample_rate), features)
        if not self.ptr:
            raise PluginError(f"{label}: lilv_plugin_instantiate failed at {sample_rate:g} Hz "
                              f"(plugin log: {self.world.messages and list(self.world.messages)[-3:]})")
        _WORKERS[self.id] = self
        inst = ctypes.cast(self.ptr, ctypes.POINTER(_LilvInstance)).contents
        self.handle = inst.lv2_handle
        desc = inst.lv2_descriptor.contents
        self._run, self._activate, self._deactivate = desc.run, desc.activate, desc.deactivate
        self._end_run = None
        if desc.extension_data:
            iface = desc.extension_data(WORKER_INTERFACE.encode())
            if iface:
                self.worker = ctypes.cast(iface, ctypes.POINTER(_WorkerInterface)).contents
                self._end_run = self.worker.end_run or None
        self._connect(desc, ports)
        if self._activate:
            self._activate(self.handle)
        self.active = True

    def _features(self, sample_rate: float, block_size: int, fixed: bool) -> Any:
        world = self.world
        ints = {k: ctypes.c_int32(v) for k, v in (("min", block_size if fixed else 1), ("max", block_size),
                                                  ("nominal", block_size),
                                                  ("seq", ATOM_BUFFER_BYTES))}
        rate = ctypes.c_float(sample_rate)
        a_int, a_float = world.map(_EXT + "atom#Int"), world.map(_EXT + "atom#Float")
        bs = _EXT + "buf-size#"
        opts = (_Option * 6)(
            _Option(0, 0, world.map(bs + "minBlockLength"), 4, a_int, ctypes.addressof(ints["min"])),
            _Option(0, 0, world.map(bs + "maxBlockLength"), 4, a_int, ctypes.addressof(ints["max"])),
            _Option(0, 0, world.map(bs + "nominalBlockLength"), 4, a_int, ctypes.addressof(ints["nominal"])),
            _Option(0, 0, world.map(bs + "sequenceSize"), 4, a_int, ctypes.addressof(ints["seq"])),
            _Option(0, 0, world.map(_EXT + "parameters#sampleRate"), 4, a_float,
                    ctypes.addressof(rate)),
            _Option(0, 0, 0, 0, 0, None),
        )
        sched = _WorkerSchedule(self.id, _SCHEDULE_C)
        data = dict(world.shared_features())
        data[OPTIONS_FEATURE] = ctypes.addressof(opts)
        data[WORKER_SCHEDULE] = ctypes.addressof(sched)
        if fixed:
            data[FIXED_BLOCK] = None
            if block_size & (block_size - 1) == 0:
                data[POWER_OF_2_BLOCK] = None
        feats = [_Feature(uri.encode(), ptr) for uri, ptr in data.items()]
        arr = (ctypes.POINTER(_Feature) * (len(feats) + 1))(*[ctypes.pointer(f) for f in feats], None)
        self._keep += [ints, rate, opts, sched, feats, arr]
        return arr

    def _connect(self, desc: _Descriptor, ports: Sequence[PortInfo]) -> None:
        connect = desc.connect_port
        seq_type = self.world.map(_EXT + "atom#Sequence")
        self._chunk_type = self.world.map(_EXT + "atom#Chunk")
        base = self.controls.ctypes.data
        scratch = np.zeros(self.block_size, np.float32)
        self._keep.append(scratch)
        for p in ports:
            if p.kind == "audio":
                arr, row = ((self.audio_in, self.audio_in_ports.index(p.index)) if p.is_input
                            else (self.audio_out, self.audio_out_ports.index(p.index)))
                connect(self.handle, p.index, arr[row].ctypes.data)
            elif p.kind == "control":
                connect(self.handle, p.index, base + 4 * p.index)
            elif p.kind == "cv":
                buf = np.zeros(self.block_size, np.float32)
                self._keep.append(buf)
                connect(self.handle, p.index, buf.ctypes.data)
            elif p.kind == "atom":
                size = max(ATOM_BUFFER_BYTES, p.min_size)
                buf = np.zeros(size // 4 + 4, np.uint32)  # 4-byte words, 8-byte aligned by numpy
                self._keep.append(buf)
                if p.is_input:  # an empty sequence: LV2_Atom {size 8, type Sequence} + body {unit 0, pad 0}
                    buf[:4] = (8, seq_type, 0, 0)
                    self._atom_in.append(buf)
                else:
                    self._atom_out.append((buf, size - 8))
                connect(self.handle, p.index, buf.ctypes.data)
            elif "optional" in p.properties:
                connect(self.handle, p.index, None)
            else:
                connect(self.handle, p.index, scratch.ctypes.data)
        self._clear_atoms()

    def _clear_atoms(self) -> None:
        for buf in self._atom_in:
            buf[:4] = (8, buf[1], 0, 0)
        for buf, capacity in self._atom_out:
            buf[0], buf[1] = capacity, self._chunk_type

    def run(self, n: int) -> None:
        """``run(n)``, then the worker's requests and responses, then ``end_run`` (module docstring)."""
        self._run(self.handle, n)
        if self._atom_out or self._atom_in:
            self._clear_atoms()
        if self.requests or self.responses:
            self._serve_worker()
        if self._end_run is not None:
            self._end_run(self.handle)

    def _serve_worker(self) -> None:
        """Run scheduled work synchronously, then deliver its responses (LV2 worker extension)."""
        w = self.worker
        for _ in range(64):  # work may schedule more work; bounded
            if not self.requests:
                break
            reqs, self.requests = self.requests, []
            for data in reqs:
                buf = ctypes.create_string_buffer(data, len(data))
                w.work(self.handle, _RESPOND_C, self.id, len(data), buf)
        resps, self.responses = self.responses, []
        if w is not None and w.work_response:
            for data in resps:
                buf = ctypes.create_string_buffer(data, len(data))
                w.work_response(self.handle, len(data), buf)

    def free(self) -> None:
        """``deactivate`` (if active), then ``cleanup`` through ``lilv_instance_free``."""
        if getattr(self, "ptr", None):
            if self.active and self._deactivate:
                self._deactivate(self.handle)
            self.active = False
            self.lib.lilv_instance_free(self.ptr)
            self.ptr = None
        _WORKERS.pop(self.id, None)


__all__ = [
    "ATOM_BUFFER_BYTES",
    "FIXED_BLOCK_FEATURES",
    "GIVEN_OPTIONS",
    "LILV_LIBRARY",
    "LV2World",
    "PROVIDED_FEATURES",
    "PortInfo",
    "SATISFIED_FEATURES",
    "UNIT_LABELS",
    "UNIT_SYMBOLS",
    "lilv_library",
    "list_plugins",
    "lv2_world",
    "read_ports",
]
