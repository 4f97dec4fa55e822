"""Perturbations and step denominators shared by every black-box gradient estimator.

Two pure functions on torch tensors, with no render workers or plugins behind
them, so that every estimator in the package uses one rule for drawing,
masking, clipping and dividing:

* :func:`perturb` draws the perturbations (Rademacher ``Δ ∈ {−1, +1}^P``, K
  draws, for SPSA; the P unit vectors for finite differences), zeroes the
  entries a ``free`` mask leaves fixed, clips ``θ ± εΔ`` to [0, 1] and returns
  ``θ⁺``, ``θ⁻`` and the *actual* step ``θ⁺ − θ⁻``.
* :func:`gradient_from_differences` turns one scalar difference per render pair
  (``L⁺ − L⁻`` of a loss, or ``Σ_t dy_t (y⁺ − y⁻)_t`` of a vector–Jacobian
  product) into ``g_i = (1 / D) Σ_r d_r / (θ⁺_ri − θ⁻_ri)``, with a zero step
  giving a zero gradient entry (never a division by zero). ``D`` is the number
  of draws: K for SPSA, 1 for finite differences (each entry is moved by one
  render pair).

Dividing by the clipped step instead of ``2εΔ_i`` keeps the estimate unbiased
to first order at the edges of [0, 1], where one side of the perturbation is
cut off. See `Spall, 1992 <https://doi.org/10.1109/9.119632>`_ and DeepAFx
(Ramírez et al., ICASSP 2021).

Users: the Fx layer's estimators :class:`deepafx.fx.SPSA` and
:class:`deepafx.fx.FiniteDifferences`, the loss-level estimator
:func:`deepafx.fx.spsa_loss_gradient` and the Dexed test-time refinement
:func:`deepafx.recipes.dexed_matching.search.spsa_refine`. Which estimator to
pick when is explained in :mod:`deepafx.fx`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

METHODS = ("spsa", "fd")


@dataclass(frozen=True)
class Perturbation:
    """Perturbed parameter sets of a batch and the steps that divide their differences.

    Attributes:
        plus: ``θ⁺ = clip(θ + εΔ, 0, 1)``, ``(batch, R, num_params)`` float64.
        minus: ``θ⁻ = clip(θ − εΔ, 0, 1)``, ``(batch, R, num_params)`` float64.
        step: ``θ⁺ − θ⁻``, ``(batch, R, num_params)`` float64; 0 where an entry is not moved.
        num_draws: ``D`` dividing the sum over render pairs: K for SPSA, 1 for
            finite differences.
    """

    plus: torch.Tensor
    minus: torch.Tensor
    step: torch.Tensor
    num_draws: int

    @property
    def num_renders(self) -> int:
        """``R``: render pairs per item."""
        return int(self.plus.shape[1])


def perturb(
    theta: torch.Tensor,
    epsilon: float | torch.Tensor,
    method: str = "spsa",
    num_perturbations: int = 1,
    free: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Perturbation:
    """Draws perturbations of normalized parameters, clipped to [0, 1].

    SPSA draws ``Δ`` with ``torch.randint(0, 2, (batch, K, num_params),
    generator=generator) * 2 − 1`` (one call per batch, in this order, so a
    seeded generator reproduces the same draws); finite differences use the
    ``num_params`` unit vectors (``R = num_params``) and draw nothing.

    Args:
        theta: Normalized parameters ``(batch, num_params)`` on [0, 1]; computed
            in float64 (not differentiated).
        epsilon: Perturbation size ε on normalized values, > 0: one for every
            parameter, or ``(num_params,)`` sizes per parameter (a parameter group
            whose effect is small at one size can be perturbed more; the estimate
            divides each difference by that parameter's own step, so it stays
            unbiased for a linear loss, but parameter i's estimate carries every
            other parameter's term scaled by ε_j / ε_i: noise grows where a size
            is smaller than the others).
        method: ``"spsa"`` (Rademacher, ``R = K``) or ``"fd"`` (unit vectors,
            ``R = num_params``).
        num_perturbations: SPSA draws ``K`` (≥ 1); ignored by ``"fd"``.
        free: Optional bool mask ``(num_params,)`` or ``(batch, num_params)`` of
            the entries that are perturbed; the others keep ``θ`` in every
            render (step 0, hence gradient 0). Default: all entries.
        generator: Torch generator of the SPSA draws (default: torch's global one).

    Returns:
        :class:`Perturbation` with ``plus``, ``minus``, ``step`` ``(batch, R, num_params)``.

    Raises:
        ValueError: ``theta`` not 2-D, ``epsilon`` ≤ 0 or of the wrong shape, unknown ``method``,
            ``num_perturbations`` < 1, or a ``free`` mask of the wrong shape.
    """
    if theta.dim() != 2:
        raise ValueError(f"theta must be (batch, num_params), got shape {tuple(theta.shape)}")
    b, p = theta.shape
    eps = torch.as_tensor(epsilon, dtype=torch.float64, device=theta.device)
    if eps.shape not in ((), (p,)) or not bool((eps > 0).all()):
        raise ValueError(f"epsilon must be > 0, one size or ({p},) sizes per parameter, got "
                         f"{epsilon if eps.dim() == 0 else f'shape {tuple(eps.shape)}, minimum {float(eps.min()):g}'}")
    theta = theta.detach().to(torch.float64)
    if method == "spsa":
        k = int(num_perturbations)
        if k < 1:
            raise ValueError(f"num_perturbations must be >= 1, got {num_perturbations}")
        delta = (torch.randint(0, 2, (b, k, p), generator=generator) * 2 - 1).to(torch.float64)
        num_draws = k
    elif method == "fd":
        delta = torch.eye(p, dtype=torch.float64, device=theta.device)[None].expand(b, -1, -1)
        num_draws = 1
    else:
        raise ValueError(f"unknown perturbation method {method!r}; choose one of {METHODS}")
    delta = delta.to(theta.device)
    if free is not None:
        mask = torch.as_tensor(free, device=theta.device).to(torch.float64)
        if mask.shape not in ((p,), (b, p)):
            raise ValueError(f"free must be a bool mask of shape ({p},) or ({b}, {p}), got {tuple(mask.shape)}")
        delta = delta * (mask if mask.dim() == 1 else mask[:, None])
    plus = (theta[:, None] + eps * delta).clamp(0, 1)
    minus = (theta[:, None] - eps * delta).clamp(0, 1)
    return Perturbation(plus, minus, plus - minus, num_draws)


def gradient_from_differences(differences: torch.Tensor, step: torch.Tensor, num_draws: int) -> torch.Tensor:
    """``g_i = (1 / D) Σ_r d_r / step_ri``, with ``step_ri = 0`` contributing 0.

    Args:
        differences: ``d_r``, one scalar per render pair, ``(batch, R)``: ``L⁺ − L⁻``
            for a loss, ``Σ_t dy_t (y⁺ − y⁻)_t`` for a vector–Jacobian product.
        step: ``θ⁺ − θ⁻``, ``(batch, R, num_params)`` (:attr:`Perturbation.step`).
        num_draws: ``D`` (:attr:`Perturbation.num_draws`).

    Returns:
        Gradient estimate ``(batch, num_params)`` float64; exactly 0 on entries
        no render pair moved.

    Raises:
        ValueError: shapes that do not match.
    """
    if differences.dim() != 2 or step.dim() != 3 or differences.shape != step.shape[:2]:
        raise ValueError(
            f"need differences (batch, R) and step (batch, R, num_params), got {tuple(differences.shape)} and {tuple(step.shape)}"
        )
    step = step.to(torch.float64)
    safe = torch.where(step == 0, torch.ones_like(step), step)
    # weights 1 / (D · step) first, then one contraction over r: the order of operations
    # is part of the contract (runs are reproduced bit for bit across versions).
    weights = torch.where(step != 0, 1.0 / (int(num_draws) * safe), torch.zeros_like(step))
    return torch.einsum("br,brp->bp", differences.to(torch.float64), weights)


__all__ = ["METHODS", "Perturbation", "gradient_from_differences", "perturb"]
