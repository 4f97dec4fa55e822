"""The training engine every recipe runs on (:class:`Trainer`), and its helpers.

A recipe hands the engine a :class:`TrainingTask` (model, data, per-step
objective, a :class:`Stage` schedule); the engine does the rest.

* One entry point runs plain or under ``torchrun --nproc_per_node N``
  (:func:`init_distributed`: gloo on CPU, NCCL on CUDA); rank 0 alone writes files.
* Checkpoints are written atomically (temporary file in the same directory,
  ``fsync``, ``os.replace``; :mod:`deepafx.runs`) and hold everything needed to
  resume exactly: model, optimizer, scheduler, RNG states, data-iterator and
  Fx-layer state.
* :func:`train` turns SIGTERM and Ctrl-C into :class:`Interrupted`, which
  unwinds cleanly (render workers stopped); a signal during a checkpoint write
  waits for the write (:func:`signals_deferred`).
* A resume with a config that differs from the run's is refused, naming the keys
  (:data:`RESUME_MAY_CHANGE` lists what may change).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from tqdm import tqdm

from deepafx.registry import Registry
from deepafx.runs import RunLayout, atomic_copy, atomic_save, atomic_write_text, keep_earlier_run, load_checkpoint

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


# --------------------------------------------------------------------------- resume checks
#: Config keys a resumed run may change (``section.key``; ``section.*`` for a whole section): where and how
#: fast it runs, how often it logs and saves, where it stops, and evaluation settings; none changes the
#: training's numbers. Any other difference is refused (:func:`config_changes`).
RESUME_MAY_CHANGE: tuple[str, ...] = ("train.max_steps", "train.device", "train.num_threads", "train.log_every",
                                      "train.checkpoint_every", "render.*", "evaluate.*")


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two plain config mappings, flattened to ``section.key``.

    Returns:
        ``{"section.key": (old value, new value)}`` (a key missing on one side has ``None`` there);
        nested mappings are compared key by key (``chain.processors`` as a whole value).
    """
    out: dict[str, tuple[Any, Any]] = {}

    def walk(a: Any, b: Any, prefix: str, depth: int) -> None:
        if depth < 2 and isinstance(a, Mapping) and isinstance(b, Mapping):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k), depth + 1)
        elif a != b:
            out[prefix] = (a, b)

    walk(old, new, "", 0)
    return out


#: Config sections a branched run (``branch_from``) may not change: the data and the model's shape are those
#: of the checkpoint it starts from.
BRANCH_KEEPS: tuple[str, ...] = ("recipe", "data", "model")


