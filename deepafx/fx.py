"""The Fx layer: black-box plugin chains inside a torch graph, and their gradient estimators.

:class:`FxLayer` renders a :class:`~deepafx.chain.ChainSpec` in render workers
(a :mod:`deepafx.workers` render engine: processes on this machine, or Ray
actors on a cluster). Three estimators give gradients for the normalized
parameters; all draw, mask and clip their perturbations and divide by the
actual steps through one implementation,
:mod:`deepafx.spsa` (so a clipped step ``θ⁺_i − θ⁻_i``, ``2εΔ_i`` away from the
edges of [0, 1], is the denominator everywhere, and a zero step gives a zero
gradient):

* **VJP-SPSA** (``FxLayer(estimator="spsa")``, the default; Spall, 1992;
  DeepAFx, Ramírez et al., ICASSP 2021): draw Rademacher ``Δ ∈ {−1, +1}^P``,
  render ``θ⁺ = clip(θ + εΔ)`` and ``θ⁻ = clip(θ − εΔ)`` and use
  ``g_i = Σ_t dy_t (y⁺_t − y⁻_t) / (θ⁺_i − θ⁻_i)``, averaged over K draws:
  the vector–Jacobian product with the upstream gradient ``dy``, i.e. the loss
  linearized in the audio. Two renders per draw whatever P is, and any loss
  or differentiable module downstream works through autograd.
* **Finite differences** (``FxLayer(estimator="fd")``, two-sided, one
  parameter at a time): ``2P`` renders per item; exact to ``O(ε²)`` for smooth
  chains.
* **Loss-SPSA** (:func:`spsa_loss_gradient`): the same Rademacher draws, but
  ``g_i = mean_k (L⁺_k − L⁻_k) / (θ⁺_ki − θ⁻_ki)`` on a per-item loss of the
  renders themselves, rendered by the same layer's workers; the loss must be
  computed by the caller (no autograd through it).

Which to pick:

* VJP-SPSA when the output changes smoothly with the parameters at the scale
  of ε (effects: compressors, EQs, limiters, gains): it is the cheapest and
  composes with any downstream graph.
* Loss-SPSA when a small parameter change decorrelates the waveform while the
  loss changes smoothly, e.g. a spectral loss through an FM synthesizer: then
  ``dy · (y⁺ − y⁻)`` is mostly noise. Measured on Dexed
  (``benchmarks/dexed_spsa_estimators.py``: four factory voices perturbed by
  σ = 0.08, multi-scale spectral loss, 12 Adam steps, lr 3e-3, K = 2):
  VJP-SPSA left the loss at 13.96 → 14.14 (no better than the start), loss-SPSA
  lowered it 13.96 → 11.88.
* Finite differences for few parameters or as a reference: ``2P`` renders per
  item (SPSA needs ``2K`` whatever P is), but no draw noise.

Inside the layer, all renders an item needs (main + perturbed) are requested in
*one* message per worker during the forward pass, so the backward pass only does
arithmetic. The workers return the main render and the differences
``y⁺ − y⁻``; the main renders are copied out, the differences are read by the
backward straight from the engine's transfer buffers (copied only if the layer
renders again before that backward; a second backward after a new render raises
``RuntimeError``).

Gradient with respect to the input audio (``input_grad``):

* ``"none"`` (default): no gradient flows to the audio (``None``), as in
  DeepAFx where the Fx input is the dataset audio.
* ``"straight_through"``: ``dL/dx = dL/dy`` (identity Jacobian assumed; needs
  as many output as input channels). Biased, but lets a differentiable module
  *before* the plugins receive a useful signal.

Differentiable torch modules before/after the layer get exact autograd gradients;
only the black box is estimated.

Renders with NaN/Inf samples (a plugin evaluated where its DSP is undefined,
e.g. a Faust ``sqrt`` or ``log`` of a parameter-dependent negative number): the
workers render the chain with :attr:`ChainSpec.nonfinite` ``= "mark"``, so such
a render comes back as NaN instead of failing the step, and the layer checks
every item's renders (main and perturbed, or their differences) in the forward
pass. An item with any non-finite render is *dropped*: its output is replaced by
zeros if the main render itself was not finite, its rows of the parameter (and
straight-through input) gradient are exactly 0, and :attr:`FxLayer.last_finite`
marks it ``False`` so the loss can leave it out (the training tasks do, and
report the count as ``dropped_items``). :func:`spsa_loss_gradient` drops items
the same way (gradient row 0, loss NaN). A gradient step in which every item is
dropped raises :class:`NonFiniteRenderError`. When every render is finite
nothing changes: no extra draws, the same arithmetic, bit-identical results.
"""

