"""A context encoder predicting per-frame chain parameters: the model of every automation recipe.

DeepAFx (Ramírez et al., ICASSP 2021): the encoder sees a context window
centred on the current frame and predicts the normalized parameters with which
the chain renders that frame. At inference the per-frame parameters are
low-pass smoothed and applied in small blocks (:func:`predict_automation`,
:func:`render_automation`). Used by the mastering and amp-emulation recipes.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from deepafx.chain import ChainSpec
from deepafx.config import bind
from deepafx.encoders import build_encoder
from deepafx.workers import RenderPool, RenderRequest


@dataclass
class ModelConfig:
    """Encoder settings.

    Attributes:
        encoder: ``"mobilenetv2"`` or ``"inception"`` (see :mod:`deepafx.encoders`).
        context_seconds: Encoder context window centred on the frame, seconds.
        frame_seconds: Frame (hop) the chain renders per step, seconds.
        n_fft, hop_length, n_mels: Log-mel settings (samples, samples, bands).
        downmix: Average channels before the log-mel front end.
        encoder_kwargs: Extra arguments of the encoder class (width, hidden …).
        channels: Audio channels the chain processes (2: stereo mastering, 1: a mono
            instrument); ``deepafx process`` converts inputs to this count.
        level_relative: Optional level-relative gain (:class:`LevelRelative` as a mapping:
            ``{param, output_range_db, default_db}``): the encoder's output for that gain
            parameter is read as the *output level* it wants, and the gain is that level minus
            the context's measured level. ``None`` (default): every output is the parameter.
    """

    encoder: str = "mobilenetv2"
    context_seconds: float = 2.0
    frame_seconds: float = 0.5
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    downmix: bool = True
    encoder_kwargs: dict = field(default_factory=dict)
    channels: int = 2
    level_relative: dict | None = None


#: Gating of :func:`context_level_db`, as ITU-R BS.1770-4: 400 ms blocks with 75 % overlap,
#: an absolute gate at −70 LUFS and a relative gate 10 LU below the absolutely gated loudness.
LEVEL_BLOCK_SECONDS = 0.4
LEVEL_BLOCK_OVERLAP = 0.75
LEVEL_GATE_DB = -70.0
LEVEL_RELATIVE_GATE_DB = -10.0


@functools.lru_cache(maxsize=8)
def _k_weighting(sample_rate: float) -> np.ndarray:
    """BS.1770 K-weighting (high shelf +4 dB at 1.5 kHz, high-pass at 38 Hz) as pyloudnorm designs it,
    as second-order sections ``(2, 6)``."""
    import pyloudnorm

    stages = [pyloudnorm.IIRfilter(4.0, 1 / np.sqrt(2), 1500.0, sample_rate, "high_shelf"),
              pyloudnorm.IIRfilter(0.0, 0.5, 38.0, sample_rate, "high_pass")]
    return np.stack([np.concatenate([f.b, f.a]) for f in stages])


def context_level_db(context: torch.Tensor, sample_rate: float) -> torch.Tensor:
    """Integrated loudness of each context window, LUFS (ITU-R BS.1770-4; not differentiated).

    K-weighting (pyloudnorm's filter design), the channels' mean squares summed with weight 1,
    gated 400 ms blocks with 75 % overlap (absolute gate −70 LUFS, relative gate −10 LU), so the
    zeros that pad a context at a track's edges do not lower it. A window shorter than one block
    is one block; a window with no block above the absolute gate reads ``LEVEL_GATE_DB``.
    The same value as :func:`deepafx.metrics.lufs` (tested), computed for a whole batch with
    vectorized block sums: it runs on every training step, where pyloudnorm's per-block loop
    over one window at a time would cost more than the encoder.

    Args:
        context: ``(batch, channels, samples)``, full scale 1.0.
        sample_rate: Hz.

    Returns:
        ``(batch,)`` loudness in LUFS (float32, on ``context``'s device).
    """
    import scipy.signal

    x = scipy.signal.sosfilt(_k_weighting(float(sample_rate)), context.detach().to("cpu", torch.float64).numpy(), axis=-1)
    n = x.shape[-1]
    step, per_block = _level_steps(sample_rate)
    steps = max(n // step, per_block)
    if n < steps * step:  # shorter than one block: zero-pad to one block
        x = np.concatenate([x, np.zeros(x.shape[:-1] + (steps * step - n,))], axis=-1)
    e = (x[..., : steps * step] ** 2).reshape(x.shape[0], x.shape[1], steps, step).sum(-1).sum(1)  # (batch, steps)
    return torch.from_numpy(_gated_loudness(e, step, per_block)).to(context.device, torch.float32)


def _level_steps(sample_rate: float) -> tuple[int, int]:
    """``(step, per_block)``: the 100 ms hop of the 400 ms gating blocks in samples, and hops per block."""
    step = max(1, int(round(LEVEL_BLOCK_SECONDS * (1 - LEVEL_BLOCK_OVERLAP) * sample_rate)))
    return step, int(round(1 / (1 - LEVEL_BLOCK_OVERLAP)))


def _gated_loudness(e: np.ndarray, step: int, per_block: int) -> np.ndarray:
    """Gated loudness (LUFS) from ``(batch, steps)`` sums of K-weighted squares over ``step`` samples each
    (channels summed), blocks of ``per_block`` consecutive steps (:func:`_level_steps`, :func:`context_level_db`)."""
    steps = e.shape[1]
    z = sum(e[:, k : steps - per_block + 1 + k] for k in range(per_block)) / (per_block * step)  # (batch, blocks)
    with np.errstate(divide="ignore"):
        loud = -0.691 + 10 * np.log10(z)
    out = np.full(z.shape[0], LEVEL_GATE_DB)
    for i in range(z.shape[0]):
        keep = loud[i] > LEVEL_GATE_DB
        if not keep.any():
            continue
        rel = -0.691 + 10 * np.log10(z[i, keep].mean()) + LEVEL_RELATIVE_GATE_DB
        keep &= loud[i] > rel
        out[i] = -0.691 + 10 * np.log10(z[i, keep].mean())
    return out


def sliding_context_levels(padded: np.ndarray, sample_rate: float, hop: int, context: int, frames: int) -> np.ndarray:
    """:func:`context_level_db` of the windows ``padded[:, i·hop : i·hop + context]``, ``i < frames``, at once.

    A whole track's windows overlap (10 s of context every 0.5 s: each sample is in 20 windows), so
    K-weighting every window anew costs twenty times the track. Here the track is K-weighted once,
    in segments of ``hop`` samples that keep the filter state at every window start. A window's own
    K-weighted signal (from rest, as :func:`context_level_db` filters it) is the shared one minus the
    filter's zero-input response from that state; the response is subtracted over the window's first
    100 ms step, after which it has decayed below 1e-9 of its start (the 38 Hz high-pass, Q 0.5, has a
    4 ms time constant). The gating then reads the shared 100 ms energies. The values equal
    :func:`context_level_db` per window (tested to 1e-4 LU, the float32 precision of
    :func:`context_level_db`'s output).

    Args:
        padded: ``(channels, samples)`` float, at least ``(frames − 1)·hop + context`` samples.
        sample_rate: Hz.
        hop: Window hop, samples; a multiple of the 100 ms step.
        context: Window length, samples; a multiple of the 100 ms step and at least 400 ms.
        frames: Number of windows.

    Returns:
        ``(frames,)`` loudness in LUFS, float64.

    Raises:
        ValueError: ``hop`` or ``context`` not a multiple of the step, ``context`` shorter than a block, or
            ``padded`` too short.
    """
    import scipy.signal

    step, per_block = _level_steps(sample_rate)
    if hop % step or context % step or context < per_block * step:
        raise ValueError(f"hop {hop} and context {context} must be multiples of the {step}-sample loudness step "
                         f"and the context at least {per_block * step} samples")
    if padded.shape[-1] < (frames - 1) * hop + context:
        raise ValueError(f"padded has {padded.shape[-1]} samples, {frames} windows need {(frames - 1) * hop + context}")
    sos = _k_weighting(float(sample_rate))
    channels, total = padded.shape[0], (frames - 1) * hop + context
    zi = np.zeros((sos.shape[0], channels, 2))
    states = np.empty((frames,) + zi.shape)  # filter state at each window start
    heads = np.empty((frames, channels, step))  # the shared output over each window's first step
    energies = []
    for i in range(frames):
        states[i] = zi
        a, b = i * hop, (i + 1) * hop if i + 1 < frames else total
        y, zi = scipy.signal.sosfilt(sos, np.asarray(padded[:, a:b], dtype=np.float64), zi=zi, axis=-1)
        heads[i] = y[:, :step]
        energies.append((y ** 2).reshape(channels, (b - a) // step, step).sum(-1).sum(0))
    e_shared = np.concatenate(energies)  # (steps,)
    ws, hs = context // step, hop // step
    e = np.stack([e_shared[i * hs : i * hs + ws] for i in range(frames)])  # (frames, steps per window)
    # the first step of every window, filtered from rest: shared output minus the zero-input response
    zir = scipy.signal.sosfilt(sos, np.zeros((frames, channels, step)), zi=np.moveaxis(states, 0, 1), axis=-1)[0]
    e[:, 0] = ((heads - zir) ** 2).sum(-1).sum(-1)
    return _gated_loudness(e, step, per_block)


@dataclass
class LevelRelative:
    """The level-relative gain of :class:`ModelConfig` (``model.level_relative``).

    The encoder's sigmoid output ``s`` for parameter ``param`` (a linear gain in dB, such as
    ``gain.gain_db``) is read as an output level ``o = lo + s (hi − lo)`` dBFS, and the gain
    rendered is ``o − L``, ``L`` the context's level (:func:`context_level_db`), clipped to the
    parameter's range. A network that wants one output level for every input then needs no
    input-dependent weights: the level of the input, which its log-mel front end and batch
    normalization blur, is measured instead of inferred. Nothing about the targets is given:
    ``o`` is learned like every other output.

    Attributes:
        param: Learned chain parameter, linear scale, in dB.
        output_range_db: ``(lo, hi)`` output loudness the encoder spans, LUFS.
        default_db: Output level the encoder starts from (initial bias and pretraining target).

    Raises:
        ValueError: an unknown or non-linear parameter, ``lo >= hi`` or ``default_db`` outside.
    """

    param: str
    output_range_db: tuple[float, float] = (-40.0, 0.0)
    default_db: float = -20.0

    def __post_init__(self) -> None:
        lo, hi = (float(v) for v in self.output_range_db)
        if not lo < hi:
            raise ValueError(f"model.level_relative.output_range_db must be (lo, hi) with lo < hi, got {self.output_range_db}")
        if not lo <= float(self.default_db) <= hi:
            raise ValueError(f"model.level_relative.default_db {self.default_db} is outside output_range_db ({lo}, {hi})")
        self.output_range_db = (lo, hi)


#: Defaults on the edge of a range (a neutral compressor: threshold 0 dB, ratio 1)
#: are moved this far inside [0, 1] for pretraining, where the sigmoid still has slope.
DEFAULT_MARGIN = 0.02


def pretrain_target(default_params: np.ndarray) -> np.ndarray:
    """Normalized defaults clipped to ``[DEFAULT_MARGIN, 1 − DEFAULT_MARGIN]`` (stage-1 target)."""
    return np.clip(np.asarray(default_params, dtype=np.float64), DEFAULT_MARGIN, 1 - DEFAULT_MARGIN)


class AutomationModel(nn.Module):
    """Encoder + the chain it drives.

    Args:
        config: :class:`ModelConfig`.
        chain: The chain spec (its sample rate is the model's).
        num_params: Learned parameters of the chain ``P``.
        default_params: ``(P,)`` normalized defaults (output bias initialisation).
    """

    def __init__(self, config: ModelConfig, chain: ChainSpec, num_params: int, default_params: np.ndarray | None = None):
        super().__init__()
        self.config = config
        self.chain = chain
        self.sample_rate = float(chain.sample_rate)
        self.frame_samples = int(round(config.frame_seconds * self.sample_rate))
        self.context_samples = max(int(round(config.context_seconds * self.sample_rate)), self.frame_samples)
        self.encoder = build_encoder(
            config.encoder, num_params=num_params, sample_rate=self.sample_rate, n_fft=config.n_fft,
            hop_length=config.hop_length, n_mels=config.n_mels, downmix=config.downmix, **config.encoder_kwargs,
        )
        self.level_relative: LevelRelative | None = None
        if config.level_relative is not None:
            self.level_relative = bind(LevelRelative, config.level_relative, "model.level_relative")
            table = chain.param_table
            j = table.index(self.level_relative.param)
            p = table[j]
            if p.scale != "linear" or p.values is not None:
                raise ValueError(f"model.level_relative.param {p.name!r} must be a continuous linear gain in dB")
            self._relative = (j, float(p.min), float(p.max))
        if default_params is not None:
            start = np.array(default_params, dtype=np.float64)
            if self.level_relative is not None:
                lo, hi = self.level_relative.output_range_db
                start[self._relative[0]] = (self.level_relative.default_db - lo) / (hi - lo)
            self.encoder.init_output_bias(pretrain_target(start), eps=DEFAULT_MARGIN)
        self.num_params = int(num_params)
        self.channels = int(config.channels)

    @property
    def relative_index(self) -> int | None:
        """Position of the level-relative gain among the normalized parameters (``None`` without one)."""
        return None if self.level_relative is None else self._relative[0]

    def _relative_gain(self, out_db: torch.Tensor, level_db: torch.Tensor) -> torch.Tensor:
        """Normalized gain that brings inputs at ``level_db`` to ``out_db`` (clipped to the range)."""
        j, g_lo, g_hi = self._relative
        gain_db = out_db - level_db.to(out_db.device, out_db.dtype)
        return ((gain_db - g_lo) / (g_hi - g_lo)).clamp(0.0, 1.0)

    def with_level(self, outputs: torch.Tensor, level_db: torch.Tensor) -> torch.Tensor:
        """The encoder's ``outputs`` ``(batch, num_params)`` as chain parameters for inputs at ``level_db``
        ``(batch,)`` LUFS: the level-relative column (the wanted output loudness) becomes the gain that
        brings the input there; unchanged without a level-relative gain."""
        if self.level_relative is None:
            return outputs
        j = self._relative[0]
        lo, hi = self.level_relative.output_range_db
        gain = self._relative_gain(lo + outputs[:, j] * (hi - lo), level_db)
        return torch.cat([outputs[:, :j], gain[:, None], outputs[:, j + 1 :]], dim=1)

    def forward(self, context: torch.Tensor, level_db: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, channels, context_samples)`` → normalized params ``(batch, num_params)`` on [0, 1].

        ``level_db``: ``(batch,)`` the contexts' :func:`context_level_db`, when the caller has it already
        (:func:`predict_automation` computes a whole track's at once); measured here otherwise.
        """
        params = self.encoder(context)
        if self.level_relative is None:
            return params
        return self.with_level(params, context_level_db(context, self.sample_rate) if level_db is None else level_db)

    def pretrain_goal(self, context: torch.Tensor, defaults: torch.Tensor) -> torch.Tensor:
        """Stage-1 targets ``(batch, num_params)``: ``defaults`` (normalized, ``(num_params,)``), but for a
        level-relative gain the gain that brings each context to ``default_db``."""
        goal = defaults.to(context.device).expand(context.shape[0], -1)
        if self.level_relative is None:
            return goal
        j = self._relative[0]
        gain = self._relative_gain(torch.full((context.shape[0],), self.level_relative.default_db,
                                              device=context.device, dtype=goal.dtype),
                                   context_level_db(context, self.sample_rate))
        return torch.cat([goal[:, :j], gain[:, None].to(goal.dtype), goal[:, j + 1 :]], dim=1)


def model_from_checkpoint(ckpt: Mapping[str, Any]) -> AutomationModel:
    """Rebuild a :class:`AutomationModel` from a checkpoint dict (see :mod:`deepafx.automation.task`)."""
    cfg = bind(ModelConfig, ckpt["config"].get("model"), "model")
    chain = ChainSpec.from_dict(ckpt["chain"])
    model = AutomationModel(cfg, chain, int(ckpt["num_params"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model


@torch.no_grad()
def predict_automation(model: AutomationModel, audio: np.ndarray, batch_size: int = 16,
                       smoothing_frames: int = 3, static: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame normalized parameters for a whole track.

    Args:
        model: Trained model (eval mode).
        audio: ``(channels, samples)`` float32 at ``model.sample_rate``.
        batch_size: Context windows per encoder call.
        smoothing_frames: Centred moving-average length over frames (1 = none);
            DeepAFx low-pass smooths the parameter curves before rendering.
        static: One parameter set for the whole track instead of automation: the mean over
            the frames of the encoder's outputs (normalized, so the mean of a dB parameter is in
            dB); a level-relative gain is then the gain that brings the whole track's integrated
            loudness to the mean wanted output loudness (not the mean of the frames' gains, which
            follow each context's level). ``smoothing_frames`` is moot.

    Returns:
        ``(times_s (frames,), params (frames, num_params))``: frame-centre times
        in seconds and smoothed normalized parameters on [0, 1].
    """
    c, n = audio.shape
    hop, ctx = model.frame_samples, model.context_samples
    before = (ctx - hop) // 2
    frames = max(1, int(np.ceil(n / hop)))
    padded = np.zeros((c, frames * hop + ctx), dtype=np.float32)
    padded[:, before : before + n] = audio
    device = next(model.parameters()).device
    levels = None
    if model.level_relative is not None and not static:
        step, per_block = _level_steps(model.sample_rate)
        if hop % step == 0 and ctx % step == 0 and ctx >= per_block * step:  # else each batch measures its own
            levels = torch.from_numpy(sliding_context_levels(padded, model.sample_rate, hop, ctx, frames))
    out = []
    for start in range(0, frames, batch_size):
        idx = range(start, min(frames, start + batch_size))
        batch = torch.from_numpy(np.stack([padded[:, i * hop : i * hop + ctx] for i in idx])).to(device)
        if static:  # the encoder's outputs; the gain is set from the whole track below
            out.append(model.encoder(batch).cpu().numpy())
            continue
        level = None if levels is None else levels[start : start + len(idx)]
        out.append(model(batch, level).cpu().numpy())
    params = np.concatenate(out).astype(np.float64)
    if static:
        mean = torch.from_numpy(params.mean(axis=0, keepdims=True))
        if model.level_relative is not None:
            mean = model.with_level(mean, context_level_db(torch.from_numpy(audio[None]), model.sample_rate).double())
        params = np.repeat(mean.numpy(), frames, axis=0)
    elif smoothing_frames > 1 and frames > 1:
        k = np.ones(smoothing_frames) / smoothing_frames
        pad = smoothing_frames // 2
        ext = np.pad(params, ((pad, smoothing_frames - 1 - pad), (0, 0)), mode="edge")
        params = np.stack([np.convolve(ext[:, j], k, mode="valid") for j in range(params.shape[1])], 1)
    times = (np.arange(frames) * hop + hop / 2) / model.sample_rate
    return times, np.clip(params, 0.0, 1.0)


def render_automation(chain: ChainSpec, audio: np.ndarray, times_s: np.ndarray, params: np.ndarray,
                      block_samples: int = 1024, timeout_seconds: float = 120.0) -> np.ndarray:
    """Render a track through ``chain`` with parameters interpolated per block.

    The chain runs in one render worker (crash isolation), one instance,
    state carried across blocks; block ``b`` uses the parameters linearly
    interpolated at its centre time.

    Args:
        chain: Chain spec.
        audio: ``(channels, samples)`` float32 at ``chain.sample_rate`` Hz.
        times_s: ``(frames,)`` times in seconds of the rows of ``params``.
        params: ``(frames, num_params)`` normalized on [0, 1].
        block_samples: Render block length in samples.

    Returns:
        ``(channels_out, samples)`` float32.
    """
    n = audio.shape[-1]
    outs = []
    with RenderPool(chain, num_slots=1, instances_per_slot=1, num_workers=1, timeout_seconds=timeout_seconds) as pool:
        blocks = range(0, n, block_samples)
        # Batch several blocks per request would break per-block parameters; one request per block.
        for start in blocks:
            stop = min(n, start + block_samples)
            t = (start + stop) / 2 / chain.sample_rate
            p = np.array([np.interp(t, times_s, params[:, j]) for j in range(params.shape[1])])
            outs.append(pool.render([RenderRequest(0, audio[:, start:stop], p[None])])[0][0])
    return np.concatenate(outs, axis=-1)
