"""Train an encoder that drives a real mastering chain end to end (DeepAFx).

Stage 1 pretrains the encoder toward the chain's default parameters (MSE on
normalized parameters). Stage 2 trains end to end through the black-box chain
with SPSA gradients and the delay-invariant loss. Batches follow the stateful
scheme: slot ``i`` sees consecutive frames of one track and owns its plugin
instances; a slot's instances are reset when it starts a new track.

Each epoch builds its batcher from a seed derived from ``(seed, epoch, rank)``
and starts from freshly reset plugin instances, so a run resumed from an
epoch checkpoint produces exactly the same next losses as an uninterrupted run.
Under ``torchrun`` each rank renders its own share of the tracks with its own
workers; gradients of the encoder are averaged by DDP; every rank runs the same
number of steps per epoch; rank 0 alone writes files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import soundfile as sf
import torch
import torch.distributed as dist
from tqdm import tqdm

from deepafx.chain import ChainSpec
from deepafx.config import bind
from deepafx.data.stateful import StatefulBatcher
from deepafx.fx import ExponentialEpsilon, FxLayer
from deepafx.losses import DelayInvariantLoss, MultiResolutionSTFTLoss
from deepafx.recipes.mastering.model import MasteringModel, ModelConfig, pretrain_target
from deepafx.trainer import (
    DistInfo, TensorBoard, atomic_save, cleanup_distributed, init_distributed, load_checkpoint,
    rng_state, seed_everything, set_rng_state,
)

log = logging.getLogger(__name__)

DEFAULT_CHAIN = {
    "name": "builtin_mastering",
    "sample_rate": 44100,
    "processors": [
        {"backend": "builtin.multiband_compressor", "name": "mbc"},
        {"backend": "builtin.graphic_eq", "name": "geq"},
        {"backend": "pedalboard.Gain", "name": "gain", "ranges": {"gain_db": [-12, 24]}},
        {"backend": "pedalboard.BrickwallLimiter", "name": "lim"},
    ],
}


@dataclass
class TrainConfig:
    """Training settings (defaults in code; the recipe YAML overrides them).

    Attributes:
        batch_size: Batch slots M (stateful streams).
        workers: Render worker processes (``None``: usable CPU cores ÷ ranks).
        epochs: Maximum epochs of stage 2.
        steps_per_epoch: Cap on steps per epoch (``None``: one pass over the tracks).
        pretrain_steps: Stage-1 steps toward the default parameters (0 skips it).
        lr: Adam learning rate.
        pretrain_lr: Stage-1 learning rate.
        estimator: ``"spsa"`` or ``"fd"``.
        epsilon: SPSA perturbation ε on normalized parameters (DeepAFx: 0.01).
        epsilon_end: If set, ε decays geometrically to this value over ``epsilon_decay_steps``.
        epsilon_decay_steps: Steps of that decay.
        num_perturbations: SPSA draws K averaged per step.
        loss: ``"delay_invariant"`` (DeepAFx) or ``"mrstft"``.
        alpha_time, alpha_freq: Weights α₁, α₂ of the delay-invariant loss.
        max_delay_ms: Extra delay searched on top of the chain's reported latency, ms.
        grad_clip: Gradient-norm clip (0 disables).
        lr_patience, lr_factor: ReduceLROnPlateau on the validation loss.
        early_stop_patience: Epochs without improvement before stopping.
        valid_steps: Cap on validation batches per epoch (``None``: all).
        seed: Seed of everything (data order, perturbations, initialisation).
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        num_threads: torch intra-op threads in the training process (0: torch's
            default). Default 1: the render workers share the same cores, and
            with 2 threads on a busy 2-core machine an encoder step was measured
            7–40× slower than with 1 (threads wait for each other).
        log_every: Steps between TensorBoard scalar writes.
        timeout_s: Longest a render request may take before the worker is restarted.
        gain_augment_db: ``[min, max]`` dB: each epoch every training input is
            scaled by a seeded random gain from this range (capped so its peak
            stays at or below −0.5 dBFS) while its target is kept. Exact for
            level-invariant targets such as the reference engineer's (loudness
            normalization makes ``master(g·x) = master(x)``); without it the
            network sees only one loudness correction per piece. Off by default:
            on the quick recipe (−12…+6 dB, 6 epochs) it raised the test loudness
            error (4.58 vs 4.17 LU); leave it off for ``--pairs`` whose masters
            depend on the input level.
    """

    batch_size: int = 8
    workers: int | None = None
    epochs: int = 6
    steps_per_epoch: int | None = None
    pretrain_steps: int = 40
    lr: float = 1e-3
    pretrain_lr: float = 3e-3
    estimator: str = "spsa"
    epsilon: float = 0.01
    epsilon_end: float | None = None
    epsilon_decay_steps: int = 10000
    num_perturbations: int = 1
    loss: str = "delay_invariant"
    alpha_time: float = 10.0
    alpha_freq: float = 1.0
    max_delay_ms: float = 10.0
    grad_clip: float = 1.0
    lr_patience: int = 1
    lr_factor: float = 0.5
    early_stop_patience: int = 3
    valid_steps: int | None = None
    seed: int = 0
    device: str = "auto"
    num_threads: int = 1
    log_every: int = 10
    timeout_s: float = 120.0
    gain_augment_db: tuple[float, float] | None = None


def load_tracks(folder: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read ``<piece>_input.wav`` / ``<piece>_target.wav`` pairs → ``(channels, samples)`` float32 arrays."""
    pairs = []
    for inp in sorted(folder.glob("*_input.wav")):
        tgt = inp.with_name(inp.name.replace("_input.wav", "_target.wav"))
        if not tgt.exists():
            raise FileNotFoundError(f"{inp} has no matching target {tgt.name}")
        x, _ = sf.read(inp, dtype="float32", always_2d=True)
        y, _ = sf.read(tgt, dtype="float32", always_2d=True)
        pairs.append((x.T.copy(), y.T.copy()))
    return pairs


