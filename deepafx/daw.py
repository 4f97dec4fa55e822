"""Automation into a real DAW: an Ardour 7 session that renders what deepafx rendered.

:func:`export_ardour` (the command ``deepafx export --format ardour``) writes an
Ardour session folder that holds one track playing the input (stereo, or mono
for a mono model such as amp emulation's), the
chain's plugins inserted on it in chain order with every parameter that is not
learned set as deepafx sets it, and one automation lane per learned parameter
in Play mode, so that opening it in Ardour plays what ``deepafx process``
renders, and a user can edit the automation there.

**How the session is written.** Ardour's own API does the work wherever it
can: a headless Ardour scripting session (``ardour7-lua``, Ardour's Lua
bindings) creates the session and its track, inserts the plugins
(``ARDOUR.LuaAPI.new_plugin``, LV2 by URI), sets the parameters, writes the
automation lists (``AutomationControl:alist():add``) with their interpolation
style and Play state, places the region on the track's playlist and saves; the
``.ardour`` file is Ardour's own serialization.
One step is not in that API: importing an audio file. Ardour's import
(``Editor:do_import``) needs the GUI's editor, and the Lua bindings of Ardour
7.3 create no source from a file. So between two ``ardour7-lua`` runs the
exporter writes the input as Ardour's import stores it (one mono float WAV per
channel, ``<name>%L.wav`` / ``<name>%R.wav`` in
``interchange/<session>/audiofiles``), adds one ``<Source>`` entry per channel
and one whole-file ``<Region>`` over them and the session range (a
``<Location>``; the Lua bindings construct none) to the saved session XML (the
format Ardour 7.3 writes, version 7002), and the second run loads the session,
where Ardour itself puts a copy of that region on the track and saves everything.

**Exportable chains.** Every stage must be a plugin a DAW hosts: backend
``lv2`` (inserted by URI). Stages no DAW has (pedalboard's built-ins
``pedalboard.*``, deepafx's ``builtin.*`` and ``ddsp.*`` processors, Faust code,
the Dexed engine) are refused with one line naming them. VST3/VST2 stages are
refused too (not done): a headless Ardour session lists a VST3 plugin only after
Ardour's own scanner has indexed it (``ardour-vst3-scanner BUNDLE``; checked with
ZamComp.vst3), and Ardour's VST3 lanes hold the plugin's plain values while
deepafx writes VST3 normalized values through pedalboard, a conversion only the
plugin's controller knows; exporting them needs that mapping and a round trip
that checks it.

**Units.** A lane holds the plugin's own port value, exactly what deepafx's LV2
host writes to the port (:meth:`deepafx.hosts.lv2.LV2Processor.port_values`):
LSP's gain ports, which deepafx presents in dB, hold the linear gain
``10 ** (dB / 20)`` (Ardour shows it in dB); integer and enumeration ports hold
their integer; every other port the value in its unit (Hz, ms, ratio).

**Resolution: how Ardour's lanes reproduce deepafx's render.** The model
predicts one parameter vector per frame (``frame_seconds``, 0.5 s in
mastering); ``deepafx process`` renders the track in blocks of
``block_samples`` (default 1024) and gives block ``b``, samples
``[b·B, (b+1)·B)``, the frame curves linearly interpolated (on the normalized
scale) at the block's centre, held for the whole block: a staircase. Ardour
evaluates a lane at the start of each process cycle and splits a cycle at every
automation point, setting the parameter to the lane's value there. The lanes
are therefore written with **Discrete** interpolation (a value holds until the
next point) and one point at the start of every block whose value differs from
the previous block's, with exactly the block's port value: Ardour then changes
each parameter at the same sample and to the same value as deepafx, and its
cycles (1024 samples, split at the points) start where deepafx's blocks do.
Measured with LSP's compressor and graphic EQ (no latency) the two renders are
identical to the last bit. A plugin with latency moves Ardour's cycles against
the audio (Ardour reads ahead by the latency to compensate it), and LSP's
limiter depends slightly on where runs start (:mod:`deepafx.hosts.lv2`), so
with it (``mastering/quick_lv2``) the renders differ by -42.6 dB relative to
the signal on 30 s of a test-album track with a trained checkpoint, -47 to -53 dB
on short clips with the tests' untrained one (shifting the points by the latency
either way measured worse, -40 dB). Read back at the blocks' starts a lane equals the model's
automation at the blocks' centre times; at the frame times it differs from the frame values by at
most what the curve moves in half a block.

**Plugins whose output depends on where runs start.** Ardour runs plugins in
its own cycles (1024 samples in ``ardour7-export``, split at automation points),
deepafx in its render blocks (and in ``fixed_block`` runs where a chain asks for
them, e.g. 128 samples for guitarix). A plugin that renders the same stream
differently for other run lengths renders differently in Ardour: measured on
the guitarix amp (the chain ``plugins/chains/guitarix_amp.yaml``, ``fixed_block`` 128), a static
preset differs by -14 dB and moving automation by +3 dB (relative to the
signal), where the LSP mastering chain of ``mastering/quick_lv2`` stays below
-45 dB. Such sessions open and play with the right plugins and lanes, but are
not a faithful render.

**Thinning** (``tolerance``): a fraction of each parameter's range on deepafx's
normalized scale (linear or logarithmic, as the chain's table says; 0.01 = 1 %
of the range, e.g. 0.24 dB of a ±12 dB EQ gain). Consecutive blocks whose values
span at most twice the tolerance share one point holding the middle of their
span (:func:`thin_staircase`), so every block is rendered within ``tolerance`` of
its deepafx value and a slowly moving lane keeps a handful of points a person
can edit. The cost depends on the plugin, not only on the tolerance: thinning
only the 16 Hz or 25 Hz band of LSP's graphic EQ at 0.002 (0.05 dB) changed the
output by -29 dB, its 1 kHz band by -62 dB (mastering README, "Into a DAW"). ``tolerance=0`` (the
default) keeps every change: the render then matches deepafx's to float rounding.

**Sample rate and channels.** The session runs at the model's rate; the track
holds the input as deepafx's chain receives it (resampled with soxr to the
model's rate and conformed to the model's channels as ``deepafx process`` does,
see :mod:`deepafx.audio`), so an input at the model's rate and channel count is
copied sample for sample; a mono track's one output feeds both master inputs. **Latency.** Ardour compensates the plugins' latency
(:attr:`deepafx.chain.Chain.latency_samples`, e.g. 220 samples of look-ahead in
LSP's limiter), ``deepafx process`` does not: Ardour's render of sample ``t``
lines up with deepafx's sample ``t + latency``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from deepafx.chain import ChainSpec
from deepafx.hosts.base import PluginError

__all__ = [
    "EXPORT_BACKENDS",
    "ArdourError",
    "SUPERCLOCK_TICKS_PER_SECOND",
    "ExportResult",
    "Lane",
    "ardour_tool",
    "block_staircase",
    "check_exportable",
    "export_ardour",
    "read_session_lanes",
    "render_session",
    "thin_staircase",
]

#: Chain backends that an Ardour session can hold (inserted by URI).
EXPORT_BACKENDS = ("lv2",)
#: Ardour 7 stores times as superclock ticks: this many per second (``Temporal::superclock_ticks_per_second``).
SUPERCLOCK_TICKS_PER_SECOND = 282_240_000
#: Ardour's headless tools (Debian package ``ardour``, 7.x).
ARDOUR_LUA = "ardour7-lua"
ARDOUR_EXPORT = "ardour7-export"
#: Name of the track that holds the input.
TRACK_NAME = "deepafx input"
#: Printed by the Lua scripts when they reach their end (``ardour7-lua`` exits 0 on a script error).
_DONE = "DEEPAFX-ARDOUR-DONE"


class ArdourError(PluginError):
    """Ardour's headless tools failed (their last lines are quoted) or saved an unexpected session."""


