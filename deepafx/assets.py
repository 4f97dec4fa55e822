"""Where the shipped assets live: plugin files and recipe configs.

Two asset folders ship with the package:

* ``plugins/`` — Faust DSP files (``faust/*.dsp``), chain configs
  (``chains/*.yaml``) and parameter maps (``param_maps/*.yaml``);
* ``recipes/`` — recipe configs (``<recipe>/*.yaml``) and a README per recipe.

In the repository they sit at the top level. A regular install (``pip install .``)
copies them into the package as ``deepafx/_assets/plugins`` and
``deepafx/_assets/recipes`` (``package-dir`` mapping in ``pyproject.toml``).
:func:`plugins_dir` and :func:`recipes_dir` return the installed copy when it
exists, else the repository folder next to the package (editable install,
source checkout), so every lookup works from any working directory.

Names: a packaged chain is named by its file stem (``zam_mastering``), a packaged
recipe config by ``<recipe>/<stem>`` (``mastering/quick``).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_CHAIN_SUFFIXES = (".yaml", ".yml", ".json")
_CONFIG_SUFFIXES = (".yaml", ".yml")


def _asset_dir(name: str) -> Path:
    packaged = _PACKAGE_DIR / "_assets" / name
    return packaged if packaged.is_dir() else _PACKAGE_DIR.parent / name


def plugins_dir() -> Path:
    """The plugin asset folder (``faust/``, ``chains/``, ``param_maps/``).

    Returns:
        ``deepafx/_assets/plugins`` of a regular install, else the repository's
        ``plugins/`` (editable install or source checkout). The folder may be
        absent only in a broken install.
    """
    return _asset_dir("plugins")


def recipes_dir() -> Path:
    """The recipe config folder (``<recipe>/*.yaml``).

    Returns:
        ``deepafx/_assets/recipes`` of a regular install, else the repository's
        ``recipes/``.
    """
    return _asset_dir("recipes")


def packaged_chains() -> list[str]:
    """Names (file stems) of the packaged chain configs, sorted, e.g. ``["lsp_mastering", "zam_mastering"]``."""
    folder = plugins_dir() / "chains"
    if not folder.is_dir():
        return []
    return sorted({p.stem for p in folder.iterdir() if p.is_file() and p.suffix in _CHAIN_SUFFIXES})


def packaged_configs() -> list[str]:
    """Names of the packaged recipe configs, sorted, e.g. ``["dexed_matching/quick", "mastering/quick"]``."""
    root = recipes_dir()
    if not root.is_dir():
        return []
    return sorted(
        f"{p.parent.name}/{p.stem}"
        for p in root.glob("*/*")
        if p.is_file() and p.suffix in _CONFIG_SUFFIXES
    )


def _packaged_candidates(name: str, folder: Path, prefixes: tuple[str, ...], suffixes: tuple[str, ...]) -> list[Path]:
    """Files under ``folder`` that a relative ``name`` may mean.

    Leading folder names in ``prefixes`` (in order; the old repository-relative
    spellings) are dropped; a name without one of ``suffixes`` gets each of them.
    """
    parts = list(Path(name).parts)
    for prefix in prefixes:
        if len(parts) > 1 and parts[0] == prefix:
            parts = parts[1:]
    if not parts:
        return []
    rel = Path(*parts)
    if rel.suffix in suffixes:
        return [folder / rel]
    return [folder / rel.with_name(rel.name + s) for s in suffixes]


def _resolve(name_or_path: str | Path, folder: Path, prefixes: tuple[str, ...],
             suffixes: tuple[str, ...]) -> tuple[Path | None, list[Path]]:
    p = Path(name_or_path).expanduser()
    tried = [p if p.is_absolute() else Path.cwd() / p]
    if p.is_file():
        return p, tried
    if p.is_absolute():
        return None, tried
    for cand in _packaged_candidates(str(p), folder, prefixes, suffixes):
        tried.append(cand)
        if cand.is_file():
            return cand, tried
    return None, tried


