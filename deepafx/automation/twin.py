"""A differentiable torch twin of the embedded mastering chain, for autodiff references.

:class:`ChainTwin` re-implements, in torch with exact gradients, the pedalboard
processors of the embedded mastering chain
(:data:`deepafx.recipes.mastering.train.DEFAULT_CHAIN`, ``recipes/mastering/quick.yaml``):

* ``builtin.multiband_compressor`` — the same complementary band split
  (``low = L₁(x)``, ``mid = L₂(x) − L₁(x)``, ``high = x − L₂(x)``, each ``L_k``
  two cascaded first-order bilinear low-pass sections at crossover ``k``: JUCE
  ``makeFirstOrderLowPass``, ``b = [n, n]/(n+1)``, ``a = [1, (n−1)/(n+1)]``,
  ``n = tan(π f / sr)``), so the bands still sum exactly to the input; per band
  JUCE's ``dsp::Compressor``: a per-channel branching peak detector on ``|x|``
  (``e[n] = |x[n]| + c (e[n−1] − |x[n]|)``, ``c = exp(−2π·1000 / (sr · t_ms))``
  with the attack constant when ``|x[n]| > e[n−1]``, the release constant
  otherwise) feeding the hard-knee gain computer ``g = (e / T)^(1/R − 1)`` for
  ``e ≥ T``, else 1 (in dB: ``(1/R − 1)(e_dB − T_dB)``, Giannoulis, Massberg and
  Reiss 2012, level detection before the gain computer), then the makeup gain.
* ``builtin.graphic_eq`` — the same RBJ peaking biquads (JUCE ``makePeakFilter``,
  ``A = 10^(g/40)``), same centre frequencies, Q and range as the black box's
  options.
* ``pedalboard.Gain`` — ``10^(g/20)``.
* ``pedalboard.BrickwallLimiter`` — the plugin's algorithm at its defaults
  (sample peak, 5 ms look-ahead): the channel-linked peak sets a target gain
  ``ceiling / peak``; the gain attacks instantly, holds for the look-ahead
  length while the target stays below 1, then releases as
  ``g += (1 − r)(1 − g)`` with ``r = exp(−1 / ⌊sr · t_ms / 1000⌋)``; the gain
  multiplies the input delayed by the look-ahead and the result is clipped to
  ``±ceiling``. Latency: the look-ahead, 220 samples at 44.1 kHz (like the
  black box's reported latency).

Recursions are exact and run as compiled (numba) loops inside
``torch.autograd.Function`` subclasses with hand-written adjoint loops: IIR
sections in direct form II transposed like JUCE's ``IIR::Filter`` (backward:
the all-pole part run backwards in time), the compressor's detector and gain
computer, and the limiter's gain recursion and delay line; the adjoints replay
the branches recorded in the forward pass (attack/release, attack/hold/release).

State: like a stateful plugin instance, every section keeps its state per
batch slot across calls (filter memories, detector envelopes, limiter gain, hold
counter and delay line) until :meth:`ChainTwin.reset`; gradients do not flow
across calls (the state entering a call is a constant), which is what a plugin
does with its memory when its parameters change between blocks.

dasp-pytorch (Steinmetz, Bryan and Reiss, DeepAFx-ST, JAES 2022) was
considered and is not used: its biquads filter by frequency sampling (no state
carried between blocks, time aliasing of long responses) and its compressor
smooths a soft-knee dB gain with one attack-only time constant on a summed
side chain, while the black box smooths the linear peak level per channel with
separate attack and release constants.

Precision: by default (``plugin_precision=True``) the forward pass repeats the
plugins' float32 arithmetic in their order of operations — float32 signals,
coefficients computed in float32 with the C library's ``expf``/``powf``/
``sinf``/``cosf``/``tanf`` as JUCE computes them, float32 recursions — so it
renders what the plugins render; gradients are those of the exact expressions
(straight through the float32 rounding). ``plugin_precision=False`` computes
everything in float64 instead.

Measured agreement with the pedalboard black box (``tests/test_twin.py``): a
rendered piece of the mastering dataset, streams of 6 consecutive 0.25 s blocks
with new parameters every block and the state carried; each stage fed the black
box's output of the previous stage ("whole chain": the twin's own chain against
the black box's); max ``|twin − black box|`` over 3 random streams (uniform
normalized parameters), relative = that over max ``|black box|``:

==================================  ==================  =====================================
stage (quick chain, 17 learned)     plugin precision    float64 (``plugin_precision=False``)
==================================  ==================  =====================================
multiband compressor                0                   1.7e-6 (rel 3.7e-6)
graphic EQ                          0 (3e-8 at 0 dB)    9.6e-4 (rel 7.9e-4)
gain                                0                   9.1e-7 (rel 1.4e-7)
brickwall limiter                   0                   4.6e-6 (rel 5.4e-6)
whole chain                         0                   7.1e-4 (rel 8.4e-4)
==================================  ==================  =====================================

The float64 residual is the plugins' own float32 rounding, largest in the EQ's
low-frequency biquads (poles close to 1). With every parameter learned
(:data:`~deepafx.recipes.mastering.train.DEFAULT_CHAIN`, 30 parameters:
crossovers, ratios, time constants, limiter ceiling and release) the plugin-
precision twin is exact as well (0 on every stage).

Gradients: the hand-written adjoints equal numerical derivatives
(``torch.autograd.gradcheck`` in float64). Against two-sided finite differences
through the black box (ε = 0.01, 0.5 s from reset): without the limiter the
cosine is above 0.99998 on every setting tried; through the whole quick chain
with the delay-invariant loss it is 0.998 in the median of 8 random settings
but 0.42 on one of them. The black box is not smooth at that scale: a peak
that crosses the limiter's ceiling while its gain is releasing restarts the
hold (the gain stays down for up to the look-ahead length instead of
rising), a jump in the output that no derivative sees, and the loss's lag
search jumps too. The twin's gradient is the pathwise derivative between such
jumps; finite differences and SPSA at ε = 0.01 see a secant across them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from typing import Callable, Mapping, Sequence

import numba
import numpy as np
import torch
from torch import nn

from deepafx.chain import ChainSpec
from deepafx.hosts.builtin import OCTAVE_BANDS_HZ

__all__ = ["ChainTwin", "TWIN_BACKENDS", "brickwall_limiter", "iir_filter", "juce_compressor"]


def _work_dtype(plugin_precision: bool) -> type:
    return np.float32 if plugin_precision else np.float64


def _np(t: torch.Tensor, dtype=np.float64) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(dtype, copy=False))


def _rows(t: torch.Tensor, channels: int, dtype) -> np.ndarray:
    """Per-item values ``(batch,)`` → one per (item, channel) row ``(batch · channels,)``."""
    return _np(t, dtype).repeat(channels)


# --------------------------------------------------------------------------- IIR sections
@numba.njit(cache=True)
def _df2t_forward(x, b, a, z):  # pragma: no cover - compiled
    # direct form II transposed in the order of operations of JUCE's IIR::Filter, in x's precision;
    # b, a: (rows, 3) (first order: b2 = a2 = 0), z: (rows, 2)
    rows, n = x.shape
    y = np.empty_like(x)
    zf = np.empty_like(z)
    for r in range(rows):
        b0, b1, b2, a1, a2 = b[r, 0], b[r, 1], b[r, 2], a[r, 1], a[r, 2]
        s1, s2 = z[r, 0], z[r, 1]
        for t in range(n):
            v = x[r, t]
            out = v * b0 + s1
            y[r, t] = out
            s1 = (v * b1) - (out * a1) + s2
            s2 = (v * b2) - (out * a2)
        zf[r, 0] = s1
        zf[r, 1] = s2
    return y, zf


@numba.njit(cache=True)
def _df2t_adjoint(grad, x, y, b, a):  # pragma: no cover - compiled
    # float64. y = (1/A)(B x + e), e from the entering state (a constant). With u = (1/A)ᵀ grad
    # (the all-pole part run backwards: u[t] = grad[t] − a1 u[t+1] − a2 u[t+2]):
    # ∂L/∂x[t] = Σ_k b_k u[t+k], ∂L/∂b_k = Σ_t u[t] x[t−k], ∂L/∂a_k = −Σ_t u[t] y[t−k].
    rows, n = x.shape
    gx = np.empty_like(x)
    gb = np.zeros((rows, 3))
    ga = np.zeros((rows, 3))
    for r in range(rows):
        b0, b1, b2, a1, a2 = b[r, 0], b[r, 1], b[r, 2], a[r, 1], a[r, 2]
        u1 = 0.0  # u[t+1]
        u2 = 0.0  # u[t+2]
        for t in range(n - 1, -1, -1):
            u = grad[r, t] - a1 * u1 - a2 * u2
            gx[r, t] = b0 * u + b1 * u1 + b2 * u2
            gb[r, 0] += u * x[r, t]
            if t >= 1:
                gb[r, 1] += u * x[r, t - 1]
                ga[r, 1] -= u * y[r, t - 1]
            if t >= 2:
                gb[r, 2] += u * x[r, t - 2]
                ga[r, 2] -= u * y[r, t - 2]
            u2 = u1
            u1 = u
    return gx, gb, ga


class _IIR(torch.autograd.Function):
    """``y = lfilter(b, a, x, zi)`` per item; backward is the adjoint (time-reversed) filter."""

    @staticmethod
    def forward(ctx, x, b, a, zi, plugin_precision):
        bsz, ch, n = x.shape
        order = b.shape[-1] - 1
        w = _work_dtype(plugin_precision)
        pad = lambda t, dtype: np.pad(_np(t, dtype), ((0, 0), (0, 2 - order))).repeat(ch, axis=0)  # noqa: E731
        z = np.pad(_np(zi, w).reshape(bsz * ch, order), ((0, 0), (0, 2 - order)))
        xs = _np(x, w).reshape(bsz * ch, n)
        y, zf = _df2t_forward(xs, pad(b, w), pad(a, w), z)
        ctx.arrays = (xs, y, pad(b, np.float64), pad(a, np.float64))
        ctx.meta = (x.shape, x.dtype, order)
        zf_t = torch.from_numpy(zf[:, :order].reshape(zi.shape)).to(zi.dtype)
        ctx.mark_non_differentiable(zf_t)
        return torch.from_numpy(y.reshape(bsz, ch, n)).to(x.dtype), zf_t

    @staticmethod
    def backward(ctx, grad_y, grad_zf):
        xs, y, b, a = ctx.arrays
        (bsz, ch, n), dtype, order = ctx.meta
        gx, gb, ga = _df2t_adjoint(_np(grad_y).reshape(bsz * ch, n), xs.astype(np.float64), y.astype(np.float64), b, a)
        per_item = lambda g: torch.from_numpy(g[:, : order + 1].reshape(bsz, ch, -1).sum(1))  # noqa: E731
        return torch.from_numpy(gx.reshape(bsz, ch, n)).to(dtype), per_item(gb), per_item(ga), None, None


def iir_filter(x: torch.Tensor, b: torch.Tensor, a: torch.Tensor, zi: torch.Tensor,
               plugin_precision: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable first- or second-order IIR filter with an initial state, one coefficient set per item.

    Direct form II transposed in the order of operations of JUCE's
    ``IIR::Filter`` (the black box's filters); the backward pass is the exact
    adjoint in float64 (the all-pole part run backwards in time, one compiled pass).
    The state ``zi`` entering the call is a constant (no gradient flows to or
    through it), exactly as a plugin keeps its filter memory when its
    coefficients change between blocks.

    Args:
        x: ``(batch, channels, samples)`` float32 or float64.
        b: Numerator ``(batch, order + 1)``, order 1 or 2.
        a: Denominator ``(batch, order + 1)`` with ``a[:, 0] == 1``.
        zi: State ``(batch, channels, order)`` (zeros after a reset).
        plugin_precision: Run the forward pass in float32 like the plugin
            (its output then agrees to the last bit when the coefficients do);
            False: float64.

    Returns:
        ``(y (batch, channels, samples), zf (batch, channels, order))`` in the
        dtypes of ``x`` and ``zi``: the output (differentiable w.r.t. ``x``,
        ``b``, ``a``) and the final state (not differentiable).
    """
    return _IIR.apply(x, b, a, zi, plugin_precision)