# --------------------------------------------------------------------------- checks
def check_exportable(spec: ChainSpec) -> None:
    """Refuse a chain with stages no DAW hosts.

    Args:
        spec: The chain.

    Raises:
        ValueError: one line naming the stages that cannot be exported and the
            chains that can (every stage with a backend in :data:`EXPORT_BACKENDS`).
    """
    bad = [f"{p.name} ({p.backend})" for p in spec.processors if p.backend not in EXPORT_BACKENDS]
    if bad:
        raise ValueError(
            f"chain {spec.name!r} cannot be exported to a DAW: stage(s) {', '.join(bad)} exist only inside deepafx "
            f"(only {'/'.join(EXPORT_BACKENDS)} plugins can be inserted in an Ardour session); exportable chains are "
            "those made of LV2 plugins, e.g. mastering/quick_lv2 or plugins/chains/lsp_mastering_lv2.yaml")


def ardour_tool(name: str) -> str:
    """Path of one of Ardour's headless tools (``ardour7-lua``, ``ardour7-export``).

    Raises:
        FileNotFoundError: not installed, with the command that installs it.
    """
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} not found on PATH: Ardour's headless tools are needed "
                                "(Debian: apt-get install ardour, version 7)")
    return path


# --------------------------------------------------------------------------- automation resolution
def block_staircase(times_s: np.ndarray, params: np.ndarray, num_samples: int, sample_rate: float,
                    block_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The per-block parameters deepafx renders (:func:`deepafx.automation.model.render_automation`).

    Args:
        times_s: ``(frames,)`` frame times in seconds.
        params: ``(frames, num_params)`` normalized on [0, 1].
        num_samples: Length of the track in samples (>= 1).
        sample_rate: Hz.
        block_samples: Render block in samples (>= 1).

    Returns:
        ``(starts (blocks,) int64 samples, values (blocks, num_params) normalized)``:
        block ``b`` starts at ``b * block_samples`` and holds the frame curves
        interpolated at its centre.
    """
    if block_samples < 1 or num_samples < 1:
        raise ValueError(f"need block_samples >= 1 and num_samples >= 1, got {block_samples}, {num_samples}")
    starts = np.arange(0, num_samples, block_samples, dtype=np.int64)
    stops = np.minimum(num_samples, starts + block_samples)
    centres = (starts + stops) / 2 / sample_rate
    values = np.stack([np.interp(centres, times_s, params[:, j]) for j in range(params.shape[1])], axis=1)
    return starts, values


def thin_staircase(values: np.ndarray, tolerance: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The points of a Discrete lane that renders every block within ``tolerance`` of its value.

    Greedy runs of consecutive blocks whose values span at most ``2 * tolerance``;
    each run becomes one point at its first block holding the middle of the run's
    span, so every block is within ``tolerance`` of the lane and the errors are
    centred (holding a run's first value instead lags a moving curve, always in
    the same direction). With ``tolerance=0`` the runs are the blocks of equal
    value and the lane holds exactly the blocks' values.

    Args:
        values: ``(blocks,)`` one parameter's per-block values, normalized on [0, 1].
        tolerance: Largest allowed distance, on the normalized scale, between a
            block's value and the lane's; 0 keeps every change.

    Returns:
        ``(indices (points,) int64, held (points,) float64)``: the first block of
        each run (block 0 always) and the value the lane holds from there.

    Raises:
        ValueError: ``tolerance`` outside [0, 1).
    """
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance is a fraction of each parameter's range on [0, 1), got {tolerance}")
    values = np.asarray(values, dtype=np.float64)
    keep, held = [], []
    b = 0
    while b < len(values):
        lo = hi = values[b]
        e = b + 1
        while e < len(values) and max(hi, values[e]) - min(lo, values[e]) <= 2 * tolerance:
            lo, hi = min(lo, values[e]), max(hi, values[e])
            e += 1
        keep.append(b)
        held.append(values[b] if tolerance == 0 else (lo + hi) / 2)
        b = e
    return np.asarray(keep, dtype=np.int64), np.asarray(held, dtype=np.float64)


@dataclass
class Lane:
    """One automation lane of the session.

    Attributes:
        processor: Chain stage name (``"comp"``).
        param: Full deepafx name (``"comp.threshold_db"``).
        port: LV2 port index (Ardour's parameter id of the plugin control).
        samples: ``(points,)`` int64 point times in samples from the session start.
        values: ``(points,)`` float32 port values (plugin units).
        normalized: ``(points,)`` the same values on deepafx's normalized scale (with
            thinning, the middle of each run's span; else the blocks' values).
    """

    processor: str
    param: str
    port: int
    samples: np.ndarray
    values: np.ndarray
    normalized: np.ndarray


@dataclass
class _Plugin:
    name: str
    uri: str
    fixed: list[tuple[int, float]]
    lanes: list[Lane] = field(default_factory=list)
    latency_samples: int = 0


def _plugins(spec: ChainSpec, starts: np.ndarray, block_values: np.ndarray, tolerance: float) -> list[_Plugin]:
    """Port values of every stage: constant ports and one thinned lane per learned parameter."""
    chain = spec.build()
    try:
        table = chain.param_table
        plugins = []
        # each learned column as its thinned lane holds it, block by block
        held = block_values.copy()
        points = []
        for col in range(block_values.shape[1]):
            keep, value = thin_staircase(block_values[:, col], tolerance)
            held[:, col] = value[np.searchsorted(keep, np.arange(len(held)), side="right") - 1]
            points.append(keep)
        # port values of every block (learned entries from the lanes, the rest as deepafx sets them)
        per_block = [chain.plugin_values(v) for v in held]
        offset = 0
        for k, (ps, proc, sub) in enumerate(zip(spec.processors, chain.processors, chain.tables)):
            learned = [n.split(".", 1)[1] for n in sub.names]
            learned_idx = {proc.param_table.index(n) for n in learned}
            first = proc.port_values(per_block[0][k])
            fixed = [pv for i, pv in enumerate(first) if i not in learned_idx]
            plug = _Plugin(ps.name, str(ps.options["uri"]), [(p, float(np.float32(v))) for p, v in fixed],
                           latency_samples=int(proc.latency_samples))
            ports = np.array([[v for _, v in proc.port_values(pb[k])] for pb in per_block], dtype=np.float32)
            for j, name in enumerate(learned):
                col = offset + j
                keep = points[col]
                i = proc.param_table.index(name)
                plug.lanes.append(Lane(ps.name, table.names[col], first[i][0], starts[keep].astype(np.int64),
                                       ports[keep, i], held[keep, col]))
            offset += len(learned)
            plugins.append(plug)
        return plugins
    finally:
        chain.close()


# --------------------------------------------------------------------------- Ardour scripting
def _run_lua(script: str, what: str, timeout_seconds: float) -> str:
    """Run a Lua script in ``ardour7-lua``; its output, or ArdourError with Ardour's last lines."""
    lua = ardour_tool(ARDOUR_LUA)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        proc = subprocess.run([lua, path], capture_output=True, text=True, timeout=timeout_seconds,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise ArdourError(f"{ARDOUR_LUA} did not finish {what} within {timeout_seconds:g} s") from exc
    finally:
        os.unlink(path)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 or _DONE not in out:
        lines = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("[WARNING]")]
        raise ArdourError(f"{ARDOUR_LUA} failed {what} (exit {proc.returncode}): " + " | ".join(lines[-6:]))
    return out


def _lua_str(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _lua_create(session_dir: Path, name: str, sample_rate: int, channels: int) -> str:
    # a mono track has one output, connected to both master inputs (no panner: both channels carry the track)
    return f"""
local s = create_session({_lua_str(str(session_dir))}, {_lua_str(name)}, {sample_rate})
assert(s, "create_session failed")
local tl = Session:new_audio_track({channels}, {channels}, nil, 1, {_lua_str(TRACK_NAME)},
                                   ARDOUR.PresentationInfo.max_order, ARDOUR.TrackMode.Normal, true)
assert(tl:size() == 1, "new_audio_track failed")
local out = tl:front():output()
local master = Session:master_out():input()
out:disconnect_all(nil)
for c = 0, 1 do
  assert(out:connect(out:audio(c % {channels}), master:audio(c):name(), nil) == 0,
         "cannot connect the track to the master bus")
end
Session:save_state("", false, false, false, false, false)
close_session()
print("{_DONE}")
"""


def _lua_table(values: Sequence[float], fmt: str) -> str:
    return "{" + ",".join(fmt % v for v in values) + "}"


def _lua_build(session_dir: Path, name: str, region_name: str, num_samples: int, plugins: list[_Plugin]) -> str:
    lines = [f"""
assert(load_session({_lua_str(str(session_dir))}, {_lua_str(name)}), "load_session failed")
local track = Session:route_by_name({_lua_str(TRACK_NAME)}):to_track()
assert(not track:isnil(), "no track")
local playlist = track:playlist()
local whole = nil
for _, r in ARDOUR.RegionFactory.regions():iter() do
  if r:whole_file() and r:name() == {_lua_str(region_name)} then whole = r end
end
assert(whole, "the input's region is not in the session")
playlist:add_region(whole, Temporal.timepos_t(0), 1, false)
assert(playlist:n_regions() == 1, "region not placed")
for r in playlist:region_list():iter() do
  local ar = r:to_audioregion()
  ar:set_fade_in_active(false)
  ar:set_fade_out_active(false)
end
local range = Session:locations():session_range_location()
assert(range and range:_end():samples() == {num_samples}, "the session range does not cover the input")
local function param(proc, port)
  return proc:to_automatable():automation_control(
    Evoral.Parameter(ARDOUR.AutomationType.PluginAutomation, 0, port), false)
end
local function set_lane(proc, port, times, values)
  local ac = param(proc, port)
  assert(not ac:isnil(), "no control for port " .. port)
  local al = ac:alist()
  al:clear_list()
  al:set_interpolation(Evoral.InterpolationStyle.Discrete)
  for i = 1, #times do al:add(Temporal.timepos_t(times[i]), values[i], false, false) end
  ac:set_value(values[1], PBD.GroupControlDisposition.NoGroup)
  ac:set_automation_state(ARDOUR.AutoState.Play)
end
"""]
    for k, plug in enumerate(plugins):
        lines.append(f"""
do
  local p = ARDOUR.LuaAPI.new_plugin_with_time_domain(Session, {_lua_str(plug.uri)}, ARDOUR.PluginType.LV2,
                                                      Temporal.TimeDomain.AudioTime, "")
  assert(not p:isnil(), "Ardour cannot load the LV2 plugin " .. {_lua_str(plug.uri)})
  assert(track:add_processor_by_index(p, {k}, nil, true) == 0, "cannot insert " .. {_lua_str(plug.name)})
""")
        for port, value in plug.fixed:
            lines.append(f"  param(p, {port}):set_value({value!r}, PBD.GroupControlDisposition.NoGroup)\n")
        for lane in plug.lanes:
            lines.append(f"  set_lane(p, {lane.port}, {_lua_table(lane.samples, '%d')}, "
                         f"{_lua_table(lane.values.astype(np.float64), '%.9g')})\n")
        lines.append("end\n")
    lines.append(f"""
Session:save_state("", false, false, false, false, false)
close_session()
print("{_DONE}")
""")
    return "".join(lines)


# --------------------------------------------------------------------------- session XML (the audio only)
def _add_input_region(session_file: Path, region_name: str, sources: Sequence[str], num_samples: int,
                      sample_rate: int) -> None:
    """Add the input's sources, one whole-file region over them and the session range to a saved session."""
    tree = ET.parse(session_file)
    root = tree.getroot()
    counter = int(root.get("id-counter", "1000"))
    ticks = SUPERCLOCK_TICKS_PER_SECOND * num_samples
    if ticks % sample_rate:
        raise ValueError(f"sample rate {sample_rate} Hz does not divide Ardour's superclock "
                         f"({SUPERCLOCK_TICKS_PER_SECOND} ticks/s)")
    length = f"a{ticks // sample_rate}@a0"
    src_node = root.find("Sources")
    reg_node = root.find("Regions")
    if src_node is None or reg_node is None:
        raise ArdourError(f"{session_file} has no <Sources>/<Regions>: not an Ardour 7 session")
    ids = []
    for fname in sources:
        counter += 1
        ids.append(str(counter))
        ET.SubElement(src_node, "Source", {"name": fname, "take-id": "", "type": "audio", "flags": "",
                                           "id": ids[-1], "channel": "0", "origin": "", "gain": "1"})
    counter += 1
    attrs = {"name": region_name, "muted": "0", "opaque": "1", "locked": "0", "video-locked": "0", "automatic": "1",
             "whole-file": "1", "import": "1", "external": "0", "sync-marked": "0", "left-of-split": "0",
             "right-of-split": "0", "hidden": "0", "position-locked": "0", "valid-transients": "0", "start": "a0",
             "length": length, "sync-position": "a0", "ancestral-start": "a0", "ancestral-length": "a0@a0",
             "stretch": "1", "shift": "1", "layering-index": "0", "tags": "", "contents": "0",
             "envelope-active": "0", "default-fade-in": "0", "default-fade-out": "0", "fade-in-active": "0",
             "fade-out-active": "0", "scale-amplitude": "1", "id": str(counter), "type": "audio",
             "first-edit": "nothing"}
    for i, sid in enumerate(ids):
        attrs[f"source-{i}"] = sid
    for i, sid in enumerate(ids):
        attrs[f"master-source-{i}"] = sid
    attrs["channels"] = str(len(ids))
    ET.SubElement(reg_node, "Region", attrs)
    loc_node = root.find("Locations")
    if loc_node is None:
        raise ArdourError(f"{session_file} has no <Locations>: not an Ardour 7 session")
    counter += 1  # the session range: ardour7-export renders it (and crashes on a session without one)
    ET.SubElement(loc_node, "Location", {"id": str(counter), "name": "session", "start": "a0",
                                         "end": f"a{ticks // sample_rate}", "flags": "IsSessionRange", "locked": "0",
                                         "timestamp": str(int(time.time())), "cue": "0"})
    root.set("id-counter", str(counter + 1))
    tree.write(session_file, encoding="UTF-8", xml_declaration=True)


# --------------------------------------------------------------------------- reading back and rendering
def _timepos_samples(text: str, sample_rate: int) -> int:
    """Ardour 7 audio time ``a<superclock>`` → samples."""
    if not text.startswith("a"):
        raise ValueError(f"expected an audio-time position 'a<superclock>', got {text!r}")
    return int(round(int(text[1:]) * sample_rate / SUPERCLOCK_TICKS_PER_SECOND))


def read_session_lanes(session_file: str | Path) -> dict[str, dict[str, Any]]:
    """The plugin automation lanes of the first track of a saved session, read from its XML.

    Args:
        session_file: The ``.ardour`` file.

    Returns:
        ``{"<order>:<port index>": {"samples": (points,) int64, "values":
        (points,) float64, "interpolation": str, "time_domain": str, "state": str, "uri": str,
        "name": str, "order": int}}`` for every lane with points; ``order`` is
        the plugin's position among the track's plugins (0 = first), ``name``
        the plugin's name in Ardour.

    Raises:
        ValueError: not an Ardour 7 session file.
    """
    root = ET.parse(session_file).getroot()
    rate = int(root.get("sample-rate", "0"))
    if root.tag != "Session" or rate <= 0:
        raise ValueError(f"{session_file} is not an Ardour session file")
    out: dict[str, dict[str, Any]] = {}
    routes = [r for r in root.iter("Route") if r.get("name") == TRACK_NAME]
    if not routes:
        raise ValueError(f"{session_file} has no track {TRACK_NAME!r}")
    plugins = [p for p in routes[0].findall("Processor") if p.get("type") in ("lv2", "vst3", "windows-vst", "lxvst")]
    for order, proc in enumerate(plugins):
        for al in proc.iterfind("Automation/AutomationList"):
            aid = al.get("automation-id", "")
            ev = al.find("events")
            text = (ev.text or "").split() if ev is not None else []
            if not aid.startswith("parameter-") or not text:
                continue
            port = int(aid[len("parameter-"):])
            out[f"{order}:{port}"] = {
                "samples": np.array([_timepos_samples(t, rate) for t in text[0::2]], dtype=np.int64),
                "values": np.array([float(v) for v in text[1::2]]),
                "interpolation": al.get("interpolation-style", ""),
                "time_domain": al.get("time-domain", ""),
                "state": al.get("state", ""),
                "uri": proc.get("unique-id", ""),
                "name": proc.get("name", ""),
                "order": order,
            }
    return out


def render_session(session_dir: str | Path, output: str | Path, timeout_seconds: float = 600.0) -> Path:
    """Render a session's range through its master bus with ``ardour7-export`` (32-bit float WAV).

    Args:
        session_dir: The session folder (its ``.ardour`` file has the folder's name).
        output: WAV file to write.
        timeout_seconds: Longest the render may take.

    Returns:
        The WAV path.

    Raises:
        FileNotFoundError: ``ardour7-export`` or the session file is missing.
        ArdourError: the render failed or wrote nothing.
    """
    d = Path(session_dir)
    files = sorted(d.glob("*.ardour"))
    if not files:
        raise FileNotFoundError(f"no .ardour session file in {d}")
    out = Path(output).resolve()
    tool = ardour_tool(ARDOUR_EXPORT)
    try:
        proc = subprocess.run([tool, "-b", "float", "-o", str(out), str(d), files[0].stem], capture_output=True,
                              text=True, timeout=timeout_seconds, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise ArdourError(f"{ARDOUR_EXPORT} did not finish within {timeout_seconds:g} s") from exc
    if proc.returncode != 0 or not out.exists():
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-6:])
        raise ArdourError(f"{ARDOUR_EXPORT} failed on {d} (exit {proc.returncode}): {tail}")
    return out


# --------------------------------------------------------------------------- the export
@dataclass
class ExportResult:
    """What :func:`export_ardour` wrote.

    Attributes:
        session_dir: The session folder.
        session_file: Its ``.ardour`` file.
        lanes: Every automation lane written (port values, normalized values, point times).
        num_blocks: Render blocks of the track (points per lane without thinning, at most).
        sample_rate: Session rate, Hz (the model's).
        num_samples: Track length in samples.
        latency_samples: The chain's latency in deepafx, samples: ``deepafx process``'s output
            sample ``t + latency_samples`` lines up with Ardour's sample ``t`` (Ardour compensates
            the plugins' own latency; deepafx's ``fixed_block`` FIFOs do not exist in Ardour).
        tolerance: Thinning tolerance used (fraction of each range).
        notes: What was changed on the way (resampling, channels).
        seconds: Wall time of the export.
    """

    session_dir: Path
    session_file: Path
    lanes: list[Lane]
    num_blocks: int
    sample_rate: int
    num_samples: int
    latency_samples: int
    tolerance: float
    notes: list[str]
    seconds: float

    @property
    def num_points(self) -> int:
        """Automation points over all lanes."""
        return int(sum(len(lane.samples) for lane in self.lanes))

    def summary(self) -> str:
        """Human-readable report for the command line."""
        lines = [f"session: {self.session_file} (Ardour 7, {self.sample_rate} Hz, "
                 f"{self.num_samples / self.sample_rate:.2f} s)",
                 f"automation: {len(self.lanes)} lanes, {self.num_points} points "
                 f"({self.num_blocks} render blocks; tolerance {self.tolerance:g} of each range), Discrete, Play",
                 f"latency: {self.latency_samples} samples in deepafx (Ardour compensates the plugins' own: "
                 f"deepafx process output sample t + {self.latency_samples} lines up with Ardour's sample t)"]
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"exported in {self.seconds:.1f} s; open it with: ardour7 {self.session_file}")
        return "\n".join(lines)