def prepare_data(config: Mapping[str, Any], data_dir: Path, pairs: tuple[str, str] | None, sample_rate: float,
                 dist_info: DistInfo) -> tuple[list, list]:
    """Train/valid ``(input, target)`` tracks, from the rendered corpus or from user pairs."""
    if pairs is not None:
        from deepafx.recipes.mastering.pairs import load_pairs

        loaded = load_pairs(pairs[0], pairs[1], sample_rate)
        tracks = [(p.input, p.target) for p in loaded]
        if len(tracks) < 2:
            raise ValueError("--pairs needs at least 2 matched files (one is held out for validation)")
        n_valid = max(1, len(tracks) // 10)
        return tracks[n_valid:], tracks[:n_valid]
    from deepafx.recipes.mastering.music import build_dataset

    if dist_info.is_main:
        build_dataset(config.get("data") or {}, data_dir)
    if dist_info.distributed:
        dist.barrier()
    return load_tracks(data_dir / "train"), load_tracks(data_dir / "valid")


class Trainer:
    """Runs stage 1 and stage 2 of the mastering recipe; see the module docstring."""

    def __init__(self, config: Mapping[str, Any], run_dir: Path, data_dir: Path,
                 pairs: tuple[str, str] | None = None, resume: bool = False):
        self.config = dict(config)
        self.run_dir = Path(run_dir)
        self.tc = bind(TrainConfig, config.get("train"), "train")
        self.mc = bind(ModelConfig, config.get("model"), "model")
        self.dist = init_distributed(self.tc.device)
        if self.tc.num_threads:
            torch.set_num_threads(self.tc.num_threads)
        seed_everything(self.tc.seed + self.dist.rank)
        chain_cfg = config.get("chain") or DEFAULT_CHAIN
        self.chain = ChainSpec.from_file(chain_cfg) if isinstance(chain_cfg, str) else ChainSpec.from_dict(chain_cfg)
        self.train_tracks, self.valid_tracks = prepare_data(config, data_dir, pairs, self.chain.sample_rate, self.dist)
        self.train_tracks = self.train_tracks[self.dist.rank :: self.dist.world_size] or self.train_tracks
        usable = len(os.sched_getaffinity(0))
        workers = self.tc.workers or max(1, usable // self.dist.world_size)
        eps = (ExponentialEpsilon(self.tc.epsilon, self.tc.epsilon_end, self.tc.epsilon_decay_steps)
               if self.tc.epsilon_end else self.tc.epsilon)
        self.fx = FxLayer(self.chain, self.tc.batch_size, num_workers=workers, estimator=self.tc.estimator,
                          epsilon=eps, num_perturbations=self.tc.num_perturbations,
                          seed=self.tc.seed * 1009 + self.dist.rank, timeout_s=self.tc.timeout_s)
        table = self.chain.param_table
        self.defaults = torch.tensor(pretrain_target(table.defaults_normalized()), dtype=torch.float32)
        torch.manual_seed(self.tc.seed)  # identical initial weights on every rank
        self.model = MasteringModel(self.mc, self.chain, self.fx.num_params, self.defaults.numpy()).to(self.dist.device)
        self.net = (torch.nn.parallel.DistributedDataParallel(self.model) if self.dist.distributed else self.model)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.tc.lr)
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, factor=self.tc.lr_factor, patience=self.tc.lr_patience)
        if self.tc.loss == "delay_invariant":
            self.loss_fn = DelayInvariantLoss.for_latency(self.fx.latency_samples, self.chain.sample_rate, self.tc.max_delay_ms,
                                                          alpha_time=self.tc.alpha_time, alpha_freq=self.tc.alpha_freq,
                                                          reduction="none")
        elif self.tc.loss == "mrstft":
            self.loss_fn = MultiResolutionSTFTLoss(reduction="none")
        else:
            raise ValueError(f"train.loss must be 'delay_invariant' or 'mrstft', got {self.tc.loss!r}")
        self.loss_fn.to(self.dist.device)
        self.state = {"epoch": 0, "global_step": 0, "best_valid": math.inf, "bad_epochs": 0, "pretrained": False,
                      "history": []}
        if resume:
            self._resume()
        self.tb = TensorBoard(self.run_dir / "tensorboard", enabled=self.dist.is_main)

    # -- checkpoints ------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        return {
            "recipe": "mastering", "config": {k: v for k, v in self.config.items() if not k.startswith("_")},
            "chain": self.chain.to_dict(), "num_params": self.fx.num_params, "param_names": self.fx.param_names,
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "fx": self.fx.state_dict(), "rng": rng_state(), "state": self.state,
        }

    def save(self, best: bool) -> None:
        if not self.dist.is_main:
            return
        ckpt = self.checkpoint()
        atomic_save(ckpt, self.run_dir / "last.pt")
        if best:
            atomic_save(ckpt, self.run_dir / "best.pt")
        tmp = self.run_dir / ".history.json.tmp"
        tmp.write_text(json.dumps(self.state["history"], indent=1))
        os.replace(tmp, self.run_dir / "history.json")

    def _resume(self) -> None:
        path = self.run_dir / "last.pt"
        ckpt = load_checkpoint(path)
        if ckpt.get("recipe") != "mastering":
            raise ValueError(f"{path} is not a mastering checkpoint (recipe {ckpt.get('recipe')!r})")
        if ckpt["num_params"] != self.fx.num_params:
            raise ValueError(f"{path}: checkpoint has {ckpt['num_params']} parameters, the configured chain {self.fx.num_params}")
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.fx.load_state_dict(ckpt["fx"])
        set_rng_state(ckpt["rng"])
        self.state = ckpt["state"]
        log.info("resumed from %s at epoch %d (step %d)", path, self.state["epoch"], self.state["global_step"])

    # -- data ---------------------------------------------------------------------
    def _batcher(self, tracks, epoch: int, salt: int) -> StatefulBatcher:
        return StatefulBatcher(tracks, self.tc.batch_size, self.model.frame_samples, self.model.context_samples,
                               seed=(self.tc.seed * 7919 + epoch * 131 + salt) * 64 + self.dist.rank,
                               epoch_mode="drain", pad_last_frame=False, random_offset=True)

    def _augmented(self, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Training tracks with this epoch's seeded input gains (targets unchanged)."""
        if not self.tc.gain_augment_db:
            return self.train_tracks
        lo, hi = self.tc.gain_augment_db
        rng = np.random.default_rng([self.tc.seed, epoch, self.dist.rank, 17])
        out = []
        for x, y in self.train_tracks:
            peak_db = 20 * np.log10(max(float(np.abs(x).max()), 1e-9))
            g_db = min(rng.uniform(lo, hi), -0.5 - peak_db)
            out.append(((x * np.float32(10 ** (g_db / 20))).astype(np.float32), y))
        return out

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

    # -- stages ---------------------------------------------------------------------
    def pretrain(self) -> None:
        """Stage 1: MSE toward the chain's default normalized parameters (no rendering)."""
        if self.state["pretrained"] or self.tc.pretrain_steps <= 0:
            return
        opt = torch.optim.Adam(self.model.parameters(), lr=self.tc.pretrain_lr)
        batcher = self._batcher(self.train_tracks, epoch=0, salt=1)
        target = self.defaults.to(self.dist.device)
        bar = tqdm(range(self.tc.pretrain_steps), desc="stage 1: pretrain to defaults", disable=not self.dist.is_main)
        it = iter(batcher)
        for step in bar:
            b = next(it)
            ctx = torch.from_numpy(b.context).to(self.dist.device)
            loss = torch.nn.functional.mse_loss(self.net(ctx), target.expand(ctx.shape[0], -1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.set_postfix(mse=f"{loss.item():.2e}")
            self.tb.scalars(step, **{"pretrain/mse": loss.item()})
        self.state["pretrained"] = True

    def _frame_loss(self, y: torch.Tensor, target: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Mean loss over active slots (idle slots at the end of a drained epoch hold silence)."""
        idx = active.nonzero().flatten()
        if len(idx) == 0:
            return y.sum() * 0.0
        return self.loss_fn(y[idx], target[idx]).mean()

    def _render_batch(self, b) -> tuple[torch.Tensor, torch.Tensor]:
        """Reset the slots that start a new track, predict, render; returns ``(output, loss)``."""
        resets = [i for i in range(b.batch_size) if b.reset[i]]
        if resets:
            self.fx.reset(resets)
        dev = self.dist.device
        params = self.net(torch.from_numpy(b.context).to(dev))
        y = self.fx(torch.from_numpy(b.frame).to(dev), params)
        return y, self._frame_loss(y, torch.from_numpy(b.target).to(dev), torch.from_numpy(b.active).to(dev))

    def train_epoch(self, epoch: int) -> float:
        self.net.train()
        self.fx.train()
        self.fx.reset()
        batcher = self._batcher(self._augmented(epoch), epoch, salt=2)
        steps = batcher.num_batches_per_epoch if self.tc.steps_per_epoch is None else min(self.tc.steps_per_epoch, batcher.num_batches_per_epoch)
        steps = self._agree_steps(steps)
        it = iter(batcher)
        total, count = 0.0, 0
        bar = tqdm(range(steps), desc=f"stage 2: epoch {epoch}", disable=not self.dist.is_main)
        for _ in bar:
            b = next(it)
            _, loss = self._render_batch(b)
            self.opt.zero_grad()
            loss.backward()
            if self.tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
            self.opt.step()
            self.state["global_step"] += 1
            total += loss.item()
            count += 1
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if self.state["global_step"] % self.tc.log_every == 0:
                self.tb.scalars(self.state["global_step"], **{"train/loss": loss.item(), "train/epsilon": self.fx.current_epsilon(),
                                                              "train/lr": self.opt.param_groups[0]["lr"]})
        return self._mean(total / max(count, 1), count)

    @torch.no_grad()
    def validate(self, epoch: int) -> float:
        self.net.eval()
        self.fx.eval()
        self.fx.reset()
        batcher = self._batcher(self.valid_tracks, epoch=0, salt=3)  # same validation stream every epoch
        steps = batcher.num_batches_per_epoch if self.tc.valid_steps is None else min(self.tc.valid_steps, batcher.num_batches_per_epoch)
        it = iter(batcher)
        total, count, example = 0.0, 0, None
        for _ in range(steps):
            b = next(it)
            y, loss = self._render_batch(b)
            n_active = float(b.active.sum())
            total += loss.item() * n_active
            count += n_active
            if b.active[0]:
                example = (b.frame[0], y[0].cpu().numpy(), b.target[0])
        self.fx.reset()
        value = self._mean(total / max(count, 1), count)
        if example is not None and self.dist.is_main:
            sr = self.chain.sample_rate
            for tag, audio in zip(("input", "output", "target"), example):
                self.tb.audio(f"valid/{tag}", audio, sr, epoch)
            self.tb.figure("valid/spectrograms", _spectrogram_figure(example, sr), epoch)
        return value

    def _param_checksums(self) -> list[float]:
        """Sum of |weights| on every rank (one value per rank): DDP replicas must agree."""
        value = torch.tensor([float(sum(p.detach().double().abs().sum() for p in self.model.parameters()))], dtype=torch.float64)
        if not self.dist.distributed:
            return [float(value)]
        out = [torch.zeros_like(value) for _ in range(self.dist.world_size)]
        dist.all_gather(out, value)
        return [float(v) for v in out]

    def fit(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.pretrain()
        if self.state["epoch"] == 0 and not self.state["history"]:
            self.save(best=False)
        for epoch in range(self.state["epoch"], self.tc.epochs):
            train_loss = self.train_epoch(epoch)
            valid_loss = self.validate(epoch)
            self.sched.step(valid_loss)
            improved = valid_loss < self.state["best_valid"] - 1e-6
            if improved:
                self.state["best_valid"], self.state["bad_epochs"] = valid_loss, 0
            else:
                self.state["bad_epochs"] += 1
            self.state["epoch"] = epoch + 1
            self.state["history"].append({"epoch": epoch, "train_loss": train_loss, "valid_loss": valid_loss,
                                          "lr": self.opt.param_groups[0]["lr"], "step": self.state["global_step"],
                                          "param_checksums": self._param_checksums()})
            self.tb.scalars(epoch, **{"epoch/train_loss": train_loss, "epoch/valid_loss": valid_loss})
            if self.dist.is_main:
                tqdm.write(f"epoch {epoch}: train {train_loss:.4f}  valid {valid_loss:.4f}  lr {self.opt.param_groups[0]['lr']:.2e}"
                           + ("  (best)" if improved else ""))
            self.save(best=improved)
            if self.state["bad_epochs"] >= self.tc.early_stop_patience:
                if self.dist.is_main:
                    tqdm.write(f"early stopping: no improvement in {self.state['bad_epochs']} epochs")
                break
        return {"history": self.state["history"], "best_valid": self.state["best_valid"], "seconds": time.perf_counter() - t0}

    def close(self) -> None:
        self.fx.close()
        self.tb.close()


def _spectrogram_figure(example, sample_rate: float):
    """Input/output/target log spectrograms (dB re the loudest bin of all three, 100 dB range)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.signal import stft

    specs = []
    for audio in example:
        f, t, z = stft(np.asarray(audio, dtype=np.float64).mean(0), fs=sample_rate, nperseg=1024, noverlap=768)
        specs.append(20 * np.log10(np.abs(z) + 1e-12))
    top = max(float(s.max()) for s in specs)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3), sharey=True)
    for ax, title, spec in zip(axes, ("input", "output", "target"), specs):
        ax.pcolormesh(t, f, spec, vmin=top - 100, vmax=top, shading="auto")
        ax.set_title(title)
        ax.set_xlabel("time (s)")
    axes[0].set_ylabel("frequency (Hz)")
    fig.tight_layout()
    return fig


def train_from_config(config: Mapping[str, Any], run_dir: Path, data_dir: Path, resume: bool = False,
                      pairs: tuple[str, str] | None = None) -> dict[str, Any]:
    """Entry point used by ``deepafx train`` for ``recipe: mastering``."""
    trainer = Trainer(config, run_dir, data_dir, pairs=pairs, resume=resume)
    try:
        return trainer.fit()
    finally:
        trainer.close()
        cleanup_distributed()