def _fit_optimizer_state(opt: torch.optim.Optimizer, saved: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """A branch's model may have parameters its source lacked, registered after the source's (e.g. a new head):
    ``saved`` (an optimizer ``state_dict`` of the source) extended so that those come after the source's with no
    state (a fresh start for them, e.g. Adam's moments at zero). Returns ``(state, number of parameters added)``;
    ``saved`` unchanged when it fits already or cannot be matched that way (``load_state_dict`` then says why).
    """
    groups, mine = saved.get("param_groups", []), opt.param_groups
    sizes = [(len(g["params"]), len(m["params"])) for g, m in zip(groups, mine)]
    if len(groups) != len(mine) or all(a == b for a, b in sizes) or any(a > b for a, b in sizes):
        return dict(saved), 0  # fits already, or not a source whose parameters come first
    state = saved.get("state", {})
    for g, m in zip(groups, mine):  # the source's parameters must be the first ones, shape for shape
        for pid, p in zip(g["params"], m["params"]):
            if any(isinstance(v, torch.Tensor) and v.dim() and v.shape != p.shape for v in state.get(pid, {}).values()):
                return dict(saved), 0
    next_id = 1 + max([pid for g in groups for pid in g["params"]], default=-1)
    out_groups, added = [], 0
    for g, m in zip(groups, mine):
        extra = len(m["params"]) - len(g["params"])
        out_groups.append({**g, "params": list(g["params"]) + list(range(next_id, next_id + extra))})
        next_id += extra
        added += extra
    return {**saved, "param_groups": out_groups}, added


def _with_defaults(old: Mapping[str, Any], config: Any, now: Mapping[str, Any]) -> Mapping[str, Any]:
    """A stored config in which a key it lacks (added to the code since it was written) takes its default
    (``config``'s section dataclasses; a new key's default keeps what the code did before it), so that a resume
    or branch counts it as a change only when ``now`` sets it away from that default, and shows it as
    ``default → value``."""
    import dataclasses

    sections = getattr(config, "sections", None)
    if not isinstance(sections, Mapping):
        return old
    out = dict(old)
    for name, obj in sections.items():
        if not dataclasses.is_dataclass(obj) or not isinstance(old.get(name), Mapping):
            continue
        sec, today = dict(old[name]), now.get(name) or {}
        for f in dataclasses.fields(obj):
            if f.name in sec or f.name not in today:
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                continue
            sec[f.name] = json.loads(json.dumps(default, default=str))  # what the code did before the key
        out[name] = sec
    return out


def resume_may_change(key: str) -> bool:
    """Whether ``section.key`` is one of :data:`RESUME_MAY_CHANGE`."""
    return any(key == p or (p.endswith(".*") and (key == p[:-2] or key.startswith(p[:-1]))) for p in RESUME_MAY_CHANGE)


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------- interruption
class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGTERM or SIGINT (Ctrl-C); ``checkpoints/last.pt`` is the last one completed.

    Attributes:
        signum: The signal number (exit status ``128 + signum`` by convention).
    """

    def __init__(self, signum: int, detail: str = ""):
        self.signum = int(signum)
        super().__init__(f"stopped by {signal.Signals(self.signum).name}" + (f"; {detail}" if detail else ""))


_deferred = threading.local()


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold a SIGTERM/SIGINT that arrives inside the block until it ends (checkpoint writes), then raise it."""
    depth = getattr(_deferred, "depth", 0)
    _deferred.depth = depth + 1
    try:
        yield
    finally:
        _deferred.depth = depth
        pending = getattr(_deferred, "pending", None)
        if depth == 0 and pending is not None:
            _deferred.pending = None
            raise Interrupted(pending)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into :class:`Interrupted` while training (main thread only).

    The exception unwinds through ``finally`` blocks, so render workers are shut down and no
    process is left behind; a signal during a checkpoint write waits for the write to end
    (:func:`signals_deferred`), and every write is atomic, so ``last.pt`` is always whole.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        if getattr(_deferred, "depth", 0):
            _deferred.pending = signum
            return
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------- the engine
@dataclass
class TrainSettings:
    """Settings every recipe's ``train:`` section has (recipes subclass this dataclass).

    Attributes:
        seed: Seed of everything (initialisation, data order, perturbations).
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        num_threads: torch intra-op threads of the training process (0: torch's
            default). Render workers share the cores: with 2 threads on a busy
            2-core machine an encoder step was measured 7–40× slower than with 1.
        log_every: Steps between history/TensorBoard records of the training loss. A record holds the
            mean of each numeric value the steps report over the steps since the previous record
            (``dropped_items``: their sum), and ``logged_steps``, how many that was.
        checkpoint_every: Steps between ``last.pt`` writes inside step-based stages
            (0: only at stage and epoch ends).
        early_stop_patience: Epochs without a better validation loss before a
            validating stage stops.
        lr_patience, lr_factor: ReduceLROnPlateau on the validation loss.
        validate_first: Validate before the first epoch of a validating stage (history
            epoch −1) and count the starting model as the best so far: a stage whose
            training never beats its start keeps the start as ``best.pt``.
        max_steps: Stop after this many steps in all (0: run the whole schedule),
            saving ``last.pt``; ``--resume`` continues. Exact inside step-based
            stages; inside an epoch, the resumed epoch restarts its plugin
            instances from reset state.
    """

    seed: int = 0
    device: str = "auto"
    num_threads: int = 1
    log_every: int = 10
    checkpoint_every: int = 0
    early_stop_patience: int = 3
    lr_patience: int = 1
    lr_factor: float = 0.5
    validate_first: bool = True
    max_steps: int = 0


@dataclass(frozen=True)
class Stage:
    """One stage of a recipe's schedule.

    Attributes:
        name: Stage name (history, progress bar, ``checkpoints/<name>.pt``).
        steps: Steps of a step-based stage; for an epoch-based stage, a cap on
            steps per epoch (0: one full pass over the data).
        epochs: Epochs (1 for step-based stages).
        loss: Name of the stage's objective, interpreted by the task (a
            :data:`deepafx.losses.LOSSES` name or a recipe objective such as ``"ploss"``).
        optimizer: A :data:`OPTIMIZERS` name.
        lr: Learning rate.
        grad_clip: Gradient-norm clip (0: none).
        validate: Validate after every epoch (ReduceLROnPlateau, early stopping, ``best.pt``).
        keep_optimizer: Continue the previous stage's optimizer (its state kept) at ``lr``.
        save_as: Also save the model at the end of the stage as ``checkpoints/<save_as>.pt``.
    """

    name: str
    steps: int = 0
    epochs: int = 1
    loss: str = ""
    optimizer: str = "adam"
    lr: float = 1e-3
    grad_clip: float = 0.0
    validate: bool = False
    keep_optimizer: bool = False
    save_as: str | None = None

    @property
    def by_epoch(self) -> bool:
        """Epoch-based (validating or several epochs) rather than a fixed number of steps."""
        return self.validate or self.epochs > 1


#: Optimizers by name (torch classes taking ``(params, lr=...)``).
OPTIMIZERS: Registry = Registry("optimizer")
OPTIMIZERS.register("adam", torch.optim.Adam)
OPTIMIZERS.register("adamw", torch.optim.AdamW)
OPTIMIZERS.register("sgd", torch.optim.SGD)


class TrainingTask(Protocol):
    """What a recipe gives the :class:`Trainer`: model, data, the per-step objective.

    The engine calls, in order: :meth:`setup`, :meth:`build_model` (after
    seeding torch identically on every rank), :meth:`stages`, then per stage
    :meth:`begin_stage` and, per epoch, :meth:`batches` and :meth:`step` per
    batch, :meth:`validate` after the epoch when the stage validates.
    """

    recipe: str
    settings: TrainSettings

    def setup(self, ctx: "RunContext") -> None:
        """Load data, start render workers (``ctx`` gives rank, world size, device)."""

    def build_model(self) -> nn.Module:
        """The model to train (on CPU; the engine moves and wraps it)."""

    def stages(self) -> list[Stage]:
        """The schedule."""

    def begin_stage(self, stage: Stage) -> None:
        """Called before the first step of a stage (also on resume inside it)."""

    def batches(self, stage: Stage, epoch: int, start: int) -> tuple[int, Iterator[Any]]:
        """``(steps in this epoch, iterator over its batches from step `start` on)``."""

    def step(self, stage: Stage, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """``(loss to back-propagate, values to log)``; ``values["loss"]`` is the reported loss."""

    def validate(self, stage: Stage, epoch: int, tb: TensorBoard) -> tuple[float, float]:
        """``(mean validation loss on this rank, item count)``."""

    def state_dict(self) -> dict[str, Any]:
        """Task state a resume needs (Fx-layer generators, pseudo labels …)."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def checkpoint_meta(self) -> dict[str, Any]:
        """What loading a trained model needs besides its weights (chain, model description …)."""

    def close(self) -> None:
        """Stop render workers."""


@dataclass
class RunContext:
    """What the engine tells a task: distributed set-up, the model and its DDP wrapper."""

    dist: DistInfo
    run: RunLayout
    model: nn.Module | None = None
    net: nn.Module | None = None


class Trainer:
    """The one training engine of every recipe.

    Owns seeding, DDP (gloo on CPU, NCCL on CUDA; rank 0 alone writes files),
    the recipe's stage schedule (optimizer and learning rate per stage),
    atomic checkpoints with exact resume, early stopping and ReduceLROnPlateau
    on validating stages, TensorBoard, tqdm progress and the run folder
    (:class:`deepafx.runs.RunLayout`).

    Exact resume: checkpoints are taken at epoch ends and, in step-based stages,
    every ``checkpoint_every`` steps; they hold the model, the optimizer and
    scheduler, every RNG state and the task's state, and tasks derive each
    epoch's (or step's) randomness from ``(seed, epoch or step, rank)``, so a
    resumed run repeats the uninterrupted one's losses exactly.

    Args:
        task: The recipe's :class:`TrainingTask`.
        run_dir: Run folder.
        config: The bound config (written to ``config.yaml`` and every checkpoint).
        resume: Continue from ``checkpoints/last.pt``.
        branch_from: Start this new run from another run's checkpoint (typically ``checkpoints/<stage>.pt``
            saved at the end of a stage): its model, optimizer, RNG states, task state and history, then the
            remaining stages under ``config``, which may differ from the checkpoint's in anything but the
            :data:`BRANCH_KEEPS` sections (an ablation of the later stages from one shared start). The
            differences and the source go to ``branch.json`` in the run folder. With an unchanged config the
            branch repeats the source run's remaining stages exactly.

    Raises:
        FileNotFoundError: ``resume`` or ``branch_from`` without a checkpoint.
        ValueError: a checkpoint of another recipe or model size; ``resume`` with a config that
            differs from the run's in keys outside :data:`RESUME_MAY_CHANGE` (each named, old → new);
            ``branch_from`` with a config that changes a :data:`BRANCH_KEEPS` section; both given;
            an unreadable checkpoint (:class:`deepafx.runs.CheckpointError`, one line naming it).
    """

    def __init__(self, task: TrainingTask, run_dir: str | Path, config: Any, resume: bool = False,
                 branch_from: str | Path | None = None):
        if resume and branch_from is not None:
            raise ValueError("resume continues this run's own last.pt; branch_from starts a new run from another "
                             "checkpoint: pass one of them")
        self.task = task
        self.config = config
        self.run = RunLayout(Path(run_dir))
        st = task.settings
        self.dist = init_distributed(st.device)
        if st.num_threads:
            torch.set_num_threads(st.num_threads)
        seed_everything(st.seed + self.dist.rank)
        if not resume and self.dist.is_main:
            keep_earlier_run(self.run.root)
        self.ctx = RunContext(self.dist, self.run)
        task.setup(self.ctx)
        torch.manual_seed(st.seed)  # identical initial weights on every rank
        self.model = task.build_model().to(self.dist.device)
        # a task whose stages train different parts of the model (heads unused in some stages) says so
        unused = bool(getattr(task, "find_unused_parameters", False))
        self.net = (torch.nn.parallel.DistributedDataParallel(self.model, find_unused_parameters=unused)
                    if self.dist.distributed else self.model)
        self.ctx.model, self.ctx.net = self.model, self.net
        self.stages = list(task.stages())
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        self.opt: torch.optim.Optimizer | None = None
        self.sched = None
        self._active_stage = -1  # index of the stage whose optimizer is set up
        self.state: dict[str, Any] = {"stage": 0, "epoch": 0, "step_in_epoch": 0, "global_step": 0,
                                      "best_valid": math.inf, "bad_epochs": 0, "history": []}
        self.branch: dict[str, Any] | None = None
        if resume or branch_from is not None:
            self._resume(branch_from)
        if self.dist.is_main:
            self.run.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run.config, yaml.safe_dump(self.config.to_dict(), sort_keys=False))
            if self.branch is not None:  # branch.json, and the shared stages' checkpoints
                self._carry_stage_checkpoints(Path(branch_from))
            if resume or self.branch is not None:  # drop records written after the checkpoint
                atomic_write_text(self.run.history, "".join(json.dumps(h) + "\n" for h in self.state["history"]))
            elif self.run.history.exists():
                self.run.history.unlink()
        self.tb = TensorBoard(self.run.tensorboard, enabled=self.dist.is_main)

    # -- optimizer per stage -----------------------------------------------------------
    def _start_stage(self, index: int, restored: Mapping[str, Any] | None = None) -> None:
        stage = self.stages[index]
        prev = self.stages[index - 1] if index else None
        if stage.keep_optimizer and self.opt is not None and prev is not None and prev.optimizer == stage.optimizer:
            for g in self.opt.param_groups:
                g["lr"] = stage.lr
        else:
            self.opt = OPTIMIZERS.get(stage.optimizer)(self.model.parameters(), lr=stage.lr)
        self.sched = (torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, factor=self.task.settings.lr_factor, patience=self.task.settings.lr_patience)
            if stage.validate else None)
        self._active_stage = index
        if restored is not None:
            saved = restored["optimizer"]
            if self.branch is not None:  # the branch's model may add parameters after the source's
                saved, added = _fit_optimizer_state(self.opt, saved)
                if added:
                    self.branch["new_parameters"] = added
            self.opt.load_state_dict(saved)
            if self.sched is not None and restored.get("scheduler") is not None:
                self.sched.load_state_dict(restored["scheduler"])
        self.task.begin_stage(stage)

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """Everything a resume or a model load needs."""
        return {
            "recipe": self.task.recipe, "config": self.config.to_dict(),
            "stage": self.stages[min(self.state["stage"], len(self.stages) - 1)].name,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict() if self.opt is not None else None,
            "scheduler": self.sched.state_dict() if self.sched is not None else None,
            "task": self.task.state_dict(), "rng": rng_state(), "state": self.state,
            **self.task.checkpoint_meta(),
        }

    def save(self, best: bool = False, stage_name: str | None = None) -> None:
        """Write ``last.pt`` (and ``best.pt`` / ``<stage>.pt``) atomically; rank 0 only."""
        if not self.dist.is_main:
            return
        with signals_deferred():  # SIGTERM/Ctrl-C wait until last.pt, best.pt and <stage>.pt agree
            ckpt = self.checkpoint()
            atomic_save(ckpt, self.run.last)
            if best:
                atomic_save(ckpt, self.run.best)
            if stage_name:
                atomic_save(ckpt, self.run.stage(stage_name))

    def _carry_stage_checkpoints(self, source: Path) -> None:
        """A branch keeps the source run's ``<stage>.pt`` of the stages it shares: those finished at the branch
        point (an evaluation of the branch then has its earlier rows too). One saved after the branch point
        (its step beyond the branch's) is not the shared stage and is left out. Writes ``branch.json``."""
        index, step = self.state["stage"], self.state["global_step"]
        shared = self.stages[:index] + ([self.stages[index]] if index < len(self.stages)
                                        and self.state["epoch"] >= self.stages[index].epochs else [])
        carried = []
        for stage in shared:
            src = source.parent / f"{stage.save_as}.pt"
            if not stage.save_as or not src.is_file():
                continue
            saved_at = load_checkpoint(src, mmap=True).get("state", {}).get("global_step", step + 1)
            if saved_at <= step:
                atomic_copy(src, self.run.stage(stage.save_as))  # the file as it is: nothing re-serialized
                carried.append(stage.save_as)
        self.branch["carried"] = carried
        atomic_write_text(self.run.root / "branch.json", json.dumps(self.branch, indent=1, default=str) + "\n")

    def _resume(self, branch_from: str | Path | None = None) -> None:
        source = Path(branch_from) if branch_from is not None else self.run.last
        ckpt = load_checkpoint(source)
        if ckpt.get("recipe") != self.task.recipe:
            raise ValueError(f"{source} is a checkpoint of recipe {ckpt.get('recipe')!r}, not {self.task.recipe!r}")
        if isinstance(ckpt.get("config"), Mapping) and hasattr(self.config, "to_dict"):
            from deepafx.config import upgrade_config

            now = self.config.to_dict()
            old = _with_defaults(upgrade_config(ckpt["config"], like=now), self.config, now)  # renamed, added keys
            changed = config_changes(old, now)
            if branch_from is not None:
                refused = [k for k in changed if k.split(".")[0] in BRANCH_KEEPS]
                if refused:
                    shown = ", ".join(f"{k} ({_short(changed[k][0])} → {_short(changed[k][1])})" for k in refused)
                    raise ValueError(f"a branch from {source} must keep its {', '.join(BRANCH_KEEPS)} sections; "
                                     f"this config changes {shown}")
                self.branch = {"from": str(source), "stage": ckpt.get("stage"),
                               "global_step": ckpt.get("state", {}).get("global_step"),
                               "changed": {k: list(v) for k, v in changed.items()}}
                refused = []
            else:
                refused = [k for k in changed if not resume_may_change(k)]
            if refused:
                shown = ", ".join(f"{k} ({_short(changed[k][0])} → {_short(changed[k][1])})" for k in refused)
                raise ValueError(f"--resume with a config that differs from the run's in {shown}; train with the "
                                 f"run's config ({self.run.config}) or start a fresh run; only "
                                 f"{', '.join(RESUME_MAY_CHANGE)} may change on resume")
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise ValueError(f"{source} does not fit the configured model: {exc}") from exc
        self.task.load_state_dict(ckpt["task"])
        self.state = ckpt["state"]
        if self.state["stage"] < len(self.stages) and ckpt.get("optimizer") is not None:
            self._start_stage(self.state["stage"], ckpt)
        set_rng_state(ckpt["rng"])
        if self.branch is not None:
            self.state.pop("finished", None)
        log.info("%s from %s at stage %d, epoch %d, step %d", "branched" if self.branch else "resumed", source, self.state["stage"],
                 self.state["epoch"], self.state["global_step"])

    # -- helpers ------------------------------------------------------------------------------
    def _agree_steps(self, n: int) -> int:
        if self.dist.distributed:
            t = torch.tensor([n], dtype=torch.int64)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            n = int(t)
        return n

    def _mean(self, value: float, count: float) -> float:
        if self.dist.distributed:
            t = torch.tensor([value * count, count], dtype=torch.float64)
            dist.all_reduce(t)
            return float(t[0] / max(t[1], 1e-12))
        return value

    def _sum(self, value: int) -> int:
        """``value`` summed over DDP ranks."""
        if self.dist.distributed:
            t = torch.tensor([value], dtype=torch.int64)
            dist.all_reduce(t)
            value = int(t)
        return int(value)

    def _param_checksums(self) -> list[float]:
        """Sum of |weights| on every rank (one value per rank): DDP replicas must agree."""
        value = torch.tensor([float(sum(p.detach().double().abs().sum() for p in self.model.parameters()))],
                             dtype=torch.float64)
        if not self.dist.distributed:
            return [float(value)]
        out = [torch.zeros_like(value) for _ in range(self.dist.world_size)]
        dist.all_gather(out, value)
        return [float(v) for v in out]

    def _record(self, entry: dict[str, Any]) -> None:
        self.state["history"].append(entry)
        if self.dist.is_main:
            with open(self.run.history, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def _accumulate_log(self, info: dict[str, Any]) -> dict[str, Any]:
        """Add one step's numeric ``info`` to the sums since the last record (kept in the resumable state) and
        return what a record now holds: each value's mean over those steps (``dropped_items``: the sum), the
        non-numeric values of this step, and ``logged_steps``."""
        sums = self.state.setdefault("log_sums", {})  # key: [sum, steps that reported it]
        count = int(self.state.get("log_count", 0)) + 1
        self.state["log_count"] = count
        out: dict[str, Any] = {}
        for k, v in info.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                total, steps = sums.get(k, (0.0, 0))
                sums[k] = [total + float(v), steps + 1]
                out[k] = sums[k][0] if k == "dropped_items" else sums[k][0] / sums[k][1]
            else:
                out[k] = v
        out["logged_steps"] = count
        return out

    # -- the loop --------------------------------------------------------------------------------
    def _train_epoch(self, stage: Stage, epoch: int) -> float:
        st = self.task.settings
        start = self.state["step_in_epoch"]
        n, it = self.task.batches(stage, epoch, start)
        if stage.steps > 0:
            n = min(n, stage.steps)
        n = self._agree_steps(n)
        self.net.train()
        total = float(self.state.get("epoch_loss_sum", 0.0)) if start else 0.0
        label = f"{stage.name}" + (f" epoch {epoch}" if stage.by_epoch else "")
        bar = tqdm(total=n, initial=start, desc=label, disable=not self.dist.is_main)
        try:  # closed on every way out, so an interruption's message is the last line printed
            for i in range(start, n):
                batch = next(it)
                loss, info = self.task.step(stage, batch)
                self.opt.zero_grad()
                loss.backward()
                if stage.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), stage.grad_clip)
                self.opt.step()
                self.state["global_step"] += 1
                self.state["step_in_epoch"] = i + 1
                value = float(info.get("loss", loss.item()))
                total += value
                self.state["epoch_loss_sum"] = total
                if "dropped_items" in info:  # items whose renders went NaN/Inf (deepafx.fx), summed per epoch
                    dropped = self.state.get("epoch_dropped_items", 0) + int(info["dropped_items"])
                    self.state["epoch_dropped_items"] = dropped
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in info.items()})
                gs = self.state["global_step"]
                interval = self._accumulate_log(info) if st.log_every else info
                if st.log_every and (gs % st.log_every == 0 or i + 1 == n):
                    lr = self.opt.param_groups[0]["lr"]
                    self.tb.scalars(gs, **{f"train/{k}": v for k, v in interval.items()}, **{"train/lr": lr})
                    if not stage.by_epoch:
                        self._record({"stage": stage.name, "step": gs, "lr": lr, **interval,
                                      "param_checksums": self._param_checksums()})
                    self.state["log_sums"], self.state["log_count"] = {}, 0
                if st.max_steps and gs >= st.max_steps and i + 1 < n:
                    self.save()
                    return None
                if not stage.by_epoch and st.checkpoint_every and gs % st.checkpoint_every == 0 and i + 1 < n:
                    self.save()
        finally:
            bar.close()
        return self._mean(total / max(n, 1), n)

    def _validate_first(self, stage: Stage) -> None:
        """Validate the model as the stage starts (history epoch −1): the baseline training must beat.

        The starting model becomes ``best.pt``, so a stage that never improves on
        its start leaves that model as the best one rather than a worse epoch.
        """
        with torch.no_grad():
            value, count = self.task.validate(stage, -1, self.tb)
        valid_loss = self._mean(value, count)
        self.state["best_valid"], self.state["bad_epochs"] = valid_loss, 0
        self.state["validated_first"].append(stage.name)
        self._record({"stage": stage.name, "epoch": -1, "step": self.state["global_step"], "valid_loss": valid_loss,
                      "lr": self.opt.param_groups[0]["lr"], "param_checksums": self._param_checksums()})
        if self.dist.is_main:
            tqdm.write(f"{stage.name} before training: valid {valid_loss:.4f}")
        self.save(best=True)

    def fit(self) -> dict[str, Any]:
        """Run (or finish) every stage; returns ``{"history", "best_valid", "seconds"}``."""
        t0 = time.perf_counter()
        st = self.task.settings
        if self.state["global_step"] == 0 and self.state["stage"] == 0:
            self.save()
        for index in range(self.state["stage"], len(self.stages)):
            stage = self.stages[index]
            if self._active_stage != index:
                self._start_stage(index)
                self.state.update(stage=index, epoch=0, step_in_epoch=0, bad_epochs=0)
            if stage.validate and st.validate_first and self.state["epoch"] == 0 and not self.state["step_in_epoch"] \
                    and stage.name not in self.state.setdefault("validated_first", []):
                self._validate_first(stage)
            for epoch in range(self.state["epoch"], stage.epochs):
                train_loss = self._train_epoch(stage, epoch)
                if train_loss is None:  # max_steps reached inside the epoch (saved)
                    return self._result(t0)
                self.state.update(epoch=epoch + 1, step_in_epoch=0, epoch_loss_sum=0.0)
                improved = False
                entry: dict[str, Any] = {"stage": stage.name, "epoch": epoch, "step": self.state["global_step"],
                                         "train_loss": train_loss}
                if "epoch_dropped_items" in self.state:
                    entry["dropped_items"] = self._sum(self.state.pop("epoch_dropped_items"))
                if stage.validate:
                    with torch.no_grad():
                        value, count = self.task.validate(stage, epoch, self.tb)
                    valid_loss = self._mean(value, count)
                    self.sched.step(valid_loss)
                    improved = valid_loss < self.state["best_valid"] - 1e-6
                    if improved:
                        self.state["best_valid"], self.state["bad_epochs"] = valid_loss, 0
                    else:
                        self.state["bad_epochs"] += 1
                    entry["valid_loss"] = valid_loss
                    self.tb.scalars(epoch, **{f"{stage.name}/train_loss": train_loss, f"{stage.name}/valid_loss": valid_loss})
                entry.update(lr=self.opt.param_groups[0]["lr"], param_checksums=self._param_checksums())
                if stage.by_epoch:
                    self._record(entry)
                    if self.dist.is_main:
                        tqdm.write(f"{stage.name} epoch {epoch}: train {train_loss:.4f}"
                                   + (f"  valid {entry['valid_loss']:.4f}" if stage.validate else "")
                                   + f"  lr {entry['lr']:.2e}" + ("  (best)" if improved else ""))
                last_epoch = epoch + 1 == stage.epochs
                stopped = stage.validate and self.state["bad_epochs"] >= self.task.settings.early_stop_patience
                self.save(best=improved, stage_name=stage.save_as if (last_epoch or stopped) else None)
                if stopped:
                    if self.dist.is_main:
                        tqdm.write(f"early stopping: no improvement in {self.state['bad_epochs']} epochs")
                    break
                if st.max_steps and self.state["global_step"] >= st.max_steps:
                    return self._result(t0)
        if not self.state.get("finished"):
            self.state["finished"] = True  # a multi-seed run skips finished seeds on --resume
            self.save()
        return self._result(t0)

    def _result(self, t0: float) -> dict[str, Any]:
        if self.dist.distributed:
            dist.barrier()
        return {"history": self.state["history"], "best_valid": self.state["best_valid"],
                "seconds": time.perf_counter() - t0}

    def close(self) -> None:
        self.task.close()
        self.tb.close()