def _session_name(out_dir: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", out_dir.name).strip("._") or "deepafx"
    return name


def export_ardour(checkpoint: str | Path, input_path: str | Path, out_dir: str | Path, tolerance: float = 0.0,
                  block_samples: int = 1024, smoothing_frames: int = 3, static: bool = False, force: bool = False,
                  timeout_seconds: float = 600.0) -> ExportResult:
    """Write an Ardour 7 session that plays what ``deepafx process`` renders (module docstring).

    Args:
        checkpoint: Checkpoint file or run folder of an automation recipe whose chain is exportable.
        input_path: Audio file (any rate and channel count, as ``deepafx process``).
        out_dir: Session folder to create; its name (sanitized) names the session.
        tolerance: Thinning tolerance, a fraction of each parameter's range on
            deepafx's normalized scale, on [0, 1); 0 keeps every block's change.
        block_samples: deepafx's render block in samples at the model's rate
            (``deepafx process --block-samples``; >= 1).
        smoothing_frames: Moving average over frames (``deepafx process --smoothing-frames``).
        static: One parameter set for the whole file (``deepafx process --static``).
        force: Replace an existing ``out_dir``.
        timeout_seconds: Longest each Ardour run may take.

    Returns:
        :class:`ExportResult`.

    Raises:
        FileExistsError: ``out_dir`` exists and ``force`` is False.
        FileNotFoundError: missing input, checkpoint or Ardour tools.
        ValueError: a chain that cannot be exported, unreadable input, bad settings.
        ArdourError: Ardour failed (its last lines are quoted).
        On any error nothing is left at ``out_dir`` (an existing one stays as it was).
    """
    from deepafx.audio import conform, read_audio, resample
    from deepafx.automation.model import predict_automation
    from deepafx.automation.process import load_automation_checkpoint

    t_start = time.perf_counter()
    if not 0.0 <= float(tolerance) < 1.0:
        raise ValueError(f"--tolerance is a fraction of each parameter's range on [0, 1), got {tolerance}")
    if int(block_samples) < 1 or int(smoothing_frames) < 1:
        raise ValueError(f"need block_samples >= 1 and smoothing_frames >= 1, got {block_samples}, {smoothing_frames}")
    out = Path(out_dir)
    if out.exists() and not force:
        raise FileExistsError(f"refusing to overwrite {out}; pass --force to replace it")
    src = read_audio(input_path)
    model, _, _ = load_automation_checkpoint(checkpoint)
    spec = model.chain
    check_exportable(spec)
    ardour_tool(ARDOUR_LUA)
    rate = int(round(model.sample_rate))
    if rate != model.sample_rate:
        raise ValueError(f"the model's rate {model.sample_rate} Hz is not a whole number of Hz")
    x, notes = conform(src.audio, src.sample_rate, src.sample_rate, model.channels, channel_mask=src.channel_mask)
    if float(src.sample_rate) != float(model.sample_rate):
        x = resample(x, src.sample_rate, model.sample_rate)
        notes.append(f"resampled from {src.sample_rate:g} Hz to the model's {rate} Hz (soxr): the session runs at "
                     f"{rate} Hz")
    channels = int(x.shape[0])
    if channels not in (1, 2):
        raise ValueError(f"a session track is mono or stereo; this model processes {channels} channels")
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[1]
    times_s, params = predict_automation(model, x, smoothing_frames=int(smoothing_frames), static=bool(static))
    starts, block_values = block_staircase(times_s, params, n, model.sample_rate, int(block_samples))
    plugins = _plugins(spec, starts, block_values, float(tolerance))

    out.parent.mkdir(parents=True, exist_ok=True)
    name = _session_name(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        sdir = tmp / name
        _run_lua(_lua_create(sdir, name, rate, channels), "creating the session", timeout_seconds)
        import soundfile as sf

        audio_dir = sdir / "interchange" / name / "audiofiles"
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(input_path).stem) or "input"
        files = [f"{stem}%L.wav", f"{stem}%R.wav"] if channels == 2 else [f"{stem}.wav"]
        for ch, fname in enumerate(files):
            sf.write(audio_dir / fname, x[ch], rate, subtype="FLOAT")
        session_file = sdir / f"{name}.ardour"
        _add_input_region(session_file, stem, files, n, rate)
        _run_lua(_lua_build(sdir, name, stem, n, plugins), "inserting the plugins and automation", timeout_seconds)
        _check_saved(session_file, plugins, channels)
        for leftover in sdir.glob("*.bak"):
            leftover.unlink()
        old = None
        if out.exists():
            old = tmp / "replaced"
            out.rename(old)
        sdir.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lanes = [lane for plug in plugins for lane in plug.lanes]
    latency = int(sum(p.latency_samples for p in plugins))
    return ExportResult(out, out / f"{name}.ardour", lanes, len(starts), rate, n, latency, float(tolerance), notes,
                        time.perf_counter() - t_start)


def _check_saved(session_file: Path, plugins: list[_Plugin], channels: int) -> None:
    """The saved session holds the region on the track and every plugin and lane, in order (else ArdourError)."""
    root = ET.parse(session_file).getroot()
    regions = [r for pl in root.iter("Playlist") for r in pl.findall("Region")]
    if len(regions) != 1 or regions[0].get("channels") != str(channels):
        raise ArdourError(f"Ardour saved {len(regions)} region(s) on the playlist of {session_file}, expected one "
                          f"region of {channels} channel(s)")
    lanes = read_session_lanes(session_file)
    uris = sorted({(v["order"], v["uri"]) for v in lanes.values()})
    for k, plug in enumerate(plugins):
        for lane in plug.lanes:
            if f"{k}:{lane.port}" not in lanes:
                raise ArdourError(f"Ardour did not save the lane of {lane.param} (port {lane.port}) in {session_file}")
    want = [p.uri for p in plugins if p.lanes]
    got = [u for _, u in uris]
    if got != want:
        raise ArdourError(f"plugins saved in the order {got}, expected {want}")
