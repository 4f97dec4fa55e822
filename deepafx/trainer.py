"""Training infrastructure shared by recipes: distributed set-up, atomic checkpoints, logging.

* One entry point runs plain or under ``torchrun --nproc_per_node N``
  (:func:`init_distributed`: gloo on CPU, NCCL on CUDA); rank 0 alone writes files.
* Checkpoints are written atomically (temporary file in the same directory,
  ``fsync``, ``os.replace``) and hold everything needed to resume exactly:
  model, optimizer, scheduler, RNG states, data-iterator and Fx-layer state.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str = "auto") -> torch.device:
    """``"auto"`` → CUDA when present, else CPU; otherwise ``torch.device(requested)``."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def init_distributed(device: str = "auto") -> DistInfo:
    """Initialise ``torch.distributed`` when launched by ``torchrun`` (``WORLD_SIZE > 1``).

    Backend: NCCL when the device is CUDA, gloo otherwise. Without torchrun this is
    a no-op returning rank 0 of 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically: a crash mid-write never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`atomic_save`.

    Raises:
        FileNotFoundError: no such file (says how checkpoints are named).
        RuntimeError: unreadable/corrupt file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} (a run directory holds last.pt and best.pt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle/zip errors
        raise RuntimeError(f"could not read checkpoint {path}: {exc}") from exc


class TensorBoard:
    """Rank-0 TensorBoard writer (no-op elsewhere or when disabled)."""

    def __init__(self, log_dir: str | Path | None, enabled: bool = True):
        self.writer = None
        if enabled and log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir))

    def scalars(self, step: int, **values: float) -> None:
        if self.writer:
            for k, v in values.items():
                self.writer.add_scalar(k, float(v), step)

    def audio(self, tag: str, audio: np.ndarray, sample_rate: float, step: int) -> None:
        if self.writer:
            mono = np.asarray(audio, dtype=np.float32).reshape(-1, np.shape(audio)[-1]).mean(0)
            self.writer.add_audio(tag, torch.from_numpy(np.clip(mono, -1, 1))[None], step, sample_rate=int(sample_rate))

    def figure(self, tag: str, fig, step: int) -> None:
        if self.writer:
            self.writer.add_figure(tag, fig, step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