# --------------------------------------------------------------------------- compressor
@numba.njit(cache=True)
def _compressor_forward(x, threshold, exponent, c_att, c_rel, y0, one):  # pragma: no cover - compiled
    # JUCE dsp::Compressor::processSample per row, in x's precision:
    # env = |x| + c (env − |x|) (attack c when |x| > env), gain = env < T ? 1 : (env · (1/T))^(1/R − 1)
    rows, n = x.shape
    out = np.empty_like(x)
    env = np.empty_like(x)
    gain = np.empty_like(x)
    attack = np.zeros((rows, n), dtype=np.uint8)
    for r in range(rows):
        e, thr, expo, ca, cr = y0[r], threshold[r], exponent[r], c_att[r], c_rel[r]
        inv = one / thr
        for t in range(n):
            v = x[r, t]
            lv = abs(v)
            if lv > e:
                c = ca
                attack[r, t] = 1
            else:
                c = cr
            e = lv + c * (e - lv)
            g = one if e < thr else (e * inv) ** expo
            env[r, t] = e
            gain[r, t] = g
            out[r, t] = g * v
    return out, env, gain, attack


@numba.njit(cache=True)
def _compressor_adjoint(grad, x, env, gain, attack, threshold, exponent, c_att, c_rel, y0):  # pragma: no cover - compiled
    # float64; per row the gradients of the output w.r.t. x, threshold (linear), exponent, c_att, c_rel.
    # env[t] = c[t] env[t−1] + (1 − c[t]) |x[t]|: λ[t] = ∂L/∂env[t] + c[t+1] λ[t+1]
    rows, n = x.shape
    gx = np.empty_like(x)
    g_thr = np.zeros(rows)
    g_expo = np.zeros(rows)
    g_att = np.zeros(rows)
    g_rel = np.zeros(rows)
    for r in range(rows):
        thr, expo = threshold[r], exponent[r]
        lam = 0.0
        c_next = 0.0
        for t in range(n - 1, -1, -1):
            v, e, g = x[r, t], env[r, t], gain[r, t]
            d_gain = grad[r, t] * v
            d_env = 0.0
            if e >= thr:  # g = (e / T)^expo
                d_env = d_gain * g * expo / e
                g_thr[r] -= d_gain * g * expo / thr
                g_expo[r] += d_gain * g * np.log(e / thr)
            lam = d_env + c_next * lam
            c = c_att[r] if attack[r, t] else c_rel[r]
            prev = env[r, t - 1] if t > 0 else y0[r]
            if attack[r, t]:
                g_att[r] += lam * (prev - abs(v))
            else:
                g_rel[r] += lam * (prev - abs(v))
            sign = 1.0 if v > 0 else (-1.0 if v < 0 else 0.0)
            gx[r, t] = grad[r, t] * g + (1.0 - c) * lam * sign
            c_next = c
    return gx, g_thr, g_expo, g_att, g_rel


