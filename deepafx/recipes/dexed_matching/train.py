"""Training of the Dexed preset estimator (``deepafx train --config recipes/dexed_matching/quick.yaml``).

Schedule (DiffSynth, Masuda & Saito, ISMIR 2021, with SPSA through the real
Dexed engine instead of a differentiable synth):

1. ``ploss`` — parameter loss only (L1 on numerical, cross-entropy on
   discrete parameters) on in-domain presets. Checkpoint ``ploss.pt``.
2. ``crossfade`` — ``(1 − α) · P-loss + α · w · spectral`` with ``α`` rising
   linearly from 0 to 1; the spectral loss (multi-scale spectral loss, or the
   delay-invariant loss) is computed on Dexed renders of the predicted presets
   through :class:`deepafx.fx.FxLayer` (SPSA gradients, render workers).
3. ``synth`` — spectral loss only on in-domain sounds. Checkpoint ``synth.pt``.
4. ``real`` — spectral loss only on out-of-domain notes (sampled instruments,
   no true parameters). Checkpoint ``real.pt``.

Discrete parameters during the spectral stages: the spectral loss trains the
numerical head only; the discrete values Dexed renders are the argmax of the
discrete heads, which are *frozen at their P-loss-stage predictions* by a
cross-entropy anchor (true classes in-domain; for out-of-domain notes, the
classes the P-loss model predicted, recorded at the end of stage 1). Why: SPSA
perturbs each parameter by ε ≈ 0.01 (about one DX7 step), which never moves a
categorical choice across its grid (algorithm, coarse ratio, curves, waves), so
SPSA carries no information about them; a score-function (REINFORCE) estimator
over 54 categorical variables with up to 32 classes each has a variance that
would need orders of magnitude more renders than a 2-core budget allows, and
without the anchor the shared CNN/GRU would drift the discrete heads while the
spectral loss cannot correct them.

SPSA estimator (``train.spsa_mode``). The Fx layer's default estimator
linearizes the loss in the audio, ``dL/dy · (y⁺ − y⁻)``; for an FM synth a
one-step change of a frequency or envelope parameter decorrelates the waveform,
so that product is mostly noise. Measured on four factory voices perturbed by
σ = 0.08 (``benchmarks/dexed_spsa_estimators.py``, 12 Adam steps, lr 3e-3,
K = 2): the audio-linearized estimator left the multi-scale spectral loss at
13.96 → 14.00, SPSA on the loss itself (``spsa_mode: loss``, the default)
lowered it 13.96 → 11.88. The loss-level estimator renders the main and the
2K perturbed presets of every item through the Fx layer's workers
(:func:`deepafx.fx.spsa_loss_gradient`) and perturbs only the numerical parameters.

Features: checkpoints (``checkpoints/last.pt`` every ``checkpoint_every`` steps
and at each stage end) and ``--resume``; tqdm progress; TensorBoard scalars
(``tensorboard/``) and a JSON-lines log; the same entry point runs plain or
under ``torchrun`` (DistributedDataParallel with the gloo backend, rank 0 does
all I/O, each rank has its own render workers).
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from deepafx.recipes.dexed_matching.data import build_dataset, load_dataset, RecipeData
from deepafx.recipes.dexed_matching.model import DexedEstimator
from deepafx.recipes.dexed_matching.search import numeric_free_mask as _numeric_free_mask
from deepafx.recipes.dexed_matching.spectral import grouped_mss
from deepafx.fx import spsa_loss_gradient
from deepafx.losses import MultiResolutionSTFTLoss
from deepafx.hosts.dexed_host import dexed_param_table

STAGES = ("ploss", "crossfade", "synth", "real")


@dataclass
class TrainConfig:
    """The ``train:`` section of the recipe config.

    Args:
        batch_size: Items per step (per rank).
        learning_rate: Adam learning rate of the P-loss stage.
        spectral_learning_rate: Adam learning rate from the cross-fade on.
        ploss_steps, crossfade_steps, synth_steps, real_steps: Stage lengths in steps.
        spectral_loss: ``"mss"`` (DDSP multi-scale spectral loss) or
            ``"delay_invariant"`` (DeepAFx delay-invariant loss).
        fft_sizes: FFT sizes of the multi-scale spectral loss.
        max_delay_ms: Largest lag of the delay-invariant loss, ms.
        spectral_weight: ``w``: scale of the spectral loss against the P-loss.
        anchor_weight: Weight of the discrete cross-entropy anchor in spectral stages.
        spsa_epsilon: SPSA perturbation on normalized values (≤ 0.01 so that
            discrete values at grid points are never moved, see module docstring).
        spsa_perturbations: SPSA draws averaged per step (2 renders each).
        spsa_mode: ``"loss"`` (default): SPSA on the per-item spectral loss,
            ``g = mean_k (L(θ + εΔ_k) − L(θ − εΔ_k)) / (2ε) · Δ_k``, with the
            perturbed presets rendered by the :class:`~deepafx.fx.FxLayer`
            workers; ``"vjp"``: the Fx layer's own estimator, which linearizes
            the loss in the audio (``dL/dy · (y⁺ − y⁻)``). See the module docstring.
        render_workers: Render worker processes for the Fx layer.
        torch_threads: Torch threads of the training process (``None``: leave as is).
        log_every, checkpoint_every: Steps between log lines / checkpoints.
        seed: Random seed.
    """

    batch_size: int = 8
    learning_rate: float = 1e-3
    spectral_learning_rate: float = 3e-4
    ploss_steps: int = 2000
    crossfade_steps: int = 500
    synth_steps: int = 1000
    real_steps: int = 1000
    spectral_loss: str = "mss"
    fft_sizes: Sequence[int] = (2048, 1024, 512, 256, 128, 64)
    max_delay_ms: float = 10.0
    spectral_weight: float = 0.1
    anchor_weight: float = 1.0
    spsa_epsilon: float = 0.01
    spsa_perturbations: int = 2
    spsa_mode: str = "loss"
    render_workers: int = 2
    torch_threads: int | None = None
    log_every: int = 20
    checkpoint_every: int = 200
    seed: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "TrainConfig":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown train settings {sorted(unknown)}; known: {sorted(known)}")
        cfg = cls(**d)
        if cfg.batch_size < 1 or min(cfg.ploss_steps, cfg.crossfade_steps, cfg.synth_steps, cfg.real_steps) < 0:
            raise ValueError("batch_size must be >= 1 and stage lengths >= 0 steps")
        if cfg.ploss_steps < 1:
            raise ValueError("ploss_steps must be >= 1: the spectral stages start from the P-loss model")
        if not 0 < cfg.spsa_epsilon <= 0.0104:
            raise ValueError(
                f"spsa_epsilon must be in (0, 0.0104], got {cfg.spsa_epsilon}: larger perturbations move discrete "
                "DX7 values (e.g. the 49 transposes, whose grid step is 1/48) and break the frozen-discrete scheme"
            )
        if cfg.spsa_mode not in ("loss", "vjp"):
            raise ValueError(f"spsa_mode must be 'loss' or 'vjp', got {cfg.spsa_mode!r}")
        if cfg.spsa_perturbations < 1:
            raise ValueError(f"spsa_perturbations must be >= 1, got {cfg.spsa_perturbations}")
        if cfg.spectral_loss not in SPECTRAL_LOSSES:
            raise ValueError(f"spectral_loss must be one of {sorted(SPECTRAL_LOSSES)}, got {cfg.spectral_loss!r}")
        return cfg

    @property
    def total_steps(self) -> int:
        return self.ploss_steps + self.crossfade_steps + self.synth_steps + self.real_steps

    def stage_at(self, step: int) -> tuple[str, float]:
        """``(stage, α)`` of global step ``step`` (0-based); α is the spectral-loss weight."""
        a = self.ploss_steps
        b = a + self.crossfade_steps
        c = b + self.synth_steps
        if step < a:
            return "ploss", 0.0
        if step < b:
            return "crossfade", (step - a + 1) / self.crossfade_steps
        if step < c:
            return "synth", 1.0
        return "real", 1.0

    def stage_end(self, stage: str) -> int:
        """Global step after which ``stage`` is over."""
        ends = np.cumsum([self.ploss_steps, self.crossfade_steps, self.synth_steps, self.real_steps])
        return int(ends[STAGES.index(stage)])


def _mss(cfg: TrainConfig, sample_rate: float) -> nn.Module:
    from deepafx.losses import MultiResolutionSTFTLoss

    return MultiResolutionSTFTLoss(fft_sizes=cfg.fft_sizes, reduction="none")


def _delay_invariant(cfg: TrainConfig, sample_rate: float) -> nn.Module:
    from deepafx.losses import DelayInvariantLoss

    return DelayInvariantLoss(max_delay_samples=int(round(cfg.max_delay_ms * 1e-3 * sample_rate)), reduction="none")


SPECTRAL_LOSSES = {"mss": _mss, "delay_invariant": _delay_invariant}


# ---------------------------------------------------------------------------
# config helpers
# ---------------------------------------------------------------------------


def apply_overrides(config: Mapping[str, Any], overrides: Mapping[str, Any] | Sequence[str] | None) -> dict:
    """Copy of ``config`` with overrides applied.

    Args:
        config: Nested config mapping.
        overrides: ``{"train.ploss_steps": 10}``, nested mappings, or strings
            ``"train.ploss_steps=10"`` (values parsed as YAML).

    Raises:
        ValueError: a malformed override string.
    """
    import yaml

    out = copy.deepcopy(dict(config))
    if not overrides:
        return out
    items: list[tuple[str, Any]] = []
    if isinstance(overrides, Mapping):
        def flat(prefix: str, m: Mapping[str, Any]) -> None:
            for k, v in m.items():
                key = f"{prefix}.{k}" if prefix else str(k)
                if isinstance(v, Mapping) and "." not in str(k):
                    flat(key, v)
                else:
                    items.append((key, v))
        flat("", overrides)
    else:
        for s in overrides:
            if "=" not in s:
                raise ValueError(f"override {s!r} must look like section.key=value")
            k, v = s.split("=", 1)
            items.append((k.strip(), yaml.safe_load(v)))
    for key, value in items:
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return out


def data_dir_for(config: Mapping[str, Any], run_dir: str | Path, data_dir: str | Path | None = None) -> Path:
    """Dataset folder: ``data_dir`` if given, else ``data.dir`` of the config, else
    ``data/dexed_matching/<config file stem>`` (where ``deepafx data`` writes) when
    the config came from a file, else ``RUN_DIR/data``."""
    if data_dir is not None:
        return Path(data_dir)
    d = (config.get("data") or {}).get("dir")
    if d:
        return Path(d)
    if config.get("_path"):
        return Path("data") / "dexed_matching" / Path(str(config["_path"])).stem
    return Path(run_dir) / "data"


def data_section(config: Mapping[str, Any]) -> dict:
    """The ``data`` section without the ``dir`` key (what :class:`DataConfig` takes)."""
    return {k: v for k, v in (config.get("data") or {}).items() if k != "dir"}


def ensure_dataset(config: Mapping[str, Any], run_dir: str | Path, progress: bool = True,
                   data_dir: str | Path | None = None) -> RecipeData:
    """Build the dataset if needed (cached: reused while the data settings are unchanged) and load it."""
    d = data_dir_for(config, run_dir, data_dir)
    build_dataset({"data": data_section(config)}, d, progress=progress)
    return load_dataset(d)


# ---------------------------------------------------------------------------
# distributed helpers
# ---------------------------------------------------------------------------


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def _maybe_init_dist(world: int) -> bool:
    if world <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return True


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------


@dataclass
class _State:
    step: int = 0
    pseudo_classes: np.ndarray | None = None  # (M_ood_train, num_discrete)
    history: list = field(default_factory=list)


def _checkpoint(model: DexedEstimator, data: RecipeData, cfg: TrainConfig, state: _State, opt, stage: str) -> dict:
    return {
        "kind": "deepafx.dexed_matching",
        "stage": stage,
        "step": state.step,
        "model": model.describe(),
        "state_dict": model.state_dict(),
        "optimizer": opt.state_dict() if opt is not None else None,
        "train": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
        "data": {
            "sample_rate": data.config.sample_rate,
            "duration_s": data.config.duration_s,
            "note_duration_s": data.config.note_duration_s,
            "notes": [list(n) for n in data.config.notes],
            "multi_note": data.config.multi_note,
            "reference_level_db": data.reference_level_db,
        },
        "retrieval_x": data.x["train"].astype(np.float32),
        "pseudo_classes": state.pseudo_classes,
        "rng": {"torch": torch.get_rng_state(), "numpy": None},
        "param_names": dexed_param_table().names,
    }


def _save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_estimator(path: str | Path) -> tuple[DexedEstimator, dict]:
    """Load a checkpoint written by :func:`train_from_config`.

    Returns:
        ``(model in eval mode, checkpoint dict)``.

    Raises:
        FileNotFoundError: missing file; ValueError: not a Dexed-matching checkpoint.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    ckpt = torch.load(p, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "deepafx.dexed_matching":
        raise ValueError(f"{p} is not a dexed_matching checkpoint (train one with `deepafx train --config recipes/dexed_matching/quick.yaml`)")
    model = DexedEstimator.from_description(ckpt["model"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt


def _grouped_loss(loss_fn: nn.Module):
    """``grouped_loss`` for :func:`deepafx.fx.spsa_loss_gradient`: the multi-scale spectral
    loss with each target's spectra computed once (same value); ``None`` for other losses."""
    if not isinstance(loss_fn, MultiResolutionSTFTLoss):
        return None
    overlap = 1.0 - loss_fn.hops[0] / loss_fn.fft_sizes[0]
    return lambda y, target: grouped_mss(y, target, loss_fn.fft_sizes, overlap, loss_fn.log_weight, loss_fn.eps)


def train_from_config(
    config: Mapping[str, Any],
    out_dir: str | Path,
    resume: bool = False,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    progress: bool = True,
    data_dir: str | Path | None = None,
) -> Path:
    """Train the estimator through all stages; returns the checkpoint folder.

    Args:
        config: Recipe config (``recipe``, ``data``, ``model``, ``train`` sections).
        out_dir: Run folder: ``checkpoints/``, ``tensorboard/``, ``train_log.jsonl``,
            ``config.json`` (and ``data/`` unless ``data.dir`` is set).
        resume: Continue from ``checkpoints/last.pt`` when it exists.
        overrides: Dotted overrides (see :func:`apply_overrides`).
        progress: Show a tqdm bar (rank 0).
        data_dir: Dataset folder (see :func:`data_dir_for` for the default); built
            there first if missing or stale.

    Returns:
        ``out_dir/checkpoints``.

    Raises:
        ValueError: bad settings; errors of the dataset build and render workers.
    """
    from tqdm import tqdm

    from deepafx.chain import chain as make_chain
    from deepafx.fx import FxLayer

    config = apply_overrides(config, overrides)
    rank, world = _dist_info()
    distributed = _maybe_init_dist(world)
    is_main = rank == 0
    cfg = TrainConfig.from_dict(config.get("train"))
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    if is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    if distributed:
        import torch.distributed as dist

        if is_main:
            ensure_dataset(config, out, progress, data_dir)
        dist.barrier()
    data = ensure_dataset(config, out, progress and is_main, data_dir)
    dcfg = data.config
    renderer = dcfg.renderer()
    torch.manual_seed(cfg.seed + rank)
    rng = np.random.default_rng(cfg.seed + 1000 * rank)

    model = DexedEstimator(len(dcfg.notes), dcfg.sample_rate, **(config.get("model") or {}))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    state = _State()
    last = ckpt_dir / "last.pt"
    if resume and last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["state_dict"])
        if ck.get("optimizer"):
            opt.load_state_dict(ck["optimizer"])
        state.step = int(ck["step"])
        state.pseudo_classes = ck.get("pseudo_classes")
        torch.set_rng_state(ck["rng"]["torch"])
        rng = np.random.default_rng(cfg.seed + 1000 * rank + state.step)
        if is_main:
            print(f"resumed from {last} at step {state.step} ({ck['stage']})")
    net: nn.Module = model
    if distributed:
        net = nn.parallel.DistributedDataParallel(model)
    loss_fn = SPECTRAL_LOSSES[cfg.spectral_loss](cfg, dcfg.sample_rate)
    free = torch.from_numpy(_numeric_free_mask())
    spsa_gen = torch.Generator().manual_seed(cfg.seed + 7919 * (rank + 1) + state.step)

    writer = None
    log_file = None
    if is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"))
        except Exception as exc:  # tensorboard missing: keep the JSON log
            print(f"TensorBoard logging disabled: {exc}")
        log_file = open(out / "train_log.jsonl", "a")

    x_train = data.x["train"]
    pitch_train = data.pitch["train"]
    ood_audio = data.ood_audio["train"]
    ood_pitch = data.ood_pitch["train"]
    fx = None
    n = dcfg.num_samples
    spec_dexed = {"backend": "dexed", "name": "dexed", "options": {"notes": [list(p) for p in dcfg.notes], "note_duration_s": dcfg.note_duration_s}}

    def save(stage: str, named: str | None = None) -> None:
        if not is_main:
            return
        ck = _checkpoint(model, data, cfg, state, opt, stage)
        _save(ck, last)
        if named:
            _save(ck, ckpt_dir / f"{named}.pt")

    bar = tqdm(total=cfg.total_steps, initial=state.step, disable=not (progress and is_main), desc="dexed train")
    t_start = time.perf_counter()
    try:
        while state.step < cfg.total_steps:
            stage, alpha = cfg.stage_at(state.step)
            if stage != "ploss" and fx is None:
                for g in opt.param_groups:
                    g["lr"] = cfg.spectral_learning_rate
                slots = cfg.batch_size * (1 + 2 * cfg.spsa_perturbations) if cfg.spsa_mode == "loss" else cfg.batch_size
                fx = FxLayer(
                    make_chain(spec_dexed, sample_rate=dcfg.sample_rate, name="dexed"),
                    slots,
                    num_workers=max(1, cfg.render_workers // world),
                    estimator="spsa",
                    epsilon=cfg.spsa_epsilon,
                    num_perturbations=cfg.spsa_perturbations if cfg.spsa_mode == "vjp" else 1,
                    seed=cfg.seed + rank,
                )
            if stage != "ploss" and state.pseudo_classes is None:
                state.pseudo_classes = _discrete_predictions(model, ood_audio, ood_pitch)
            model.train()
            info: dict[str, float] = {}
            if stage == "real":
                idx = rng.integers(0, len(ood_audio), cfg.batch_size)
                target = torch.from_numpy(ood_audio[idx])
                pitch = torch.from_numpy(ood_pitch[idx]).float()
                audio_in = target
                classes = torch.from_numpy(state.pseudo_classes[idx]).long()
                x_true = None
            else:
                idx = rng.integers(0, len(x_train), cfg.batch_size)
                x_true = torch.from_numpy(x_train[idx]).float()
                audio_in = torch.from_numpy(renderer.render_batch(x_train[idx]))
                target = audio_in
                pitch = torch.from_numpy(pitch_train[idx]).float()
                classes = None
            out_heads = net(audio_in)
            loss = audio_in.new_zeros(())
            if stage in ("ploss", "crossfade"):
                pl, pinfo = model.p_loss(out_heads, x_true)
                loss = loss + (1.0 - alpha) * pl
                info.update(pinfo)
            if alpha > 0:
                xn = model.to_normalized(out_heads, pitch)
                if cfg.spsa_mode == "loss":
                    per_item, grad = spsa_loss_gradient(
                        fx, xn, target.float(), loss_fn, cfg.spsa_epsilon, cfg.spsa_perturbations, free, spsa_gen,
                        grouped_loss=_grouped_loss(loss_fn),
                    )
                    # surrogate whose gradient w.r.t. xn is the SPSA estimate (mean over the batch)
                    spec_term = (xn * grad.to(xn.dtype)).sum() / len(idx)
                    spec = per_item.mean()
                else:
                    spec = loss_fn(fx(torch.zeros(len(idx), 1, n), xn), target.float()).mean()
                    spec_term = spec
                if classes is None:
                    _, tgt_classes = model.layout.split_targets(x_true)
                    classes = torch.stack(tgt_classes, 1)
                anchor = model.discrete_ce(out_heads, classes)
                loss = loss + alpha * (cfg.spectral_weight * spec_term + cfg.anchor_weight * anchor)
                info.update({"spectral": float(spec.detach()), "anchor_ce": float(anchor.detach())})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            state.step += 1
            if alpha > 0 and cfg.spsa_mode == "loss":  # report the actual objective, not the surrogate
                loss = loss - alpha * cfg.spectral_weight * (spec_term - spec.to(loss.dtype))
            info.update({"loss": float(loss.detach()), "alpha": alpha})
            bar.update(1)
            if is_main and (state.step % cfg.log_every == 0 or state.step == cfg.total_steps):
                rec = {"step": state.step, "stage": stage, "seconds": round(time.perf_counter() - t_start, 2), **info}
                log_file.write(json.dumps(rec) + "\n")
                log_file.flush()
                bar.set_postfix({k: f"{v:.3g}" for k, v in info.items() if k != "alpha"} | {"stage": stage})
                if writer is not None:
                    for k, v in info.items():
                        writer.add_scalar(f"train/{k}", v, state.step)
            for st in STAGES:
                if state.step == cfg.stage_end(st) and st != "crossfade":
                    if st == "ploss" and state.pseudo_classes is None:
                        state.pseudo_classes = _discrete_predictions(model, ood_audio, ood_pitch)
                    save(st, st)
            if state.step % cfg.checkpoint_every == 0:
                save(stage)
        # stages of zero length still get their checkpoint (= model at that point)
        for st in ("synth", "real"):
            if is_main and not (ckpt_dir / f"{st}.pt").exists():
                save(st, st)
    finally:
        bar.close()
        if fx is not None:
            fx.close()
        if writer is not None:
            writer.close()
        if log_file is not None:
            log_file.close()
    if is_main:
        print(f"training done in {time.perf_counter() - t_start:.0f} s; checkpoints in {ckpt_dir}")
    if distributed:
        import torch.distributed as dist

        dist.barrier()
    return ckpt_dir


@torch.no_grad()
def _discrete_predictions(model: DexedEstimator, audio: np.ndarray, pitch: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Argmax classes ``(M, num_discrete)`` of the discrete heads for ``audio`` ``(M, C, N)``."""
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(audio), batch_size):
        a = torch.from_numpy(np.ascontiguousarray(audio[i : i + batch_size]))
        out.append(model.discrete_classes(model(a)).numpy())
    model.train(was)
    return np.concatenate(out) if out else np.zeros((0, model.layout.num_discrete), dtype=np.int64)


__all__ = ["STAGES", "TrainConfig", "apply_overrides", "load_estimator", "train_from_config"]
