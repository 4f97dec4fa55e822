"""Hybrid chains: differentiable (DDSP) stages and black-box plugin stages in one chain, one parameter vector.

A chain is declared exactly like any other (:class:`~deepafx.chain.ChainSpec`,
in Python or as a YAML ``processors:`` list); an entry whose backend starts with
``"ddsp."`` is a differentiable processor from :data:`deepafx.ddsp.DDSP_PROCESSORS`
and every other entry is a black-box plugin. :class:`HybridChain` cuts the list
into stages: each ``ddsp.`` entry is a torch stage (:class:`DDSPStage`) and each
contiguous run of black-box entries is one :class:`~deepafx.fx.FxLayer` with its
own render workers and per-slot plugin instances. ``learn``, ``fixed`` and
``ranges`` mean the same for both kinds, and the flat normalized vector is the
concatenation of the stages' learned parameters in chain order, exactly
:attr:`ChainSpec.param_table` (names ``"<processor>.<parameter>"``).

Gradients in one backward pass:

* **differentiable stages**: exact autograd, for their parameters and for the
  audio flowing through them (so a black box *before* a DDSP stage gets the
  exact upstream gradient ``dy`` for its SPSA vector–Jacobian product);
* **black-box stages**: SPSA (or finite differences) for their parameters,
  :mod:`deepafx.fx`;
* **through a black box to what comes before it** (a DDSP stage, or an
  earlier black box, feeding a black box): the black box's Jacobian with
  respect to its input audio is unknown, so ``input_grad="auto"`` uses the
  straight-through estimate ``dL/dx = dL/dy`` (``FxLayer(input_grad=
  "straight_through")``) for every black-box stage that is not the first
  stage. It is biased: exact for a unit-gain linear black box, and off by the
  black box's local gain and filtering otherwise (a distortion at high drive
  compresses, so the true input gradient is smaller than ``dL/dy`` and
  spectrally different). Measured on ``ddsp.gain → pedalboard.Distortion →
  ddsp.gain`` (decaying 110 Hz tone, squared error, two items): the
  straight-through gradient of the first gain was 0.87 and 1.01 times the
  finite-difference one at 2 dB drive, 0.50 and 1.11 at 12 dB, 1.7 and 4.9 at
  24 dB (right sign in all six). Layouts where every black box comes first (e.g.
  drive → DDSP EQ) need no such estimate: all gradients are exact or SPSA.
  ``input_grad="none"`` stops the gradient at every black box instead.

State and latency: a black-box stage keeps per-slot plugin state like
:class:`~deepafx.fx.FxLayer`; a DDSP stage keeps per-slot ringing
(:class:`~deepafx.ddsp.TailState`: reverb and EQ tails continue into the next
block of the same slot; detached, so gradients stop at block boundaries like a
plugin's state). :meth:`HybridChain.reset` clears both. DDSP stages have no
latency; :attr:`HybridChain.latency_samples` is the black boxes' sum.

See Engel et al., "DDSP", ICLR 2020, and Martínez Ramírez et al.,
"Differentiable signal processing with black-box audio effects", ICASSP 2021.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from deepafx.chain import ChainSpec
from deepafx.ddsp import TailState, build_ddsp, denormalize, is_differentiable
from deepafx.fx import FxLayer
from deepafx.hosts.base import AudioError, ProcessorSpec
from deepafx.params import ParamTable, ParameterError
from deepafx.workers import RenderConfig

#: Seeds of the black-box stages: stage ``k`` (counting black-box stages) uses ``seed + k · SEED_STRIDE``.
SEED_STRIDE = 1_000_003


def is_hybrid(chain: ChainSpec) -> bool:
    """Whether a chain has at least one differentiable (``ddsp.``) entry."""
    return any(is_differentiable(p.backend) for p in chain.processors)


def split_stages(chain: ChainSpec) -> list[tuple[bool, tuple[ProcessorSpec, ...]]]:
    """Cut a chain into stages: ``[(differentiable, processors), ...]`` in order.

    Each ``ddsp.`` entry is its own stage; each maximal run of other entries is one stage.
    """
    stages: list[tuple[bool, list[ProcessorSpec]]] = []
    for p in chain.processors:
        diff = is_differentiable(p.backend)
        if diff or not stages or stages[-1][0]:
            stages.append((diff, [p]))
        else:
            stages[-1][1].append(p)
    return [(d, tuple(ps)) for d, ps in stages]


def _learned_layout(spec: ProcessorSpec, table: ParamTable) -> tuple[list[str], np.ndarray, ParamTable]:
    """Learned names, full default/fixed values and the narrowed learned table, by the rules of
    :class:`~deepafx.chain.Chain`.

    Raises:
        ParameterError: unknown names, a parameter both learned and fixed, or a range on a parameter not learned.
    """
    learn = list(spec.learn) if spec.learn is not None else [p.name for p in table if p.name not in spec.fixed]
    for n in learn:
        table.index(n)
        if n in spec.fixed:
            raise ParameterError(f"{spec.name}.{n} is both learned and fixed")
    for n in spec.ranges:
        if n not in learn:
            raise ParameterError(f"{spec.name}.{n}: a range is given but the parameter is not learned")
    values = table.values_from_mapping(spec.fixed)
    learned = table.subset(learn).narrowed(spec.ranges) if spec.ranges else table.subset(learn)
    return learn, values, learned


class DDSPStage(nn.Module):
    """One differentiable chain entry with its learned/fixed parameters and per-slot ringing.

    Args:
        spec: A chain entry whose backend is a :data:`~deepafx.ddsp.DDSP_PROCESSORS` name;
            its options go to the processor.
        sample_rate: Hz.
        num_slots: Batch slots ``M`` (item ``i`` of a batch is slot ``i``).

    Shapes:
        ``forward(audio (batch, channels, samples), params (batch, num_params))``
        → ``(batch, channels_out, samples)``; ``params`` are the *learned*
        parameters normalized on [0, 1] (narrowed ranges apply); the others
        keep their fixed or default values.

    Raises:
        ValueError: unknown backend or option (lists the known ones).
        ParameterError: bad ``learn`` / ``fixed`` / ``ranges`` (names the parameter).
    """

    def __init__(self, spec: ProcessorSpec, sample_rate: float, num_slots: int):
        super().__init__()
        self.spec = spec
        self.processor = build_ddsp(spec, sample_rate)
        learn, values, learned = _learned_layout(spec, self.processor.param_table)
        self.param_table = learned.prefixed(spec.name)
        self.register_buffer("full_values", torch.from_numpy(values), persistent=False)
        self.register_buffer("learn_index", torch.tensor([self.processor.param_table.index(n) for n in learn],
                                                         dtype=torch.long), persistent=False)
        self.tails = TailState(num_slots)

    @property
    def num_params(self) -> int:
        return len(self.param_table)

    def values(self, params: torch.Tensor) -> torch.Tensor:
        """Learned normalized ``(batch, num_params)`` → every parameter in units ``(batch, table size)`` float64."""
        v = self.full_values.to(params.device).expand(params.shape[0], -1).clone()
        if self.num_params:
            v[:, self.learn_index.to(params.device)] = denormalize(self.param_table, params).double()
        return v

    def forward(self, audio: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return self.tails.apply(self.processor.render(audio, self.values(params)), audio.shape[-1])

    def reset(self, slots: Sequence[int] | None = None) -> None:
        """Clear the ringing of ``slots`` (default all) and restore the processor's noise generator."""
        self.tails.reset(slots)
        if slots is None:
            self.processor.reset()