class _Compressor(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, threshold, exponent, c_att, c_rel, env0, plugin_precision):
        bsz, ch, n = x.shape
        w = _work_dtype(plugin_precision)
        args = (_np(x, w).reshape(bsz * ch, n), *(_rows(t, ch, w) for t in (threshold, exponent, c_att, c_rel)),
                _np(env0, w).reshape(-1))
        out, env, gain, attack = _compressor_forward(*args, w(1.0))
        ctx.arrays = (*(a.astype(np.float64) for a in (args[0], env, gain)), attack,
                      *(a.astype(np.float64) for a in args[1:]))
        ctx.meta = (x.shape, x.dtype)
        env_end = torch.from_numpy(env[:, -1].astype(np.float64).reshape(bsz, ch)).to(env0.dtype)
        ctx.mark_non_differentiable(env_end)
        return torch.from_numpy(out.reshape(bsz, ch, n)).to(x.dtype), env_end

    @staticmethod
    def backward(ctx, grad_out, _grad_env):
        (bsz, ch, n), dtype = ctx.meta
        xs, env, gain, attack, thr, expo, ca, cr, y0 = ctx.arrays
        gx, *per_row = _compressor_adjoint(_np(grad_out).reshape(bsz * ch, n), xs, env, gain, attack, thr, expo, ca, cr, y0)
        g_thr, g_expo, g_att, g_rel = (torch.from_numpy(g.reshape(bsz, ch).sum(1)) for g in per_row)
        return torch.from_numpy(gx.reshape(bsz, ch, n)).to(dtype), g_thr, g_expo, g_att, g_rel, None, None


