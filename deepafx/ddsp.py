"""Differentiable processors (DDSP) in torch, declared with the same parameter tables as the plugins.

Each processor is an :class:`torch.nn.Module` whose parameters are described by
an ordered :class:`~deepafx.params.ParamTable` (names with units, ranges, linear
or log scale), exactly like a black-box plugin's: the network speaks normalized
``[0, 1]``, :func:`denormalize` maps to units differentiably and validates
(naming the offending parameter), and the same ``learn`` / ``fixed`` /
``ranges`` of a chain entry apply. Audio is ``(batch, channels, samples)``.

Registered by backend name in :data:`DDSP_PROCESSORS`; a chain entry whose
backend starts with ``"ddsp."`` is differentiable (:func:`is_differentiable`)
and :class:`deepafx.hybrid.HybridChain` runs it in the torch graph, next to
black-box stages rendered by an :class:`~deepafx.fx.FxLayer`:

============================ =================================================== ================================
backend                      what                                                parameters
============================ =================================================== ================================
``ddsp.harmonic``            additive synth, harmonics of f0 (instrument)        f0 (Hz), amplitude, distribution
``ddsp.filtered_noise``      white noise through a time-varying FIR (instrument) band gains (dB)
``ddsp.harmonic_plus_noise`` the two summed (DDSP's harmonic-plus-noise model)   both tables
``ddsp.reverb``              exponentially decaying noise IR, wet/dry mix        RT60 (s), mix
``ddsp.peq``                 low shelf, peaking bands, high shelf (RBJ biquads)  gain (dB), centre (Hz), Q
``ddsp.gain``                gain                                                gain (dB)
============================ =================================================== ================================

Two entry points per processor (pure maps apart from state):

* ``forward(audio, params)``: normalized parameters, output ``(batch,
  channels_out, samples)``; pure (no state between calls).
* ``render(audio, values)``: parameters in units; returns the output *and its
  ringing past the block*, ``(batch, channels_out, samples + tail)``. A
  :class:`TailState` adds the previous block's ringing to the next block, which
  makes a linear effect stream block by block (one-shot == chunked for fixed
  parameters; with parameters changing per block, each block is filtered whole
  by its own filter and the ringings overlap-add, so there is no zipper noise).

Each processor is also registered as a host backend of the same name
(:func:`deepafx.hosts.base.register_backend`; a process that builds a
``ddsp.`` entry imports this module then), so a :class:`~deepafx.chain.Chain`
renders ``ddsp.`` entries like plugins (:class:`DDSPHost`, without
gradients), in this process or in render workers — what ``deepafx evaluate``
and ``deepafx process`` use for a hybrid chain — and
:attr:`ChainSpec.param_table` reads their tables. A worker hosting plugins
only does not import torch for it.

See `Engel, Hantrakul, Gu, Roberts, "DDSP: Differentiable digital signal
processing", ICLR 2020 <https://openreview.net/forum?id=B1x1ma4tDr>`_ and R.
Bristow-Johnson, `"Audio EQ Cookbook"
<https://www.w3.org/TR/audio-eq-cookbook/>`_ (biquad coefficients).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Sequence

import numpy as np
import scipy.fft
import torch
from torch import nn

from deepafx.config import renamed_key_error
from deepafx.hosts.base import AudioError, Processor, ProcessorSpec, register_backend
from deepafx.params import NORMALIZED_TOLERANCE, Param, ParamTable, ParameterError
from deepafx.registry import Registry

#: A chain entry whose backend starts with this prefix is a differentiable (DDSP) stage.
DDSP_PREFIX = "ddsp."

#: ``ln(1000)``: an amplitude envelope ``exp(−LN1000 · t / T60)`` falls 60 dB in ``T60`` seconds.
LN1000 = math.log(1000.0)


def is_differentiable(backend: str) -> bool:
    """Whether a chain entry's backend names a DDSP processor (``"ddsp."`` prefix)."""
    return str(backend).startswith(DDSP_PREFIX)


def denormalize(table: ParamTable, x: torch.Tensor) -> torch.Tensor:
    """Normalized parameters → units, differentiably (the torch twin of :meth:`ParamTable.denormalize`).

    Linear parameters map to ``min + x (max − min)``, log parameters to
    ``min (max / min)^x``. Values are clamped to [0, 1] after validation.

    Args:
        table: Continuous parameters only (DDSP tables have no discrete values).
        x: ``(..., num_params)`` normalized on [0, 1] (float tensor, any device).

    Returns:
        ``(..., num_params)`` values in the table's units, ``x``'s dtype and device.

    Raises:
        ParameterError: wrong last dimension, a discrete parameter, or a value
            that is NaN/Inf or outside [0, 1] beyond 1e-5 (names the parameter).
    """
    if x.shape[-1:] != (len(table),):
        raise ParameterError(f"expected {len(table)} normalized parameters ({', '.join(table.names)}), "
                             f"got shape {tuple(x.shape)}")
    for p in table:
        if p.is_discrete:
            raise ParameterError(f"parameter {p.name!r} is discrete; DDSP processors take continuous parameters only")
    bad = ~torch.isfinite(x) | (x < -NORMALIZED_TOLERANCE) | (x > 1 + NORMALIZED_TOLERANCE)
    if bool(bad.any()):
        j = int(bad.reshape(-1, len(table)).any(0).nonzero()[0, 0])
        v = float(x[..., j][bad[..., j]].reshape(-1)[0])
        raise ParameterError(f"parameter {table[j].name!r}: normalized value {v} is not a finite number in [0, 1] "
                             "(use a sigmoid output)")
    x = x.clamp(0.0, 1.0)
    lo = x.new_tensor([p.min for p in table])
    hi = x.new_tensor([p.max for p in table])
    is_log = x.new_tensor([p.scale == "log" for p in table], dtype=torch.bool)
    log_ratio = x.new_tensor([math.log(p.max / p.min) if p.scale == "log" else 0.0 for p in table])
    return torch.where(is_log, lo * torch.exp(x * log_ratio), lo + x * (hi - lo))