from __future__ import annotations

import dataclasses
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from deepafx.chain import ChainSpec
from deepafx.hosts.base import AudioError, PluginError
from deepafx.params import ParameterError
from deepafx.registry import Registry
from deepafx.spsa import Perturbation, gradient_from_differences, perturb
from deepafx.workers import RenderConfig, RenderEngine, RenderPool, RenderRequest

INPUT_GRADS = ("none", "straight_through")


class NonFiniteRenderError(PluginError):
    """Every item of a gradient step rendered NaN/Inf samples, so no item is left to train on."""


def nonfinite_step_error(spec: ChainSpec, num_items: int) -> NonFiniteRenderError:
    """The one-line error of a step whose ``num_items`` items were all dropped for NaN/Inf renders.

    Args:
        spec: The chain (named in the message with its processors and backends).
        num_items: Items of the step.

    Returns:
        A :class:`NonFiniteRenderError` to raise.
    """
    procs = ", ".join(f"{p.name} ({p.backend})" for p in spec.processors)
    return NonFiniteRenderError(
        f"chain {spec.name!r} [{procs}]: every item of this step ({num_items} of {num_items}) rendered NaN/Inf "
        "samples (main or perturbed render), so none is left for the gradient; the predicted parameters reach "
        "values where the plugin's output is not finite: narrow the learned parameter ranges (the chain "
        "entry's 'ranges') to exclude them"
    )


@dataclass(frozen=True)
class ExponentialEpsilon:
    """ε schedule decaying geometrically from ``start`` to ``end`` over ``steps`` steps, then constant.

    DeepAFx-ST (Steinmetz et al., 2022) used ε = 5e-4 with a scheduler; DeepAFx used a fixed 0.01.
    """

    start: float = 0.01
    end: float = 5e-4
    steps: int = 10000

    def __call__(self, step: int) -> float:
        frac = min(max(step, 0) / max(self.steps, 1), 1.0)
        return float(self.start * (self.end / self.start) ** frac)


class GradientEstimator(Protocol):
    """Chooses the perturbed parameter sets of the Fx layer's vector–Jacobian product."""

    needs_num_params: bool

    def num_renders(self, num_params: int) -> int:
        """Number of ``(+, −)`` render pairs per item."""

    def perturb(self, theta: torch.Tensor, epsilon: float, generator: torch.Generator) -> Perturbation:
        """``theta (B, P)`` → :class:`~deepafx.spsa.Perturbation` with ``(B, R, P)`` sets.

        The gradient is :func:`~deepafx.spsa.gradient_from_differences` of
        ``s_r = Σ_t dy_t (y⁺_r − y⁻_r)_t``.
        """


#: Gradient estimators of :class:`FxLayer` by name: ``"spsa"``, ``"fd"``.
ESTIMATORS: Registry[Callable[..., GradientEstimator]] = Registry("gradient estimator")


@ESTIMATORS.register("spsa")
class SPSA:
    """Simultaneous perturbation (Spall, 1992) with K Rademacher draws averaged.

    Args:
        num_perturbations: Draws ``K`` per step (``2K`` renders per item), ≥ 1.

    Raises:
        ValueError: ``num_perturbations`` < 1.
    """

    needs_num_params = False

    def __init__(self, num_perturbations: int = 1):
        if num_perturbations < 1:
            raise ValueError("num_perturbations must be ≥ 1")
        self.k = int(num_perturbations)

    def num_renders(self, num_params: int) -> int:
        return self.k

    def perturb(self, theta: torch.Tensor, epsilon: float, generator: torch.Generator) -> Perturbation:
        return perturb(theta, epsilon, "spsa", self.k, generator=generator)


