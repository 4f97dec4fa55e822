"""Training of automation recipes: a context encoder drives a black-box chain end to end (DeepAFx).

Stage ``pretrain`` pulls the encoder toward the chain's default parameters
(MSE on normalized parameters, no rendering). Stage ``spsa`` trains end to end
through the black-box chain with SPSA gradients (:class:`deepafx.fx.FxLayer`)
and a registered loss (:data:`deepafx.losses.LOSSES`, DeepAFx's delay-invariant
loss by default), validating every epoch. A chain with differentiable
(``ddsp.``) entries is run by a :class:`deepafx.hybrid.HybridChain` instead:
exact gradients for those stages, SPSA for the black-box ones. Batches follow
the stateful scheme (:class:`deepafx.data.stateful.StatefulBatcher`): slot ``i`` sees consecutive
frames of one track and owns its plugin instances; a slot's instances are
reset when it starts a new track.

Each epoch builds its batcher from a seed derived from ``(seed, epoch, rank)``
and starts from freshly reset plugin instances, so a run resumed from an
epoch checkpoint produces exactly the same next losses as an uninterrupted run.
Under ``torchrun`` each rank renders its own share of the tracks with its own
workers (its own processes, or its own actors on a Ray cluster: the optional
``render:`` section, :class:`deepafx.workers.RenderConfig`); gradients of the encoder are averaged by DDP; every rank runs the same
number of steps per epoch; rank 0 alone writes files (the engine,
:class:`deepafx.trainer.Trainer`).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import soundfile as sf
import torch

from deepafx.automation.model import AutomationModel, ModelConfig, pretrain_target
from deepafx.chain import ChainSpec
from deepafx.data.stateful import StatefulBatcher
from deepafx.fx import ExponentialEpsilon, FxLayer, nonfinite_step_error
from deepafx.hybrid import HybridChain, is_hybrid
from deepafx.losses import build_loss
from deepafx.trainer import Stage, TrainSettings
from deepafx.workers import RenderConfig

log = logging.getLogger(__name__)


#: ``train.start`` values: the chain's defaults, or one static preset fit on the training tracks.
START_MODES = ("defaults", "static")
#: File of the static start in the run folder.
STATIC_START_FILE = "static_start.json"


@dataclass
class AutomationTrainConfig(TrainSettings):
    """Training settings of an automation recipe (with :class:`~deepafx.trainer.TrainSettings`:
    seed, device, threads, logging, early stopping, ReduceLROnPlateau).

    Attributes:
        batch_size: Batch slots M (stateful streams). How many render workers
            serve them is the ``render:`` section's (``render.num_workers``).
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
        param_l2: Weight λ of a penalty ``λ · mean over items of Σ_p (θ_p − θ⁰_p)²`` added to the
            end-to-end loss: normalized parameters θ are pulled toward the stage-1 goal θ⁰ (the
            defaults; for a level-relative gain the default output level is exempt). SPSA
            gradients are noisy, and Adam turns pure noise into steps of ``lr`` in random
            directions: without a pull the parameters the loss barely constrains random-walk to
            their range bounds and stay there (saturated automation). The penalty's gradient is
            exact, so a parameter leaves its default only as far as the estimated gradient keeps
            paying for it. 0 (default) disables it; validation losses never include it.
        valid_steps: Cap on validation batches per epoch (``None``: all).
        timeout_seconds: Longest a render request may take before the worker is restarted.
        start: Where the encoder starts (its output bias and the stage-1 goal, and the point
            ``param_l2`` pulls toward): ``"defaults"``, the chain's defaults, or ``"static"``,
            one static preset for all the training tracks found by CMA-ES
            (:func:`deepafx.automation.oracle.static_preset`: ``start_renders`` renders of
            ``start_seconds`` of training audio, the middle of every track, seeded by ``seed``;
            pre-emphasised ESR when ``loss`` is ``"esr"``, MR-STFT + loudness otherwise). The
            preset is saved in the run folder (``static_start.json``) and reused on resume.
        start_renders: CMA-ES renders of the static start (>= 1).
        start_seconds: Seconds of training audio per render of the static start (> 0).
        start_sigma: Initial CMA-ES step size of the static start, normalized units (> 0).
    """

    batch_size: int = 8
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
    param_l2: float = 0.0
    valid_steps: int | None = None
    timeout_seconds: float = 120.0
    start: str = "defaults"
    start_renders: int = 600
    start_seconds: float = 24.0
    start_sigma: float = 0.25

    def __post_init__(self) -> None:
        if self.start not in START_MODES:
            raise ValueError(f"train.start must be one of {START_MODES}, got {self.start!r}")
        if int(self.start_renders) < 1 or not float(self.start_seconds) > 0 or not float(self.start_sigma) > 0:
            raise ValueError(f"train.start_renders must be >= 1, train.start_seconds and train.start_sigma > 0, got "
                             f"{self.start_renders}, {self.start_seconds} and {self.start_sigma}")


def search_static_start(chain: ChainSpec, tracks: list, settings: AutomationTrainConfig,
                        render: RenderConfig | None = None) -> dict[str, Any]:
    """The static start of ``train.start: static`` for ``tracks`` (``(input, target)`` pairs): one static
    preset by :func:`deepafx.automation.oracle.static_preset` with the settings' ``start_renders``,
    ``start_seconds``, ``start_sigma``, ``seed`` and objective (pre-emphasised ESR when ``loss`` is ``"esr"``, else
    MR-STFT + loudness).

    Returns:
        ``{"params"`` (normalized), ``"values"`` (name → value in the parameter's unit), ``"objective"``,
        ``"default_objective"``, ``"renders"``, ``"search_seconds"}``.
    """
    from deepafx.automation.oracle import static_preset

    t0 = time.perf_counter()
    result = static_preset(chain, tracks, renders=settings.start_renders, seconds=settings.start_seconds,
                           objective="esr_pre" if settings.loss == "esr" else "mrstft", seed=settings.seed,
                           sigma0=settings.start_sigma, render=render, timeout_seconds=settings.timeout_seconds)
    table = chain.param_table
    return {"params": [float(v) for v in result.params],
            "values": dict(zip(table.names, (float(v) for v in table.denormalize(result.params)))),
            "objective": result.objective, "default_objective": result.default_objective,
            "renders": result.renders, "search_seconds": time.perf_counter() - t0}


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


def chain_section(default: Mapping[str, Any]) -> type:
    """A ``chain:`` section class whose :meth:`from_dict` falls back to ``default``.

    The section is a chain mapping (``processors`` …), a chain file name or path
    (packaged chains by name), or nothing (``default``); it binds to a
    :class:`~deepafx.chain.ChainSpec`.
    """

    class ChainConfig:
        @staticmethod
        def from_dict(values: Mapping[str, Any] | str | None) -> ChainSpec:
            """Returns the :class:`~deepafx.chain.ChainSpec`.

            Raises:
                FileNotFoundError: a chain name that does not resolve (the packaged chains are listed).
                ValueError: a malformed chain.
            """
            if values is None:
                return ChainSpec.from_dict(default)
            if isinstance(values, (str, Path)):
                return ChainSpec.from_file(values)
            return ChainSpec.from_dict(values)

    return ChainConfig


class AutomationTask:
    """A context encoder driving a chain, trained through it: a :class:`~deepafx.trainer.TrainingTask`.

    Stages: ``pretrain`` (``pretrain_steps`` steps, MSE toward the chain's
    defaults or the static start, ``train.start``; ``pretrain_lr``, no rendering) then ``spsa`` (``epochs`` epochs
    through the black-box chain with the configured loss, ``lr``, validation,
    early stopping).

    Recipes subclass it, set :attr:`recipe` and implement :meth:`load_tracks`
    (and optionally :meth:`augment`).

    Args:
        config: The bound recipe config (sections ``chain``, ``model``, ``train`` at least;
            ``train`` an :class:`AutomationTrainConfig`; an optional ``render``
            :class:`~deepafx.workers.RenderConfig` chooses the render engine).
        data_dir: Dataset folder.
    """

    recipe = ""

    def __init__(self, config, data_dir: Path):
        self.config = config
        self.data_dir = Path(data_dir)
        self.settings: AutomationTrainConfig = config.train
        self.mc: ModelConfig = config.model
        self.fx: FxLayer | HybridChain | None = None

    def setup(self, ctx) -> None:
        self.dist = ctx.dist
        self.ctx = ctx
        self.chain = self.config.chain
        self.all_train_tracks, self.valid_tracks = self.load_tracks()
        self.train_tracks = self.all_train_tracks[self.dist.rank :: self.dist.world_size] or self.all_train_tracks
        tc = self.settings
        render: RenderConfig = self.config.sections.get("render") or RenderConfig()  # owns the worker count
        self.start_seconds = 0.0  # time spent finding the static start in this set-up
        start = self.chain.param_table.defaults_normalized() if tc.start == "defaults" else self._static_start(render)
        eps = (ExponentialEpsilon(tc.epsilon, tc.epsilon_end, tc.epsilon_decay_steps) if tc.epsilon_end else tc.epsilon)
        layer = HybridChain if is_hybrid(self.chain) else FxLayer  # ddsp. entries: autograd for them
        self.fx = layer(self.chain, tc.batch_size, estimator=tc.estimator,
                        epsilon=eps, num_perturbations=tc.num_perturbations,
                        seed=tc.seed * 1009 + self.dist.rank, timeout_seconds=tc.timeout_seconds,
                        render=render, worker_share=self.dist.world_size)
        self.defaults = torch.tensor(pretrain_target(start), dtype=torch.float32)
        self.loss_fn = build_loss(tc.loss, sample_rate=self.chain.sample_rate, latency_samples=self.fx.latency_samples,
                                  max_delay_ms=tc.max_delay_ms, alpha_time=tc.alpha_time, alpha_freq=tc.alpha_freq,
                                  reduction="none").to(self.dist.device)

    def _static_start(self, render: RenderConfig) -> np.ndarray:
        """``(P,)`` normalized static preset of ``train.start: static``: read from the run folder when it
        was found with these settings, else searched (rank 0) and saved there atomically."""
        from deepafx.runs import atomic_write_text

        tc = self.settings
        path = self.ctx.run.root / STATIC_START_FILE
        settings = {"chain": self.chain.to_dict(), "renders": int(tc.start_renders), "seconds": float(tc.start_seconds),
                    "sigma": float(tc.start_sigma), "seed": int(tc.seed), "loss": tc.loss, "data": self.data_dir.name,
                    "tracks": len(self.all_train_tracks)}

        def saved() -> np.ndarray | None:
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError):
                return None
            return np.asarray(doc["params"], dtype=np.float64) if doc.get("settings") == settings else None

        if self.dist.is_main and saved() is None:
            doc = search_static_start(self.chain, self.all_train_tracks, tc, render)
            self.start_seconds = doc["search_seconds"]
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps({"settings": settings, **doc}, indent=1))
            log.info("static start: objective %.4f (defaults %.4f), %d renders, %.0f s", doc["objective"],
                     doc["default_objective"], doc["renders"], doc["search_seconds"])
        if self.dist.distributed:
            torch.distributed.barrier()
        start = saved()
        if start is None:
            raise RuntimeError(f"{path} could not be read after the static start was searched")
        return start

    def build_model(self) -> AutomationModel:
        self.model = AutomationModel(self.mc, self.chain, self.fx.num_params, self.defaults.numpy())
        return self.model

    def stages(self) -> list[Stage]:
        tc = self.settings
        pretrain = [Stage("pretrain", steps=tc.pretrain_steps, loss="mse_to_defaults", lr=tc.pretrain_lr)]
        return pretrain * (tc.pretrain_steps > 0) + [
            Stage("spsa", steps=tc.steps_per_epoch or 0, epochs=tc.epochs, loss=tc.loss, lr=tc.lr,
                  grad_clip=tc.grad_clip, validate=True),
        ]

    def begin_stage(self, stage: Stage) -> None:
        pass

    # -- data -------------------------------------------------------------------------
    def _batcher(self, tracks, epoch: int, salt: int) -> StatefulBatcher:
        return StatefulBatcher(tracks, self.settings.batch_size, self.model.frame_samples, self.model.context_samples,
                               seed=(self.settings.seed * 7919 + epoch * 131 + salt) * 64 + self.dist.rank,
                               epoch_mode="drain", pad_last_frame=False, random_offset=True)

    def load_tracks(self) -> tuple[list, list]:
        """``(train, valid)`` lists of ``(input, target)`` ``(channels, samples)`` float32 tracks.

        Called on every rank after ``self.dist`` and ``self.chain`` are set (render
        data on rank 0 and :func:`torch.distributed.barrier` under DDP).
        """
        raise NotImplementedError

    def augment(self, tracks: list, epoch: int) -> list:
        """This epoch's training tracks (default: unchanged); seed from ``(seed, epoch, rank)``."""
        return tracks

    def batches(self, stage: Stage, epoch: int, start: int):
        if stage.name == "pretrain":
            batcher = self._batcher(self.train_tracks, epoch=0, salt=1)
            return stage.steps, itertools.islice(iter(batcher), start, None)
        self.fx.train()
        self.fx.reset()
        batcher = self._batcher(self.augment(self.train_tracks, epoch), epoch, salt=2)
        return batcher.num_batches_per_epoch, itertools.islice(iter(batcher), start, None)

    # -- objective -----------------------------------------------------------------------
    def _kept(self, active: torch.Tensor) -> torch.Tensor:
        """Active slots the Fx layer did not drop for NaN/Inf renders in its last forward."""
        finite = self.fx.last_finite
        return active if finite is None else active & finite.to(active.device)

    def _frame_loss(self, y: torch.Tensor, target: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Mean loss over active slots (idle slots at the end of a drained epoch hold silence), leaving out
        items dropped for NaN/Inf renders.

        Raises:
            NonFiniteRenderError: every active item was dropped.
        """
        idx = self._kept(active).nonzero().flatten()
        if len(idx) == 0:
            if bool(active.any()):
                raise nonfinite_step_error(self.chain, int(active.sum()))
            return y.sum() * 0.0
        return self.loss_fn(y[idx], target[idx]).mean()

    def _render_batch(self, b) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reset the slots that start a new track, predict, render; returns ``(output, loss, params)``."""
        resets = [i for i in range(b.batch_size) if b.reset[i]]
        if resets:
            self.fx.reset(resets)
        dev = self.dist.device
        params = self.ctx.net(torch.from_numpy(b.context).to(dev))
        y = self.fx(torch.from_numpy(b.frame).to(dev), params)
        return y, self._frame_loss(y, torch.from_numpy(b.target).to(dev), torch.from_numpy(b.active).to(dev)), params

    def _param_penalty(self, params: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """``train.param_l2`` × mean over active items of the squared distance to the stage-1 goal."""
        lam = float(self.settings.param_l2)
        if lam <= 0 or not bool(active.any()):
            return params.sum() * 0.0
        goal = self.defaults.to(params.device, params.dtype)
        weight = torch.ones(params.shape[1], device=params.device, dtype=params.dtype)
        if self.model.relative_index is not None:
            weight[self.model.relative_index] = 0.0  # the output level is the loss's to set
        dist = ((params - goal).pow(2) * weight).sum(1)
        return lam * dist[active].mean()

    def step(self, stage: Stage, b) -> tuple[torch.Tensor, dict[str, float]]:
        if stage.name == "pretrain":
            ctx = torch.from_numpy(b.context).to(self.dist.device)
            target = self.model.pretrain_goal(ctx, self.defaults.to(self.dist.device))
            loss = torch.nn.functional.mse_loss(self.ctx.net(ctx), target)
            return loss, {"loss": loss.item()}
        _, loss, params = self._render_batch(b)
        active = torch.from_numpy(b.active)
        penalty = self._param_penalty(params, active.to(params.device))
        dropped = int(active.sum()) - int(self._kept(active).sum())  # NaN/Inf renders, left out of the step
        info = {"loss": loss.item(), "epsilon": self.fx.current_epsilon(), "dropped_items": dropped}
        if self.settings.param_l2 > 0:
            info["param_l2"] = penalty.item()
        return loss + penalty, info

    def validate(self, stage: Stage, epoch: int, tb) -> tuple[float, float]:
        self.ctx.net.eval()
        self.fx.eval()
        self.fx.reset()
        batcher = self._batcher(self.valid_tracks, epoch=0, salt=3)  # same validation stream every epoch
        vs = self.settings.valid_steps
        steps = batcher.num_batches_per_epoch if vs is None else min(vs, batcher.num_batches_per_epoch)
        it = iter(batcher)
        total, count, example = 0.0, 0, None
        for _ in range(steps):
            b = next(it)
            y, loss, _ = self._render_batch(b)
            n_active = float(self._kept(torch.from_numpy(b.active)).sum())  # items the loss averaged
            total += loss.item() * n_active
            count += n_active
            if b.active[0]:
                example = (b.frame[0], y[0].cpu().numpy(), b.target[0])
        self.fx.reset()
        if example is not None and self.dist.is_main:
            sr = self.chain.sample_rate
            for tag, audio in zip(("input", "output", "target"), example):
                tb.audio(f"valid/{tag}", audio, sr, epoch + 1)
            tb.figure("valid/spectrograms", _spectrogram_figure(example, sr), epoch + 1)
        return total / max(count, 1), count

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"fx": self.fx.state_dict()}

    def load_state_dict(self, state) -> None:
        self.fx.load_state_dict(state["fx"])

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"chain": self.chain.to_dict(), "num_params": self.fx.num_params, "param_names": self.fx.param_names}

    def close(self) -> None:
        if self.fx is not None:
            self.fx.close()


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


__all__ = ["AutomationTask", "AutomationTrainConfig", "chain_section", "load_tracks"]
