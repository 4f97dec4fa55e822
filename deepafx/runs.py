"""Run folders and checkpoints: one layout, one resolver, atomic writes.

Everything here sits below the training engine (:mod:`deepafx.trainer`) and the
recipes, which both use it; it imports nothing of deepafx's.

Run folders have one layout for every recipe (:class:`RunLayout`)::

    RUN/config.yaml            the bound config, every default filled in
    RUN/checkpoints/last.pt    written atomically at every save
    RUN/checkpoints/best.pt    best validation loss (recipes that validate)
    RUN/checkpoints/<stage>.pt end of a stage that asks for it
    RUN/history.jsonl          one JSON object per logged step or epoch
    RUN/tensorboard/
    RUN/eval/                  results.json, results.md, plots

A run over several seeds (``deepafx train --seeds``) is a folder of such run
folders, ``RUN/seed-0/``, ``RUN/seed-1/`` …, plus ``RUN/eval/`` for the
results pooled over seeds (:func:`seed_runs` lists them).
"""

from __future__ import annotations

import locale
import os
import re
import shutil
import tempfile
import time
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

#: Prefix of the per-seed run folders of a multi-seed run (``seed-0``, ``seed-1`` …).
SEED_PREFIX = "seed-"


@dataclass(frozen=True)
class RunLayout:
    """Paths of a run folder (the same for every recipe); see the module docstring."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    def stage(self, name: str) -> Path:
        return self.checkpoints / f"{name}.pt"

    @property
    def history(self) -> Path:
        return self.root / "history.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def seed(self, seed: int) -> "RunLayout":
        """The run folder of one seed of a multi-seed run: ``RUN/seed-<seed>``."""
        return RunLayout(self.root / f"{SEED_PREFIX}{int(seed)}")


def seed_runs(root: str | Path) -> list[tuple[int, Path]]:
    """The per-seed run folders of a multi-seed run, ``[(seed, RUN/seed-<seed>), …]`` sorted by seed.

    Returns an empty list when ``root`` is a plain (single-seed) run folder or does not exist.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = re.fullmatch(re.escape(SEED_PREFIX) + r"(\d+)", p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def stage_folders(run: str | Path, stages: Sequence[str], splits: Sequence[str] = ()) -> list[Path]:
    """The folders of a run whose stage checkpoints a diagnostic reads: its seed folders in seed order
    (:func:`seed_runs`), or the run itself when it has none.

    Args:
        run: A multi-seed run folder (``seed-<k>/`` inside) or a single run folder.
        stages: Stage names each folder must hold as ``checkpoints/<stage>.pt``.
        splits: The data splits the diagnostic will read; ``"test"`` is refused (a diagnostic informs choices,
            which read the training and validation splits; the test split is scored once per config).

    Raises:
        ValueError: ``"test"`` among ``splits``.
        FileNotFoundError: a folder without one of the checkpoints (the folder and the missing ones named).
    """
    if "test" in splits:
        raise ValueError("a diagnostic that informs choices reads the training and validation splits; the test split "
                         "is scored once per config")
    folders = [folder for _, folder in seed_runs(run)] or [Path(run)]
    for folder in folders:
        missing = [s for s in dict.fromkeys(stages) if not RunLayout(folder).stage(s).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: no checkpoints/{{{','.join(missing)}}}.pt")
    return folders


def resolve_checkpoint(path: str | Path, prefer: str | Sequence[str] = "best") -> Path:
    """The checkpoint file meant by ``path``: the one resolver every command uses.

    Args:
        path: A ``.pt`` file, a run folder (its ``checkpoints/``), or a ``checkpoints/`` folder.
        prefer: Checkpoint name(s) tried first in that order, then ``last``: ``"best"``
            (default: ``best.pt``, else ``last.pt``), or e.g. ``("real", "synth", "ploss")``.

    Raises:
        FileNotFoundError: nothing there (the places tried are listed); a multi-seed run
            folder (its ``seed-<k>`` folders are named: pass one of them).
    """
    p = Path(path)
    if p.is_file():
        return p
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p} (pass a .pt file or a run folder)")
    folder = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    names = [prefer] if isinstance(prefer, str) else list(prefer)
    tried = [folder / f"{n}.pt" for n in dict.fromkeys([*names, "last"])]
    for cand in tried:
        if cand.is_file():
            return cand
    seeds = seed_runs(p)
    if seeds:
        raise FileNotFoundError(f"{p} is a run over {len(seeds)} seeds: pass one seed's folder, e.g. {seeds[0][1]}")
    raise FileNotFoundError(f"no checkpoint in {p}: tried {', '.join(str(t) for t in tried)} (written by `deepafx train`)")


class CheckpointError(RuntimeError, ValueError):
    """A checkpoint file that cannot be read (truncated, corrupt, not a checkpoint).

    A ``ValueError`` too, so the command line prints it as one line (bad content a user can fix).
    """


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint written by :func:`atomic_save` (a file or a run folder: its ``last.pt``); with ``mmap``,
    its tensors are memory-mapped, not read, until used (cheap when only the metadata is wanted).

    Raises:
        FileNotFoundError: no such file (says how checkpoints are named).
        CheckpointError: (a ``RuntimeError`` and ``ValueError``) an unreadable or corrupt file, in one
            line that names it.
    """
    import torch

    path = resolve_checkpoint(path, prefer="last") if Path(path).is_dir() else Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} (a run folder holds checkpoints/last.pt and best.pt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as exc:  # pickle/zip/EOF errors, often several lines long
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise CheckpointError(f"could not read checkpoint {path} ({type(exc).__name__}: {first}); it is truncated "
                              f"or not a deepafx checkpoint: use another one (checkpoints/best.pt, last.pt) "
                              f"or train afresh") from exc


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically: a crash or a full disk mid-write never touches the file there.

    The object is written to a temporary file in the same folder, flushed and
    ``fsync``-ed, then renamed over ``path``; on any error the temporary file is
    removed and ``path`` keeps its previous content.

    Raises:
        OSError: the write failed (e.g. ``ENOSPC``: no space left), with its errno, also when torch's
            writer reported it as another error; the previous file is intact.
    """
    import torch

    return _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_copy(source: str | Path, path: str | Path) -> Path:
    """Copy the file ``source`` to ``path`` atomically, byte for byte (as :func:`atomic_save`: a temporary file in
    ``path``'s folder, fsync, rename), e.g. a checkpoint carried into another run without re-serializing it.

    Raises:
        FileNotFoundError: no ``source``.
        OSError: the write failed; the previous file at ``path`` is intact.
    """
    with open(source, "rb") as src:
        return _atomic_write(path, lambda f: shutil.copyfileobj(src, f, 1 << 20))


def _atomic_write(path: str | Path, write, mode: int | None = None) -> Path:
    """Call ``write(file)`` on a temporary binary file beside ``path``, fsync it, give it permissions ``mode``
    (default: ``mkstemp``'s, owner only) and rename it over ``path``; on any error remove it and raise (an
    ``OSError`` with its errno where one caused the failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = _os_error(exc)
        if cause is not None and cause is not exc:  # torch's zip writer turns a failed write into a RuntimeError
            raise OSError(cause.errno, f"{cause.strerror} while writing it; the file there is unchanged",
                          str(path)) from exc
        raise
    return path


def _os_error(exc: BaseException | None) -> OSError | None:
    """The first ``OSError`` with an errno in ``exc``'s chain of causes and contexts."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temporary file, fsync, rename; encoding and permissions as by
    ``open``)."""
    data = text.encode(locale.getpreferredencoding(False))  # open()'s default text encoding
    return _atomic_write(path, lambda f: f.write(data), mode=0o666 & ~_umask())


def keep_earlier_run(root: Path) -> Path | None:
    """Move a run folder that already holds checkpoints aside before a fresh (not resumed) run reuses its name.

    The earlier run becomes ``<root>.previous-<YYYYmmdd-HHMMSS>`` (``-1``, ``-2`` … when that exists), whole
    and unchanged, and a warning says where; a folder without checkpoints is reused as it is.

    Returns:
        The new path of the earlier run, or ``None`` when nothing was moved.
    """
    root = Path(root)
    ckpt = root / "checkpoints"
    if not (ckpt.is_dir() and any(ckpt.iterdir())) and not seed_runs(root):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = root.with_name(f"{root.name}.previous-{stamp}")
    k = 0
    while dest.exists():
        k += 1
        dest = root.with_name(f"{root.name}.previous-{stamp}-{k}")
    os.replace(root, dest)
    log.warning("%s held an earlier run's checkpoints: kept it as %s (train with --resume to continue it instead)",
                root, dest)
    return dest


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = ["SEED_PREFIX", "CheckpointError", "RunLayout", "atomic_copy", "atomic_save", "atomic_write_text", "keep_earlier_run",
           "load_checkpoint", "resolve_checkpoint", "seed_runs"]