@ESTIMATORS.register("fd")
class FiniteDifferences:
    """Two-sided finite differences, one parameter at a time (2P renders per item).

    Args:
        num_perturbations: Accepted so every estimator is built alike; finite
            differences always render the ``P`` unit vectors.
    """

    needs_num_params = True

    def __init__(self, num_perturbations: int = 1):
        pass

    def num_renders(self, num_params: int) -> int:
        return num_params

    def perturb(self, theta: torch.Tensor, epsilon: float, generator: torch.Generator) -> Perturbation:
        return perturb(theta, epsilon, "fd")


class _Differences:
    """Per-item ``y⁺ − y⁻`` blocks ``(R, C, N)`` of one forward, kept for its backward.

    They start as read-only views of the render engine's transfer buffers (no
    copy). The owning :class:`FxLayer` calls :meth:`reclaim` before its engine's
    next render: blocks not yet used by a backward are copied out then, and
    blocks already used are dropped (a second backward through the same forward
    after a new render raises instead of reading overwritten buffers).
    ``dropped`` ``(B,)`` bool (or ``None``: none) marks items whose renders were
    not finite: their rows of the product are 0 and their blocks are never read.
    """

    __slots__ = ("parts", "used", "dropped", "__weakref__")

    def __init__(self, parts: list[np.ndarray], dropped: np.ndarray | None = None):
        self.parts: list[np.ndarray] | None = parts
        self.used = False
        self.dropped = dropped

    def reclaim(self) -> None:
        if self.parts is None:
            return
        self.parts = None if self.used else [np.array(p) for p in self.parts]

    def vjp(self, dy: np.ndarray) -> torch.Tensor:
        """``s_br = Σ_cn dy_bcn (y⁺ − y⁻)_brcn`` for ``dy`` ``(B, C, N)`` float32, as a ``(B, R)`` tensor."""
        if self.parts is None:
            raise RuntimeError("FxLayer: this forward's SPSA differences were released when the layer rendered again "
                               "after its first backward; run the second backward (retain_graph=True) before the "
                               "next forward, or sum the losses and call backward once")
        self.used = True
        # per item, the batched einsum's own contraction: bit for bit the gradient of stacking first
        dyt = torch.from_numpy(dy)
        with warnings.catch_warnings():  # read-only views of the engine's buffers, only read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.cat([torch.zeros(1, d.shape[0], dtype=dyt.dtype)
                              if self.dropped is not None and self.dropped[b]
                              else torch.einsum("bcn,brcn->br", dyt[b : b + 1], torch.from_numpy(d)[None])
                              for b, d in enumerate(self.parts)])


