"""Training of the Dexed preset estimator (``deepafx train --config recipes/dexed_matching/quick.yaml``).

Schedule (DiffSynth, Masuda & Saito, ISMIR 2021, with SPSA through the real
Dexed engine instead of a differentiable synth):

0. ``voice`` — with ``model.voice_classifier``: the voice classifier alone
   (cross-entropy against each corpus item's nearest training voice, label
   smoothing 0.1) for ``train.voice_steps``. Checkpoint ``voice.pt``; the later
   stages continue from its body (the classifier head is not trained again).
1. ``ploss`` — parameter loss only (L1 on numerical, cross-entropy on
   discrete parameters) on in-domain presets. Checkpoint ``ploss.pt``.
2. ``crossfade`` — ``(1 − α) · P-loss + α · w · spectral`` with ``α`` rising
   linearly from 0 to 1; the spectral loss (multi-scale spectral loss, or the
   delay-invariant loss) is computed on Dexed renders of the predicted presets
   through :class:`deepafx.fx.FxLayer` (SPSA gradients, render workers).
3. ``synth`` — spectral loss only on in-domain sounds. Checkpoint ``synth.pt``.
4. ``real`` — spectral loss only on out-of-domain notes (sampled instruments,
   no true parameters), with ``train.real_in_domain_fraction`` of each batch drawn
   from the in-domain presets instead. Checkpoint ``real.pt``.

The spectral loss is a :data:`deepafx.losses.LOSSES` name: the multi-scale spectral
loss (``mss``), the delay-invariant loss, or the log-spectral distortion the
evaluation reports (``lsd``; SPSA on the loss needs only its values).
``train.frozen_params`` keeps chosen parameters at the P-loss network's estimate
through the spectral stages and at inference (a frozen twin inside the estimator,
:class:`~deepafx.recipes.dexed_matching.model.DexedEstimator`).

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

Learned proxy (``train.spectral_gradient: proxy``): instead of SPSA, the gradient comes from
back-propagation through a network trained on the cached corpus to predict Dexed's log-mel features
from the preset (:mod:`~deepafx.recipes.dexed_matching.proxy`, after synth-proxy, Combes et al., JAES
2025); one render per item still gives the reported loss.

Expert iteration (``train.spectral_gradient: search``, after Anthony, Tian and Barber, NeurIPS 2017): each
item's estimate is improved by a short SPSA search through Dexed that keeps the best rendered point
(test-time refinement batched over the items, :func:`~deepafx.recipes.dexed_matching.search.batched_search`),
and the network is moved toward that point along the secant slope (:func:`_search_gradient`).
:data:`GRADIENTS` holds every estimator.

The stages run on the shared engine (:class:`deepafx.trainer.Trainer`):
``checkpoints/{last,ploss,synth,real}.pt``, ``history.jsonl``, TensorBoard,
exact ``--resume`` from any checkpoint, plain or under ``torchrun`` (each rank
has its own render workers). Determinism: every step draws its batch and its
SPSA perturbations from generators seeded by ``(seed, rank, step)``, so a run
is reproducible for a seed and a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from deepafx.encoders import EstimatorOutput
from deepafx.fx import FxLayer, render_losses, spsa_loss_gradient
from deepafx.hosts.dexed_host import dexed_param_table
from deepafx.losses import LogSpectralDistortionLoss, MultiResolutionSTFTLoss, build_loss
from deepafx.recipes.dexed_matching.data import RecipeData, build_dataset, load_dataset
from deepafx.recipes.dexed_matching.model import STARTS, DexedEstimator, held_mask, map_batches
from deepafx.recipes.dexed_matching.search import batched_search, numeric_free_mask
from deepafx.recipes.dexed_matching.spectral import grouped_lsd, grouped_mss
from deepafx.spsa import gradient_from_differences
from deepafx.trainer import Stage, TrainSettings, train
from deepafx.registry import Registry

STAGES = ("voice", "ploss", "crossfade", "synth", "real")
#: What the spectral stages may train (``train.spectral_train``).
SPECTRAL_TRAIN = ("network", "calibration", "global_calibration")
#: Which corpus presets the spectral stages' in-domain items come from (``train.spectral_items``).
SPECTRAL_ITEMS = ("corpus", "marginal")

#: Stages whose model is saved as ``checkpoints/<stage>.pt`` (evaluated as table rows).
SAVED_STAGES = ("voice", "ploss", "synth", "real")
#: Gradient-norm clip of every stage.
GRAD_CLIP = 5.0


@dataclass
class TrainConfig(TrainSettings):
    """The ``train:`` section of the recipe config (with :class:`~deepafx.trainer.TrainSettings`).

    Args:
        batch_size: Items per step (per rank).
        learning_rate: Adam learning rate of the P-loss stage.
        spectral_learning_rate: Adam learning rate from the cross-fade on (same optimizer).
        ploss_steps, crossfade_steps, synth_steps, real_steps: Stage lengths in steps.
        spectral_loss: A :data:`deepafx.losses.LOSSES` name: ``"mss"`` (DDSP
            multi-scale spectral loss) or ``"delay_invariant"`` (DeepAFx).
        fft_sizes: FFT sizes of the multi-scale spectral loss.
        max_delay_ms: Largest lag of the delay-invariant loss, ms.
        spectral_weight: ``w``: scale of the spectral loss against the P-loss.
        anchor_weight: Weight of the discrete cross-entropy anchor in spectral stages.
        frozen_params: Parameters held at the estimate of the network the spectral stages start from
            (the P-loss model): ``fnmatch`` patterns of Dexed parameter names (``"pitch_env_*"``,
            ``"op?_frequency_*"``) or ``":discrete"`` for every discrete parameter. The estimator
            carries a frozen twin of that network (``DexedEstimator(held=...)``) whose heads give
            these parameters in training renders and at inference; SPSA does not perturb them.
            Default none: every numeric parameter is trained (the transpose always follows the note).
        real_in_domain_fraction: Share of each ``real``-stage batch drawn from the in-domain training
            presets (rendered, their true discrete classes as the anchor) beside the out-of-domain
            notes, on [0, 1); 0 (default): out-of-domain notes only, as the DiffSynth schedule has it.
        epsilon: SPSA perturbation ε on normalized values, in (0, 0.5]; 0.01 is one step of a 0–99
            DX7 parameter. SPSA on the loss (``spsa_mode: loss``) perturbs only the free 0–99 parameters;
            with ``spsa_mode: vjp`` the Fx layer perturbs every parameter, so ε ≤ 0.0104 there, which
            never moves a discrete value sitting on its grid point (module docstring).
        num_perturbations: SPSA draws K averaged per step (2 renders each).
        spsa_mode: ``"loss"`` (default): SPSA on the per-item spectral loss
            (:func:`deepafx.fx.spsa_loss_gradient`); ``"vjp"``: the Fx layer's
            audio-linearized estimator. See the module docstring.
        spectral_batch_size: Items per step in the spectral stages (``None``: ``batch_size``); P-loss
            steps on cached features afford far larger batches than steps that render every item.
        spectral_gradient: How the spectral stages get the gradient of the spectral loss, a :data:`GRADIENTS`
            name: ``"spsa"`` (default; renders through Dexed, ``spsa_mode``), ``"proxy"`` (back-propagation
            through a learned proxy of Dexed trained on the corpus before the first spectral stage,
            :mod:`~deepafx.recipes.dexed_matching.proxy`; needs ``data.corpus_size > 0``) or
            ``"calibration_spsa"`` (SPSA on the output calibration's weights, ``spectral_train``) or ``"search"``
            (expert iteration: a short SPSA search per item through Dexed, keeping the best point by the loss, and the
            network moved toward it; :func:`_search_gradient`).
        search_iterations: ``"search"``: SPSA iterations ``T`` of each item's search (≥ 1; ``1 + 2KT`` renders an
            item, ``K`` = ``num_perturbations``).
        search_learning_rate: ``"search"``: Adam step of the search on normalized values (> 0; test-time
            refinement's default, 1e-3).
        proxy_steps, proxy_batch_size, proxy_learning_rate: Training of the proxy (Adam, cosine-decayed rate).
        proxy_hidden: Width of the proxy's hidden layers.
        spectral_start: Where the spectral stages start (:data:`~deepafx.recipes.dexed_matching.model.STARTS`):
            ``"ploss"`` (default), the P-loss network's heads (the DiffSynth schedule); ``"voice"``, the voice
            classifier's choice (the ``voice`` stage's checkpoint) plus a residual on the continuous parameters
            that the spectral stages train, the discrete and ``frozen_params`` ones kept at the voice's values
            (:class:`~deepafx.recipes.dexed_matching.model.DexedEstimator` ``start``). Needs
            ``model.voice_classifier`` and ``crossfade_steps: 0`` (there are no P-loss heads to fade from).
        voice_steps: Steps of the ``voice`` stage (``model.voice_classifier``: at least 1), batches of
            ``batch_size`` corpus items at ``learning_rate``.
        voice_labels: What the voice classifier's labels are nearest by
            (:meth:`~deepafx.recipes.dexed_matching.corpus.Corpus.nearest_voices`): ``"logmel"``, the
            cached-feature distance nearest-preset retrieval uses, or ``"lsd"``, the evaluation's
            log-spectral distortion (re-rendered once and cached in the corpus folder).
        spectral_eval_mode: Run the network in eval mode in the spectral stages (cross-fade, synth, real):
            BatchNorm keeps the running statistics of the stages before (the P-loss stage's 64-item batches of
            the corpus) and normalizes by them, dropout is off. Default ``False``: train mode, where each
            step's batch of ``spectral_batch_size`` renders normalizes itself and, at BatchNorm's momentum 0.1,
            replaces the running statistics within a few dozen steps; eval mode is the usual way to fine-tune
            with small batches, and SPSA then differences the function the evaluation uses (measured on the
            medium config: no better, README "What moves the estimate in the Synth stage").
        spectral_fresh_optimizer: Start the spectral stages with a fresh Adam (first and second moments at
            zero, at ``spectral_learning_rate``) instead of continuing the P-loss stage's. Adam divides each
            step by the root of its running mean of squared gradients; carried over, that mean is the P-loss
            gradients', which on the numeric head are some 50 times smaller than the SPSA gradients of the
            spectral loss (medium config, README "Adam's state across the switch"), so the first spectral
            steps there are up to that many times ``spectral_learning_rate``. Default ``False`` (continue;
            a fresh Adam moves the estimates half as much and does not meet the stage's target either).
        spectral_items: Which corpus presets the spectral stages' in-domain items are drawn from
            (:data:`SPECTRAL_ITEMS`): ``"corpus"`` (default), every valid corpus preset (mostly perturbations of
            the training voices, which the P-loss stage fitted); ``"marginal"``, only the marginal draws (new
            combinations of the training voices' values: sounds as unlike every training voice as the held-out
            voices are).
        spectral_train: What the spectral stages train (:data:`SPECTRAL_TRAIN`): ``"network"`` (default), every
            weight of the estimator; ``"calibration"``, only a per-parameter affine calibration of its numeric
            estimates (a log-scale and a shift for each, about the training voices' mean:
            :class:`~deepafx.recipes.dexed_matching.model.DexedEstimator` ``calibrate``), the network fixed and
            in eval mode. Each SPSA draw of every sound then informs the same 2 × 76 weights, where through the
            whole network it informs a direction of its own sound; ``"global_calibration"``, one log-scale and
            one shift shared by all the numeric parameters (2 weights). With ``spectral_gradient:
            calibration_spsa`` SPSA perturbs these weights themselves by ``calibration_epsilon`` (default 0.1,
            in log-scale and shift units) instead of each preset. Measured on the medium config (README "Training a
            calibration through Dexed"): SPSA on the two global weights lowers the LSD on the training voices,
            and none of the three lowers it on held-out voices. Needs ``crossfade_steps: 0`` (the cross-fade's
            P-loss term would only pull the calibration back to the identity) and a ``spectral_learning_rate``
            for weights of order 0.1 (e.g. 3e-3).
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
    epsilon: float = 0.01
    num_perturbations: int = 2
    spsa_mode: str = "loss"
    spectral_batch_size: int | None = None
    spectral_gradient: str = "spsa"
    proxy_steps: int = 3000
    proxy_batch_size: int = 64
    proxy_learning_rate: float = 1e-3
    proxy_hidden: int = 512
    frozen_params: Sequence[str] = ()
    spectral_start: str = "ploss"
    real_in_domain_fraction: float = 0.0
    voice_steps: int = 1500
    voice_labels: str = "logmel"
    spectral_eval_mode: bool = False
    spectral_fresh_optimizer: bool = False
    spectral_train: str = "network"
    calibration_epsilon: float = 0.1
    spectral_items: str = "corpus"
    search_iterations: int = 8
    search_learning_rate: float = 1e-3
    log_every: int = 20
    checkpoint_every: int = 200

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "TrainConfig":
        """Bind and validate.

        Raises:
            ValueError: an unknown key (named) or a bad value.
        """
        from deepafx.config import bind

        cfg = bind(cls, d, "train")
        if cfg.batch_size < 1 or min(cfg.ploss_steps, cfg.crossfade_steps, cfg.synth_steps, cfg.real_steps) < 0:
            raise ValueError("batch_size must be >= 1 and stage lengths >= 0 steps")
        if cfg.ploss_steps < 1:
            raise ValueError("ploss_steps must be >= 1: the spectral stages start from the P-loss model")
        if cfg.spsa_mode not in ("loss", "vjp"):
            raise ValueError(f"spsa_mode must be 'loss' or 'vjp', got {cfg.spsa_mode!r}")
        if cfg.spsa_mode == "vjp" and not 0 < cfg.epsilon <= 0.0104:
            raise ValueError(
                f"epsilon must be in (0, 0.0104] with spsa_mode 'vjp', got {cfg.epsilon}: the Fx layer perturbs every "
                "parameter, and larger perturbations move discrete DX7 values (e.g. the 49 transposes, whose grid step "
                "is 1/48) and break the frozen-discrete scheme"
            )
        if not 0 < cfg.epsilon <= 0.5:
            raise ValueError(f"epsilon must be in (0, 0.5] (normalized units; SPSA on the loss perturbs only the "
                             f"0-99 parameters, 0.01 is one DX7 step), got {cfg.epsilon}")
        if cfg.spectral_batch_size is not None and cfg.spectral_batch_size < 1:
            raise ValueError(f"spectral_batch_size must be >= 1, got {cfg.spectral_batch_size}")
        if cfg.num_perturbations < 1:
            raise ValueError(f"num_perturbations must be >= 1, got {cfg.num_perturbations}")
        frozen_mask(cfg.frozen_params)  # patterns that match nothing fail here
        GRADIENTS.get(cfg.spectral_gradient)  # unknown names fail here, listing the known ones
        if min(cfg.proxy_steps, cfg.proxy_batch_size, cfg.proxy_hidden) < 1 or not cfg.proxy_learning_rate > 0:
            raise ValueError(f"proxy_steps, proxy_batch_size and proxy_hidden must be >= 1 and proxy_learning_rate "
                             f"> 0, got {cfg.proxy_steps}, {cfg.proxy_batch_size}, {cfg.proxy_hidden}, "
                             f"{cfg.proxy_learning_rate}")
        if cfg.spectral_start not in STARTS:
            raise ValueError(f"spectral_start must be one of {STARTS}, got {cfg.spectral_start!r}")
        if cfg.spectral_start == "voice" and cfg.crossfade_steps:
            raise ValueError("spectral_start: voice starts the spectral stages at the voice classifier's choice, "
                             f"with no P-loss heads to cross-fade from: set crossfade_steps: 0 (got {cfg.crossfade_steps})")
        if cfg.spectral_train not in SPECTRAL_TRAIN:
            raise ValueError(f"spectral_train must be one of {SPECTRAL_TRAIN}, got {cfg.spectral_train!r}")
        if cfg.spectral_train != "network" and cfg.crossfade_steps:
            raise ValueError(f"spectral_train: {cfg.spectral_train} trains only the output calibration, which the cross-fade's "
                             f"P-loss term would pull back to the identity: set crossfade_steps: 0 (got {cfg.crossfade_steps})")
        if cfg.spectral_gradient == "calibration_spsa" and cfg.spectral_train == "network":
            raise ValueError("spectral_gradient: calibration_spsa perturbs the output calibration's weights: set "
                             "spectral_train: calibration or global_calibration")
        if cfg.spectral_items not in SPECTRAL_ITEMS:
            raise ValueError(f"spectral_items must be one of {SPECTRAL_ITEMS}, got {cfg.spectral_items!r}")
        if not 0 < cfg.calibration_epsilon <= 1:
            raise ValueError(f"calibration_epsilon must be in (0, 1] (log-scale and shift units), got {cfg.calibration_epsilon}")
        if cfg.search_iterations < 1 or not cfg.search_learning_rate > 0:
            raise ValueError(f"search_iterations must be >= 1 and search_learning_rate > 0, got {cfg.search_iterations} "
                             f"and {cfg.search_learning_rate}")
        if not 0.0 <= cfg.real_in_domain_fraction < 1.0:
            raise ValueError(f"real_in_domain_fraction must be on [0, 1), got {cfg.real_in_domain_fraction}")
        for key in ("spectral_eval_mode", "spectral_fresh_optimizer"):
            if not isinstance(getattr(cfg, key), bool):
                raise ValueError(f"{key} must be true or false, got {getattr(cfg, key)!r}")
        if cfg.voice_steps < 0:
            raise ValueError(f"voice_steps must be >= 0, got {cfg.voice_steps}")
        from deepafx.recipes.dexed_matching.corpus import VOICE_METRICS

        if cfg.voice_labels not in VOICE_METRICS:
            raise ValueError(f"voice_labels must be one of {VOICE_METRICS}, got {cfg.voice_labels!r}")
        build_loss(cfg.spectral_loss, sample_rate=16000.0)  # unknown names fail here, listing the known ones
        return cfg

    @property
    def spectral_batch(self) -> int:
        """Items per spectral-stage step."""
        return int(self.spectral_batch_size or self.batch_size)

    @property
    def total_steps(self) -> int:
        """Steps of the stages every run has (the ``voice`` stage not counted)."""
        return self.ploss_steps + self.crossfade_steps + self.synth_steps + self.real_steps


@dataclass
class SynthConfig:
    """The ``synth:`` section: which synthesizer renders presets.

    Args:
        backend: A :data:`SYNTHS` name (``"dexed"``: the real Dexed engine through dexed-py).
    """

    backend: str = "dexed"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "SynthConfig":
        from deepafx.config import bind

        cfg = bind(cls, d, "synth")
        SYNTHS.get(cfg.backend)  # unknown names fail here, listing the known ones
        return cfg


#: Synthesizer backends by name: ``factory(data_config) -> processor spec mapping`` of the Fx layer.
SYNTHS: Registry = Registry("synth backend")


@SYNTHS.register("dexed")
def _dexed_processor(dcfg) -> dict[str, Any]:
    """The real Dexed engine (``backend: dexed`` of :mod:`deepafx.hosts.dexed_host`), playing the recipe's notes."""
    return {"backend": "dexed", "name": "dexed",
            "options": {"notes": [list(p) for p in dcfg.notes], "note_duration_seconds": dcfg.note_duration_seconds}}


def ensure_dataset(config, data_dir: str | Path, progress: bool = True) -> RecipeData:
    """Build the dataset in ``data_dir`` if needed (cached while the settings are unchanged) and load it."""
    build_dataset({"data": dataclasses.asdict(config.data)}, data_dir, progress=progress)
    return load_dataset(data_dir)


def load_estimator(path: str | Path) -> tuple[DexedEstimator, dict]:
    """Load a checkpoint written by the Dexed training task.

    Args:
        path: A ``.pt`` file or a run folder (``checkpoints/last.pt``).

    Returns:
        ``(model in eval mode, checkpoint dict)``.

    Raises:
        FileNotFoundError: missing file; ValueError: not a Dexed-matching checkpoint.
    """
    from deepafx.runs import load_checkpoint

    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("recipe") != "dexed_matching":
        raise ValueError(f"{path} is not a dexed_matching checkpoint "
                         "(train one with `deepafx train --config dexed_matching/quick`)")
    model = DexedEstimator.from_description(ckpt["model_description"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, ckpt


def _grouped_loss(loss_fn: nn.Module):
    """``grouped_loss`` for :func:`deepafx.fx.spsa_loss_gradient`: the multi-scale spectral loss or the LSD
    with each target's spectra computed once (same value); ``None`` for other losses."""
    if isinstance(loss_fn, LogSpectralDistortionLoss):
        return lambda y, target: grouped_lsd(y, target, loss_fn.n_fft, loss_fn.hop_length, loss_fn.eps)
    if not isinstance(loss_fn, MultiResolutionSTFTLoss):
        return None
    overlap = 1.0 - loss_fn.hops[0] / loss_fn.fft_sizes[0]
    return lambda y, target: grouped_mss(y, target, loss_fn.fft_sizes, overlap, loss_fn.log_weight, loss_fn.eps)


#: Gradient estimators of the spectral stages by name (``train.spectral_gradient``): ``fn(task, xn (B, 145),
#: target (B, notes, samples), global_step) → (reported loss (), surrogate (), dropped items)``; the surrogate's
#: gradient with respect to ``xn`` is the estimate, the reported loss is always that of real Dexed renders.
GRADIENTS: Registry = Registry("spectral gradient estimator")


@GRADIENTS.register("spsa")
def _spsa_gradient(task: "DexedTask", xn: torch.Tensor, target: torch.Tensor, gstep: int, **_: Any):
    """SPSA through Dexed renders: on the loss itself (``spsa_mode: loss``, ``1 + 2K`` renders per item) or the
    Fx layer's audio-linearized estimator (``spsa_mode: vjp``); see the module docstring."""
    tc = task.settings
    if tc.spsa_mode == "loss":
        gen = task._step_generator(gstep)
        per_item, grad = spsa_loss_gradient(task.fx, xn, target, task.loss_fn, tc.epsilon, tc.num_perturbations,
                                            task.free, gen, grouped_loss=_grouped_loss(task.loss_fn))
        kept = torch.isfinite(per_item)  # items with NaN/Inf renders are dropped (loss NaN, gradient 0)
        dropped = len(xn) - int(kept.sum())
        if dropped:
            per_item = per_item[kept]
        spec = per_item.mean().to(xn.dtype)
        # surrogate whose gradient w.r.t. xn is the SPSA estimate (mean over the kept items)
        return spec, (xn * grad.to(xn.dtype)).sum() / len(per_item), dropped
    y = task.fx(torch.zeros(len(xn), 1, task.dcfg.num_samples), xn)
    kept = task.fx.last_finite.nonzero().flatten()  # the Fx layer raises if it dropped every item
    dropped = len(xn) - len(kept)
    if dropped:
        y, target = y[kept], target[kept]
    spec = task.loss_fn(y, target).mean()
    return spec, spec, dropped


@GRADIENTS.register("calibration_spsa")
def _calibration_spsa_gradient(task: "DexedTask", xn: torch.Tensor, target: torch.Tensor, gstep: int, *, heads, pitch,
                               **_: Any):
    """SPSA on the output calibration's own weights ``θ`` (``train.spectral_train``: ``calibration`` or
    ``global_calibration``), not on each preset: ``K`` Rademacher draws ``Δ_k`` over ``θ`` (2 or 152 weights),
    each shared by the whole batch; every item is rendered at ``θ``, ``θ + ε_c Δ_k`` and ``θ − ε_c Δ_k``
    (``1 + 2K`` renders an item, as SPSA on the presets) and
    ``ĝ = (1/K) Σ_k (L̄(θ + ε_c Δ_k) − L̄(θ − ε_c Δ_k)) / (2 ε_c) · Δ_k`` with ``L̄`` the batch's mean loss
    (Spall, 1992), ``ε_c`` = ``train.calibration_epsilon``. A weight moves every estimate at once, so the
    difference measures the loss's slope along that move over the batch, at a scale (a few DX7 steps) where
    the loss varies smoothly, where SPSA on a preset differences one DX7 step of one sound. Items with a
    non-finite render are dropped."""
    tc = task.settings
    cal = task.model.calibration
    if heads.raw_numeric is None:
        raise ValueError("calibration_spsa needs the calibration active (train.spectral_train: calibration or "
                         "global_calibration)")
    weights = [p.detach() for p in cal.parameters()]  # log_scale, shift
    sizes = [w.numel() for w in weights]
    k, eps = tc.num_perturbations, tc.calibration_epsilon
    delta = torch.randint(0, 2, (k, sum(sizes)), generator=task._step_generator(gstep)).float() * 2.0 - 1.0
    theta = torch.cat([w.flatten() for w in weights])
    rows = [xn.detach()]
    with torch.no_grad():
        for sign in (1.0, -1.0):
            for d in delta:
                log_scale, shift = (theta + sign * eps * d).split(sizes)
                numeric = cal(heads.raw_numeric.detach(), log_scale, shift)
                out = EstimatorOutput(numeric, [lg.detach() for lg in heads.discrete_logits])
                rows.append(task.model.to_normalized(out, pitch))
    b = len(xn)
    presets = torch.stack(rows, 1).reshape(b * (1 + 2 * k), -1).double()
    losses, kept = render_losses(task.fx, presets, target, task.loss_fn, grouped_loss=_grouped_loss(task.loss_fn))
    losses = losses[kept]
    diff = losses[:, 1 : 1 + k].mean(0) - losses[:, 1 + k :].mean(0)  # (K,): L̄⁺_k − L̄⁻_k
    step = (2.0 * eps * delta.double())[None]  # θ⁺ − θ⁻ of each draw, (1, K, weights)
    grad = gradient_from_differences(diff[None], step, k)[0]
    surrogate = sum((p * g.to(p.dtype).reshape(p.shape)).sum() for p, g in zip(cal.parameters(), grad.split(sizes)))
    return losses[:, 0].mean().to(xn.dtype), surrogate, b - int(kept.sum())


@GRADIENTS.register("search")
def _search_gradient(task: "DexedTask", xn: torch.Tensor, target: torch.Tensor, gstep: int, **_: Any):
    """Expert iteration through Dexed (after Anthony, Tian and Barber, NeurIPS 2017): a short search improves each
    item's estimate and the network is moved toward what it found.

    The search is test-time refinement (:func:`~deepafx.recipes.dexed_matching.search.spsa_refine`) batched over
    the items through the Fx layer's workers: ``T`` = ``train.search_iterations`` iterations of ``K`` SPSA draws
    (Rademacher, ε = ``train.epsilon``, on the free numeric parameters) and an Adam step of
    ``train.search_learning_rate``; the estimate ``θ_i`` is rendered once, then ``2K`` perturbed presets an
    iteration (``1 + 2KT`` renders an item), and the rendered point ``θ*_i`` with the lowest loss is kept (the
    estimate itself included). The gradient estimate is the secant slope toward it,
    ``ĝ_i = (L(θ_i) − L(θ*_i)) · d_i / ‖d_i‖²`` with ``d_i = θ_i − θ*_i`` on the free entries: the loss's
    slope along the move the search found, 0 for an item whose search found nothing lower. Unlike one SPSA
    draw it points at a preset rendered and scored lower. Items with a non-finite render in the search's first
    iteration are dropped (:func:`~deepafx.recipes.dexed_matching.search.batched_search`)."""
    tc = task.settings
    res = batched_search(task.fx, xn, target, task.loss_fn, iterations=tc.search_iterations, epsilon=tc.epsilon,
                         num_perturbations=tc.num_perturbations, learning_rate=tc.search_learning_rate,
                         free=task.free, generator=task._step_generator(gstep),
                         grouped_loss=_grouped_loss(task.loss_fn))
    kept = res.kept
    d = (res.start - res.best_x)[kept]  # 0 off the free entries: batched_search moves only those
    gain = (res.start_loss - res.best_loss)[kept]
    norm2 = (d * d).sum(1)
    slope = torch.where(norm2 > 0, gain / norm2.clamp_min(1e-30), torch.zeros_like(norm2))
    grad = torch.zeros_like(res.start)
    grad[kept] = slope[:, None] * d
    task.last_search_gain = float(gain.mean())
    n = int(kept.sum())
    return res.start_loss[kept].mean().to(xn.dtype), (xn * grad.to(xn.dtype)).sum() / n, len(xn) - n


@GRADIENTS.register("proxy")
def _proxy_gradient(task: "DexedTask", xn: torch.Tensor, target: torch.Tensor, gstep: int, **_: Any):
    """Back-propagation through the learned proxy (:mod:`~deepafx.recipes.dexed_matching.proxy`): the gradient of
    its log-mel LSD to the target's features on the free parameters; one Dexed render per item gives the
    reported loss (items whose render is not finite are dropped from both)."""
    from deepafx.fx import nonfinite_step_error
    from deepafx.recipes.dexed_matching.proxy import mel_lsd

    y = task.fx.render(torch.zeros(len(xn), 1, target.shape[-1]), xn.detach().float())
    kept = task.fx.last_finite.clone()
    if not bool(kept.any()):
        raise nonfinite_step_error(task.fx.spec, len(xn))
    with torch.no_grad():
        per_item = task.loss_fn(y[kept], target[kept])
        feats = task.model.features(target[kept])[:, : task.model.in_channels]
    x_in = torch.where(task.free, xn, xn.detach())[kept]  # gradients reach the free parameters only
    surrogate = mel_lsd(task.proxy(x_in), feats).mean()
    return per_item.mean().to(xn.dtype), surrogate, len(xn) - int(kept.sum())


def frozen_mask(patterns: Sequence[str]) -> np.ndarray:
    """``(145,)`` bool: the parameters ``train.frozen_params`` holds (:func:`~deepafx.recipes.dexed_matching.model.held_mask`).

    Raises:
        ValueError: a pattern that matches no parameter (named), or one naming the transpose (prefixed
            ``train.frozen_params``).
    """
    try:
        return held_mask(patterns)
    except ValueError as exc:
        raise ValueError(f"train.frozen_params: {exc}") from None


class DexedTask:
    """The Dexed sound-matching schedule as a :class:`~deepafx.trainer.TrainingTask` (see the module docstring).

    Args:
        config: The bound recipe config (``data``, ``synth``, ``model``, ``train``, ``evaluate``).
        data_dir: Dataset folder (built there first when missing or stale).
    """

    recipe = "dexed_matching"

    def __init__(self, config, data_dir: str | Path):
        self.config = config
        self.data_dir = Path(data_dir)
        self.settings: TrainConfig = config.train
        self.fx: FxLayer | None = None
        self.pseudo_classes: np.ndarray | None = None
        self.voice_rows: np.ndarray | None = None
        self.voice_labels: np.ndarray | None = None
        self.proxy = None
        self.spectral_pool: np.ndarray | None = None  # corpus rows of the spectral items (train.spectral_items)
        self.last_search_gain = float("nan")  # the last step's mean search gain (spectral_gradient: search), dB
        self.proxy_info: dict[str, Any] | None = None

    def setup(self, ctx) -> None:
        import torch.distributed as dist

        self.ctx = ctx
        if ctx.dist.distributed:
            if ctx.dist.is_main:
                ensure_dataset(self.config, self.data_dir)
            dist.barrier()
        self.data = ensure_dataset(self.config, self.data_dir, progress=ctx.dist.is_main)
        self.dcfg = self.data.config
        self.corpus = None
        if self.dcfg.corpus_size > 0:
            from deepafx.recipes.dexed_matching.corpus import Corpus, FeatureSettings

            self.corpus = Corpus(self.data_dir / "corpus")
            m = self.config.model
            self.corpus.check_feature(FeatureSettings(int(m.n_fft), int(m.hop_length), int(m.n_mels)))
            self.feature_kinds = ["logmel", "ifmel"] if m.features == "ifmel" else ["logmel"]
        if self.config.model.voice_classifier:
            if self.corpus is None:
                raise ValueError("model.voice_classifier learns from the corpus: set data.corpus_size > 0")
            if self.settings.voice_steps < 1:
                raise ValueError("model.voice_classifier needs train.voice_steps >= 1")
            # the LSD table is corpus work: the processes of data.num_workers render it
            metric, workers = self.settings.voice_labels, self.config.data.num_workers
            if metric == "lsd" and ctx.dist.distributed:  # one rank renders the LSD cache, the others read it
                if ctx.dist.is_main:
                    self.corpus.voice_lsd(num_workers=workers)
                dist.barrier()
            self.voice_rows, self.voice_labels = self.corpus.nearest_voices(metric=metric, num_workers=workers,
                                                                            progress=ctx.dist.is_main)
        self.renderer = self.dcfg.renderer()
        tc = self.settings
        if tc.spectral_gradient == "proxy" and self.corpus is None and tc.crossfade_steps + tc.synth_steps + tc.real_steps:
            raise ValueError("train.spectral_gradient: proxy learns Dexed from the cached corpus: set data.corpus_size > 0")
        self.loss_fn = build_loss(tc.spectral_loss, sample_rate=self.dcfg.sample_rate, max_delay_ms=tc.max_delay_ms,
                                  fft_sizes=tc.fft_sizes, reduction="none")
        self.frozen = torch.from_numpy(frozen_mask(tc.frozen_params))
        self.free = torch.from_numpy(numeric_free_mask()) & ~self.frozen
        lengths = [tc.voice_steps if self.voice_rows is not None else 0, tc.ploss_steps, tc.crossfade_steps,
                   tc.synth_steps]
        self.offsets = dict(zip(STAGES, np.cumsum([0, *lengths]).tolist()))  # global step of each stage's first

    def build_model(self) -> DexedEstimator:
        self.model = DexedEstimator(len(self.dcfg.notes), self.dcfg.sample_rate,
                                    len(self.voice_rows) if self.voice_rows is not None else 0,
                                    held=list(self.settings.frozen_params), start=self.settings.spectral_start,
                                    calibrate={"calibration": "parameter", "global_calibration": "global"}.get(
                                        self.settings.spectral_train),
                                    **dataclasses.asdict(self.config.model))
        return self.model

    def stages(self) -> list[Stage]:
        tc = self.settings
        spectral = dict(loss=tc.spectral_loss, lr=tc.spectral_learning_rate, grad_clip=GRAD_CLIP, keep_optimizer=True)
        voice = [Stage("voice", steps=tc.voice_steps, loss="voice_ce", lr=tc.learning_rate, grad_clip=GRAD_CLIP,
                       save_as="voice")] if self.voice_rows is not None else []
        return voice + [
            Stage("ploss", steps=tc.ploss_steps, loss="ploss", lr=tc.learning_rate, grad_clip=GRAD_CLIP, save_as="ploss"),
            # the first spectral stage (started even at 0 steps): a fresh optimizer with spectral_fresh_optimizer
            Stage("crossfade", steps=tc.crossfade_steps, **{**spectral, "keep_optimizer": not tc.spectral_fresh_optimizer}),
            Stage("synth", steps=tc.synth_steps, save_as="synth", **spectral),
            Stage("real", steps=tc.real_steps, save_as="real", **spectral),
        ]

    @property
    def find_unused_parameters(self) -> bool:
        """Under DDP: the voice stage leaves the parameter heads unused, the others the voice head."""
        return self.voice_rows is not None

    def begin_stage(self, stage: Stage) -> None:
        spectral = stage.name not in ("voice", "ploss")
        calibration = spectral and self.model.calibrate is not None
        self.model.fixed_statistics = spectral and (self.settings.spectral_eval_mode or calibration)
        if not spectral:
            return
        if self.model.layout.num_numeric == 0 and stage.steps > 0:
            raise ValueError(f"stage {stage.name!r}: the spectral stages train the numeric heads through SPSA, and "
                             f"model.max_categories={self.config.model.max_categories} leaves none; set "
                             "train.crossfade_steps, synth_steps and real_steps to 0 (or max_categories below 100)")
        tc = self.settings
        if self.fx is None:
            from deepafx.chain import chain as make_chain

            b = tc.spectral_batch
            spsa_loss = (tc.spectral_gradient == "spsa" and tc.spsa_mode == "loss") or tc.spectral_gradient in (
                "calibration_spsa", "search")
            slots = b * (1 + 2 * tc.num_perturbations) if spsa_loss else b
            spec = make_chain(SYNTHS.get(self.config.synth.backend)(self.dcfg), sample_rate=self.dcfg.sample_rate,
                              name=self.config.synth.backend)
            from deepafx.workers import RenderConfig

            render = self.config.sections.get("render") or RenderConfig()  # owns the worker count
            self.fx = FxLayer(spec, slots, estimator="spsa", epsilon=tc.epsilon,
                              num_perturbations=tc.num_perturbations if tc.spsa_mode == "vjp" else 1,
                              seed=tc.seed + self.ctx.dist.rank, render=render, worker_share=self.ctx.dist.world_size)
        if tc.spectral_gradient == "proxy" and self.proxy is None:  # trained once, saved with the task's state
            self._train_proxy()
        if self.model.start == "voice" and not self.model.holding:  # the voice classifier's choice + a residual
            self._activate_voice_start()
        elif self.model.held is not None and not self.model.holding:  # frozen_params: fixed at the P-loss estimate
            self.model.activate_held()
        if self.pseudo_classes is None:  # the P-loss model's discrete choices for out-of-domain notes
            self.pseudo_classes = _discrete_predictions(self.model, self.data.ood_audio["train"], self.data.ood_pitch["train"])
        if self.spectral_pool is None and self.corpus is not None:  # the corpus presets the spectral items come from
            pool = self.corpus.valid_index
            self.spectral_pool = pool[self.corpus.kind[pool] == 2] if tc.spectral_items == "marginal" else pool
        if tc.spectral_items == "marginal" and (self.spectral_pool is None or not len(self.spectral_pool)):
            raise ValueError("train.spectral_items: marginal draws the spectral stages' items from the corpus's marginal "
                             "draws, and there are none: set data.corpus_size > 0 and data.corpus_random_fraction > 0")
        if calibration:  # the calibration alone trains, about the training voices' mean; the network is fixed
            if not bool(self.model.calibration.active):
                self.model.activate_calibration(self.data.x["train"].mean(0))
            trained = {id(p) for p in self.model.calibration_parameters()}
            for p in self.model.parameters():
                p.requires_grad_(id(p) in trained)

    def _activate_voice_start(self) -> None:
        """``spectral_start: voice``: the twin gets the ``voice`` stage's classifier (this run's ``voice.pt``,
        which a branch carries from its source) and the training voices.

        Raises:
            FileNotFoundError: the run has no ``voice.pt``."""
        from deepafx.runs import load_checkpoint

        path = self.ctx.run.stage(STAGES[0])
        if not path.exists():
            raise FileNotFoundError(f"train.spectral_start: voice needs the voice stage's checkpoint {path}")
        self.model.activate_voice_start(load_checkpoint(path)["model"], self.corpus.params[self.voice_rows])

    def _train_proxy(self) -> None:
        """Train the Dexed proxy on the corpus (seed ``train.seed``); its hold-out error goes to ``proxy.json``."""
        import json

        from deepafx.recipes.dexed_matching.proxy import train_proxy
        from deepafx.runs import atomic_write_text

        tc = self.settings
        self.proxy, self.proxy_info = train_proxy(self.corpus, steps=tc.proxy_steps, batch_size=tc.proxy_batch_size,
                                                  learning_rate=tc.proxy_learning_rate, seed=tc.seed,
                                                  hidden=tc.proxy_hidden,
                                                  progress=self.ctx.dist.is_main)
        if self.ctx.dist.is_main:
            atomic_write_text(self.ctx.run.root / "proxy.json", json.dumps(self.proxy_info, indent=1) + "\n")

    def _in_domain_items(self, rng: np.random.Generator, n: int, alpha: float):
        """``n`` in-domain training items: ``(audio_in, target, x_true, pitch, idx)``; with a corpus and
        ``alpha == 0`` (P-loss only) ``audio_in`` is the cached features and ``target`` is ``None``."""
        data = self.data
        if self.corpus is not None:  # presets of the cached corpus (transpose 0, the fixed notes)
            idx = rng.choice(self.spectral_pool if alpha > 0.0 else self.corpus.valid_index, n)
            x_np = self.corpus.params[idx].astype(np.float64)
            pitch = torch.full((len(idx),), 60.0)
            if alpha == 0.0:  # P-loss only: the cached features, nothing rendered
                audio_in = torch.from_numpy(self.corpus.batch(idx, self.feature_kinds).astype(np.float32))
                return audio_in, None, torch.from_numpy(x_np).float(), pitch, idx
            audio = torch.from_numpy(self.renderer.render_batch(x_np))
            return audio, audio, torch.from_numpy(x_np).float(), pitch, idx
        idx = rng.integers(0, len(data.x["train"]), n)
        audio = torch.from_numpy(self.renderer.render_batch(data.x["train"][idx]))
        return audio, audio, torch.from_numpy(data.x["train"][idx]).float(), \
            torch.from_numpy(data.pitch["train"][idx]).float(), idx

    def _step_seed(self, step: int) -> list[int]:
        return [self.settings.seed, self.ctx.dist.rank, step]

    def _step_generator(self, step: int) -> torch.Generator:
        """The torch generator of a spectral step's SPSA draws (seeded from :meth:`_step_seed`)."""
        return torch.Generator().manual_seed(int(np.random.SeedSequence(self._step_seed(step)).generate_state(1)[0]))

    def batches(self, stage: Stage, epoch: int, start: int):
        def gen():
            for i in range(start, stage.steps):
                yield stage, i, self.offsets[stage.name] + i
        return stage.steps, gen()

    def step(self, stage: Stage, batch) -> tuple[torch.Tensor, dict[str, float]]:
        _, i, gstep = batch
        tc = self.settings
        rng = np.random.default_rng(self._step_seed(gstep))
        if stage.name == "voice":  # the classifier alone, on cached features of corpus items
            idx = rng.choice(self.corpus.valid_index, tc.batch_size)
            feats = torch.from_numpy(self.corpus.batch(idx, self.feature_kinds).astype(np.float32))
            vce = self.model.voice_ce(self.ctx.net(feats, heads="voice"), torch.from_numpy(self.voice_labels[idx]))
            return vce, {"voice_ce": float(vce.detach()), "loss": float(vce.detach())}
        alpha = {"ploss": 0.0, "crossfade": (i + 1) / max(tc.crossfade_steps, 1)}.get(stage.name, 1.0)
        batch_size = tc.batch_size if stage.name == "ploss" else tc.spectral_batch
        data = self.data
        n_id = int(round(tc.real_in_domain_fraction * batch_size)) if stage.name == "real" else batch_size
        if n_id < batch_size:  # out-of-domain notes (the real stage): no true parameters
            idx = rng.integers(0, len(data.ood_audio["train"]), batch_size - n_id)
            target = torch.from_numpy(data.ood_audio["train"][idx])
            pitch = torch.from_numpy(data.ood_pitch["train"][idx]).float()
            audio_in, x_true = target, None
            classes = torch.from_numpy(self.pseudo_classes[idx]).long()
            if n_id:  # real_in_domain_fraction: in-domain presets beside them, anchored to their true classes
                a_id, _, x_id, p_id, _ = self._in_domain_items(rng, n_id, alpha)
                _, c_id = self.model.layout.split_targets(x_id)
                audio_in = target = torch.cat([a_id, target])
                pitch = torch.cat([p_id, pitch])
                classes = torch.cat([torch.stack(c_id, 1).long(), classes])
                idx = np.arange(batch_size)
        else:
            audio_in, target, x_true, pitch, idx = self._in_domain_items(rng, batch_size, alpha)
            classes = None
        model = self.model
        heads = self.ctx.net(audio_in, heads="params")
        loss = audio_in.new_zeros(())
        report = audio_in.new_zeros(())
        info: dict[str, float] = {}
        if alpha < 1.0:
            pl, pinfo = model.p_loss(heads, x_true)
            loss = loss + (1.0 - alpha) * pl
            info.update(pinfo)
        if alpha > 0:
            xn = model.to_normalized(heads, pitch)  # with frozen_params, those come from the held twin
            spec, spec_term, dropped = GRADIENTS.get(tc.spectral_gradient)(self, xn, target.float(), gstep, heads=heads,
                                                                           pitch=pitch)
            if classes is None:
                _, tgt_classes = model.layout.split_targets(x_true)
                classes = torch.stack(tgt_classes, 1)
            # the voice start's discrete values are the voice's, no head to anchor
            anchor = model.discrete_ce(heads, classes) if model.start != "voice" else loss.new_zeros(())
            loss = loss + alpha * (tc.spectral_weight * spec_term + tc.anchor_weight * anchor)
            report = report + alpha * (tc.spectral_weight * spec.detach() + tc.anchor_weight * anchor.detach())
            info.update({"spectral": float(spec.detach()), "anchor_ce": float(anchor.detach()),
                         "dropped_items": dropped})
            if tc.spectral_gradient == "search":  # mean loss the items' searches gained (the move trained toward)
                info["search_gain"] = self.last_search_gain
        if alpha < 1.0:
            report = report + (1.0 - alpha) * pl.detach()
        info.update({"loss": float(report), "alpha": alpha})
        return loss, info

    def validate(self, stage: Stage, epoch: int, tb) -> tuple[float, float]:
        raise NotImplementedError("the Dexed schedule does not validate (its stages are step-based)")

    def state_dict(self) -> dict[str, Any]:
        from deepafx.recipes.dexed_matching.proxy import proxy_state

        return {"pseudo_classes": self.pseudo_classes,
                "proxy": proxy_state(self.proxy) if self.proxy is not None else None, "proxy_info": self.proxy_info}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        from deepafx.recipes.dexed_matching.proxy import proxy_from_state

        self.pseudo_classes = state.get("pseudo_classes")
        self.proxy = proxy_from_state(state["proxy"]) if state.get("proxy") is not None else None
        self.proxy_info = state.get("proxy_info")

    def checkpoint_meta(self) -> dict[str, Any]:
        d = self.data
        return {
            "model_description": self.model.describe(),
            "data": {
                "sample_rate": d.config.sample_rate, "duration_s": d.config.duration_seconds,  # keys of the stored checkpoint format
                "note_duration_s": d.config.note_duration_seconds, "notes": [list(n) for n in d.config.notes],
                "multi_note": d.config.multi_note, "reference_level_db": d.reference_level_db,
            },
            "retrieval_x": d.x["train"].astype(np.float32),
            "voice_x": self.corpus.params[self.voice_rows].astype(np.float32) if self.voice_rows is not None else None,
            "param_names": dexed_param_table().names,
        }

    def close(self) -> None:
        if self.fx is not None:
            self.fx.close()
            self.fx = None


def train_from_config(config, run_dir: str | Path, data_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train the estimator through all stages on the shared engine.

    Args:
        config: A bound :class:`~deepafx.recipes.RecipeConfig` or a raw config mapping.
        run_dir: Run folder (``checkpoints/{last,ploss,synth,real}.pt``, ``history.jsonl`` …).
        data_dir: Dataset folder (built there first if missing or stale).
        resume: Continue from ``checkpoints/last.pt``.

    Returns:
        ``{"history", "best_valid", "seconds"}``.

    Raises:
        ValueError: bad settings; errors of the dataset build and render workers.
    """
    from deepafx.recipes import get_recipe

    if isinstance(config, Mapping):
        config = get_recipe("dexed_matching").bind(config)
    return train(DexedTask(config, data_dir), run_dir, config, resume=resume)


def _discrete_predictions(model: DexedEstimator, audio: np.ndarray, pitch: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Argmax classes ``(M, num_discrete)`` of the discrete heads for ``audio`` ``(M, C, N)``."""
    out = map_batches(model, audio, lambda heads, rows: model.discrete_classes(heads).numpy(), batch_size)
    return np.concatenate(out) if out else np.zeros((0, model.layout.num_discrete), dtype=np.int64)


__all__ = ["GRADIENTS", "STAGES", "SAVED_STAGES", "SYNTHS", "DexedTask", "SynthConfig", "TrainConfig", "ensure_dataset",
           "frozen_mask", "load_estimator", "train_from_config"]