def upsample(controls: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Frame-rate controls → audio rate by linear interpolation.

    Frame ``0`` sits on sample ``0`` and the last frame on sample
    ``num_samples − 1`` (a single frame is held constant).

    Args:
        controls: ``(batch, frames, num_controls)``.
        num_samples: Audio length ``N``.

    Returns:
        ``(batch, num_controls, N)``.
    """
    c = controls.transpose(1, 2)
    if c.shape[-1] == 1:
        return c.expand(-1, -1, num_samples)
    return nn.functional.interpolate(c, size=num_samples, mode="linear", align_corners=True)


def fft_convolve(audio: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
    """Full linear convolution along the last axis by FFT (zero padded, no circular wrap).

    Args:
        audio: ``(..., N)``.
        ir: ``(..., L)``, broadcastable against ``audio`` except in the last axis.

    Returns:
        ``(..., N + L − 1)``.
    """
    n = audio.shape[-1] + ir.shape[-1] - 1
    nfft = scipy.fft.next_fast_len(n, real=True)
    return torch.fft.irfft(torch.fft.rfft(audio, nfft) * torch.fft.rfft(ir, nfft), nfft)[..., :n]


class TailState:
    """Per-slot ringing carried from one block to the next (the state of a streamed linear effect).

    Slot ``i`` keeps ``(channels, tail)`` samples: the part of its last
    extended output (and of older ringings) that falls after the block. The
    next block of that slot adds it to its first samples. The carried tail is
    detached: gradients stop at block boundaries, as they do for the state of
    a black-box plugin.

    Args:
        num_slots: Number of independent streams ``M``.
    """

    def __init__(self, num_slots: int):
        self.tails: list[torch.Tensor | None] = [None] * int(num_slots)

    def apply(self, extended: torch.Tensor, num_samples: int) -> torch.Tensor:
        """``(batch, channels, N + tail)`` → the block ``(batch, channels, N)`` with carried ringing added.

        Item ``i`` is slot ``i``; slots ``≥ batch`` are untouched.

        Raises:
            AudioError: more items than slots, or a slot whose carried tail has
                another channel count (reset the slot when its stream changes).
        """
        b, c, total = extended.shape
        n = int(num_samples)
        if b > len(self.tails):
            raise AudioError(f"batch of {b} items but the state has {len(self.tails)} slots")
        y = extended[..., :n]
        prev = self.tails[:b]
        if any(t is not None for t in prev):
            add = extended.new_zeros(b, c, n)
            for i, t in enumerate(prev):
                if t is None:
                    continue
                if t.shape[0] != c:
                    raise AudioError(f"slot {i} carries a {t.shape[0]}-channel tail but got {c} channels; reset it")
                k = min(n, t.shape[-1])
                add[i, :, :k] = t[:, :k].to(add)
            y = y + add
        new = extended[..., n:].detach()
        for i in range(b):
            t = new[i]
            old = prev[i]
            if old is not None and old.shape[-1] > n:
                rest = old[:, n:].to(t)
                m = max(rest.shape[-1], t.shape[-1])
                t = nn.functional.pad(t, (0, m - t.shape[-1])) + nn.functional.pad(rest, (0, m - rest.shape[-1]))
            self.tails[i] = t.clone() if t.shape[-1] else None
        return y

    def reset(self, slots: Sequence[int] | None = None) -> None:
        """Forget the ringing of ``slots`` (default every slot)."""
        for i in range(len(self.tails)) if slots is None else slots:
            self.tails[int(i)] = None


class DDSPProcessor(nn.Module):
    """Base of the differentiable processors.

    Subclasses set :attr:`param_table` (units), :attr:`is_instrument`,
    :attr:`time_varying` and implement :meth:`render`.

    Attributes:
        param_table: Ordered, continuous parameter table (names with units).
        sample_rate: Rate in Hz.
        is_instrument: True for synthesizers: the input only sets batch,
            channels and length; the mono signal is copied to every channel.
        time_varying: True when parameters may also be ``(batch, frames,
            num_params)`` frame-rate controls (linearly upsampled to audio rate,
            :func:`upsample`).

    Raises:
        ValueError: a sample rate that is not positive.
    """

    param_table: ParamTable
    is_instrument: bool = False
    time_varying: bool = False

    def __init__(self, sample_rate: float = 44100.0):
        super().__init__()
        if not sample_rate > 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.sample_rate = float(sample_rate)

    @property
    def num_params(self) -> int:
        return len(self.param_table)

    def forward(self, audio: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Process (or synthesize) one signal with normalized parameters; no state.

        Args:
            audio: ``(batch, channels, samples)``.
            params: ``(batch, num_params)`` on [0, 1] (or ``(batch, frames,
                num_params)`` where :attr:`time_varying`).

        Returns:
            ``(batch, channels, samples)``, ``audio``'s dtype; the ringing past
            the end is dropped (see :meth:`render` and :class:`TailState`).

        Raises:
            AudioError, ParameterError: bad shapes or values (the parameter is named).
        """
        self.check(audio, params)
        return self.render(audio, denormalize(self.param_table, params))[..., : audio.shape[-1]]

    def check(self, audio: torch.Tensor, values: torch.Tensor) -> None:
        """Validate shapes of ``audio (batch, channels, samples)`` and ``values``.

        Raises:
            AudioError: audio not 3-D or empty.
            ParameterError: parameters of the wrong shape.
        """
        if audio.dim() != 3 or audio.shape[-1] == 0:
            raise AudioError(f"audio must be (batch, channels, samples), got shape {tuple(audio.shape)}")
        ok = values.dim() == 2 or (self.time_varying and values.dim() == 3)
        if not ok or values.shape[0] != audio.shape[0] or values.shape[-1] != self.num_params:
            shapes = "(batch, num_params)" + (" or (batch, frames, num_params)" if self.time_varying else "")
            raise ParameterError(f"{type(self).__name__} takes parameters {shapes} with batch {audio.shape[0]} and "
                                 f"num_params {self.num_params}, got {tuple(values.shape)}")

    def controls(self, values: torch.Tensor, num_samples: int) -> torch.Tensor:
        """``values (batch, P)`` → ``(batch, P, 1)``; ``(batch, frames, P)`` → ``(batch, P, N)`` (upsampled)."""
        return values[..., None] if values.dim() == 2 else upsample(values, num_samples)

    def render(self, audio: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Process with parameters in units; keep the ringing past the block.

        Args:
            audio: ``(batch, channels, samples)``.
            values: ``(batch, num_params)`` in the units of :attr:`param_table`
                (or ``(batch, frames, num_params)`` where :attr:`time_varying`).

        Returns:
            ``(batch, channels_out, samples + tail)``; ``tail ≥ 0`` samples of
            ringing after the block (0 for gains and synthesizers).
        """
        raise NotImplementedError

    def reset(self) -> None:
        """Restore the processor's own random state (noise generators); default: nothing."""


#: DDSP processors by backend name (``"ddsp.peq"`` …): classes taking ``sample_rate`` and their options.
DDSP_PROCESSORS: Registry[type[DDSPProcessor]] = Registry("DDSP processor")


def build_ddsp(spec: ProcessorSpec, sample_rate: float) -> DDSPProcessor:
    """The DDSP processor of a chain entry: ``DDSP_PROCESSORS[spec.backend](sample_rate, **spec.options)``.

    Raises:
        ValueError: unknown backend (the registered ones are listed) or an
            option the processor does not take (its options are listed).
    """
    cls = DDSP_PROCESSORS.get(spec.backend)
    accepted = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "sample_rate")]
    old = renamed_key_error("options", spec.options, accepted)
    if old:
        raise ValueError(f"processor {spec.name!r} ({spec.backend}): {old}")
    unknown = sorted(set(spec.options) - set(accepted))
    if unknown:
        raise ValueError(f"processor {spec.name!r} ({spec.backend}): unknown options {unknown}; "
                         f"accepted: {', '.join(accepted) or '(none)'}")
    return cls(sample_rate=sample_rate, **dict(spec.options))


