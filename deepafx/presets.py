"""One parameter set as LV2 presets a user loads in the same plugins, in any LV2 host.

``deepafx process --static --lv2-preset DIR`` predicts one parameter set for the
whole file (a preset rather than automation) and writes, for every LV2 stage of
the chain, an LV2 preset bundle ``DIR/<name>-<stage>.lv2/`` holding
``manifest.ttl`` and ``<name>-<stage>.ttl`` in the LV2 Presets extension's
format (http://lv2plug.in/ns/ext/presets): the preset applies to the stage's
plugin URI and lists every input control port by symbol with its value. Copied
to ``~/.lv2/`` (or any folder on ``LV2_PATH``), it shows in the host's preset
menu of that plugin (Ardour, Carla, Qtractor, guitarix's own host …).

Values are the plugin's port values, exactly what deepafx's LV2 host writes
to the ports (:meth:`deepafx.hosts.lv2.LV2Processor.port_values`): learned
parameters as predicted, fixed parameters as the config sets them, every other
port at the value the plugin was instantiated with (its default). LSP's gain
ports, presented in dB by deepafx, hold the linear gain the plugin expects.
Stages that are not LV2 plugins (pedalboard's or deepafx's built-ins) have no
preset; their values stay in the automation file, and the result says so.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from deepafx.chain import ChainSpec

__all__ = ["lv2_preset_files"]

PRESET_BACKENDS = ("lv2",)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "preset"


def _literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def lv2_preset_files(spec: ChainSpec, normalized: Sequence[float] | np.ndarray, out_dir: str | Path,
                     name: str) -> tuple[list[tuple[Path, bytes]], list[str]]:
    """The files of one LV2 preset bundle per LV2 stage, for one parameter set of the chain.

    Args:
        spec: The chain.
        normalized: ``(num_params,)`` learned parameters normalized on [0, 1] (the chain's
            parameter table order), e.g. a static :class:`~deepafx.automation.process.Automation`'s frame.
        out_dir: Folder the bundles go in (``out_dir/<name>-<stage>.lv2/``).
        name: Preset name (its label is ``"deepafx <name> (<stage>)"``; the file names use a slug of it).

    Returns:
        ``(files, skipped)``: ``(path, Turtle bytes)`` pairs for :func:`deepafx.audio.write_files_atomic`,
        and one line per stage that is not an LV2 plugin and so has no preset.

    Raises:
        ValueError: the chain has no LV2 stage (names the backends it has and what takes a preset).
        deepafx.hosts.base.ParameterError: ``normalized`` of the wrong shape, NaN or outside [0, 1].
        deepafx.hosts.base.PluginError: a plugin cannot be loaded.
    """
    if not any(p.backend in PRESET_BACKENDS for p in spec.processors):
        stages = ", ".join(f"{p.name} ({p.backend})" for p in spec.processors)
        raise ValueError(f"chain {spec.name!r} has no LV2 stage to write a preset for (stages: {stages}); LV2 presets "
                         "need an LV2 chain, e.g. mastering/quick_lv2 or amp_emulation/quick_gx")
    out_dir = Path(out_dir)
    files: list[tuple[Path, bytes]] = []
    skipped: list[str] = []
    chain = spec.build()
    try:
        per_proc = chain.plugin_values(np.asarray(normalized, dtype=np.float64))
        for ps, proc, values in zip(spec.processors, chain.processors, per_proc):
            if ps.backend not in PRESET_BACKENDS:
                skipped.append(f"{ps.name} ({ps.backend}): not an LV2 plugin, no preset (its values are in the "
                               "automation file)")
                continue
            set_ports = dict(proc.port_values(values))
            ports = []
            for port in proc.ports:
                if port.kind != "control" or not port.is_input:
                    continue
                value = set_ports.get(port.index)
                if value is None:
                    value = proc.port_value(port.symbol)
                ports.append((port.symbol, float(np.float32(value))))
            uri = str(ps.options["uri"])
            stem = f"{_slug(name)}-{_slug(ps.name)}"
            label = f"deepafx {name} ({ps.name})"
            port_lines = " ,\n".join(f'        [ lv2:symbol {_literal(sym)} ; pset:value {val!r} ]'
                                     for sym, val in ports)
            preset = (
                "@prefix lv2: <http://lv2plug.in/ns/lv2core#> .\n"
                "@prefix pset: <http://lv2plug.in/ns/ext/presets#> .\n"
                "@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .\n\n"
                f"<>\n    a pset:Preset ;\n    lv2:appliesTo <{uri}> ;\n    rdfs:label {_literal(label)} ;\n"
                f"    lv2:port\n{port_lines} .\n"
            )
            manifest = (
                "@prefix lv2: <http://lv2plug.in/ns/lv2core#> .\n"
                "@prefix pset: <http://lv2plug.in/ns/ext/presets#> .\n"
                "@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .\n\n"
                f"<{stem}.ttl>\n    a pset:Preset ;\n    lv2:appliesTo <{uri}> ;\n    rdfs:seeAlso <{stem}.ttl> .\n"
            )
            bundle = out_dir / f"{stem}.lv2"
            files += [(bundle / "manifest.ttl", manifest.encode()), (bundle / f"{stem}.ttl", preset.encode())]
    finally:
        chain.close()
    return files, skipped
