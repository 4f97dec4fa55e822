"""Encoders: audio ``(batch, channels, samples)`` → normalized plugin parameters.

Two families:

* **Context encoders** (DeepAFx; Ramírez, Wang, Smaragdis, Bryan, ICASSP 2021):
  a log-mel spectrogram of a context window → a 2D CNN (:class:`InceptionEncoder`
  or :class:`MobileNetV2Encoder`) → global pooling → dense layers → ``num_params``
  sigmoid units, i.e. the normalized parameters ``(batch, num_params)`` on
  ``[0, 1]`` of the whole Fx chain. See `Ramírez et al., 2021
  <https://arxiv.org/abs/2010.04237>`_, `Szegedy et al., 2015 (Inception)
  <https://arxiv.org/abs/1409.4842>`_ and `Sandler et al., 2018 (MobileNetV2)
  <https://arxiv.org/abs/1801.04381>`_.
* **Synthesizer estimator** (:class:`DiffSynthEstimator`; Masuda & Saito, ISMIR
  2021, `arXiv:2107.05050 <https://arxiv.org/abs/2107.05050>`_): log-mel of one
  or several notes (one note per channel, as in the multi-note input of
  Le Vaillant et al., DAFx 2021, `arXiv:2106.14856
  <https://arxiv.org/abs/2106.14856>`_) → per-frame 1D CNN → GRU over frames →
  heads for numerical parameters (sigmoid) and discrete parameters (logits, one
  categorical output per discrete parameter, the "NumCat++" representation).
  :class:`ParamLayout` and :func:`outputs_to_normalized` turn those heads back
  into one normalized parameter vector.

All encoders are registered by name in :data:`ENCODERS`; :func:`build_encoder`
builds one from a name and keyword arguments (e.g. from a recipe config).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from deepafx.features import LogMel
from deepafx.registry import Registry

__all__ = [
    "ContextEncoder",
    "InceptionEncoder",
    "MobileNetV2Encoder",
    "DiffSynthEstimator",
    "EstimatorOutput",
    "ParamLayout",
    "outputs_to_normalized",
    "ENCODERS",
    "build_encoder",
    "count_parameters",
]


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) scalar weights in ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _check_audio(audio: torch.Tensor, in_channels: int | None, who: str) -> None:
    if not isinstance(audio, torch.Tensor) or audio.dim() != 3:
        shape = tuple(audio.shape) if isinstance(audio, torch.Tensor) else type(audio).__name__
        raise ValueError(f"{who} expects audio of shape (batch, channels, samples), got {shape}")
    if in_channels is not None and audio.shape[1] != in_channels:
        raise ValueError(
            f"{who} was built for {in_channels} input channel(s) but got {audio.shape[1]}; "
            f"build it with in_channels={audio.shape[1]} (or downmix=True for any channel count)"
        )


#: Number of level features :class:`ContextEncoder` adds to its head with ``level_features=True``.
NUM_LEVEL_FEATURES = 3
#: Their scale: the range-normalized log-mel (0 at the floor, 1 at 0 dB) times this, so 1 dB of level
#: moves a feature by about 0.08 with the default −120 dB floor.
LEVEL_FEATURE_SCALE = 10.0


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


# --------------------------------------------------------------------------- context encoders


class ContextEncoder(nn.Module):
    """Base class: log-mel front end → 2D CNN backbone → pooled dense head → sigmoid.

    Subclasses build ``self.backbone`` (a module mapping ``(batch, in_channels,
    n_mels, frames)`` to ``(batch, backbone_channels, h, w)``) and call
    :meth:`_build_head`. Global pooling concatenates the average and the maximum
    over time and frequency.

    Args:
        num_params: Number of normalized parameters ``P`` to predict (>= 1).
        sample_rate: Audio sample rate in Hz. Default 22,050 Hz (DeepAFx).
        in_channels: Audio channels the encoder accepts (ignored with
            ``downmix=True``, which averages any number of channels to one).
        n_fft: Log-mel FFT size in samples. Default 1024.
        hop_length: Log-mel hop in samples. Default 256.
        n_mels: Mel bands. Default 128.
        floor_db: Log-mel floor in dB. Default −120 dB.
        downmix: Average channels to mono before the spectrogram. Default False.
        hidden: Width of the hidden dense layer. Default 256.
        dropout: Dropout probability before the output layer, on [0, 1).
        level_features: Also feed the head the context's absolute level: the mean and the
            maximum of the range-normalized log-mel over bands and frames, and the loudest
            frame's mean over bands (3 numbers, times :data:`LEVEL_FEATURE_SCALE`).
            The CNN's batch normalization and pooling keep only part of the level; a mastering
            gain decision needs it whole. Default False (checkpoints without it load unchanged).

    Subclasses also take ``default_params``: optional ``(num_params,)``
    normalized defaults on [0, 1]; when given, :meth:`init_output_bias` is
    applied at construction so the initial output is close to them.

    Raises:
        ValueError: on an invalid argument; the message names it.
    """

    def __init__(
        self,
        num_params: int,
        sample_rate: float = 22050.0,
        in_channels: int = 1,
        n_fft: int = 1024,
        hop_length: int = 256,
        n_mels: int = 128,
        floor_db: float = -120.0,
        downmix: bool = False,
        hidden: int = 256,
        dropout: float = 0.0,
        level_features: bool = False,
    ) -> None:
        super().__init__()
        self.level_features = bool(level_features)
        if int(num_params) < 1:
            raise ValueError(f"num_params must be >= 1, got {num_params}")
        if int(in_channels) < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if int(hidden) < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be on [0, 1), got {dropout}")
        self.num_params = int(num_params)
        self.sample_rate = float(sample_rate)
        self.in_channels = 1 if downmix else int(in_channels)
        self._accept_channels = None if downmix else int(in_channels)
        self.hidden = int(hidden)
        self.dropout_p = float(dropout)
        self.features = LogMel(
            sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            n_mels=n_mels,
            floor_db=floor_db,
            normalize="range",
            downmix=downmix,
        )

    def _build_head(self, backbone_channels: int, default_params: Sequence[float] | None) -> None:
        extra = NUM_LEVEL_FEATURES if self.level_features else 0
        self.head = nn.Sequential(
            nn.Linear(2 * backbone_channels + extra, self.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(self.dropout_p),
        )
        self.out = nn.Linear(self.hidden, self.num_params)
        if default_params is not None:
            self.init_output_bias(default_params)

    def logits(self, audio: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid outputs ``(batch, num_params)``.

        Args:
            audio: ``(batch, channels, samples)``.

        Raises:
            ValueError: wrong rank or channel count.
        """
        _check_audio(audio, self._accept_channels, type(self).__name__)
        f = self.features(audio)
        z = self.backbone(f)
        parts = [z.mean(dim=(2, 3)), z.amax(dim=(2, 3))]
        if self.level_features:
            frame_level = f.mean(dim=(1, 2))  # (batch, frames)
            parts.append(LEVEL_FEATURE_SCALE * torch.stack(
                [f.mean(dim=(1, 2, 3)), f.amax(dim=(1, 2, 3)), frame_level.amax(dim=1)], dim=1))
        return self.out(self.head(torch.cat(parts, dim=1)))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Normalized parameters.

        Args:
            audio: ``(batch, channels, samples)`` context windows (DeepAFx uses
                40,960 samples at 22,050 Hz, about 1.86 s).

        Returns:
            ``(batch, num_params)`` on [0, 1].

        Raises:
            ValueError: wrong rank or channel count.
        """
        return torch.sigmoid(self.logits(audio))

    @torch.no_grad()
    def init_output_bias(
        self, default_params: Sequence[float] | np.ndarray | torch.Tensor, weight_scale: float = 0.01, eps: float = 1e-3
    ) -> None:
        """Make the initial output (approximately) equal ``default_params``.

        Sets the output bias to ``logit(clip(default_params, eps, 1 - eps))`` and
        multiplies the output weights by ``weight_scale``; with
        ``weight_scale=0`` the output equals the clipped defaults exactly for
        every input, but then no gradient reaches the earlier layers until the
        output weights have moved away from zero. Useful before pretraining
        toward the plugins' defaults (DeepAFx).

        Args:
            default_params: ``(num_params,)`` normalized values on [0, 1].
            weight_scale: Factor on the output weights, on [0, 1]. Default 0.01.
            eps: Defaults are clipped to ``[eps, 1 - eps]`` (a logit of ±inf is
                impossible and a saturated sigmoid barely learns). Default 1e-3.

        Raises:
            ValueError: wrong length, values outside [0, 1] or bad ``weight_scale``/``eps``.
        """
        d = np.asarray(
            default_params.detach().cpu().numpy() if isinstance(default_params, torch.Tensor) else default_params,
            dtype=np.float64,
        ).reshape(-1)
        if d.shape != (self.num_params,):
            raise ValueError(f"default_params needs {self.num_params} values, got shape {d.shape}")
        if not np.all(np.isfinite(d)) or d.min() < 0 or d.max() > 1:
            raise ValueError(f"default_params must be normalized values on [0, 1], got range [{d.min()}, {d.max()}]")
        if not 0.0 <= weight_scale <= 1.0:
            raise ValueError(f"weight_scale must be on [0, 1], got {weight_scale}")
        if not 0.0 < eps < 0.5:
            raise ValueError(f"eps must be on (0, 0.5), got {eps}")
        bias = _logit(np.clip(d, eps, 1.0 - eps))
        self.out.bias.copy_(torch.as_tensor(bias, dtype=self.out.bias.dtype))
        self.out.weight.mul_(weight_scale)


def _conv_bn_relu(cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, groups: int = 1, relu6: bool = False) -> nn.Sequential:
    k = (kernel, kernel) if isinstance(kernel, int) else kernel
    pad = (k[0] // 2, k[1] // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=pad, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True) if relu6 else nn.ReLU(inplace=True),
    )


class _InceptionBlock(nn.Module):
    """Four parallel branches concatenated: 1x1; 1x1→3x3; 1x1→3x3→3x3 (a factorized
    5x5, Szegedy et al., 2016); 3x3 max-pool→1x1. Output channels ``cout`` split
    about 1/4, 3/8, 1/4, 1/8."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        b1 = cout // 4
        b3 = (3 * cout) // 8
        b5 = cout // 4
        bp = cout - b1 - b3 - b5
        r3 = max(b3 // 2, 8)
        r5 = max(b5 // 2, 8)
        self.branch1 = _conv_bn_relu(cin, b1, 1)
        self.branch3 = nn.Sequential(_conv_bn_relu(cin, r3, 1), _conv_bn_relu(r3, b3, 3))
        self.branch5 = nn.Sequential(_conv_bn_relu(cin, r5, 1), _conv_bn_relu(r5, b5, 3), _conv_bn_relu(b5, b5, 3))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), _conv_bn_relu(cin, bp, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)


class InceptionEncoder(ContextEncoder):
    """Inception-style 2D CNN on log-mel → ``num_params`` sigmoid outputs (DeepAFx).

    Architecture: stem (3x3 conv, stride 2; 3x3 conv; 2x2 max-pool) → for each
    entry of ``widths`` an Inception block (:class:`_InceptionBlock`) followed by
    a 2x2 max-pool (except after the last) → global average+max pooling →
    dense ``hidden`` (ReLU, dropout) → dense ``num_params`` → sigmoid. See
    `Ramírez et al., 2021 <https://arxiv.org/abs/2010.04237>`_ and
    `Szegedy et al., 2015 <https://arxiv.org/abs/1409.4842>`_.

    The default (``stem_channels=32``, ``widths=(64, 128, 256, 384)``,
    ``hidden=256``) has about 0.66 M weights for 10 outputs.

    Args:
        num_params: Number of normalized parameters ``P`` (>= 1).
        stem_channels: Channels of the stem convolutions. Default 32.
        widths: Output channels of the Inception blocks (depth = length).
        default_params: Optional ``(num_params,)`` normalized defaults; see
            :meth:`ContextEncoder.init_output_bias`.
        **kwargs: Front-end and head options of :class:`ContextEncoder`
            (``sample_rate``, ``in_channels``, ``n_fft``, ``hop_length``,
            ``n_mels``, ``floor_db``, ``downmix``, ``hidden``, ``dropout``).

    Shapes:
        audio ``(batch, in_channels, samples)`` → ``(batch, num_params)`` on [0, 1].

    Raises:
        ValueError: on an invalid argument.
    """

    def __init__(
        self,
        num_params: int,
        stem_channels: int = 32,
        widths: Sequence[int] = (64, 128, 256, 384),
        default_params: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_params, **kwargs)
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 8 or int(stem_channels) < 1:
            raise ValueError(f"widths must be a non-empty list of channel counts >= 8 and stem_channels >= 1, got {widths}, {stem_channels}")
        layers: list[nn.Module] = [
            _conv_bn_relu(self.in_channels, stem_channels, 3, stride=2),
            _conv_bn_relu(stem_channels, stem_channels, 3),
            nn.MaxPool2d(2, ceil_mode=True),
        ]
        cin = stem_channels
        for i, w in enumerate(widths):
            layers.append(_InceptionBlock(cin, w))
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            cin = w
        self.backbone = nn.Sequential(*layers)
        self._build_head(cin, default_params)


class _InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion (ReLU6) → 3x3 depthwise (ReLU6) → linear 1x1
    projection, with a residual connection when shapes match (Sandler et al., 2018)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_relu(cin, mid, 1, relu6=True))
        layers += [
            _conv_bn_relu(mid, mid, 3, stride=stride, groups=mid, relu6=True),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


def _make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


#: Default MobileNetV2 stages ``(expansion t, channels c, repeats n, first stride s)``;
#: the ImageNet table of Sandler et al. (2018) shortened for log-mel inputs.
MOBILENETV2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 3, 2),
    (6, 96, 2, 1),
    (6, 160, 2, 2),
)