class HybridChain(nn.Module):
    """A chain of differentiable and black-box stages behind one flat normalized parameter vector.

    Args:
        chain: A :class:`ChainSpec`, a chain mapping (``{"processors": [...], "sample_rate": ...}``)
            or a chain file / packaged chain name.
        batch_size: Batch slots ``M`` (item ``i`` uses slot ``i`` of every stage).
        num_workers: Render workers of *each* black-box stage, as :class:`~deepafx.fx.FxLayer`'s
            (default: ``render.num_workers``).
        estimator, epsilon, num_perturbations, seed, timeout_seconds, max_retries, render, worker_share:
            As :class:`~deepafx.fx.FxLayer`, for every black-box stage; black-box
            stage ``k`` is seeded ``seed + k · SEED_STRIDE`` (the first gets ``seed``).
        input_grad: ``"auto"`` (default): straight-through input gradients for
            black-box stages after the first stage, none for a first stage; or
            ``"none"`` / ``"straight_through"`` for every black-box stage (see the
            module docstring for the bias).

    Shapes:
        ``forward(audio (batch, channels, samples), params (batch, num_params))``
        → ``(batch, channels_out, samples)`` on ``audio``'s device and dtype
        (``batch ≤ batch_size``).

    State: see the module docstring; :meth:`reset` clears every stage's slots.
    In training mode black-box stages render their SPSA perturbations; in eval
    mode only the main instances render.

    Non-finite renders: each black-box stage drops an item whose renders have
    NaN/Inf samples as :class:`~deepafx.fx.FxLayer` does (finite stand-in
    output, zero gradient rows); :attr:`last_finite` combines the stages' marks
    for the loss to leave those items out.

    Raises:
        ValueError: unknown DDSP backend or option, bad ``input_grad``.
        ParameterError: wrong parameter count, values outside [0, 1] (names the parameter).
        AudioError: wrong audio shape or more items than slots.
        WorkerError, PluginError: as :class:`~deepafx.fx.FxLayer`.
    """

    def __init__(
        self,
        chain: ChainSpec | Mapping[str, Any] | str | Path,
        batch_size: int,
        *,
        num_workers: int | None = None,
        estimator: str = "spsa",
        epsilon: float | Callable[[int], float] = 0.01,
        num_perturbations: int = 1,
        input_grad: str = "auto",
        seed: int = 0,
        timeout_seconds: float = 120.0,
        max_retries: int = 1,
        render: RenderConfig | None = None,
        worker_share: int = 1,
    ):
        super().__init__()
        if isinstance(chain, ChainSpec):
            spec = chain
        elif isinstance(chain, Mapping):
            spec = ChainSpec.from_dict(chain)
        else:
            spec = ChainSpec.from_file(chain)
        if input_grad not in ("auto", "none", "straight_through"):
            raise ValueError(f"input_grad must be 'auto', 'none' or 'straight_through', got {input_grad!r}")
        self.spec = spec
        self.batch_size = int(batch_size)
        self.stages = nn.ModuleList()
        self.fx_layers: list[FxLayer] = []
        try:
            for i, (diff, procs) in enumerate(split_stages(spec)):
                if diff:
                    self.stages.append(DDSPStage(procs[0], spec.sample_rate, self.batch_size))
                    continue
                segment = ChainSpec(procs, spec.sample_rate, f"{spec.name}[{procs[0].name}..{procs[-1].name}]")
                grad = input_grad if input_grad != "auto" else ("none" if i == 0 else "straight_through")
                fx = FxLayer(segment, self.batch_size, num_workers=num_workers, estimator=estimator,
                             epsilon=epsilon, num_perturbations=num_perturbations, input_grad=grad,
                             seed=seed + len(self.fx_layers) * SEED_STRIDE, timeout_seconds=timeout_seconds,
                             max_retries=max_retries, render=render, worker_share=worker_share)
                self.fx_layers.append(fx)
                self.stages.append(fx)
        except BaseException:
            self.close()
            raise
        self.stage_sizes = [s.num_params for s in self.stages]
        self.param_names = [n for s in self.stages for n in (s.param_names if isinstance(s, FxLayer)
                                                             else s.param_table.names)]
        self.num_params = len(self.param_names)
        self.latency_samples = int(sum(fx.latency_samples for fx in self.fx_layers))

    @property
    def sample_rate(self) -> float:
        return self.spec.sample_rate

    @property
    def param_table(self) -> ParamTable:
        """Flat table of the learned parameters (reads the black-box tables in this process, once)."""
        tables = [s.spec.param_table if isinstance(s, FxLayer) else s.param_table for s in self.stages]
        return ParamTable(tuple(p for t in tables for p in t))

    def current_epsilon(self) -> float:
        """ε of the first black-box stage (0 when the chain has none)."""
        return self.fx_layers[0].current_epsilon() if self.fx_layers else 0.0

    @property
    def last_finite(self) -> torch.Tensor | None:
        """``(batch,)`` bool of the last forward: ``True`` where every black-box stage rendered the item
        finite (:attr:`FxLayer.last_finite <deepafx.fx.FxLayer.last_finite>`); ``None`` before any
        forward or without black-box stages."""
        masks = [fx.last_finite for fx in self.fx_layers if fx.last_finite is not None]
        if not masks:
            return None
        finite = masks[0]
        for m in masks[1:]:
            finite = finite & m
        return finite

    def forward(self, audio: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        if audio.dim() != 3:
            raise AudioError(f"audio must be (batch, channels, samples), got shape {tuple(audio.shape)}")
        if params.dim() != 2 or params.shape != (audio.shape[0], self.num_params):
            raise ParameterError(f"chain {self.spec.name!r} takes params (batch={audio.shape[0]}, "
                                 f"num_params={self.num_params}), got {tuple(params.shape)}")
        if audio.shape[0] > self.batch_size:
            raise AudioError(f"batch of {audio.shape[0]} items but the chain has {self.batch_size} slots")
        out_dtype = audio.dtype
        for stage, part in zip(self.stages, torch.split(params, self.stage_sizes, dim=1)):
            audio = stage(audio, part)
        return audio.to(out_dtype)

    @torch.no_grad()
    def render(self, audio: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Render main instances only (no perturbations, no graph), whatever the training mode."""
        was = self.training
        self.train(False)
        try:
            return self.forward(audio, params)
        finally:
            self.train(was)

    def reset(self, slots: Sequence[int] | None = None) -> None:
        """Reset every stage's state for ``slots`` (default every slot)."""
        for s in self.stages:
            s.reset(slots)

    def close(self) -> None:
        """Shut every black-box stage's render workers down."""
        for fx in self.fx_layers:
            fx.close()

    def __enter__(self) -> "HybridChain":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> str:
        """One line per stage: kind, processors, learned parameter count."""
        lines = [f"hybrid chain {self.spec.name!r} @ {self.sample_rate:g} Hz, {self.num_params} learned parameters"]
        for s in self.stages:
            if isinstance(s, FxLayer):
                names = ", ".join(f"{p.name} ({p.backend})" for p in s.spec.processors)
                lines.append(f"  black box [SPSA, input_grad={s.input_grad}]: {names}: {s.num_params}")
            else:
                lines.append(f"  differentiable [autograd]: {s.spec.name} ({s.spec.backend}): {s.num_params}")
        return "\n".join(lines)


__all__ = ["DDSPStage", "HybridChain", "SEED_STRIDE", "is_hybrid", "split_stages"]