# --------------------------------------------------------------------------- gain
@DDSP_PROCESSORS.register("ddsp.gain")
class Gain(DDSPProcessor):
    """Gain: ``y = x · 10^(gain_db / 20)``.

    Args:
        sample_rate: Hz.
        min_db, max_db: Range of ``gain_db`` (default [−24, 24] dB, default value 0 dB).

    Parameters: ``gain_db`` (dB, linear scale); time-varying controls allowed.
    """

    time_varying = True

    def __init__(self, sample_rate: float = 44100.0, min_db: float = -24.0, max_db: float = 24.0):
        super().__init__(sample_rate)
        default = min(max(0.0, min_db), max_db)
        self.param_table = ParamTable((Param("gain_db", float(min_db), float(max_db), default, "dB"),))

    def render(self, audio: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        self.check(audio, values)
        g = 10.0 ** (self.controls(values, audio.shape[-1]) / 20.0)  # (B, 1, N or 1)
        return audio * g.to(audio.dtype)


# --------------------------------------------------------------------------- synthesizers
def _harmonic_signal(f0_hz: torch.Tensor, amplitude: torch.Tensor, distribution: torch.Tensor,
                     sample_rate: float) -> torch.Tensor:
    """Additive synthesis: ``f0_hz``, ``amplitude`` ``(B, 1, N)``, ``distribution`` ``(B, K, N)`` → ``(B, N)``."""
    f0 = f0_hz.double()
    k = torch.arange(1, distribution.shape[1] + 1, dtype=torch.float64, device=f0.device)[None, :, None]
    audible = (f0 * k < sample_rate / 2).double()  # harmonics at or above Nyquist are removed (no aliasing)
    dist = distribution.double() * audible
    dist = dist / dist.sum(1, keepdim=True).clamp_min(1e-7)
    phase = torch.remainder(2 * math.pi * torch.cumsum(f0 / sample_rate, dim=-1), 2 * math.pi)  # (B, 1, N)
    return amplitude.double()[:, 0] * (dist * torch.sin(k * phase)).sum(1)


@DDSP_PROCESSORS.register("ddsp.harmonic")
class Harmonic(DDSPProcessor):
    """Harmonic (additive) synthesizer: a sum of sinusoids at integer multiples of f0.

    ``y[n] = amplitude[n] · Σ_k c_k[n] sin(k φ[n])``, ``φ[n] = 2π Σ_{m≤n} f0[m] / sample_rate``,
    where ``c`` is the harmonic distribution with every harmonic at or above
    Nyquist zeroed and the rest normalized to sum 1 (DDSP's anti-aliasing).
    Controls given per frame are linearly upsampled to the audio rate.

    Args:
        sample_rate: Hz.
        num_harmonics: ``K`` (default 32).
        min_f0_hz, max_f0_hz: Range of ``f0_hz`` (default [20, 4000] Hz, log scale).

    Parameters: ``f0_hz`` (Hz, log), ``amplitude`` (peak amplitude of the sum,
    [0, 1]), ``harmonic_1 … harmonic_K`` (relative weights, [0, 1], default
    ``1/k``). State: none; every call starts at phase 0 (render a note in one call).

    See Engel et al., DDSP, ICLR 2020, section 3.1 (harmonic oscillator).
    """

    is_instrument = True
    time_varying = True

    def __init__(self, sample_rate: float = 44100.0, num_harmonics: int = 32, min_f0_hz: float = 20.0,
                 max_f0_hz: float = 4000.0):
        super().__init__(sample_rate)
        if int(num_harmonics) < 1:
            raise ValueError(f"num_harmonics must be ≥ 1, got {num_harmonics}")
        self.num_harmonics = int(num_harmonics)
        self.param_table = ParamTable(
            (Param("f0_hz", float(min_f0_hz), float(max_f0_hz), min(max(220.0, min_f0_hz), max_f0_hz), "Hz", "log"),
             Param("amplitude", 0.0, 1.0, 0.5))
            + tuple(Param(f"harmonic_{k}", 0.0, 1.0, 1.0 / k) for k in range(1, self.num_harmonics + 1))
        )

    def render(self, audio: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        self.check(audio, values)
        c = self.controls(values, audio.shape[-1]).expand(-1, -1, audio.shape[-1])
        y = _harmonic_signal(c[:, :1], c[:, 1:2], c[:, 2:], self.sample_rate)
        return y[:, None].to(audio.dtype).expand(-1, audio.shape[1], -1)


def frequency_impulse_response(magnitudes: torch.Tensor, window_size: int | None = None) -> torch.Tensor:
    """Linear-phase FIR from band magnitudes by frequency sampling and a Hann window (DDSP).

    ``K`` magnitudes are the zero-phase response at ``K`` frequencies spaced
    linearly from 0 Hz to Nyquist; the inverse real FFT gives a zero-phase
    impulse response of ``2 (K − 1)`` samples, centred and windowed to
    ``window_size`` samples.

    Args:
        magnitudes: ``(..., K)`` linear magnitudes (≥ 0), ``K ≥ 2``.
        window_size: Even FIR length ``W`` with ``2 ≤ W ≤ 2 (K − 1)`` (default ``2 (K − 1)``).

    Returns:
        ``(..., W)``: the FIR, centre (zero delay) at sample ``W // 2``.

    Raises:
        ValueError: fewer than 2 magnitudes or a bad ``window_size``.

    See Engel et al., DDSP, ICLR 2020, section 3.2 (filtered noise / LTV-FIR).
    """
    k = magnitudes.shape[-1]
    n = 2 * (k - 1)
    w = n if window_size is None else int(window_size)
    if k < 2 or w < 2 or w > n or w % 2:
        raise ValueError(f"need ≥ 2 magnitudes and an even window_size in [2, {n}], got {k} and {window_size}")
    ir = torch.fft.irfft(magnitudes.to(torch.complex128 if magnitudes.dtype == torch.float64 else torch.complex64), n)
    ir = torch.roll(ir, n // 2, dims=-1)[..., n // 2 - w // 2 : n // 2 + w // 2]
    return ir * torch.hann_window(w, periodic=True, dtype=ir.dtype, device=ir.device)


def _filtered_noise(noise: torch.Tensor, irs: torch.Tensor) -> torch.Tensor:
    """Frame-wise FIR filtering with overlap-add, delay compensated: ``(B, N)``, ``(B, F, W)`` → ``(B, N)``.

    Frame ``f`` covers samples ``[f·hop, (f + 1)·hop)``, ``hop = ceil(N / F)``,
    and is filtered by ``irs[:, f]``; the linear-phase delay ``W // 2`` is removed.
    """
    b, n = noise.shape
    frames, w = irs.shape[1], irs.shape[2]
    hop = -(-n // frames)
    x = nn.functional.pad(noise, (0, frames * hop - n)).reshape(b, frames, hop)
    seg = fft_convolve(x, irs.to(x.dtype))  # (B, F, hop + W − 1)
    chunks = -(-seg.shape[-1] // hop)
    seg = nn.functional.pad(seg, (0, chunks * hop - seg.shape[-1])).reshape(b, frames, chunks, hop)
    out = seg.new_zeros(b, frames + chunks, hop)
    for m in range(chunks):
        out[:, m : m + frames] = out[:, m : m + frames] + seg[:, :, m]
    return out.reshape(b, -1)[:, w // 2 : w // 2 + n]


@DDSP_PROCESSORS.register("ddsp.filtered_noise")
class FilteredNoise(DDSPProcessor):
    """Filtered noise: uniform white noise on [−1, 1] through a time-varying FIR.

    Each frame's FIR comes from its band magnitudes by frequency sampling and
    a Hann window (:func:`frequency_impulse_response`); frames are filtered
    whole and overlap-added, with the linear-phase delay removed (zero phase).
    Band ``k`` (``k = 0 … K − 1``) is centred at ``k · sample_rate / (2 (K − 1))`` Hz.

    Args:
        sample_rate: Hz.
        num_bands: ``K`` bands, linearly spaced from 0 Hz to Nyquist (default 65).
        window_size: FIR length in samples (even, ≤ ``2 (K − 1)``; default ``2 (K − 1)``).
        min_db, max_db: Range of every band gain (default [−80, 0] dB, default value −20 dB).
        seed: Seed of the noise generator (restored by :meth:`reset`).

    Parameters: ``band0_db … band{K−1}_db`` (dB, linear scale); time-varying
    controls ``(batch, frames, K)`` give one FIR per frame. State: only the
    noise generator, which advances every call (pass ``noise=`` to
    :meth:`render` for a fixed excitation).

    See Engel et al., DDSP, ICLR 2020, section 3.2.
    """

    is_instrument = True
    time_varying = True

    def __init__(self, sample_rate: float = 44100.0, num_bands: int = 65, window_size: int | None = None,
                 min_db: float = -80.0, max_db: float = 0.0, seed: int = 0):
        super().__init__(sample_rate)
        self.num_bands = int(num_bands)
        self.window_size = 2 * (self.num_bands - 1) if window_size is None else int(window_size)
        frequency_impulse_response(torch.ones(self.num_bands), self.window_size)  # validates
        default = min(max(-20.0, min_db), max_db)
        self.param_table = ParamTable(tuple(Param(f"band{k}_db", float(min_db), float(max_db), default, "dB")
                                            for k in range(self.num_bands)))
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def band_centres_hz(self) -> np.ndarray:
        """``(K,)`` centre frequencies of the bands in Hz."""
        return np.linspace(0.0, self.sample_rate / 2, self.num_bands)

    def draw_noise(self, batch: int, num_samples: int) -> torch.Tensor:
        """``(batch, num_samples)`` uniform noise on [−1, 1] from the processor's generator."""
        return torch.rand(batch, num_samples, generator=self.generator, dtype=torch.float64) * 2 - 1

    def render(self, audio: torch.Tensor, values: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """See :meth:`DDSPProcessor.render`; ``noise`` ``(batch, samples)`` replaces the drawn excitation."""
        self.check(audio, values)
        b, c, n = audio.shape
        v = values if values.dim() == 3 else values[:, None]
        irs = frequency_impulse_response(10.0 ** (v.double() / 20.0), self.window_size)
        x = (self.draw_noise(b, n) if noise is None else noise.double()).to(irs.device)
        return _filtered_noise(x, irs)[:, None].to(audio.dtype).expand(-1, c, -1)

    def reset(self) -> None:
        self.generator.manual_seed(self.seed)

    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state) -> None:
        self.generator.set_state(state["generator"])


@DDSP_PROCESSORS.register("ddsp.harmonic_plus_noise")
class HarmonicPlusNoise(DDSPProcessor):
    """DDSP's harmonic-plus-noise synthesizer: :class:`Harmonic` + :class:`FilteredNoise`, summed.

    Args:
        sample_rate: Hz.
        num_harmonics: Harmonics ``K`` of the harmonic part (default 32).
        num_bands: Noise bands (default 65).
        window_size: Noise FIR length (default ``2 (num_bands − 1)``).
        seed: Noise seed.

    Parameters: the harmonic table (``f0_hz``, ``amplitude``, ``harmonic_k``)
    followed by the noise table (``band{k}_db``); time-varying controls allowed.

    See Engel et al., DDSP, ICLR 2020, section 3 (harmonic plus noise model).
    """

    is_instrument = True
    time_varying = True

    def __init__(self, sample_rate: float = 44100.0, num_harmonics: int = 32, num_bands: int = 65,
                 window_size: int | None = None, seed: int = 0):
        super().__init__(sample_rate)
        self.harmonic = Harmonic(sample_rate, num_harmonics)
        self.noise = FilteredNoise(sample_rate, num_bands, window_size, seed=seed)
        self.param_table = ParamTable(self.harmonic.param_table.params + self.noise.param_table.params)

    def render(self, audio: torch.Tensor, values: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        self.check(audio, values)
        h = self.harmonic.num_params
        return self.harmonic.render(audio, values[..., :h]) + self.noise.render(audio, values[..., h:], noise)

    def reset(self) -> None:
        self.noise.reset()


# --------------------------------------------------------------------------- reverb
@DDSP_PROCESSORS.register("ddsp.reverb")
class Reverb(DDSPProcessor):
    """Reverb: convolution with exponentially decaying Gaussian noise, wet/dry mix.

    ``h[n] = g · ν[n] · 10^(−3 n / (decay_s · sample_rate))`` (the envelope
    falls 60 dB in ``decay_s``: the RT60), ``ν`` a fixed noise buffer drawn from
    ``seed`` and ``g`` normalizing ``h`` to unit energy; ``y = (1 − mix) x + mix (h ∗ x)``.

    Args:
        sample_rate: Hz.
        ir_seconds: Length of the impulse response, seconds (default 1.5); also
            the largest ``decay_s``.
        min_decay_seconds: Smallest ``decay_s`` (default 0.05 s).
        seed: Seed of the noise buffer.

    Parameters: ``decay_s`` (RT60, seconds, log scale, default 0.5 s), ``mix``
    (wet share, [0, 1], default 0.25). State: :meth:`render` returns the
    ``ir_seconds`` of ringing after the block (streamed by :class:`TailState`).

    See Engel et al., DDSP, ICLR 2020, section 3.4 (reverb as a long FIR);
    RT60: M. R. Schroeder, "New method of measuring reverberation time", JASA 1965.
    """

    def __init__(self, sample_rate: float = 44100.0, ir_seconds: float = 1.5, min_decay_seconds: float = 0.05,
                 seed: int = 0):
        super().__init__(sample_rate)
        if not 0 < min_decay_seconds < ir_seconds:
            raise ValueError(f"need 0 < min_decay_seconds < ir_seconds, got {min_decay_seconds} and {ir_seconds}")
        length = int(round(ir_seconds * self.sample_rate))
        noise = torch.randn(length, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
        self.register_buffer("noise", noise, persistent=False)
        self.param_table = ParamTable((
            Param("decay_s", float(min_decay_seconds), float(ir_seconds), min(max(0.5, min_decay_seconds), ir_seconds), "s", "log"),
            Param("mix", 0.0, 1.0, 0.25),
        ))

    def impulse_response(self, decay_s: torch.Tensor) -> torch.Tensor:
        """``decay_s (batch,)`` seconds → unit-energy wet impulse responses ``(batch, ir_samples)`` float64."""
        t = torch.arange(self.noise.shape[0], dtype=torch.float64, device=decay_s.device) / self.sample_rate
        h = self.noise.to(decay_s.device) * torch.exp(-LN1000 * t / decay_s.double()[:, None])
        return h / h.square().sum(-1, keepdim=True).sqrt()

    def render(self, audio: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        self.check(audio, values)
        h = self.impulse_response(values[:, 0])
        mix = values[:, 1].double()[:, None, None]
        wet = fft_convolve(audio.double(), h[:, None])
        dry = nn.functional.pad(audio.double(), (0, h.shape[-1] - 1))
        return ((1 - mix) * dry + mix * wet).to(audio.dtype)


# --------------------------------------------------------------------------- parametric EQ
BIQUAD_KINDS = ("peak", "low_shelf", "high_shelf")


def biquad_coefficients(kind: str, gain_db: torch.Tensor, freq_hz: torch.Tensor, q: torch.Tensor,
                        sample_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RBJ Audio EQ Cookbook biquads, differentiable in every argument.

    With ``A = 10^(gain_db / 40)``, ``w0 = 2π freq_hz / sample_rate``,
    ``α = sin(w0) / (2 Q)``: peaking EQ (gain at ``freq_hz``, bandwidth from
    Q), low shelf and high shelf (gain below / above ``freq_hz``; ``Q = 1/√2``
    is the steepest shelf without overshoot).

    Args:
        kind: ``"peak"``, ``"low_shelf"`` or ``"high_shelf"``.
        gain_db: ``(...)`` dB.
        freq_hz: ``(...)`` centre / corner frequency in Hz, in (0, Nyquist).
        q: ``(...)`` quality factor, > 0.
        sample_rate: Hz.

    Returns:
        ``(b, a)``, each ``(..., 3)``: ``b0, b1, b2`` and ``a0, a1, a2`` (not normalized by ``a0``).

    Raises:
        ValueError: unknown kind.

    See R. Bristow-Johnson, "Cookbook formulae for audio EQ biquad filter
    coefficients" (W3C Audio EQ Cookbook).
    """
    big_a = 10.0 ** (gain_db / 40.0)
    w0 = 2 * math.pi * freq_hz / sample_rate
    cos, alpha = torch.cos(w0), torch.sin(w0) / (2 * q)
    if kind == "peak":
        b = (1 + alpha * big_a, -2 * cos, 1 - alpha * big_a)
        a = (1 + alpha / big_a, -2 * cos, 1 - alpha / big_a)
    elif kind in ("low_shelf", "high_shelf"):
        # the high shelf is the low shelf with cos w0 → −cos w0 and b1, a1 negated
        s = 1.0 if kind == "low_shelf" else -1.0
        c = s * cos
        k = 2 * torch.sqrt(big_a) * alpha
        b = (big_a * ((big_a + 1) - (big_a - 1) * c + k), s * 2 * big_a * ((big_a - 1) - (big_a + 1) * c),
             big_a * ((big_a + 1) - (big_a - 1) * c - k))
        a = ((big_a + 1) + (big_a - 1) * c + k, -s * 2 * ((big_a - 1) + (big_a + 1) * c),
             (big_a + 1) + (big_a - 1) * c - k)
    else:
        raise ValueError(f"unknown biquad kind {kind!r}; known: {', '.join(BIQUAD_KINDS)}")
    return torch.stack(torch.broadcast_tensors(*b), -1), torch.stack(torch.broadcast_tensors(*a), -1)


def biquad_response(b: torch.Tensor, a: torch.Tensor, nfft: int) -> torch.Tensor:
    """Frequency response ``H(e^{jω}) = B(e^{−jω}) / A(e^{−jω})`` on the ``nfft // 2 + 1`` rFFT bins.

    Args:
        b, a: ``(..., 3)`` biquad coefficients.
        nfft: FFT size (≥ 3).

    Returns:
        ``(..., nfft // 2 + 1)`` complex (complex128 for float64 coefficients).
    """
    return cascade_response(b[..., None, :], a[..., None, :], nfft)


def cascade_response(b: torch.Tensor, a: torch.Tensor, nfft: int) -> torch.Tensor:
    """Response of biquads in cascade, ``Π_s B_s / A_s``, on the ``nfft // 2 + 1`` rFFT bins.

    Each section's numerator and denominator are evaluated at every bin as the
    rFFT of their three coefficients zero padded to ``nfft`` (exact, and much
    cheaper than elementwise trigonometry); the sections are then multiplied.
    Multiplying out the polynomials first would lose precision where several
    poles crowd near ``z = 1`` (low shelves and low peaks).

    Args:
        b, a: ``(..., sections, 3)`` coefficients.
        nfft: FFT size (≥ 3).

    Returns:
        ``(..., nfft // 2 + 1)`` complex.
    """
    return torch.fft.rfft(b, nfft).prod(-2) / torch.fft.rfft(a, nfft).prod(-2)


def pole_radius(a: np.ndarray) -> np.ndarray:
    """Largest pole radius of denominators ``a (..., 3)`` (``a0 z² + a1 z + a2``) → ``(...)``."""
    a = np.asarray(a, dtype=np.float64)
    a1, a2 = a[..., 1] / a[..., 0], a[..., 2] / a[..., 0]
    disc = a1 * a1 - 4 * a2
    root = np.sqrt(np.abs(disc))
    real = np.maximum(np.abs(-a1 + root), np.abs(-a1 - root)) / 2
    return np.where(disc < 0, np.sqrt(np.abs(a2)), real)


@DDSP_PROCESSORS.register("ddsp.peq")
class ParametricEQ(DDSPProcessor):
    """Parametric EQ: low shelf, ``num_peaks`` peaking bands and high shelf, RBJ biquads in cascade.

    Filtering is exact linear convolution done in the frequency domain: the
    cascade's response ``Π_b H_b`` is sampled on an rFFT grid of
    ``nfft ≥ samples + tail`` points and multiplied with the zero-padded
    input's spectrum. ``tail`` is where the slowest pole has decayed below
    ``1e−9`` (``ln 1e−9 / ln r``, from the largest pole radius ``r`` in the
    batch, with a margin; at most ``max_tail_seconds``), so the time-aliased
    part of the infinite impulse response is below that level. Equivalent to
    :func:`scipy.signal.sosfilt` of the same coefficients (tests: within
    ``1e−6`` of full scale). Cost: one rFFT/irFFT pair of size ``nfft`` per
    channel, and two rFFTs of size ``nfft`` per band for the response
    (:func:`cascade_response`).

    Args:
        sample_rate: Hz.
        num_peaks: Peaking bands (default 3; ≥ 0).
        shelves: Include the low and high shelves (default True).
        max_gain_db: Gains span ``[−max_gain_db, max_gain_db]`` dB (default 18).
        max_tail_seconds: Cap of the ringing kept per block, seconds (default 4).

    Parameters (per band, in this order: ``low_shelf``, ``peak1 … peakN``,
    ``high_shelf``): ``<band>_gain_db`` (dB, default 0), ``<band>_freq_hz``
    (Hz, log; low shelf [30, 1000] default 100, peaks [30, min(16000, 0.45 sr)]
    defaults spread 200 … 5000, high shelf [1000, min(16000, 0.45 sr)]
    default 6000), ``<band>_q`` (log; peaks [0.2, 5] default 1, shelves
    [0.3, 2] default 0.707). State: :meth:`render` returns the ringing after
    the block (streamed by :class:`TailState`).

    Raises:
        ValueError: no band, or a sample rate too low for the frequency ranges.

    See R. Bristow-Johnson, Audio EQ Cookbook; Engel et al., DDSP, ICLR 2020
    (frequency-domain filtering).
    """

    #: Level below which the truncated impulse response is neglected.
    TAIL_TOLERANCE = 1e-9

    def __init__(self, sample_rate: float = 44100.0, num_peaks: int = 3, shelves: bool = True,
                 max_gain_db: float = 18.0, max_tail_seconds: float = 4.0):
        super().__init__(sample_rate)
        top = min(16000.0, 0.45 * self.sample_rate)
        if top <= 1000.0:
            raise ValueError(f"sample_rate {sample_rate} Hz is too low for the EQ's frequency ranges (need > 2222 Hz)")
        peaks = [f"peak{i + 1}" for i in range(int(num_peaks))]
        self.bands: tuple[tuple[str, str], ...] = tuple(
            ([("low_shelf", "low_shelf")] if shelves else []) + [(p, "peak") for p in peaks]
            + ([("high_shelf", "high_shelf")] if shelves else []))
        if not self.bands:
            raise ValueError("the EQ needs at least one band: num_peaks ≥ 1 or shelves=True")
        g = float(max_gain_db)
        params = []
        for i, (name, kind) in enumerate(self.bands):
            if kind == "peak":
                j, n = peaks.index(name), len(peaks)
                f = 1000.0 if n == 1 else 200.0 * 25.0 ** (j / (n - 1))
                rng, q = (30.0, top, min(f, top)), (0.2, 5.0, 1.0)
            elif kind == "low_shelf":
                rng, q = (30.0, 1000.0, 100.0), (0.3, 2.0, 0.707)
            else:
                rng, q = (1000.0, top, min(6000.0, top)), (0.3, 2.0, 0.707)
            params += [Param(f"{name}_gain_db", -g, g, 0.0, "dB"), Param(f"{name}_freq_hz", *rng, "Hz", "log"),
                       Param(f"{name}_q", *q, "", "log")]
        self.param_table = ParamTable(tuple(params))
        self.max_tail_samples = int(round(max_tail_seconds * self.sample_rate))

    def coefficients(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``values (batch, num_params)`` in units → ``(b, a)``, each ``(batch, bands, 3)`` float64."""
        v = values.double().reshape(values.shape[0], len(self.bands), 3)
        bs, as_ = [], []
        for i, (_, kind) in enumerate(self.bands):
            b, a = biquad_coefficients(kind, v[:, i, 0], v[:, i, 1], v[:, i, 2], self.sample_rate)
            bs.append(b)
            as_.append(a)
        return torch.stack(bs, 1), torch.stack(as_, 1)

    def tail_samples(self, a: torch.Tensor) -> int:
        """Samples until the slowest pole of denominators ``a (..., 3)`` decays below :attr:`TAIL_TOLERANCE`.

        Raises:
            ValueError: an unstable filter (pole radius ≥ 1).
        """
        r = float(pole_radius(a.detach().cpu().numpy()).max())
        if not r < 1.0:
            raise ValueError(f"unstable biquad (pole radius {r}); check the EQ's frequency and Q ranges")
        if r <= 0.0:
            return 2
        n = int(math.ceil(1.25 * math.log(self.TAIL_TOLERANCE) / math.log(r))) + 64
        return min(n, self.max_tail_samples)

    def render(self, audio: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        self.check(audio, values)
        b, a = self.coefficients(values)
        n = audio.shape[-1]
        total = n + self.tail_samples(a)
        nfft = scipy.fft.next_fast_len(total, real=True)
        h = cascade_response(b, a, nfft)  # (B, bins)
        y = torch.fft.irfft(torch.fft.rfft(audio.double(), nfft) * h[:, None], nfft)[..., :total]
        return y.to(audio.dtype)


# --------------------------------------------------------------------------- host backends
class DDSPHost(Processor):
    """A DDSP processor rendered like a plugin (numpy block in, numpy block out) for in-process chains.

    State: the ringing of previous blocks (:class:`TailState`, one slot) and
    the processor's noise generator persist between :meth:`process` calls
    until :meth:`reset`. Latency 0; output length equals input length.

    Args:
        processor: The torch module (run without gradients, float32 in and out).
    """

    def __init__(self, processor: DDSPProcessor):
        super().__init__()
        self.processor = processor
        self.param_table = processor.param_table
        self.sample_rate = processor.sample_rate
        self.is_instrument = processor.is_instrument
        self._values = torch.from_numpy(self.param_table.defaults())
        self._tails = TailState(1)

    def set_values(self, values: np.ndarray) -> None:
        self._values = torch.as_tensor(np.asarray(values, dtype=np.float64))

    def _render(self, audio: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
            y = self._tails.apply(self.processor.render(x, self._values[None]), x.shape[-1])
        return y[0].numpy()

    def reset(self) -> None:
        self._tails.reset()
        self.processor.reset()


def _host_factory(spec: ProcessorSpec, sample_rate: float) -> Processor:
    return DDSPHost(build_ddsp(spec, sample_rate))


for _name in DDSP_PROCESSORS.names():
    register_backend(_name)(_host_factory)


__all__ = [
    "DDSPHost", "DDSPProcessor", "DDSP_PREFIX", "DDSP_PROCESSORS", "FilteredNoise", "Gain", "Harmonic",
    "HarmonicPlusNoise", "ParametricEQ", "Reverb", "TailState", "biquad_coefficients", "biquad_response",
    "build_ddsp", "cascade_response", "denormalize", "fft_convolve", "frequency_impulse_response", "is_differentiable",
    "pole_radius", "upsample",
]