def train(task: TrainingTask, run_dir: str | Path, config: Any, resume: bool = False,
          branch_from: str | Path | None = None) -> dict[str, Any]:
    """Train ``task`` to the end of its schedule in ``run_dir`` (see :class:`Trainer`); closes everything.

    ``branch_from``: start this new run from another run's checkpoint (``checkpoints/<stage>.pt``): the
    model, optimizer, RNG and history as they were there, then the rest of the schedule under ``config``
    (see :class:`Trainer`).

    Raises:
        Interrupted: SIGTERM or SIGINT arrived (a ``KeyboardInterrupt``; its one-line message names
            ``last.pt`` and the step it holds); the task's render workers are stopped first.
        FileNotFoundError, ValueError: as :class:`Trainer`.
    """
    trainer = None
    try:
        with stop_on_signals():
            try:
                trainer = Trainer(task, run_dir, config, resume=resume, branch_from=branch_from)
                return trainer.fit()
            finally:
                if trainer is not None:
                    trainer.close()
                else:
                    task.close()
                cleanup_distributed()
    except Interrupted as exc:
        last = RunLayout(Path(run_dir)).last
        if last.is_file() and exc.signum:
            state = load_checkpoint(last).get("state", {})
            raise Interrupted(exc.signum, f"{last} holds step {state.get('global_step', '?')} (stage "
                                          f"{state.get('stage', '?')}, epoch {state.get('epoch', '?')}): continue "
                                          f"with --resume") from None
        raise