def juce_compressor(x: torch.Tensor, threshold: torch.Tensor, exponent: torch.Tensor, c_att: torch.Tensor,
                    c_rel: torch.Tensor, env0: torch.Tensor,
                    plugin_precision: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """JUCE's ``dsp::Compressor`` (pedalboard ``Compressor``), differentiable.

    Per channel, a branching peak detector on ``|x|`` (``e[t] = |x[t]| + c (e[t−1] − |x[t]|)``,
    ``c = c_att`` when ``|x[t]| > e[t−1]``, else ``c_rel``) feeds a hard-knee gain
    computer in the linear domain, ``g = (e / T)^(1/R − 1)`` for ``e ≥ T``, else 1:
    the "smooth, then compute the gain" topology of Giannoulis, Massberg and Reiss,
    "Digital dynamic range compressor design — a tutorial and analysis", JAES 2012
    (branching peak detector, Eq. 17; hard knee). A compiled loop runs the
    recursion and records every sample's branch; the backward pass replays them
    in reverse (given the branches the recursion is linear; the switch itself is
    continuous, both branches giving ``e = |x|`` at ``|x| = e[t−1]``).

    Args:
        x: Band signal ``(batch, channels, samples)``.
        threshold: Linear threshold ``T`` ``(batch,)`` (> 0).
        exponent: ``1/R − 1`` ``(batch,)`` on (−1, 0] for ratios ``R ≥ 1``.
        c_att: Attack coefficients ``(batch,)`` on [0, 1).
        c_rel: Release coefficients ``(batch,)`` on [0, 1).
        env0: Envelope entering the call ``(batch, channels)`` (0 after a reset; constant).
        plugin_precision: Forward pass in float32 like the plugin (False: float64).

    Returns:
        ``(y (batch, channels, samples), env_end (batch, channels))``: the
        compressed signal (differentiable w.r.t. every argument but ``env0``)
        and the envelope to carry into the next call.
    """
    return _Compressor.apply(x, threshold, exponent, c_att, c_rel, env0, plugin_precision)


# --------------------------------------------------------------------------- brickwall limiter
_ATTACK, _HOLD, _RELEASE = 0, 1, 2


@numba.njit(cache=True)
def _limiter_forward(x, line0, ceiling, release, g0, hold0, one, tiny):  # pragma: no cover - compiled
    # pedalboard BrickwallLimiter::process per item, in x's precision: channel-linked sample peak,
    # instant attack / hold for the look-ahead / release, gain on the input delayed by the look-ahead,
    # then clipped to ±ceiling. x: (items, channels, n); line0: (items, channels, lag) delay-line contents.
    items, channels, n = x.shape
    lag = line0.shape[2]
    out = np.empty_like(x)
    gain = np.empty((items, n), dtype=x.dtype)
    branch = np.empty((items, n), dtype=np.uint8)
    arg = np.zeros((items, n), dtype=np.int64)
    g_end = np.empty(items, dtype=x.dtype)
    hold_end = np.empty(items, dtype=np.int64)
    for i in range(items):
        g, hold, c = g0[i], hold0[i], ceiling[i]
        k = one - release[i]
        for t in range(n):
            p = abs(x[i, 0, t])
            for ch in range(1, channels):
                if abs(x[i, ch, t]) > p:
                    p = abs(x[i, ch, t])
                    arg[i, t] = ch
            target = c / max(p, tiny) if p > c else one
            if target < g:  # instant attack, restart the hold
                g = target
                hold = lag
                branch[i, t] = _ATTACK
            elif target < one:  # still above the ceiling: restart the hold
                hold = lag
                branch[i, t] = _HOLD
            elif hold > 0:
                hold -= 1
                branch[i, t] = _HOLD
            else:
                g += k * (one - g)
                branch[i, t] = _RELEASE
            gain[i, t] = g
            for ch in range(channels):
                d = line0[i, ch, t] if t < lag else x[i, ch, t - lag]
                out[i, ch, t] = min(max(d * g, -c), c)
        g_end[i], hold_end[i] = g, hold
    return out, gain, branch, arg, g_end, hold_end


@numba.njit(cache=True)
def _limiter_adjoint(grad, x, line0, gain, branch, arg, ceiling, release, g0):  # pragma: no cover - compiled
    # float64; g[t] = α[t] g[t−1] + β[t]: attack α = 0, β = c/p; hold α = 1, β = 0; release α = r, β = 1 − r
    items, channels, n = x.shape
    lag = line0.shape[2]
    gx = np.zeros_like(x)
    g_ceiling = np.zeros(items)
    g_release = np.zeros(items)
    for i in range(items):
        c = ceiling[i]
        lam = 0.0
        alpha_next = 0.0
        for t in range(n - 1, -1, -1):
            g = gain[i, t]
            d_gain = 0.0
            for ch in range(channels):
                d = line0[i, ch, t] if t < lag else x[i, ch, t - lag]
                y = d * g
                if y > c:
                    g_ceiling[i] += grad[i, ch, t]
                elif y < -c:
                    g_ceiling[i] -= grad[i, ch, t]
                else:
                    d_gain += grad[i, ch, t] * d
                    if t >= lag:
                        gx[i, ch, t - lag] += grad[i, ch, t] * g
            lam = d_gain + alpha_next * lam
            b = branch[i, t]
            if b == _ATTACK:
                ch = arg[i, t]
                v = x[i, ch, t]
                p = max(abs(v), 1e-30)
                g_ceiling[i] += lam / p
                gx[i, ch, t] -= lam * c / (p * p) * (1.0 if v > 0 else -1.0)
                alpha_next = 0.0
            elif b == _HOLD:
                alpha_next = 1.0
            else:
                prev = gain[i, t - 1] if t > 0 else g0[i]
                g_release[i] += lam * (prev - 1.0)
                alpha_next = release[i]
    return gx, g_ceiling, g_release


class _Limiter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ceiling, release, line0, g0, hold0, plugin_precision):
        w = _work_dtype(plugin_precision)
        args = [_np(x, w), _np(line0, w), _np(ceiling, w), _np(release, w), _np(g0, w)]
        out, gain, branch, arg, g_end, hold_end = _limiter_forward(*args, _np(hold0, np.int64), w(1.0), w(1e-30))
        xs, ls, cs, rs, gs = (a.astype(np.float64) for a in args)
        ctx.arrays = (xs, ls, gain.astype(np.float64), branch, arg, cs, rs, gs)
        ctx.dtype = x.dtype
        g_end_t = torch.from_numpy(g_end.astype(np.float64)).to(g0.dtype)
        hold_end_t = torch.from_numpy(hold_end)
        ctx.mark_non_differentiable(g_end_t, hold_end_t)
        return torch.from_numpy(out).to(x.dtype), g_end_t, hold_end_t

    @staticmethod
    def backward(ctx, grad_out, _g_end, _hold_end):
        xs, ls, gain, branch, arg, cs, rs, gs = ctx.arrays
        gx, g_c, g_r = _limiter_adjoint(_np(grad_out), xs, ls, gain, branch, arg, cs, rs, gs)
        return torch.from_numpy(gx).to(ctx.dtype), torch.from_numpy(g_c), torch.from_numpy(g_r), None, None, None, None


