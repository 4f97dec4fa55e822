"""Debian packages as data: fetch a package's files without installing it (no root needed).

``apt-get download PACKAGE`` fetches the ``.deb`` into a temporary folder and
``dpkg -x`` unpacks its file tree; nothing is installed and no maintainer
script runs. The unpacked tree is cached under
``<cache>/<package>_<version>/`` (default cache: ``$DEEPAFX_CACHE/debian`` or
``~/.cache/deepafx/debian``) and published atomically (unpacked into a
temporary sibling, then renamed), so an interrupted fetch leaves no partial
tree behind and a later call fetches again.

A package that is already installed (``dpkg -s``) is used in place: its root is
``/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["DebianFetchError", "default_cache_dir", "fetch_package"]


class DebianFetchError(RuntimeError):
    """A Debian package could not be fetched or unpacked (the message says why and what to do)."""


def default_cache_dir() -> Path:
    """``$DEEPAFX_CACHE/debian`` when ``DEEPAFX_CACHE`` is set, else ``$XDG_CACHE_HOME/deepafx/debian`` (``~/.cache``)."""
    if os.environ.get("DEEPAFX_CACHE"):
        return Path(os.environ["DEEPAFX_CACHE"]) / "debian"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "deepafx" / "debian"


def _installed(package: str) -> bool:
    if shutil.which("dpkg-query") is None:
        return False
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip().endswith("installed") and "not-installed" not in r.stdout


def fetch_package(package: str, cache_dir: str | Path | None = None, use_installed: bool = True,
                  timeout_seconds: float = 900.0) -> Path:
    """Root of ``package``'s unpacked file tree (fetched and cached on first use).

    Args:
        package: Debian package name, e.g. ``"wesnoth-1.16-music"``.
        cache_dir: Where unpacked trees are kept (default :func:`default_cache_dir`).
        use_installed: Return ``/`` when the package is installed on this machine.
        timeout_seconds: Longest the download may take, seconds.

    Returns:
        The folder whose ``usr/share/...`` holds the package's files.

    Raises:
        DebianFetchError: ``apt-get``/``dpkg`` missing, the package unknown to apt
            (the message names ``apt-get update`` as the fix), a download that failed
            or timed out, or a ``.deb`` that does not unpack.
    """
    if use_installed and _installed(package):
        return Path("/")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    done = sorted(p for p in cache.glob(f"{package}_*") if p.is_dir() and (p / ".complete").is_file())
    if done:
        return done[-1]
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise DebianFetchError(f"cannot fetch {package}: apt-get/dpkg not on PATH (a Debian or Ubuntu machine "
                               f"is needed, or copy an unpacked {package} tree to {cache}/{package}_<version>/ "
                               "with an empty .complete file in it)")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=f".{package}-") as tmp:
        try:
            subprocess.run(["apt-get", "download", package], cwd=tmp, check=True, capture_output=True,
                           timeout=timeout_seconds)
        except subprocess.CalledProcessError as exc:
            detail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
            raise DebianFetchError(f"apt-get download {package} failed: {detail[-1] if detail else exc}. "
                                   "Fix: `apt-get update` (the package lists may be missing) and retry") from None
        except subprocess.TimeoutExpired:
            raise DebianFetchError(f"apt-get download {package} took over {timeout_seconds:.0f} s") from None
        debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if not debs:
            raise DebianFetchError(f"apt-get download {package} produced no {package}_*.deb")
        version = debs[0].name[len(package) + 1:].rsplit("_", 1)[0].replace(":", "%3a")
        tree = Path(tmp) / "tree"
        try:
            subprocess.run(["dpkg", "-x", str(debs[0]), str(tree)], check=True, capture_output=True, timeout=600)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise DebianFetchError(f"dpkg -x {debs[0].name} failed: {exc}") from None
        (tree / ".complete").write_text(debs[0].name + "\n")
        final = cache / f"{package}_{version}"
        if final.exists():  # an incomplete tree left by an older layout
            shutil.rmtree(final)
        os.replace(tree, final)
    return final
