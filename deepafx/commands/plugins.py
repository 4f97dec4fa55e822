"""``deepafx plugins``: list the plugins this machine can host, or one plugin's parameters.

``deepafx plugins`` lists, without loading anything: LV2 plugins by URI and name
(their Turtle data, read through liblilv: :mod:`deepafx.hosts.lv2`), VST3 bundles (``/usr/lib/vst3``,
``/usr/local/lib/vst3``, ``~/.vst3``), VST2 ``.so`` files (``/usr/lib/vst``,
``/usr/lib/lxvst``, ``/usr/local/lib/vst``, ``~/.vst``, recursively), the packaged
Faust DSP files (``faust/``), parameter maps (``param_maps/``) and chain configs
(``chains/``) of :func:`deepafx.assets.plugins_dir`, the packaged recipe configs
(:func:`deepafx.assets.recipes_dir`, by name for ``--config``) and the registered
backends.

``deepafx plugins --details NAME_OR_PATH`` loads one plugin (an LV2 plugin by its
URI), Faust file, chain config or backend and prints its parameter table (plugin units). The load runs
in a child process with a time limit (``--timeout``), so a plugin that hangs or
crashes while loading (ZamVerb.vst3 hangs) is reported instead of stopping the
command.

``deepafx plugins --cluster ADDRESS`` runs the listing on every machine of a Ray
cluster (``auto`` for the cluster this machine joined) and reports what each
machine lacks; with ``--details NAME`` it loads that plugin or chain on every
machine. Exit status 1 when a machine lacks something or fails to load it:
check a render cluster before training with ``render: {engine: ray}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from deepafx.assets import plugins_dir, recipes_dir, resolve_chain
from deepafx.hosts.base import PluginError, available_backends
from deepafx.hosts.dawdreamer_host import VST2_DIRS, find_vst2
from deepafx.hosts.lv2 import list_plugins as list_lv2_plugins
from deepafx.hosts.plugin_params import resolve_asset
from deepafx.hosts.vst3 import VST3_DIRS, find_vst3

#: Shared libraries that sit among VST2 plugins but are not plugins (LSP's core library).
NOT_PLUGINS = ("lsp-plugins-vst2-",)
_MARKER = "DEEPAFX_DETAILS_JSON:"


def find_plugins() -> dict[str, list[str]]:
    """Everything hostable found on this machine, by kind, without loading any of it.

    Returns:
        ``lv2``: plugin URIs (empty without liblilv); absolute paths by kind:
        ``vst3``, ``vst2``, ``faust``, ``param_maps``, ``chains``, ``configs``
        (packaged recipe configs); and ``backends`` (names).
    """

    def files(dirs: tuple[Path, ...], pattern: str, recursive: bool) -> list[str]:
        out: list[str] = []
        for d in dirs:
            if d.is_dir():
                found = d.rglob(pattern) if recursive else d.glob(pattern)
                out += [str(p) for p in sorted(found) if not p.name.startswith(NOT_PLUGINS)]
        return out

    assets = plugins_dir()
    return {
        "lv2": [uri for uri, _ in list_lv2_plugins()],
        "vst3": files(VST3_DIRS, "*.vst3", False),
        "vst2": files(VST2_DIRS, "*.so", True),
        "faust": files((assets / "faust",), "*.dsp", False),
        "param_maps": files((assets / "param_maps",), "*.yaml", False),
        "chains": [p for ext in ("*.yaml", "*.yml", "*.json") for p in files((assets / "chains",), ext, False)],
        "configs": [p for ext in ("*/*.yaml", "*/*.yml") for p in files((recipes_dir(),), ext, False)],
        "backends": available_backends(),
    }


def _spec_for(target: str, param_map: str | None) -> dict[str, Any]:
    """Decide how to load ``target``: ``{"kind": "chain"|"processor", ...}``.

    Raises:
        PluginError: nothing matches (the message lists what was tried), or a
            refused VST3 bundle.
    """
    extra = {"param_map": param_map} if param_map else {}
    p = Path(target)
    tried = []
    if p.suffix in (".yaml", ".yml", ".json") or (plugins_dir() / "chains" / f"{target}.yaml").is_file():
        try:
            return {"kind": "chain", "path": str(resolve_chain(target))}
        except FileNotFoundError as exc:
            tried.append(str(exc))
    if p.suffix == ".dsp" or (plugins_dir() / "faust" / f"{target}.dsp").is_file():
        name = target if p.suffix == ".dsp" else f"{target}.dsp"
        try:
            dsp = str(resolve_asset(name, ("faust",), "Faust DSP"))
            return {"kind": "processor", "backend": "faust", "options": {"dsp": dsp, **extra}}
        except PluginError as exc:
            tried.append(str(exc))
    if target in available_backends():
        return {"kind": "processor", "backend": target, "options": extra}
    if "://" in target or target.startswith("urn:"):  # an LV2 plugin URI
        from deepafx.hosts.lv2 import lv2_world

        lv2_world().plugin(target)  # raises with the closest installed URIs
        return {"kind": "processor", "backend": "lv2", "options": {"uri": target, **extra}}
    if p.suffix != ".so":
        try:
            return {"kind": "processor", "backend": "vst3", "options": {"path": str(find_vst3(target)), **extra}}
        except PluginError as exc:
            tried.append(str(exc))
            if p.suffix == ".vst3":  # a bundle pedalboard cannot load: dawdreamer (JUCE too) will not either
                raise
    try:
        return {"kind": "processor", "backend": "dawdreamer", "options": {"path": str(find_vst2(target)), **extra}}
    except PluginError as exc:
        tried.append(str(exc))
    raise PluginError(f"cannot resolve {target!r}:\n  " + "\n  ".join(tried))


def _load_details(spec: dict[str, Any], sample_rate: float) -> dict[str, Any]:
    """Load ``spec`` in this process and describe it (runs in the child process)."""
    from deepafx.chain import ChainSpec
    from deepafx.hosts.base import ProcessorSpec, build_processor
    from deepafx.hosts.plugin_params import describe_labels

    if spec["kind"] == "chain":
        chain_spec = ChainSpec.from_file(spec["path"])
        chain = chain_spec.build()
        try:
            return {
                "kind": "chain",
                "path": spec["path"],
                "sample_rate": chain_spec.sample_rate,
                "latency_samples": chain.latency_samples,
                "num_params": len(chain.param_table),
                "describe": chain.describe(),
                "params": [_param_dict(p) for p in chain.param_table],
            }
        finally:
            chain.close()
    proc = build_processor(ProcessorSpec(backend=spec["backend"], name="plugin", options=spec["options"]), sample_rate)
    bindings = getattr(proc, "bindings", None)  # third-party plugin backends: enum labels
    if hasattr(proc, "describe_labels"):  # LV2: scale-point labels of the plugin's own values
        labels = proc.describe_labels()
    else:
        labels = describe_labels(bindings) if bindings else ""
    return {
        "kind": "processor",
        "backend": spec["backend"],
        "options": spec["options"],
        "sample_rate": sample_rate,
        "latency_samples": int(proc.latency_samples),
        "num_input_channels": proc.num_input_channels,
        "is_instrument": bool(proc.is_instrument),
        "num_params": len(proc.param_table),
        "describe": proc.param_table.describe(),
        "labels": labels,
        "params": [_param_dict(p) for p in proc.param_table],
    }


def _param_dict(p: Any) -> dict[str, Any]:
    return {"name": p.name, "min": p.min, "max": p.max, "default": p.default, "unit": p.unit, "scale": p.scale,
            "values": list(p.values) if p.values is not None else None}


def details(
    target: str, sample_rate: float = 44100.0, timeout_seconds: float = 60.0, param_map: str | None = None
) -> dict[str, Any]:
    """Load ``target`` in a child process and return its description.

    Args:
        target: Plugin path or name, Faust file, chain config or backend name.
        sample_rate: Rate in Hz to load at.
        timeout_seconds: Seconds before the child is killed.
        param_map: Optional parameter map for a single plugin.

    Returns:
        ``{"kind", "describe", "params", "latency_samples", …}``.

    Raises:
        PluginError: ``target`` matches no plugin, file or backend (lists what was tried).
        RuntimeError: the child timed out, crashed or failed (with its error output).
    """
    spec = _spec_for(target, param_map)
    cmd = [sys.executable, "-m", "deepafx.commands.plugins", "--_child", json.dumps(spec), str(sample_rate)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"loading {target!r} did not finish within {timeout_seconds:g} s (the plugin hangs while loading?); "
            "raise --timeout if it is only slow"
        ) from None
    for line in res.stdout.splitlines()[::-1]:
        if line.startswith(_MARKER):
            out = json.loads(line[len(_MARKER):])
            if "error" in out:
                raise RuntimeError(f"loading {target!r} failed: {out['error']}")
            return out
    tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-8:])
    raise RuntimeError(f"loading {target!r} crashed (exit status {res.returncode}):\n{tail}")


def _child(spec_json: str, sample_rate: str) -> None:
    spec = json.loads(spec_json)
    try:
        out = _load_details(spec, float(sample_rate))
    except Exception as exc:  # reported to the parent, which raises with the message
        out = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write("\n" + _MARKER + json.dumps(out) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip plugin destructors (some print warnings or hang at exit)


def cluster_plugins(address: str | None) -> dict[str, dict[str, list[str]]]:
    """:func:`find_plugins` on every machine of a Ray cluster.

    Args:
        address: The cluster (:func:`deepafx.ray_pool.connect`: ``"auto"``,
            ``"HOST:PORT"``, ``"ray://HOST:10001"``; ``None`` for the connection
            this process already has, else a private local instance).

    Returns:
        ``{"HOST (IP)": find_plugins() there}``; a machine that failed maps to
        ``{"error": [message]}``.

    Raises:
        ConnectionError: no cluster at ``address``.
        ImportError: ray is not installed.
    """
    return _on_cluster(address, find_plugins)


def cluster_details(address: str | None, target: str, sample_rate: float = 44100.0, timeout_seconds: float = 60.0,
                    param_map: str | None = None) -> dict[str, dict[str, Any]]:
    """:func:`details` of ``target`` on every machine of a Ray cluster (each loads it in a child process).

    Returns:
        ``{"HOST (IP)": details}``, or ``{"error": message}`` for a machine that failed.

    Raises:
        ConnectionError: no cluster at ``address``.
    """
    return _on_cluster(address, details, target, sample_rate, timeout_seconds, param_map)


def _on_cluster(address: str | None, fn, *args) -> dict[str, Any]:
    from deepafx.ray_pool import connect, disconnect, on_every_node

    connect(address)
    try:
        results = on_every_node(fn, *args)
    finally:
        disconnect()
    return {host: {"error": f"{type(r).__name__}: {r}"} if isinstance(r, BaseException) else r
            for host, r in results.items()}


def _name(kind: str, item: str) -> str:
    """What to compare across machines: URIs and backends as they are, files by name (install paths differ)."""
    return item if kind in ("lv2", "backends") else Path(item).name


def _run_cluster(args: argparse.Namespace) -> int:
    if args.details:
        report = cluster_details(args.cluster, args.details, args.sample_rate, args.timeout, args.param_map)
        if args.json:
            print(json.dumps(report, indent=2))
        failed = 0
        for host, info in sorted(report.items()):
            if "error" in info:
                failed += 1
                print(f"{host}: FAILED: {info['error']}")
            else:
                print(f"{host}: ok, {info['num_params']} parameter(s), latency {info['latency_samples']} samples")
        counts = {info["num_params"] for info in report.values() if "error" not in info}
        if len(counts) > 1:
            print(f"machines disagree on the parameter count ({sorted(counts)}): install the same plugin versions")
            failed += 1
        print(f"{args.details}: loads on {len(report) - failed} of {len(report)} machine(s)")
        return 1 if failed else 0
    report = cluster_plugins(args.cluster)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    errors = {h: r["error"] for h, r in report.items() if "error" in r}
    listed = {h: r for h, r in report.items() if "error" not in r}
    union = {k: {_name(k, i) for r in listed.values() for i in r.get(k, [])}
             for k in ("lv2", "vst3", "vst2", "faust", "chains", "backends")}
    missing = 0
    for host, found in sorted(listed.items()):
        counts = ", ".join(f"{len(found.get(k, []))} {k}" for k in union)
        print(f"{host}: {counts}")
        for kind, names in union.items():
            lacks = sorted(names - {_name(kind, i) for i in found.get(kind, [])})
            if lacks:
                missing += 1
                print(f"  lacks {len(lacks)} {kind}: {', '.join(lacks[:20])}{' …' if len(lacks) > 20 else ''}")
    for host, err in sorted(errors.items()):
        print(f"{host}: FAILED: {err}")
    if missing or errors:
        print("install the missing plugins on those machines (scripts/install.sh there installs the Debian packages)")
        return 1
    print(f"every machine ({len(listed)}) has the same plugins")
    return 0


def run(args: argparse.Namespace) -> int:
    if getattr(args, "cluster", None):
        return _run_cluster(args)
    if args.details:
        try:
            info = details(args.details, args.sample_rate, args.timeout, args.param_map)
        except (PluginError, RuntimeError) as exc:
            print(f"deepafx plugins: {exc}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(info, indent=2))
            return 0
        if info["kind"] == "chain":
            print(info["describe"])
            return 0
        print(f"{args.details}: backend {info['backend']}, {info['num_params']} parameter(s), "
              f"latency {info['latency_samples']} samples at {info['sample_rate']:g} Hz, "
              f"input channels {info['num_input_channels'] or 'any'}")
        print(info["describe"])
        if info.get("labels"):
            print("value labels:\n" + info["labels"])
        return 0
    found = find_plugins()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    lv2_names = dict(list_lv2_plugins())
    titles = {
        "lv2": "LV2 (backend lv2, options {uri: URI})",
        "vst3": "VST3 (backend vst3, or dawdreamer)",
        "vst2": "VST2 (backend dawdreamer)",
        "faust": "Faust DSP (backend faust)",
        "param_maps": "parameter maps",
        "chains": "chain configs (a chain: in a recipe config, by name or path)",
        "configs": "recipe configs (deepafx train --config NAME, from any folder)",
        "backends": "registered backends",
    }
    for key, title in titles.items():
        print(f"{title}: {len(found[key])}")
        for item in found[key]:
            if key == "lv2":
                item = f"{item:<64} {lv2_names.get(item, '')}"
            elif key == "chains":
                item = f"{Path(item).stem:<24} {item}"
            elif key == "configs":
                item = f"{Path(item).parent.name + '/' + Path(item).stem:<24} {item}"
            print(f"  {item}")
    print("Show a table: deepafx plugins --details NAME_OR_PATH_OR_LV2_URI")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plugins",
        help="list hostable plugins, or show one plugin's parameter table",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--details", metavar="NAME_OR_PATH",
                   help="LV2 plugin URI, plugin path or name, .dsp file, chain config or backend name to load "
                        "and describe")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--param-map", default=None, help="parameter map YAML for --details of a single plugin")
    p.add_argument("--sample-rate", type=float, default=44100.0, help="rate in Hz for --details (default 44100)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds allowed for loading with --details (default 60)")
    p.add_argument("--cluster", metavar="ADDRESS", default=None,
                   help="run on every machine of a Ray cluster (auto, HOST:6379 or ray://HOST:10001) and report "
                        "what each lacks; with --details, load it on every machine; exit status 1 on a difference")
    p.set_defaults(func=run)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--_child":
        _child(sys.argv[2], sys.argv[3])
    sys.exit(2)