def brickwall_limiter(x: torch.Tensor, ceiling: torch.Tensor, release: torch.Tensor, line0: torch.Tensor,
                      g0: torch.Tensor, hold0: torch.Tensor,
                      plugin_precision: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """pedalboard's ``BrickwallLimiter`` (sample peak), differentiable.

    Per sample: target ``c / p`` when the channel-linked peak ``p`` exceeds the
    ceiling ``c``, else 1; a target below the current gain is taken at once and
    restarts the hold counter (the look-ahead length); a target below 1
    restarts the hold; else the hold counts down, and once it is 0 the gain
    releases toward 1 as ``g += (1 − r)(1 − g)``. The gain multiplies the input
    delayed by the look-ahead; the product is clipped to ``±c``. Differentiable
    between branch changes; a peak that crosses the ceiling during a release
    restarts the hold, a jump the gradient does not see (module docstring).

    Args:
        x: ``(batch, channels, samples)``.
        ceiling: Linear ceiling ``c`` ``(batch,)``, > 0.
        release: Release coefficient ``r`` ``(batch,)`` on [0, 1).
        line0: Delay line entering the call ``(batch, channels, lookahead)``:
            the last ``lookahead`` input samples (zeros after a reset; constant).
        g0: Gain entering the call ``(batch,)`` (1 after a reset; constant).
        hold0: Hold counter entering the call ``(batch,)`` int64 (0 after a reset).
        plugin_precision: Forward pass in float32 like the plugin (False: float64).

    Returns:
        ``(y (batch, channels, samples), g_end (batch,), hold_end (batch,))``;
        ``y`` is differentiable w.r.t. ``x``, ``ceiling`` and ``release``. The
        next call's delay line is the last ``lookahead`` samples of
        ``cat(line0, x)``.
    """
    return _Limiter.apply(x, ceiling, release, line0, g0, hold0, plugin_precision)


# --------------------------------------------------------------------------- stages
_F = np.float32


def _juce_values(exact: torch.Tensor, juce: Callable[[], np.ndarray], plugin_precision: bool) -> torch.Tensor:
    """``exact``, or with ``plugin_precision`` the plugin's float32 value ``juce()`` in the forward pass
    and ``exact``'s gradient (straight through)."""
    if not plugin_precision:
        return exact
    return exact + (torch.as_tensor(np.asarray(juce(), dtype=np.float64), dtype=exact.dtype) - exact).detach()


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(_F)


def _load_libm():
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    except OSError:  # no C math library to call: torch's float32 functions (may differ by an ulp)
        return None
    for name in ("expf", "powf", "sinf", "cosf", "tanf"):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_float
        fn.argtypes = [ctypes.c_float] * (2 if name == "powf" else 1)
    return lib


_LIBM = _load_libm()


def _libm32(name: str, *args) -> np.ndarray:
    """The C library's float32 function ``name`` (``exp``, ``pow``, ``sin``, ``cos``, ``tan``) elementwise,
    as the plugins call it (``std::exp(float)`` …); torch's float32 function where no C library is found."""
    arrays = np.broadcast_arrays(*(np.asarray(a, dtype=_F) for a in args))
    if _LIBM is None:
        return getattr(torch, name)(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)).numpy()
    fn = getattr(_LIBM, name + "f")
    out = np.array([fn(*(float(v) for v in vals)) for vals in zip(*(a.ravel() for a in arrays))], dtype=_F)
    return out.reshape(arrays[0].shape)


def _db_to_gain(db: torch.Tensor, plugin_precision: bool) -> torch.Tensor:
    """``10^(dB/20)`` (JUCE ``Decibels::decibelsToGain<float>``: ``powf(10, dB · 0.05)``)."""
    return _juce_values(torch.pow(10.0, db / 20.0), lambda: _libm32("pow", _F(10), _f32(db) * _F(0.05)),
                        plugin_precision)