class _FxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, audio: torch.Tensor, params: torch.Tensor, layer: "FxLayer") -> torch.Tensor:
        need_param_grad = ctx.needs_input_grad[1]
        y, diffs, pert = layer._render(audio, params, need_param_grad)
        ctx.diffs = diffs
        ctx.dropped = None if bool(layer.last_finite.all()) else ~layer.last_finite
        ctx.save_for_backward(pert.step if pert is not None else torch.empty(0))
        ctx.num_draws = pert.num_draws if pert is not None else 1
        ctx.input_grad = layer.input_grad
        ctx.audio_meta = (audio.device, audio.dtype, audio.shape)
        ctx.params_meta = (params.device, params.dtype)
        return y.to(device=audio.device, dtype=audio.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (step,) = ctx.saved_tensors
        grad_audio = grad_params = None
        if ctx.needs_input_grad[1]:
            dy = grad_out.detach().to("cpu", torch.float32).contiguous().numpy()
            s = ctx.diffs.vjp(dy)  # (B, R)
            g = gradient_from_differences(s.double(), step, ctx.num_draws)
            grad_params = g.to(device=ctx.params_meta[0], dtype=ctx.params_meta[1])
        if ctx.needs_input_grad[0] and ctx.input_grad == "straight_through":
            grad_audio = grad_out
            if ctx.dropped is not None:
                grad_audio = grad_out.masked_fill(ctx.dropped.to(grad_out.device)[:, None, None], 0.0)
        return grad_audio, grad_params, None


class FxLayer(nn.Module):
    """A chain of black-box plugins as a differentiable torch layer.

    Args:
        chain: A :class:`ChainSpec`, or a chain config path (YAML/JSON; relative
            names are looked up in ``plugins/``).
        batch_size: Number of batch slots ``M``. Slot ``i`` keeps its own chain
            instances, so feed it consecutive frames of one stream.
        num_workers: Render workers, replacing ``render.num_workers`` when given
            (default: ``render.num_workers``; see :class:`~deepafx.workers.RenderConfig`).
            Both count the workers of all ``worker_share`` layers together.
        estimator: Name in :data:`ESTIMATORS`: ``"spsa"`` (default, VJP-SPSA) or
            ``"fd"`` (finite differences); see the module docstring.
        epsilon: Perturbation ε on normalized parameters (default 0.01, DeepAFx),
            or a callable ``step → ε`` such as :class:`ExponentialEpsilon`.
        num_perturbations: SPSA draws K averaged per step (``2K`` renders per item).
        input_grad: ``"none"`` or ``"straight_through"`` (see module docstring).
        seed: Seed of the perturbation generator (saved in ``state_dict``).
        timeout_seconds: Longest one render request may take before the worker is
            considered hung, killed and restarted.
        max_retries: Retries after a worker crash/hang before raising.
        render: Where the renders run (:class:`~deepafx.workers.RenderConfig`:
            engine ``"process"`` by default, or ``"ray"`` with a cluster address).
        worker_share: Layers started at once by cooperating processes (DDP
            ranks): this one starts its share of the workers
            (:func:`deepafx.workers.rank_workers`).

    Shapes:
        ``forward(audio (batch, channels, samples), params (batch, num_params))``
        → ``(batch, channels_out, samples)`` on ``audio``'s device and dtype.
        ``batch ≤ batch_size``; item ``i`` uses slot ``i``.

    Non-finite renders: an item whose main or perturbed render has NaN/Inf
    samples is dropped from the step (module docstring): zeros instead of a
    non-finite main render, zero gradient rows, ``False`` in
    :attr:`last_finite`. The processor that rendered them is reset (only
    that instance), so its next render starts from a clean state.

    State: in training mode every forward advances *all* instances of each used
    slot (main and perturbed renders see the same input block, so the
    perturbation instances follow the main instance's history). In eval mode
    only the main instances render; call :meth:`reset` before resuming training
    on a new stream. A reset travels with the slot's next render (one message
    per worker and step, whatever is reset). Latency: :attr:`latency_samples` is the chain's reported
    latency; output length always equals input length.

    Raises:
        ValueError: unknown estimator (the known names are listed) or ``input_grad``.
        AudioError: wrong rank, more items than slots, NaN/Inf audio.
        ParameterError: wrong parameter count, NaN, or values outside [0, 1]
            (names the parameter).
        NonFiniteRenderError: a forward that needs the parameter gradient in
            which every item rendered NaN/Inf (names the chain).
        WorkerError: a plugin crashed or hung beyond ``max_retries``.
    """

    def __init__(
        self,
        chain: ChainSpec | str | Path,
        batch_size: int,
        *,
        num_workers: int | None = None,
        estimator: str = "spsa",
        epsilon: float | Callable[[int], float] = 0.01,
        num_perturbations: int = 1,
        input_grad: str = "none",
        seed: int = 0,
        timeout_seconds: float = 120.0,
        max_retries: int = 1,
        render: RenderConfig | None = None,
        worker_share: int = 1,
    ):
        super().__init__()
        spec = chain if isinstance(chain, ChainSpec) else ChainSpec.from_file(chain)
        render = render if render is not None else RenderConfig()
        make_estimator = ESTIMATORS.get(estimator)
        if input_grad not in INPUT_GRADS:
            raise ValueError(f"input_grad must be one of {INPUT_GRADS}, got {input_grad!r}")
        self.spec = spec
        self.batch_size = int(batch_size)
        self.estimator_name = estimator
        self.estimator = make_estimator(num_perturbations=num_perturbations)
        self.epsilon = epsilon
        self.input_grad = input_grad
        self.step = 0
        self.generator = torch.Generator().manual_seed(seed)
        # Only estimators whose render count depends on P pay for building the chain once first.
        probe = _num_params(spec) if self.estimator.needs_num_params else 0
        self.num_renders = self.estimator.num_renders(probe)
        self.render_config = render
        # workers mark a render with NaN/Inf samples instead of raising: the layer drops that item
        marked = dataclasses.replace(spec, nonfinite="mark")
        self.pool: RenderEngine = render.build(marked, self.batch_size, 1 + 2 * self.num_renders,
                                               num_workers=num_workers, share=worker_share,
                                               timeout_seconds=timeout_seconds, max_retries=max_retries)
        self._pending_resets: set[int] = set()
        #: Differences of forwards whose views of the engine's buffers may still be read by a backward.
        self._lent: "weakref.WeakSet[_Differences]" = weakref.WeakSet()
        self.num_params = self.pool.num_params
        self.param_names = self.pool.param_names
        self.latency_samples = self.pool.latency_samples
        #: Normalized parameters of the last training render, ``(B, 1 + 2R, P)``
        #: (main, plus…, minus…): lets tests replay instance histories.
        self.last_render_params: np.ndarray | None = None
        #: When True, the raw renders of the last call are kept in :attr:`last_renders`
        #: ``(B, 1 + 2R, C_out, N)`` (main, plus…, minus…) for inspection and tests.
        self.keep_last_renders = False
        self.last_renders: np.ndarray | None = None
        #: ``(batch,)`` bool of the last forward: ``True`` where every render of the item (main and
        #: perturbed) was finite, ``False`` for an item dropped from that step (``None`` before any).
        self.last_finite: torch.Tensor | None = None

    @property
    def sample_rate(self) -> float:
        return self.spec.sample_rate

    def current_epsilon(self) -> float:
        eps = self.epsilon(self.step) if callable(self.epsilon) else float(self.epsilon)
        if not (0 < eps < 0.5):
            raise ValueError(f"epsilon must be in (0, 0.5), got {eps}")
        return eps

    def forward(self, audio: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return _FxFunction.apply(audio, params, self)

    def _check(self, audio: torch.Tensor, params: torch.Tensor) -> None:
        if audio.dim() != 3:
            raise AudioError(f"audio must be (batch, channels, samples), got shape {tuple(audio.shape)}")
        if params.dim() != 2 or params.shape[0] != audio.shape[0]:
            raise ParameterError(f"params must be (batch, num_params) with batch {audio.shape[0]}, got {tuple(params.shape)}")
        if audio.shape[0] > self.batch_size:
            raise AudioError(f"batch of {audio.shape[0]} items but the layer has {self.batch_size} slots")
        if params.shape[1] != self.num_params:
            raise ParameterError(f"chain {self.spec.name!r} has {self.num_params} learned parameters, got {params.shape[1]}")
        bad = ~torch.isfinite(params) | (params < -1e-5) | (params > 1 + 1e-5)
        if bad.any():
            b, j = (int(v) for v in bad.nonzero()[0])
            raise ParameterError(
                f"parameter {self.param_names[j]!r} (item {b}) has normalized value {float(params[b, j])}; "
                "expected a finite number in [0, 1] (use a sigmoid output)"
            )

    def _render(self, audio: torch.Tensor, params: torch.Tensor, need_grad: bool):
        self._check(audio, params)
        x = audio.detach().to("cpu", torch.float32).numpy()
        if not np.isfinite(x).all():
            item = int(np.flatnonzero(~np.isfinite(x).reshape(x.shape[0], -1).all(1))[0])
            raise AudioError(f"audio contains NaN or Inf (item {item})")
        theta = params.detach().to("cpu", torch.float64).clamp(0, 1)
        diffs = pert = None
        if need_grad or self.training:
            if need_grad:
                pert = self.estimator.perturb(theta, self.current_epsilon(), self.generator)
                plus, minus = pert.plus, pert.minus
            else:  # keep perturbation instances on the main instance's history
                plus = minus = theta[:, None].expand(-1, self.num_renders, -1)
            rows = torch.cat([theta[:, None], plus, minus], dim=1).numpy()  # (B, 1 + 2R, P)
        else:
            rows = theta[:, None].numpy()
        resets = self._pending_resets
        differences = rows.shape[1] > 1 and not self.keep_last_renders  # workers subtract y⁺ − y⁻
        requests = [RenderRequest(i, x[i], rows[i], reset=i in resets, differences=differences)
                    for i in range(x.shape[0])]
        self._reclaim()  # the engine is about to overwrite its buffers
        try:
            # views of the engine's buffers: the main renders below are the only copy; the differences
            # stay views until the next render (_Differences)
            outs = self.pool.render(requests, copy=False)
        finally:
            resets.difference_update(range(x.shape[0]))  # sent (a failed worker is rebuilt fresh anyway)
        # main and perturbed renders, or the workers' y⁺ − y⁻ (NaN/Inf where either side was)
        finite = np.array([bool(np.isfinite(o).all()) for o in outs])
        y = torch.from_numpy(np.stack([o[0] for o in outs]))
        dropped = None if finite.all() else ~finite
        if dropped is not None:
            for i in np.flatnonzero(dropped):
                if not bool(torch.isfinite(y[i]).all()):
                    y[i] = 0.0
        self.last_finite = torch.from_numpy(finite)
        if self.keep_last_renders:
            self.last_renders = np.stack(outs)
        if need_grad:
            if not finite.any():
                raise nonfinite_step_error(self.spec, len(finite))
            r = self.num_renders
            if differences:
                diffs = _Differences([o[1:] for o in outs], dropped)  # B × (R, C, N) views
                self._lent.add(diffs)
            else:
                diffs = _Differences([o[1 : 1 + r] - o[1 + r :] for o in outs], dropped)  # owned
            self.step += 1
        del outs
        if need_grad or self.training:
            self.last_render_params = rows
        if self.input_grad == "straight_through" and y.shape != audio.shape:
            raise AudioError(f"input_grad='straight_through' needs output shape {tuple(audio.shape)}, got {tuple(y.shape)}")
        return y, diffs, pert

    @torch.no_grad()
    def render(self, audio: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Render main instances only (no perturbations), whatever the training mode.

        An item whose render is not finite comes back as zeros, ``False`` in :attr:`last_finite`.
        """
        was = self.training
        self.train(False)
        try:
            return self.forward(audio, params)
        finally:
            self.train(was)

    def reset(self, slots: Sequence[int] | None = None) -> None:
        """Reset all instances of ``slots`` (default every slot) before their next render.

        The reset travels with that render's message (:attr:`deepafx.workers.RenderRequest.reset`),
        so it costs no round trip of its own; a slot that is not rendered again keeps it pending.

        Raises:
            ValueError: a slot outside ``[0, batch_size)``.
        """
        slots = range(self.batch_size) if slots is None else [int(s) for s in slots]
        for s in slots:
            if not 0 <= s < self.batch_size:
                raise ValueError(f"slot {s} outside [0, {self.batch_size})")
        self._pending_resets.update(slots)

    def _reclaim(self) -> None:
        for d in list(self._lent):
            d.reclaim()
        self._lent.clear()

    def close(self) -> None:
        """Shut the render workers down (also done at interpreter exit)."""
        self._reclaim()
        self.pool.close()

    def __enter__(self) -> "FxLayer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get_extra_state(self):
        return {"step": self.step, "generator": self.generator.get_state()}

    def set_extra_state(self, state) -> None:
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])

    def extra_repr(self) -> str:
        return (f"chain={self.spec.name!r}, params={self.num_params}, slots={self.batch_size}, "
                f"workers={self.pool.num_workers}, engine={self.render_config.engine}, estimator={self.estimator_name}, renders/item={1 + 2 * self.num_renders}")


def spsa_loss_gradient(
    fx: FxLayer,
    theta: torch.Tensor,
    target: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    epsilon: float | torch.Tensor = 0.01,
    num_perturbations: int = 1,
    free: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    grouped_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    audio: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SPSA on a per-item loss itself, rendered by an :class:`FxLayer`'s workers.

    For each item, draws ``K`` Rademacher vectors ``Δ_k`` on the ``free``
    entries (:func:`deepafx.spsa.perturb`), renders ``θ``, ``θ⁺_k = clip(θ + εΔ_k)``
    and ``θ⁻_k = clip(θ − εΔ_k)`` with :meth:`FxLayer.render` (main instances of
    slots ``0 … fx.batch_size − 1``, in chunks of ``fx.batch_size``; row order
    per item: θ, the K plus, the K minus), and returns
    ``g = mean_k (L⁺_k − L⁻_k) / (θ⁺_k − θ⁻_k)`` (:func:`deepafx.spsa.gradient_from_differences`;
    0 on entries that are not free). Unlike the layer's own estimator it does not
    linearize the loss in the audio, which is what a loss whose value changes
    smoothly while the waveform decorrelates (spectral losses through an FM
    synth) needs; see the module docstring. See `Spall, 1992
    <https://doi.org/10.1109/9.119632>`_.

    State: the renders run on main instances and continue their state; for a
    stateful chain call ``fx.reset()`` first when each call should start fresh.

    Args:
        fx: Fx layer (any number of slots; the ``batch · (1 + 2K)`` renders are chunked).
        theta: Normalized parameters ``(batch, num_params)`` on [0, 1] (detached inside).
        target: Target audio ``(batch, channels, samples)``.
        loss_fn: Per-item loss ``(y (n, channels, samples), target (n, channels,
            samples)) → (n,)`` (``reduction="none"``); not needed with ``grouped_loss``.
        epsilon: Perturbation ε on normalized values (> 0; default 0.01), or ``(num_params,)``
            sizes per parameter (:func:`deepafx.spsa.perturb`).
        num_perturbations: Draws ``K`` (≥ 1; ``2K + 1`` renders per item).
        free: Bool mask ``(num_params,)`` or ``(batch, num_params)`` of perturbed
            entries (default all).
        generator: Torch generator of the draws (default ``fx.generator``).
        grouped_loss: Optional ``(y (batch, 1 + 2K, channels, samples), target
            (batch, channels, samples)) → (batch, 1 + 2K)``; when given it is
            used instead of ``loss_fn`` (e.g. one that computes each target's
            spectra once).
        audio: Input audio ``(batch, channels_in, samples)`` of an effect chain,
            the same for all renders of an item (default: one silent channel of
            ``target``'s length, for instruments).

    Returns:
        ``(loss (batch,), grad (batch, num_params))`` float64: the loss of the
        unperturbed ``θ`` and the gradient estimate. An item with a NaN/Inf
        render (main or perturbed) or loss value is dropped: its gradient row
        is 0 and its loss is NaN (``torch.isfinite(loss)`` selects the kept items).

    Raises:
        ValueError: no loss given, shapes that do not match, or a loss that
            does not return one value per item.
        NonFiniteRenderError: every item dropped (names the chain).
        AudioError, ParameterError, WorkerError: as :meth:`FxLayer.forward`.
    """
    if loss_fn is None and grouped_loss is None:
        raise ValueError("pass loss_fn (a per-item loss with reduction='none') or grouped_loss")
    if theta.dim() != 2 or target.dim() != 3 or target.shape[0] != theta.shape[0]:
        raise ValueError(
            f"need theta (batch, num_params) and target (batch, channels, samples) with the same batch, "
            f"got {tuple(theta.shape)} and {tuple(target.shape)}"
        )
    b, p = theta.shape
    k = int(num_perturbations)
    r = 1 + 2 * k
    pert = perturb(theta, epsilon, "spsa", k, free, fx.generator if generator is None else generator)
    theta64 = theta.detach().to(torch.float64)
    rows = torch.cat([theta64[:, None], pert.plus, pert.minus], dim=1).reshape(b * r, p)
    losses, kept = render_losses(fx, rows, target, loss_fn, grouped_loss=grouped_loss, audio=audio)
    loss, differences = losses[:, 0], losses[:, 1 : 1 + k] - losses[:, 1 + k :]
    if not bool(kept.all()):
        differences = torch.where(kept[:, None], differences, torch.zeros_like(differences))
        loss = torch.where(kept, loss, torch.full_like(loss, float("nan")))
    return loss, gradient_from_differences(differences, pert.step, pert.num_draws)


def render_losses(
    fx: "FxLayer",
    rows: torch.Tensor,
    target: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    *,
    grouped_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    audio: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``R`` parameter rows per item through ``fx`` (main instances, in chunks of ``fx.batch_size``) and
    score each render against its item's target: the rendering and scoring of :func:`spsa_loss_gradient`, for
    any rows (perturbed presets, or presets from perturbed model weights).

    Args:
        fx: The :class:`FxLayer` whose workers render.
        rows: ``(batch · R, num_params)`` normalized parameters, item-major (the ``R`` rows of item 0 first).
        target: ``(batch, channels, samples)``.
        loss_fn, grouped_loss: As in :func:`spsa_loss_gradient` (one of them).
        audio: Input audio ``(batch, channels_in, samples)``, the same for all renders of an item (default one
            silent channel of ``target``'s length).

    Returns:
        ``(losses (batch, R) float64, kept (batch,) bool)``: ``kept`` is False for an item with a NaN/Inf render
        or loss value.

    Raises:
        ValueError: rows not a multiple of the batch, bad ``audio``, or a loss that does not return one value
            per render.
        NonFiniteRenderError: every item dropped (names the chain).
    """
    b = target.shape[0]
    if rows.dim() != 2 or b == 0 or rows.shape[0] % b:
        raise ValueError(f"rows must be (batch * R, num_params) for a batch of {b}, got {tuple(rows.shape)}")
    r = rows.shape[0] // b
    if audio is None:
        x = torch.zeros(b * r, 1, target.shape[-1])
    else:
        if audio.dim() != 3 or audio.shape[0] != b:
            raise ValueError(f"audio must be (batch={b}, channels, samples), got {tuple(audio.shape)}")
        x = audio.detach().repeat_interleave(r, dim=0)
    outs, finite = [], []
    for i in range(0, rows.shape[0], fx.batch_size):
        chunk = rows[i : i + fx.batch_size].float()
        outs.append(fx.render(x[i : i + fx.batch_size], chunk))
        finite.append(fx.last_finite)
    y = torch.cat(outs)
    with torch.no_grad():
        if grouped_loss is not None:
            losses = grouped_loss(y.reshape(b, r, *y.shape[1:]), target)
        else:
            losses = loss_fn(y, target.repeat_interleave(r, dim=0))
            if losses.numel() == b * r:
                losses = losses.reshape(b, r)
    if tuple(losses.shape) != (b, r):
        raise ValueError(
            f"the loss returned shape {tuple(losses.shape)}, expected one value per render ({b}, {r}): "
            "build loss_fn with reduction='none'"
        )
    losses = losses.to(torch.float64)
    kept = torch.cat(finite).reshape(b, r).all(1) & torch.isfinite(losses).all(1)
    if not bool(kept.any()):
        raise nonfinite_step_error(fx.spec, b)
    return losses, kept


def _num_params(spec: ChainSpec) -> int:
    """Learned-parameter count of a chain, building it once in a throwaway worker (plugins load there)."""
    with RenderPool(spec, num_slots=1, instances_per_slot=1, num_workers=1) as pool:
        return pool.num_params