def _one_line(items: list[Path]) -> str:
    return ", ".join(str(t) for t in items).replace("\n", " ")


def resolve_config(name_or_path: str | Path) -> Path:
    """Find a recipe config given as a path or as a packaged name.

    A file that exists (absolute, or relative to the working directory) is used
    as is. Otherwise a relative name is looked up among the packaged configs:
    ``mastering/quick``, ``mastering/quick.yaml`` and the repository-relative
    ``recipes/mastering/quick.yaml`` all mean the same packaged file.

    Args:
        name_or_path: Config path or packaged name (``<recipe>/<stem>``).

    Returns:
        Path of the config file (as given when it exists, else the packaged file).

    Raises:
        FileNotFoundError: nothing matches; the one-line message lists the places
            tried and the packaged configs.
    """
    found, tried = _resolve(name_or_path, recipes_dir(), ("recipes",), _CONFIG_SUFFIXES)
    if found is None:
        raise FileNotFoundError(
            f"config not found: {str(name_or_path)!r} (tried {_one_line(tried)}); "
            f"packaged configs: {', '.join(packaged_configs()) or 'none'}"
        )
    return found


def resolve_chain(name_or_path: str | Path) -> Path:
    """Find a chain config given as a path or as a packaged chain name.

    A file that exists (absolute, or relative to the working directory) is used
    as is, so a user's chain file in any folder keeps working. Otherwise a
    relative name is looked up among the packaged chains: ``zam_mastering``,
    ``zam_mastering.yaml``, ``chains/zam_mastering.yaml`` and
    ``plugins/chains/zam_mastering.yaml`` all mean the same packaged file.

    Args:
        name_or_path: Chain file path or packaged chain name.

    Returns:
        Path of the chain file (as given when it exists, else the packaged file).

    Raises:
        FileNotFoundError: nothing matches; the one-line message lists the places
            tried and the packaged chains.
    """
    found, tried = _resolve(name_or_path, plugins_dir() / "chains", ("plugins", "chains"), _CHAIN_SUFFIXES)
    if found is None:
        raise FileNotFoundError(
            f"chain {str(name_or_path)!r} not found (tried {_one_line(tried)}); "
            f"packaged chains: {', '.join(packaged_chains()) or 'none'}"
        )
    return found


def resolve_plugin_asset(path: str | Path, subdirs: tuple[str, ...] | list[str]) -> tuple[Path | None, list[Path]]:
    """Find a plugin asset file given as is, or in the plugin folder.

    A relative ``path`` is tried, in order: from the working directory; as
    ``plugins_dir() / <subdir> / path`` for each of ``subdirs``; as
    ``plugins_dir() / path`` (``faust/tube_preamp.dsp``); and, for the
    repository-relative spelling ``plugins/faust/tube_preamp.dsp``, without its
    leading ``plugins/``.

    Args:
        path: File path or name, e.g. ``tube_preamp.dsp`` or ``param_maps/ZamGEQ31.yaml``.
        subdirs: Sub-folders of :func:`plugins_dir` to try in order, e.g. ``("faust",)``.

    Returns:
        ``(found, tried)``: the file (``None`` when nothing matches) and every
        place tried, in order. The caller raises its own error from ``tried``.
    """
    p = Path(path).expanduser()
    tried = [p]
    if not p.is_absolute():
        root = plugins_dir()
        rels = [p, Path(*p.parts[1:])] if len(p.parts) > 1 and p.parts[0] == "plugins" else [p]
        for rel in rels:
            for sub in (*subdirs, ""):
                if root / sub / rel not in tried:
                    tried.append(root / sub / rel)
    for cand in tried:
        if cand.is_file():
            return cand, tried
    return None, tried


__all__ = [
    "packaged_chains",
    "packaged_configs",
    "plugins_dir",
    "recipes_dir",
    "resolve_chain",
    "resolve_config",
    "resolve_plugin_asset",
]