class MobileNetV2Encoder(ContextEncoder):
    """MobileNetV2-style 2D CNN on log-mel → ``num_params`` sigmoid outputs (DeepAFx).

    Architecture: 3x3 conv stem (stride 2, ReLU6) → inverted-residual stages
    ``stages`` (each ``(t, c, n, s)``: expansion, channels, repeats, stride of
    the first repeat), channels scaled by ``width_mult`` → 1x1 conv to
    ``last_channels`` → global average+max pooling → dense ``hidden`` → dense
    ``num_params`` → sigmoid. See `Sandler et al., 2018
    <https://arxiv.org/abs/1801.04381>`_ and `Ramírez et al., 2021
    <https://arxiv.org/abs/2010.04237>`_.

    The default (:data:`MOBILENETV2_STAGES`, ``width_mult=1``,
    ``last_channels=512``, ``hidden=256``) has about 1.19 M weights for 10 outputs.

    Args:
        num_params: Number of normalized parameters ``P`` (>= 1).
        width_mult: Channel multiplier (> 0). Default 1.
        stages: Stage table ``((t, c, n, s), ...)``.
        last_channels: Channels of the final 1x1 convolution. Default 512.
        default_params: Optional ``(num_params,)`` normalized defaults; see
            :meth:`ContextEncoder.init_output_bias`.
        **kwargs: Front-end and head options of :class:`ContextEncoder`.

    Shapes:
        audio ``(batch, in_channels, samples)`` → ``(batch, num_params)`` on [0, 1].

    Raises:
        ValueError: on an invalid argument.
    """

    def __init__(
        self,
        num_params: int,
        width_mult: float = 1.0,
        stages: Sequence[Sequence[int]] = MOBILENETV2_STAGES,
        last_channels: int = 512,
        default_params: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_params, **kwargs)
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        stages = [tuple(int(v) for v in s) for s in stages]
        if not stages or any(len(s) != 4 or min(s) < 1 for s in stages):
            raise ValueError(f"stages must be a non-empty list of (t, c, n, s) with positive entries, got {stages}")
        stem = _make_divisible(32 * width_mult)
        layers: list[nn.Module] = [_conv_bn_relu(self.in_channels, stem, 3, stride=2, relu6=True)]
        cin = stem
        for t, c, n, s in stages:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(_InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = _make_divisible(last_channels * max(1.0, width_mult))
        layers.append(_conv_bn_relu(cin, last, 1, relu6=True))
        self.backbone = nn.Sequential(*layers)
        self._build_head(last, default_params)


# --------------------------------------------------------------------------- synthesizer estimator


@dataclass(frozen=True)
class ParamLayout:
    """Where numerical and discrete parameters sit in a normalized vector.

    A discrete parameter with ``n`` values is predicted as ``n`` logits; class
    ``k`` means the normalized value ``k / (n - 1)`` (0 when ``n == 1``), the
    convention of :meth:`deepafx.params.Param.from_normalized`.

    Args:
        num_params: Length ``P`` of the normalized vector.
        numeric_indices: Positions predicted as numbers on [0, 1], in head order.
        discrete_indices: Positions predicted as categories, in head order.
        discrete_counts: Number of values of each discrete parameter (>= 1),
            aligned with ``discrete_indices``.

    Raises:
        ValueError: if the indices do not cover ``range(num_params)`` exactly once,
            or the counts do not match.
    """

    num_params: int
    numeric_indices: tuple[int, ...]
    discrete_indices: tuple[int, ...] = ()
    discrete_counts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "numeric_indices", tuple(int(i) for i in self.numeric_indices))
        object.__setattr__(self, "discrete_indices", tuple(int(i) for i in self.discrete_indices))
        object.__setattr__(self, "discrete_counts", tuple(int(n) for n in self.discrete_counts))
        if len(self.discrete_indices) != len(self.discrete_counts):
            raise ValueError(
                f"discrete_indices ({len(self.discrete_indices)}) and discrete_counts "
                f"({len(self.discrete_counts)}) must have the same length"
            )
        if any(n < 1 for n in self.discrete_counts):
            raise ValueError(f"every discrete count must be >= 1, got {self.discrete_counts}")
        allidx = sorted(self.numeric_indices + self.discrete_indices)
        if allidx != list(range(self.num_params)):
            raise ValueError(
                f"numeric_indices and discrete_indices must together cover 0..{self.num_params - 1} "
                "exactly once"
            )

    @classmethod
    def from_counts(cls, counts: Sequence[int | None]) -> "ParamLayout":
        """From one entry per parameter: ``None`` (numeric) or its number of discrete values."""
        num = [i for i, n in enumerate(counts) if n is None]
        disc = [i for i, n in enumerate(counts) if n is not None]
        return cls(len(counts), tuple(num), tuple(disc), tuple(int(counts[i]) for i in disc))

    @classmethod
    def from_table(cls, table: Any, max_categories: int = 32) -> "ParamLayout":
        """From a :class:`deepafx.params.ParamTable` (or any iterable of ``Param``).

        Discrete parameters with at most ``max_categories`` values become
        categorical (NumCat++ of Le Vaillant et al., 2021, uses 32); the others,
        and all continuous parameters, are numeric.
        """
        counts = []
        for p in table:
            n = p.num_values
            counts.append(n if n is not None and n <= max_categories else None)
        return cls.from_counts(counts)

    @property
    def num_numeric(self) -> int:
        return len(self.numeric_indices)

    @property
    def num_discrete(self) -> int:
        return len(self.discrete_indices)

    def split_targets(self, params: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Split normalized targets ``(batch, num_params)`` for a parameter loss.

        Returns:
            ``(numeric, classes)``: numeric targets ``(batch, num_numeric)`` and,
            per discrete parameter, class indices ``round(x * (n - 1))`` as a
            ``(batch,)`` long tensor (for cross-entropy).

        Raises:
            ValueError: wrong shape.
        """
        if params.dim() != 2 or params.shape[1] != self.num_params:
            raise ValueError(f"expected normalized parameters (batch, {self.num_params}), got {tuple(params.shape)}")
        numeric = params[:, list(self.numeric_indices)]
        classes = [
            torch.round(params[:, i].clamp(0, 1) * (n - 1)).long() for i, n in zip(self.discrete_indices, self.discrete_counts)
        ]
        return numeric, classes


@dataclass
class EstimatorOutput:
    """Heads of :class:`DiffSynthEstimator`.

    Attributes:
        numeric: ``(batch, num_numeric)`` sigmoid outputs on [0, 1].
        discrete_logits: One ``(batch, n_k)`` logits tensor per discrete
            parameter, in layout order (unnormalized; apply softmax).
        frame_numeric: ``(batch, frames, num_frame_params)`` per-frame sigmoid
            outputs on [0, 1] (time-varying parameters), or ``None``.
        class_logits: ``(batch, num_classes)`` logits of a classifier over whole
            presets (a fixed set of voices), or ``None``.
        raw_numeric: ``(batch, num_numeric)`` numeric outputs before an output calibration
            (a model that calibrates ``numeric``), or ``None``.
    """

    numeric: torch.Tensor
    discrete_logits: list[torch.Tensor]
    frame_numeric: torch.Tensor | None = None
    class_logits: torch.Tensor | None = None
    raw_numeric: torch.Tensor | None = None

    def concat_logits(self) -> tuple[torch.Tensor, list[int]]:
        """All discrete logits in one ``(batch, sum n_k)`` tensor and the start offset of each."""
        offsets, total = [], 0
        for t in self.discrete_logits:
            offsets.append(total)
            total += t.shape[1]
        if not self.discrete_logits:
            return self.numeric.new_zeros(self.numeric.shape[0], 0), offsets
        return torch.cat(self.discrete_logits, dim=1), offsets


def outputs_to_normalized(output: EstimatorOutput, layout: ParamLayout, mode: str = "hard") -> torch.Tensor:
    """Assemble estimator heads into a normalized vector ``(batch, num_params)``.

    Numeric outputs go to ``layout.numeric_indices``. A discrete parameter with
    ``n`` values becomes ``k / (n - 1)`` where ``k`` is the ``argmax`` class
    (``mode="hard"``; not differentiable w.r.t. the logits) or the expected
    value ``sum_k softmax(logits)_k * k / (n - 1)`` (``mode="soft"``;
    differentiable, on [0, 1]). A parameter with one value maps to 0.

    Args:
        output: Heads from :class:`DiffSynthEstimator`.
        layout: The index layout the estimator was built for.
        mode: ``"hard"`` or ``"soft"``.

    Returns:
        ``(batch, num_params)`` on [0, 1], ready for
        :meth:`deepafx.params.ParamTable.denormalize`.

    Raises:
        ValueError: unknown ``mode`` or heads that do not match the layout.
    """
    if mode not in ("hard", "soft"):
        raise ValueError(f"mode must be 'hard' or 'soft', got {mode!r}")
    numeric = output.numeric
    if numeric.shape[1] != layout.num_numeric or len(output.discrete_logits) != layout.num_discrete:
        raise ValueError(
            f"heads have {numeric.shape[1]} numeric and {len(output.discrete_logits)} discrete outputs, "
            f"layout expects {layout.num_numeric} and {layout.num_discrete}"
        )
    batch = numeric.shape[0]
    out = numeric.new_zeros(batch, layout.num_params)
    if layout.num_numeric:
        out[:, list(layout.numeric_indices)] = numeric
    for idx, n, logits in zip(layout.discrete_indices, layout.discrete_counts, output.discrete_logits):
        if logits.shape[1] != n:
            raise ValueError(f"discrete parameter at position {idx} has {n} values but its head has {logits.shape[1]} logits")
        if n == 1:
            continue
        if mode == "hard":
            out[:, idx] = logits.argmax(dim=1).to(out.dtype) / (n - 1)
        else:
            grid = torch.arange(n, device=logits.device, dtype=out.dtype) / (n - 1)
            out[:, idx] = torch.softmax(logits, dim=1).to(out.dtype) @ grid
    return out


class DiffSynthEstimator(nn.Module):
    """Synthesizer parameter estimator: log-mel → per-frame 1D CNN → GRU → heads.

    Each frame of the log-mel spectrogram ``(channels, n_mels)`` (channels =
    notes of one preset, e.g. the six (pitch, velocity) pairs of Le Vaillant et
    al., 2021) is encoded by a 1D CNN along the mel axis (conv → BatchNorm →
    ReLU, stride 2, per entry of ``conv_channels``; adaptive average pooling to
    ``pooled_bins`` bins; linear to ``frame_dim``); a GRU runs over the frames;
    static parameters are read from the GRU output at the last frame (as in
    Masuda & Saito, 2021), time-varying ones (``num_frame_params``) from every
    frame. See `Masuda & Saito, 2021 <https://arxiv.org/abs/2107.05050>`_ and
    `Le Vaillant et al., 2021 <https://arxiv.org/abs/2106.14856>`_.

    The default has about 0.91 M weights (6 notes, 100 numeric and 40 discrete
    parameters with 4–32 values).

    Args:
        num_numeric: Numeric static parameters (sigmoid outputs), >= 0.
        discrete_counts: Number of values of each discrete static parameter
            (one logits head each).
        num_frame_params: Time-varying numeric parameters, >= 0. Default 0.
        sample_rate: Audio sample rate in Hz. Default 16,000 Hz (DiffSynth).
        in_channels: Input channels (notes). Default 1.
        n_fft: Log-mel FFT size. Default 1024.
        hop_length: Log-mel hop. Default 256.
        n_mels: Mel bands. Default 128 (Le Vaillant et al. used 257).
        floor_db: Log floor in dB. Default −120 dB.
        conv_channels: Channels of the per-frame 1D convolutions.
        pooled_bins: Mel bins left after pooling. Default 8.
        frame_dim: Per-frame embedding size. Default 256.
        gru_hidden: GRU hidden size. Default 256.
        gru_layers: GRU layers. Default 1.

    Shapes:
        audio ``(batch, in_channels, samples)`` → :class:`EstimatorOutput` with
        ``numeric (batch, num_numeric)``, ``discrete_logits [(batch, n_k)]`` and
        ``frame_numeric (batch, frames, num_frame_params)`` or ``None``.

    Raises:
        ValueError: on an invalid argument.
    """

    def __init__(
        self,
        num_numeric: int,
        discrete_counts: Sequence[int] = (),
        num_frame_params: int = 0,
        sample_rate: float = 16000.0,
        in_channels: int = 1,
        n_fft: int = 1024,
        hop_length: int = 256,
        n_mels: int = 128,
        floor_db: float = -120.0,
        conv_channels: Sequence[int] = (32, 64, 64, 128),
        pooled_bins: int = 8,
        frame_dim: int = 256,
        gru_hidden: int = 256,
        gru_layers: int = 1,
    ) -> None:
        super().__init__()
        counts = tuple(int(n) for n in discrete_counts)
        if int(num_numeric) < 0 or int(num_frame_params) < 0:
            raise ValueError(f"num_numeric and num_frame_params must be >= 0, got {num_numeric}, {num_frame_params}")
        if any(n < 1 for n in counts):
            raise ValueError(f"every discrete count must be >= 1, got {counts}")
        if int(num_numeric) + len(counts) + int(num_frame_params) == 0:
            raise ValueError("the estimator needs at least one output: set num_numeric, discrete_counts or num_frame_params")
        if int(in_channels) < 1 or not conv_channels or min(conv_channels) < 1 or pooled_bins < 1:
            raise ValueError("in_channels, conv_channels and pooled_bins must be positive")
        self.num_numeric = int(num_numeric)
        self.discrete_counts = counts
        self.num_frame_params = int(num_frame_params)
        self.in_channels = int(in_channels)
        self.sample_rate = float(sample_rate)
        self.features = LogMel(
            sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, floor_db=floor_db, normalize="range"
        )
        layers: list[nn.Module] = []
        cin = self.in_channels
        for c in conv_channels:
            layers += [nn.Conv1d(cin, int(c), 5, stride=2, padding=2, bias=False), nn.BatchNorm1d(int(c)), nn.ReLU(inplace=True)]
            cin = int(c)
        layers.append(nn.AdaptiveAvgPool1d(int(pooled_bins)))
        self.frame_cnn = nn.Sequential(*layers)
        self.frame_proj = nn.Sequential(nn.Linear(cin * int(pooled_bins), frame_dim), nn.ReLU(inplace=True))
        self.gru = nn.GRU(frame_dim, gru_hidden, num_layers=gru_layers, batch_first=True)
        self.numeric_head = nn.Linear(gru_hidden, self.num_numeric) if self.num_numeric else None
        self.discrete_heads = nn.ModuleList(nn.Linear(gru_hidden, n) for n in counts)
        self.frame_head = nn.Linear(gru_hidden, self.num_frame_params) if self.num_frame_params else None

    @classmethod
    def from_layout(cls, layout: ParamLayout, **kwargs: Any) -> "DiffSynthEstimator":
        """Estimator whose heads match ``layout`` (static parameters only)."""
        return cls(layout.num_numeric, layout.discrete_counts, **kwargs)

    def forward(self, audio: torch.Tensor) -> EstimatorOutput:
        """Estimate parameters.

        Args:
            audio: ``(batch, in_channels, samples)``, one note per channel.

        Returns:
            :class:`EstimatorOutput` (numeric ``(batch, num_numeric)`` on [0, 1],
            one ``(batch, n_k)`` logits tensor per discrete parameter, per-frame
            ``(batch, frames, num_frame_params)`` on [0, 1] or ``None``).

        Raises:
            ValueError: wrong rank or channel count.
        """
        _check_audio(audio, self.in_channels, type(self).__name__)
        return self.forward_features(self.features(audio))

    def forward_features(self, mel: torch.Tensor) -> EstimatorOutput:
        """Estimate parameters from precomputed input features.

        Args:
            mel: ``(batch, in_channels, n_mels, frames)``: the output of
                :attr:`features`, or any features of that shape (e.g. cached
                log-mel or IF-Mel channels, :class:`deepafx.features.IFMel`).

        Returns:
            As :meth:`forward`.

        Raises:
            ValueError: wrong rank or channel count.
        """
        if mel.dim() != 4 or mel.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects features (batch, {self.in_channels}, n_mels, frames), "
                             f"got {tuple(mel.shape)}")
        batch, channels, n_mels, frames = mel.shape
        x = mel.permute(0, 3, 1, 2).reshape(batch * frames, channels, n_mels)
        x = self.frame_cnn(x).flatten(1)
        x = self.frame_proj(x).reshape(batch, frames, -1)
        h, _ = self.gru(x)  # (B, T, H)
        last = h[:, -1]
        numeric = (
            torch.sigmoid(self.numeric_head(last)) if self.numeric_head is not None else last.new_zeros(batch, 0)
        )
        logits = [head(last) for head in self.discrete_heads]
        frame = torch.sigmoid(self.frame_head(h)) if self.frame_head is not None else None
        return EstimatorOutput(numeric=numeric, discrete_logits=logits, frame_numeric=frame)


# --------------------------------------------------------------------------- registry

#: Encoder classes by name, for configs and the command line.
ENCODERS: Registry = Registry("encoder")
ENCODERS.register("inception", InceptionEncoder)
ENCODERS.register("mobilenetv2", MobileNetV2Encoder)
ENCODERS.register("diffsynth", DiffSynthEstimator)


def build_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered encoder by name.

    Args:
        name: A key of :data:`ENCODERS` (``"inception"``, ``"mobilenetv2"``,
            ``"diffsynth"``), case-insensitive.
        **kwargs: Constructor arguments of that class.

    Returns:
        The encoder module.

    Raises:
        ValueError: unknown name (the message lists the known names) or
            invalid constructor arguments (the message names the class).
    """
    cls = ENCODERS.get(str(name).lower())
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for encoder {name!r} ({getattr(cls, '__name__', cls)}): {e}") from e
