"""A context encoder predicting per-frame chain parameters: the model of every automation recipe.

DeepAFx (Ramírez et al., ICASSP 2021): the encoder sees a context window
centred on the current frame and predicts the normalized parameters with which
the chain renders that frame. At inference the per-frame parameters are
low-pass smoothed and applied in small blocks (:func:`predict_automation`,
:func:`render_automation`). Used by the mastering and amp-emulation recipes.
"""
from __future__ import annotations

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
        if default_params is not None:
            self.encoder.init_output_bias(pretrain_target(default_params), eps=DEFAULT_MARGIN)
        self.num_params = int(num_params)
        self.channels = int(config.channels)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        """``(batch, channels, context_samples)`` → normalized params ``(batch, num_params)`` on [0, 1]."""
        return self.encoder(context)


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
                       smoothing_frames: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame normalized parameters for a whole track.

    Args:
        model: Trained model (eval mode).
        audio: ``(channels, samples)`` float32 at ``model.sample_rate``.
        batch_size: Context windows per encoder call.
        smoothing_frames: Centred moving-average length over frames (1 = none);
            DeepAFx low-pass smooths the parameter curves before rendering.

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
    out = []
    for start in range(0, frames, batch_size):
        idx = range(start, min(frames, start + batch_size))
        batch = np.stack([padded[:, i * hop : i * hop + ctx] for i in idx])
        out.append(model(torch.from_numpy(batch).to(device)).cpu().numpy())
    params = np.concatenate(out).astype(np.float64)
    if smoothing_frames > 1 and frames > 1:
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