def _ms_coefficient(time_ms: torch.Tensor, sample_rate: float, plugin_precision: bool) -> torch.Tensor:
    """JUCE ``BallisticsFilter`` constant ``exp(−2π · 1000 / (sr · t_ms))`` (0 below 1 µs; float32 in the plugin)."""
    c = torch.exp(-2.0 * math.pi * 1000.0 / (sample_rate * time_ms.clamp_min(1e-3)))
    exact = torch.where(time_ms < 1e-3, torch.zeros_like(c), c)

    def juce():
        t = _f32(time_ms).astype(np.float64)
        return np.where(t < 1e-3, 0.0, np.exp(-2.0 * math.pi * 1000.0 / sample_rate / np.maximum(t, 1e-3))).astype(_F)

    return _juce_values(exact, juce, plugin_precision)


def _first_order_lowpass(cutoff_hz: torch.Tensor, sample_rate: float, pp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """JUCE ``makeFirstOrderLowPass`` (bilinear, pre-warped) → ``(b, a)`` ``(batch, 2)``, normalized by ``a0``."""
    n = torch.tan(math.pi * cutoff_hz / sample_rate)
    b = torch.stack([n, n], -1) / (n + 1)[:, None]
    a = torch.stack([torch.ones_like(n), (n - 1) / (n + 1)], -1)
    if not pp:
        return b, a
    # the plugin's float32 computation: n = tan(π f / sr); Coefficients(n, n, n + 1, n − 1)
    nf = _libm32("tan", _F(math.pi) * _f32(cutoff_hz) / _F(sample_rate))
    inv = _F(1) / (nf + _F(1))
    return (_juce_values(b, lambda: np.stack([nf * inv, nf * inv], -1), pp),
            _juce_values(a, lambda: np.stack([np.ones_like(nf), (nf - _F(1)) * inv], -1), pp))


def _peak_filter(centre_hz: float, gain_db: torch.Tensor, q: float, sample_rate: float,
                 pp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """JUCE ``makePeakFilter`` (RBJ peaking EQ) → ``(b, a)`` ``(batch, 3)``, normalized by ``a0``."""
    f = min(max(centre_hz, 1e-2), sample_rate / 2 - 100.0)  # pedalboard clampCutoffFrequency
    omega = 2 * math.pi * max(f, 2.0) / sample_rate
    alpha = math.sin(omega) / (2 * q)
    c2 = -2 * math.cos(omega)
    amp = torch.pow(10.0, gain_db / 40.0)
    a0 = 1 + alpha / amp
    b = torch.stack([1 + alpha * amp, torch.full_like(amp, c2), 1 - alpha * amp], -1) / a0[:, None]
    a = torch.stack([torch.ones_like(amp), c2 / a0, (1 - alpha / amp) / a0], -1)
    if not pp:
        return b, a
    # the plugin's float32 computation, operation by operation
    ampf = np.sqrt(_db_to_gain(gain_db, True).detach().numpy().astype(_F))
    ff = min(max(_F(centre_hz), _F(1e-2)), _F(sample_rate) / _F(2) - _F(100))
    om = (_F(2) * _F(math.pi) * max(ff, _F(2))) / _F(sample_rate)
    al = _libm32("sin", om) / (_F(q) * _F(2))
    c2f = _F(-2) * _libm32("cos", om)
    inv = _F(1) / (_F(1) + al / ampf)
    bj = np.stack([(_F(1) + al * ampf) * inv, np.full_like(ampf, c2f) * inv, (_F(1) - al * ampf) * inv], -1)
    aj = np.stack([np.ones_like(ampf), np.full_like(ampf, c2f) * inv, (_F(1) - al / ampf) * inv], -1)
    return _juce_values(b, lambda: bj, pp), _juce_values(a, lambda: aj, pp)


def _per_item(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` values → ``(batch, 1, 1)`` in ``x``'s dtype (so products stay in the signal's precision)."""
    return v.to(x.dtype)[:, None, None]


class _State:
    """A state tensor per batch slot, allocated at the first call (its shape depends on the channels)."""

    def __init__(self, slots: int, fill: float = 0.0, dtype=torch.float64):
        self.slots, self.fill, self.dtype = slots, fill, dtype
        self.value: torch.Tensor | None = None

    def get(self, n_items: int, *shape: int) -> torch.Tensor:
        if self.value is None or tuple(self.value.shape[1:]) != shape:
            self.value = torch.full((self.slots, *shape), self.fill, dtype=self.dtype)
        return self.value[:n_items]

    def set(self, n_items: int, value: torch.Tensor) -> None:
        self.value[:n_items] = value.detach()

    def reset(self, slots: Sequence[int]) -> None:
        if self.value is not None:
            self.value[list(slots)] = self.fill


class _Section:
    """One IIR section with its direct-form-II-transposed state per batch slot."""

    def __init__(self, order: int, slots: int, plugin_precision: bool):
        self.order, self.plugin_precision = order, plugin_precision
        self.state = _State(slots)

    def __call__(self, x: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        y, zf = iir_filter(x, b, a, self.state.get(x.shape[0], x.shape[1], self.order), self.plugin_precision)
        self.state.set(x.shape[0], zf)
        return y

    def reset(self, slots: Sequence[int]) -> None:
        self.state.reset(slots)


class _Stage:
    """A stateful twin of one processor: ``(batch, channels, samples)`` in and out (float32 or float64)."""

    latency_samples = 0

    def __init__(self, options: Mapping, sample_rate: float, slots: int, plugin_precision: bool):
        self.sample_rate, self.slots, self.plugin_precision = float(sample_rate), int(slots), plugin_precision

    def __call__(self, x: torch.Tensor, v: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def reset(self, slots: Sequence[int]) -> None:
        pass


class MultibandCompressorTwin(_Stage):
    """Twin of ``builtin.multiband_compressor`` (see the module docstring)."""

    BANDS = ("low", "mid", "high")

    def __init__(self, options, sample_rate, slots, plugin_precision):
        super().__init__(options, sample_rate, slots, plugin_precision)
        self.lp1 = [_Section(1, slots, plugin_precision) for _ in range(2)]
        self.lp2 = [_Section(1, slots, plugin_precision) for _ in range(2)]
        self.env = [_State(slots) for _ in self.BANDS]

    def __call__(self, x, v):
        pp, sr = self.plugin_precision, self.sample_rate
        b1, a1 = _first_order_lowpass(v["low_crossover_hz"], sr, pp)
        b2, a2 = _first_order_lowpass(v["high_crossover_hz"], sr, pp)
        l1 = self.lp1[1](self.lp1[0](x, b1, a1), b1, a1)
        l2 = self.lp2[1](self.lp2[0](x, b2, a2), b2, a2)
        out = None
        for band, split, env in zip(self.BANDS, (l1, l2 - l1, x - l2), self.env):
            y, env_end = juce_compressor(
                split, _db_to_gain(v[f"{band}_threshold_db"], pp),
                _juce_values(1.0 / v[f"{band}_ratio"] - 1.0, lambda: _F(1) / _f32(v[f"{band}_ratio"]) - _F(1), pp),
                _ms_coefficient(v[f"{band}_attack_ms"], sr, pp), _ms_coefficient(v[f"{band}_release_ms"], sr, pp),
                env.get(x.shape[0], x.shape[1]), pp)
            env.set(x.shape[0], env_end)
            y = y * _per_item(_db_to_gain(v[f"{band}_makeup_db"], pp), y)
            out = y if out is None else out + y
        return out

    def reset(self, slots):
        for s in (*self.lp1, *self.lp2, *self.env):
            s.reset(slots)


class GraphicEQTwin(_Stage):
    """Twin of ``builtin.graphic_eq``: the same peaking biquads in series."""

    def __init__(self, options, sample_rate, slots, plugin_precision):
        super().__init__(options, sample_rate, slots, plugin_precision)
        bands = [float(f) for f in options.get("bands_hz", OCTAVE_BANDS_HZ) if float(f) < 0.45 * sample_rate]
        self.q = float(options.get("q", 1.41))
        self.bands = [(f, f"band_{f:g}hz_gain_db") for f in bands]
        self.sections = [_Section(2, slots, plugin_precision) for _ in bands]

    def __call__(self, x, v):
        for (f, name), section in zip(self.bands, self.sections):
            b, a = _peak_filter(f, v[name], self.q, self.sample_rate, self.plugin_precision)
            x = section(x, b, a)
        return x

    def reset(self, slots):
        for s in self.sections:
            s.reset(slots)


class GainTwin(_Stage):
    """Twin of ``pedalboard.Gain``."""

    def __call__(self, x, v):
        return x * _per_item(_db_to_gain(v["gain_db"], self.plugin_precision), x)


class BrickwallLimiterTwin(_Stage):
    """Twin of ``pedalboard.BrickwallLimiter`` at its default 5 ms look-ahead, sample peak."""

    LOOKAHEAD_MS = 5.0

    def __init__(self, options, sample_rate, slots, plugin_precision):
        super().__init__(options, sample_rate, slots, plugin_precision)
        self.latency_samples = max(1, int(self.sample_rate * self.LOOKAHEAD_MS / 1000.0))
        self.line = _State(slots)
        self.gain = _State(slots, fill=1.0)
        self.hold = _State(slots, dtype=torch.int64)

    def __call__(self, x, v):
        pp, n_items, lag = self.plugin_precision, x.shape[0], self.latency_samples
        steps = self.sample_rate * v["release_ms"] / 1000.0
        steps = (steps - (steps - torch.floor(steps)).detach()).clamp_min(1.0)  # ⌊·⌋ with a straight-through gradient

        def juce():  # expf(−1 / max(1, (int)(sr · release_ms / 1000)))), release_ms a float
            ms = torch.from_numpy(_f32(v["release_ms"]).astype(np.float64))
            return _libm32("exp", _F(-1) / torch.floor(self.sample_rate * ms / 1000.0).clamp_min(1.0).numpy().astype(_F))

        release = _juce_values(torch.exp(-1.0 / steps), juce, pp)
        line0 = self.line.get(n_items, x.shape[1], lag)
        y, g_end, hold_end = brickwall_limiter(x, _db_to_gain(v["ceiling_db"], pp), release, line0,
                                               self.gain.get(n_items), self.hold.get(n_items), pp)
        self.line.set(n_items, torch.cat([line0.to(x.dtype), x.detach()], -1)[..., -lag:])
        self.gain.set(n_items, g_end)
        self.hold.set(n_items, hold_end)
        return y

    def reset(self, slots):
        for s in (self.line, self.gain, self.hold):
            s.reset(slots)


#: Backends the twin covers, by name → stage class.
TWIN_BACKENDS: dict[str, Callable[..., _Stage]] = {
    "builtin.multiband_compressor": MultibandCompressorTwin,
    "builtin.graphic_eq": GraphicEQTwin,
    "pedalboard.Gain": GainTwin,
    "pedalboard.BrickwallLimiter": BrickwallLimiterTwin,
}


# --------------------------------------------------------------------------- the chain
class ChainTwin(nn.Module):
    """Differentiable, stateful torch twin of a chain of embedded pedalboard processors.

    Takes the same normalized parameter vector as the black-box chain
    (:attr:`ChainSpec.param_table <deepafx.chain.ChainSpec.param_table>`:
    learned parameters only, in their declared — possibly narrowed — ranges;
    fixed and non-learned parameters take the chain's fixed or default values),
    so it can replace a :class:`~deepafx.fx.FxLayer` in a training loop.

    Args:
        chain: Chain spec whose processors all have a twin (:data:`TWIN_BACKENDS`).
        batch_size: Batch slots ``M``; slot ``i`` keeps its own state, like the
            Fx layer's per-slot plugin instances.
        plugin_precision: Forward values as the plugins compute them (float32
            arithmetic in their order of operations, float32 coefficients;
            gradients are those of the exact float64 expressions, straight
            through); False computes everything in float64.

    Shapes:
        ``forward(audio (batch, channels, samples), params (batch, num_params))``
        → ``(batch, channels, samples)`` in ``audio``'s dtype; ``batch ≤ batch_size``,
        item ``i`` uses slot ``i``; params on [0, 1] (clamped).

    State: every call continues each slot's state (see the module docstring);
    :meth:`reset` clears it like a fresh plugin instance. No gradient flows
    across calls. Latency: :attr:`latency_samples` (the limiter's look-ahead),
    as the black box reports; output length equals input length.

    Raises:
        ValueError: a processor with no twin (the covered backends are listed),
            or a discrete learned parameter; at call time, shapes that do not
            match or more items than slots.
    """

    def __init__(self, chain: ChainSpec, batch_size: int, plugin_precision: bool = True):
        super().__init__()
        missing = [f"{p.name} ({p.backend})" for p in chain.processors if p.backend not in TWIN_BACKENDS]
        if missing:
            raise ValueError(f"no differentiable twin for {', '.join(missing)}; the twin covers "
                             f"{', '.join(TWIN_BACKENDS)} (use deepafx.fx.FxLayer for other plugins)")
        self.spec = chain
        self.batch_size = int(batch_size)
        self.sample_rate = float(chain.sample_rate)
        live = chain.build()
        try:
            table = live.param_table
            base = live.plugin_values(table.defaults_normalized())
            full_names = [proc.param_table.names for proc in live.processors]
            learned = [[p.name[len(ps.name) + 1:] for p in t] for ps, t in zip(chain.processors, live.tables)]
        finally:
            live.close()
        for p in table:
            if p.is_discrete:
                raise ValueError(f"{p.name} is discrete: the twin differentiates continuous parameters only; fix it in the chain")
        self.param_names = table.names
        self.num_params = len(table)
        self.register_buffer("_lo", torch.tensor([p.min for p in table], dtype=torch.float64), persistent=False)
        self.register_buffer("_hi", torch.tensor([p.max for p in table], dtype=torch.float64), persistent=False)
        self.register_buffer("_log", torch.tensor([p.scale == "log" for p in table]), persistent=False)
        self._constants = [dict(zip(names, map(float, vals))) for names, vals in zip(full_names, base)]
        offsets = np.cumsum([0] + [len(n) for n in learned])
        self._learned = [list(zip(range(int(o), int(o) + len(n)), n)) for o, n in zip(offsets, learned)]
        self.plugin_precision = bool(plugin_precision)
        #: Working dtype of the signals: float32 (the plugins' buffers) or float64.
        self.dtype = torch.float32 if self.plugin_precision else torch.float64
        self.stages = [TWIN_BACKENDS[ps.backend](ps.options, self.sample_rate, self.batch_size, self.plugin_precision)
                       for ps in chain.processors]
        self.latency_samples = int(sum(s.latency_samples for s in self.stages))

    def denormalize(self, params: torch.Tensor) -> torch.Tensor:
        """Normalized ``(batch, num_params)`` → plugin units ``(batch, num_params)`` float64, differentiable."""
        x = params.to(torch.float64).clamp(0.0, 1.0)
        lin = self._lo + x * (self._hi - self._lo)
        log = self._lo.clamp_min(1e-30) * torch.pow(self._hi / self._lo.clamp_min(1e-30), x)
        return torch.where(self._log, log, lin)

    def stage_values(self, params: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per processor, ``{parameter name: (batch,) float64 plugin value}`` (fixed and defaults filled in)."""
        values = self.denormalize(params)
        n = params.shape[0]
        out = []
        for consts, learned in zip(self._constants, self._learned):
            v = {k: torch.full((n,), c, dtype=torch.float64) for k, c in consts.items()}
            for j, name in learned:
                v[name] = values[:, j]
            out.append(v)
        return out

    def forward(self, audio: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        if audio.dim() != 3 or params.dim() != 2 or params.shape != (audio.shape[0], self.num_params):
            raise ValueError(f"need audio (batch, channels, samples) and params (batch, {self.num_params}), "
                             f"got {tuple(audio.shape)} and {tuple(params.shape)}")
        if audio.shape[0] > self.batch_size:
            raise ValueError(f"batch of {audio.shape[0]} items but the twin has {self.batch_size} slots")
        x = audio.detach().to("cpu", self.dtype)
        for stage, v in zip(self.stages, self.stage_values(params.cpu())):
            x = stage(x, v)
        return x.to(device=audio.device, dtype=audio.dtype)

    def process_stage(self, index: int, audio: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Run processor ``index`` alone (its state continues), for per-stage comparisons.

        Args:
            index: Processor position in the chain.
            audio: ``(batch, channels, samples)``; params: ``(batch, num_params)`` of the whole chain.

        Returns:
            ``(batch, channels, samples)`` in the twin's working dtype (:attr:`dtype`).
        """
        return self.stages[index](audio.detach().to(self.dtype), self.stage_values(params)[index])

    def reset(self, slots: Sequence[int] | None = None) -> None:
        """Clear the state of ``slots`` (default every slot), like a fresh plugin instance."""
        slots = range(self.batch_size) if slots is None else slots
        for s in self.stages:
            s.reset(slots)

    def extra_repr(self) -> str:
        return f"chain={self.spec.name!r}, params={self.num_params}, slots={self.batch_size}, latency={self.latency_samples}"
