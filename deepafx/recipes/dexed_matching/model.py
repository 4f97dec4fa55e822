"""The Dexed preset estimator: :class:`~deepafx.encoders.DiffSynthEstimator` with NumCat++ heads.

Mel spectrogram → per-frame 1D CNN → GRU → a sigmoid head for the numerical
parameters and one softmax head per discrete parameter with at most 32 values
(NumCat++, Le Vaillant et al., DAFx 2021 — the algorithm included). The
transpose is not estimated: it carries the target's pitch (``pitch − 60``
semitones, the note Dexed plays being MIDI 60), which is given.

Parameter loss (P-loss, DiffSynth, Masuda & Saito, ISMIR 2021): L1 on the
numerical parameters plus the mean cross-entropy of the discrete heads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from deepafx.encoders import DiffSynthEstimator, EstimatorOutput, ParamLayout, outputs_to_normalized
from deepafx.hosts.dexed_host import dexed_param_table

#: Discrete parameters with at most this many values are categorical (NumCat++).
MAX_CATEGORIES = 32

@dataclass
class ModelConfig:
    """The ``model:`` section: settings of :class:`~deepafx.encoders.DiffSynthEstimator`.

    Args:
        n_mels: Mel bands of the log-mel front end.
        n_fft: FFT size, samples.
        hop_length: Hop between frames, samples.
        conv_channels: Channels of the per-frame 1D CNN layers.
        pooled_bins: Frequency bins left after pooling.
        frame_dim: Per-frame feature size fed to the GRU.
        gru_hidden: GRU hidden size.
        gru_layers: GRU layers.
    """

    n_mels: int = 128
    n_fft: int = 1024
    hop_length: int = 256
    conv_channels: list[int] = field(default_factory=lambda: [32, 64, 64, 128])
    pooled_bins: int = 8
    frame_dim: int = 256
    gru_hidden: int = 256
    gru_layers: int = 1


#: Estimator settings a config may set (``model:`` section), with defaults.
MODEL_DEFAULTS: dict[str, Any] = asdict(ModelConfig())


class DexedEstimator(nn.Module):
    """Audio ``(batch, notes, samples)`` → Dexed preset heads.

    Args:
        in_channels: Notes per preset (1, or 6 for the multi-note input).
        sample_rate: Audio rate in Hz.
        **model: Settings of :class:`~deepafx.encoders.DiffSynthEstimator`
            (see :data:`MODEL_DEFAULTS`).

    Raises:
        ValueError: unknown model setting.
    """

    def __init__(self, in_channels: int = 1, sample_rate: float = 16000.0, **model: Any) -> None:
        super().__init__()
        unknown = set(model) - set(MODEL_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown model settings {sorted(unknown)}; known: {sorted(MODEL_DEFAULTS)}")
        self.settings = {**MODEL_DEFAULTS, **model}
        self.in_channels = int(in_channels)
        self.sample_rate = float(sample_rate)
        table = dexed_param_table()
        self.layout = ParamLayout.from_table(table, MAX_CATEGORIES)
        self.transpose_index = table.index("transpose_semitones")
        numeric = list(self.layout.numeric_indices)
        #: Columns of the numeric head trained by the P-loss (all but the transpose).
        self.register_buffer(
            "numeric_loss_mask", torch.tensor([i != self.transpose_index for i in numeric], dtype=torch.bool), persistent=False
        )
        s = self.settings
        self.net = DiffSynthEstimator.from_layout(
            self.layout,
            sample_rate=self.sample_rate,
            in_channels=self.in_channels,
            n_fft=int(s["n_fft"]),
            hop_length=int(s["hop_length"]),
            n_mels=int(s["n_mels"]),
            conv_channels=tuple(int(c) for c in s["conv_channels"]),
            pooled_bins=int(s["pooled_bins"]),
            frame_dim=int(s["frame_dim"]),
            gru_hidden=int(s["gru_hidden"]),
            gru_layers=int(s["gru_layers"]),
        )

    def forward(self, audio: torch.Tensor) -> EstimatorOutput:
        """Heads for ``audio`` ``(batch, notes, samples)`` (see :class:`EstimatorOutput`)."""
        return self.net(audio)

    def to_normalized(self, out: EstimatorOutput, pitch: torch.Tensor) -> torch.Tensor:
        """Normalized presets ``(batch, 145)``: numeric heads (differentiable), argmax of the
        discrete heads (no gradient) and the transpose set from ``pitch`` ``(batch,)`` (MIDI)."""
        x = outputs_to_normalized(out, self.layout, mode="hard")
        t = (pitch.to(x.dtype) - 60.0).clamp(-24, 24)
        x = x.clone()
        x[:, self.transpose_index] = (t + 24.0) / 48.0
        return x

    def discrete_classes(self, out: EstimatorOutput) -> torch.Tensor:
        """Argmax class of every discrete head, ``(batch, num_discrete)`` long."""
        if not out.discrete_logits:
            return torch.zeros(out.numeric.shape[0], 0, dtype=torch.long)
        return torch.stack([lg.argmax(1) for lg in out.discrete_logits], dim=1)

    def p_loss(self, out: EstimatorOutput, x_true: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Parameter loss: L1 (numeric, transpose excluded) + mean cross-entropy (discrete).

        Args:
            out: Heads.
            x_true: True normalized presets ``(batch, 145)``.

        Returns:
            ``(loss, {"l1": ..., "ce": ...})``.
        """
        numeric, classes = self.layout.split_targets(x_true)
        m = self.numeric_loss_mask
        l1 = (out.numeric[:, m] - numeric[:, m]).abs().mean()
        ce = self.discrete_ce(out, torch.stack(classes, 1))
        return l1 + ce, {"l1": float(l1.detach()), "ce": float(ce.detach())}

    def discrete_ce(self, out: EstimatorOutput, classes: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the discrete heads against ``classes`` ``(batch, num_discrete)``."""
        if not out.discrete_logits:
            return out.numeric.new_zeros(())
        return torch.stack([F.cross_entropy(lg, classes[:, k]) for k, lg in enumerate(out.discrete_logits)]).mean()

    def describe(self) -> dict[str, Any]:
        """Settings needed to rebuild this estimator (stored in checkpoints)."""
        return {"in_channels": self.in_channels, "sample_rate": self.sample_rate, **self.settings}

    @classmethod
    def from_description(cls, d: Mapping[str, Any]) -> "DexedEstimator":
        d = dict(d)
        return cls(d.pop("in_channels"), d.pop("sample_rate"), **d)


@torch.no_grad()
def predict(model: DexedEstimator, audio: np.ndarray, pitch: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Estimated normalized presets ``(M, 145)`` for audio ``(M, notes, samples)`` and pitches ``(M,)``."""
    was = model.training
    model.eval()
    outs = []
    try:
        for i in range(0, len(audio), batch_size):
            a = torch.from_numpy(np.ascontiguousarray(audio[i : i + batch_size], dtype=np.float32))
            p = torch.as_tensor(np.asarray(pitch[i : i + batch_size]), dtype=torch.float32)
            outs.append(model.to_normalized(model(a), p).double().numpy())
    finally:
        model.train(was)
    return np.concatenate(outs) if outs else np.zeros((0, len(dexed_param_table())))


__all__ = ["DexedEstimator", "MAX_CATEGORIES", "MODEL_DEFAULTS", "predict"]
