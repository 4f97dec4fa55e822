"""The Dexed preset estimator: :class:`~deepafx.encoders.DiffSynthEstimator` with NumCat++ heads.

Mel spectrogram → per-frame 1D CNN → GRU → a sigmoid head for the numerical
parameters and one softmax head per discrete parameter with at most 32 values
(NumCat++, Le Vaillant et al., DAFx 2021 — the algorithm included). The
transpose is not estimated: it carries the target's pitch (``pitch − 60``
semitones, the note Dexed plays being MIDI 60), which is given.

Parameter loss (P-loss, DiffSynth, Masuda & Saito, ISMIR 2021): L1 on the
numerical parameters plus the mean cross-entropy of the discrete heads.

Voice classifier (``model.voice_classifier``, ``cnn2d`` only): one more head, a
softmax over the V training factory voices, trained in its own first stage on
every corpus item labelled with its nearest training voice, by cached log-mel
distance or by the evaluation's LSD (``train.voice_labels``;
:meth:`~deepafx.recipes.dexed_matching.corpus.Corpus.nearest_voices`); its
estimate is the argmax voice, intact (:func:`predict_voice`). Regressing the
145 parameters averages voices into presets whose parameters disagree with each
other; choosing a whole voice keeps them consistent, and learning the choice
from 49,000 sounds around the voices generalizes the similarity better than one
log-mel distance to each voice (``recipes/dexed_matching/README.md``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from deepafx.features import IFMel, LogMel
from deepafx.encoders import DiffSynthEstimator, EstimatorOutput, ParamLayout, outputs_to_normalized
from deepafx.hosts.dexed_host import dexed_param_table, discrete_mask

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
        features: Input features: ``"logmel"`` (log-mel magnitude, one channel
            per note) or ``"ifmel"`` (GANSynth's IF-Mel: log-mel plus mel-scaled
            instantaneous frequency, two channels per note; Engel et al., ICLR 2019).
        architecture: ``"gru"`` (:class:`~deepafx.encoders.DiffSynthEstimator`:
            per-frame 1D CNN → GRU) or ``"cnn2d"`` (:class:`SpectrogramCNN`: a 2-D
            CNN over the whole (mel, time) plane, as Le Vaillant et al. use; about
            10× fewer operations per example at 126 frames).
        cnn_channels: Channels of the stride-2 3×3 layers of ``cnn2d``.
        hidden: Width of ``cnn2d``'s fully connected layer.
        dropout: Dropout before ``cnn2d``'s heads.
        max_categories: Discrete parameters with at most this many values get a
            softmax head (decoded by argmax, the mode); the others a sigmoid head
            trained with L1 (the median). Every DX7 parameter is an integer (the
            levels, rates and depths run 0..99). 32 is NumCat++ (Le Vaillant et
            al., 2021); 100 makes every parameter categorical.
        voice_classifier: Add the voice-classifier head (module docstring; needs
            ``architecture: cnn2d`` and a corpus). The number of voices is the
            data's, given to :class:`DexedEstimator` as ``num_voices``.
        input_notes: Indices into the dataset's notes that the network sees
            (``None``: all of them; ``[3]`` with the six notes of Le Vaillant et
            al. is the single note (60, 85)). The rendered preset still plays
            every note, so metrics compare all of them.
    """

    n_mels: int = 128
    n_fft: int = 1024
    hop_length: int = 256
    conv_channels: list[int] = field(default_factory=lambda: [32, 64, 64, 128])
    pooled_bins: int = 8
    frame_dim: int = 256
    gru_hidden: int = 256
    gru_layers: int = 1
    features: str = "logmel"
    input_notes: list[int] | None = None
    architecture: str = "gru"
    cnn_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    hidden: int = 512
    dropout: float = 0.1
    max_categories: int = MAX_CATEGORIES
    voice_classifier: bool = False


#: What a forward pass computes: every head, the preset heads only, or the voice logits only.
HEADS = ("all", "params", "voice")
#: Input feature kinds of the estimator.
FEATURES = ("logmel", "ifmel")
#: Network bodies of the estimator.
ARCHITECTURES = ("gru", "cnn2d")


class SpectrogramCNN(nn.Module):
    """A 2-D CNN preset estimator over stacked spectrogram channels, with NumCat++ heads.

    Stride-2 3×3 convolutions (conv → BatchNorm → ReLU) per entry of
    ``channels``, adaptive average pooling to a 4 × 8 (mel × time) grid, one
    fully connected layer with dropout, then a sigmoid head for the numerical
    parameters and one logits head per discrete parameter (Le Vaillant et al.,
    "Improving synthesizer programming from variational autoencoders latent
    space", DAFx 2021, use a 2-D CNN over the spectrograms of several notes).

    Args:
        layout: Parameter layout (numeric count, discrete class counts).
        in_channels: Input channels (notes × feature kinds).
        channels: Convolution channels. hidden: Width of the fully connected layer.
        dropout: Dropout probability on [0, 1).
        num_classes: Classes of an extra softmax head over whole presets
            (:attr:`EstimatorOutput.class_logits`); 0: none.

    Shapes:
        features ``(batch, in_channels, n_mels, frames)`` → :class:`EstimatorOutput`.
    """

    def __init__(self, layout, in_channels: int, channels=(32, 64, 128, 256), hidden: int = 512, dropout: float = 0.1,
                 num_classes: int = 0):
        super().__init__()
        if not channels or min(channels) < 1 or hidden < 1 or not 0 <= dropout < 1:
            raise ValueError(f"bad cnn2d settings: channels {channels}, hidden {hidden}, dropout {dropout}")
        self.in_channels = int(in_channels)
        layers: list[nn.Module] = []
        cin = self.in_channels
        for c in channels:
            layers += [nn.Conv2d(cin, int(c), 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(int(c)),
                       nn.ReLU(inplace=True)]
            cin = int(c)
        layers.append(nn.AdaptiveAvgPool2d((4, 8)))
        self.body = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(cin * 32, int(hidden)), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.numeric_head = nn.Linear(int(hidden), layout.num_numeric) if layout.num_numeric else None
        self.discrete_heads = nn.ModuleList(nn.Linear(int(hidden), n) for n in layout.discrete_counts)
        self.class_head = nn.Linear(int(hidden), int(num_classes)) if num_classes else None

    def forward_features(self, x: torch.Tensor, heads: str = "all") -> EstimatorOutput:
        """``heads``: ``"all"``, ``"params"`` (no class logits) or ``"voice"`` (class logits only; empty
        parameter heads). A stage computes only the heads its loss uses, so that under DDP with
        ``find_unused_parameters`` no output is left without a gradient."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SpectrogramCNN expects (batch, {self.in_channels}, n_mels, frames), got {tuple(x.shape)}")
        if heads not in HEADS:
            raise ValueError(f"heads must be one of {HEADS}, got {heads!r}")
        return self.heads(self.hidden(x), heads)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The fully connected layer's output ``(batch, hidden)`` for features ``(batch, in_channels, n_mels,
        frames)`` (what every head reads)."""
        return self.fc(self.body(x))

    def heads(self, h: torch.Tensor, heads: str = "all") -> EstimatorOutput:
        """The heads (``heads`` as in :meth:`forward_features`) of hidden features ``h`` ``(batch, hidden)``."""
        classes = self.class_head(h) if self.class_head is not None and heads != "params" else None
        if heads == "voice":
            return EstimatorOutput(numeric=h.new_zeros(h.shape[0], 0), discrete_logits=[], class_logits=classes)
        numeric = torch.sigmoid(self.numeric_head(h)) if self.numeric_head is not None else h.new_zeros(h.shape[0], 0)
        return EstimatorOutput(numeric=numeric, discrete_logits=[head(h) for head in self.discrete_heads],
                               class_logits=classes)


#: Where the spectral stages start (:class:`DexedEstimator` ``start``, ``train.spectral_start``).
STARTS = ("ploss", "voice")
#: State keys of the voice start (the twin, the voice bank, the residual head).
_START_KEYS = ("held", "voice_bank", "residual_head")
#: State of the output calibration (``calibrate`` set), absent from checkpoints of the stages before it.
_CALIBRATION_KEYS = ("calibration.",)

#: Estimator settings a config may set (``model:`` section), with defaults.
MODEL_DEFAULTS: dict[str, Any] = asdict(ModelConfig())


def held_mask(patterns: Sequence[str]) -> np.ndarray:
    """``(145,)`` bool: the Dexed parameters named by ``patterns``.

    Args:
        patterns: ``fnmatch`` patterns of parameter names (``"pitch_env_*"``, ``"op?_frequency_fine"``), or
            ``":discrete"`` for every discrete parameter (the transpose aside).

    Raises:
        ValueError: a pattern that matches no parameter (named), one that names the transpose (it follows the
            note's pitch), or a string instead of a list.
    """
    import fnmatch

    names = dexed_param_table().names
    if isinstance(patterns, str):
        raise ValueError(f"expected a list of parameter patterns, got the string {patterns!r}")
    transpose = names.index("transpose_semitones")
    every_discrete = discrete_mask()
    every_discrete[transpose] = False
    mask = np.zeros(len(names), dtype=bool)
    for pat in patterns:
        hit = every_discrete if pat == ":discrete" else np.array([fnmatch.fnmatchcase(n, str(pat)) for n in names])
        if not hit.any():
            raise ValueError(f"parameter pattern {pat!r} matches no Dexed parameter (names like 'pitch_env_level1', "
                             "'op1_frequency_fine'; ':discrete' for all discrete ones)")
        mask |= hit
    if mask[transpose]:
        raise ValueError("the transpose follows the note's pitch and cannot be held")
    return mask


#: Granularity of :class:`OutputCalibration`: a log-scale and a shift per numeric parameter, or one of each
#: shared by all of them.
CALIBRATIONS = ("parameter", "global")


class OutputCalibration(nn.Module):
    """Affine calibration of numeric estimates on [0, 1] about a centre:
    ``clip(c_j + exp(s_g(j)) (x_j − c_j) + b_g(j), 0, 1)`` where ``mask`` is set, ``x_j`` elsewhere; ``g(j)`` is
    ``j`` itself (``"parameter"``: a log-scale and a shift per parameter) or 0 (``"global"``: one of each,
    ``exp(s) < 1`` shrinking every estimate toward the centre, as temperature scaling calibrates a classifier
    with one scalar).

    ``s`` (log-scale) and ``b`` (shift) start at 0, the identity; the centre ``c`` (a buffer, default 0.5)
    is set by :meth:`DexedEstimator.activate_calibration`, which also sets ``active``.

    Args:
        mask: ``(num_numeric,)`` bool, the entries calibrated.
        groups: ``"parameter"`` or ``"global"`` (:data:`CALIBRATIONS`).

    Shapes:
        ``(batch, num_numeric)`` → ``(batch, num_numeric)``.

    Raises:
        ValueError: unknown ``groups``.
    """

    def __init__(self, mask: torch.Tensor, groups: str = "parameter") -> None:
        super().__init__()
        if groups not in CALIBRATIONS:
            raise ValueError(f"calibration groups must be one of {CALIBRATIONS}, got {groups!r}")
        n = int(mask.numel())
        k = n if groups == "parameter" else 1
        self.register_buffer("mask", mask.clone().bool(), persistent=False)
        self.register_buffer("group", torch.arange(n) if groups == "parameter" else torch.zeros(n, dtype=torch.long),
                             persistent=False)
        self.register_buffer("center", torch.full((n,), 0.5))
        self.register_buffer("active", torch.zeros((), dtype=torch.bool))
        self.log_scale = nn.Parameter(torch.zeros(k))
        self.shift = nn.Parameter(torch.zeros(k))

    def forward(self, numeric: torch.Tensor, log_scale: torch.Tensor | None = None,
                shift: torch.Tensor | None = None) -> torch.Tensor:
        """Calibrated ``numeric``, by this module's weights or by ``log_scale`` and ``shift`` given in their
        place (same shapes: SPSA on the weights renders perturbed copies)."""
        log_scale = self.log_scale if log_scale is None else log_scale
        shift = self.shift if shift is None else shift
        scale, shift = torch.exp(log_scale)[self.group], shift[self.group]
        mapped = (self.center + scale * (numeric - self.center) + shift).clamp(0.0, 1.0)
        return torch.where(self.mask, mapped, numeric)


class DexedEstimator(nn.Module):
    """Audio ``(batch, notes, samples)`` → Dexed preset heads.

    Args:
        in_channels: Notes per preset (1, or 6 for the multi-note input).
        sample_rate: Audio rate in Hz.
        num_voices: Classes of the voice classifier (``voice_classifier: true``: the
            training voices, at least 2; otherwise 0).
        held: Patterns (:func:`held_mask`) of parameters *held* at another network's estimate: the
            estimator carries a frozen twin (``held``, no gradients, always in eval mode) and, once
            :meth:`activate_held` has copied its own weights into it, returns the twin's heads for those
            parameters and its own for the rest. The spectral stages of training use it to fine-tune
            some parameters from the P-loss network's estimate with the others fixed there, at training
            and at inference alike (``train.frozen_params``).
        start: Where the spectral stages start (``train.spectral_start``): ``"ploss"`` (default), this
            network's own heads; ``"voice"``, the voice classifier's choice plus a residual. With
            ``"voice"`` the estimator carries the twin (the voice classifier of the ``voice`` stage, loaded by
            :meth:`activate_voice_start`), the training voices ``voice_bank`` ``(num_voices, 145)`` and a
            residual head initialised at zero; once active its estimate is the chosen voice, intact in its
            discrete and held parameters, plus the residual on the other numeric ones (clipped to [0, 1]),
            so the spectral stages start exactly at the ``voice`` row and fine-tune the continuous
            parameters from there, the discrete ones fixed.
        calibrate: ``None`` (default) or an output calibration's granularity, ``"parameter"`` or ``"global"``
            (:class:`OutputCalibration`; ``train.spectral_train: calibration`` or ``global_calibration``): once
            :meth:`activate_calibration` has set its centre ``c`` (the training voices' mean), every numeric
            estimate ``x_j`` but the transpose and the held ones becomes
            ``clip(c_j + exp(s) (x_j − c_j) + b, 0, 1)``, with a log-scale ``s`` and a shift ``b`` per parameter
            (``2 × 76`` weights) or shared (2 weights), at 0: the identity. The spectral stages then train only
            these through Dexed, the network fixed: a few shared weights, which every sound's SPSA draws inform
            alike.
        **model: Settings of :class:`~deepafx.encoders.DiffSynthEstimator`
            (see :data:`MODEL_DEFAULTS`).

    Raises:
        ValueError: unknown model setting; ``voice_classifier`` without ``cnn2d`` or with fewer than 2 voices;
            an unknown ``start``, or ``"voice"`` without a voice classifier.
    """

    def __init__(self, in_channels: int = 1, sample_rate: float = 16000.0, num_voices: int = 0,
                 held: Sequence[str] = (), start: str = "ploss", calibrate: str | None = None, **model: Any) -> None:
        super().__init__()
        if start not in STARTS:
            raise ValueError(f"start must be one of {STARTS}, got {start!r}")
        self.start = str(start)
        unknown = set(model) - set(MODEL_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown model settings {sorted(unknown)}; known: {sorted(MODEL_DEFAULTS)}")
        self.settings = {**MODEL_DEFAULTS, **model}
        self.in_channels = int(in_channels)
        s = self.settings
        if s["features"] not in FEATURES:
            raise ValueError(f"model.features must be one of {FEATURES}, got {s['features']!r}")
        notes = list(range(self.in_channels)) if s["input_notes"] is None else [int(i) for i in s["input_notes"]]
        if not notes or any(not 0 <= i < self.in_channels for i in notes) or len(set(notes)) != len(notes):
            raise ValueError(f"model.input_notes must be distinct indices in 0..{self.in_channels - 1}, got {s['input_notes']}")
        self.register_buffer("note_index", torch.tensor(notes, dtype=torch.long), persistent=False)
        per_note = 2 if s["features"] == "ifmel" else 1
        self.sample_rate = float(sample_rate)
        table = dexed_param_table()
        mc = int(s["max_categories"])
        if mc < 2:
            raise ValueError(f"model.max_categories must be >= 2, got {s['max_categories']}")
        # every DX7 parameter is an integer: the 0..99 ones (continuous in the table) have 100 values
        counts = [p.num_values if p.values is not None else int(p.max - p.min) + 1 for p in table]
        self.layout = ParamLayout.from_counts([n if n <= mc else None for n in counts])
        self.transpose_index = table.index("transpose_semitones")
        numeric = list(self.layout.numeric_indices)
        #: The numeric parameters' columns of a full normalized preset (the voice bank's rows).
        self.register_buffer("numeric_columns", torch.tensor(numeric, dtype=torch.long), persistent=False)
        #: Columns of the numeric head trained by the P-loss (all but the transpose).
        self.register_buffer(
            "numeric_loss_mask", torch.tensor([i != self.transpose_index for i in numeric], dtype=torch.bool), persistent=False
        )
        if s["architecture"] not in ARCHITECTURES:
            raise ValueError(f"model.architecture must be one of {ARCHITECTURES}, got {s['architecture']!r}")
        self.num_voices = int(num_voices) if s["voice_classifier"] else 0
        if s["voice_classifier"] and (s["architecture"] != "cnn2d" or self.num_voices < 2):
            raise ValueError(f"model.voice_classifier needs architecture: cnn2d (got {s['architecture']!r}) and at "
                             f"least 2 voices (got {num_voices}; they come from the corpus: data.corpus_size > 0)")
        if s["architecture"] == "cnn2d":
            self.net = SpectrogramCNN(self.layout, len(notes) * per_note, tuple(int(c) for c in s["cnn_channels"]),
                                      int(s["hidden"]), float(s["dropout"]), num_classes=self.num_voices)
        else:
            self.net = DiffSynthEstimator.from_layout(
                self.layout,
                sample_rate=self.sample_rate,
                in_channels=len(notes) * per_note,
                n_fft=int(s["n_fft"]),
                hop_length=int(s["hop_length"]),
                n_mels=int(s["n_mels"]),
                conv_channels=tuple(int(c) for c in s["conv_channels"]),
                pooled_bins=int(s["pooled_bins"]),
                frame_dim=int(s["frame_dim"]),
                gru_hidden=int(s["gru_hidden"]),
                gru_layers=int(s["gru_layers"]),
            )
        front = IFMel if s["features"] == "ifmel" else LogMel
        self.front = front(self.sample_rate, n_fft=int(s["n_fft"]), hop_length=int(s["hop_length"]),
                           n_mels=int(s["n_mels"]), floor_db=-120.0, normalize="range")
        #: Keep the network in eval mode under ``train()`` (``train.spectral_eval_mode``; set per stage by the task).
        self.fixed_statistics = False
        self.held_patterns = [str(p) for p in held]
        self.held: DexedEstimator | None = None
        if self.start == "voice" and not self.num_voices:
            raise ValueError("start='voice' fine-tunes from the voice classifier's choice: set model.voice_classifier: true")
        if self.held_patterns or self.start == "voice":
            mask = held_mask(self.held_patterns) if self.held_patterns else np.zeros(len(table), dtype=bool)
            self.register_buffer("held_numeric", torch.from_numpy(mask[numeric]), persistent=False)
            self.held_discrete = [k for k, i in enumerate(self.layout.discrete_indices) if mask[i]]
            self.register_buffer("held_active", torch.zeros((), dtype=torch.bool))
            self.held = DexedEstimator(in_channels, sample_rate, num_voices, **model)
            for p in self.held.parameters():
                p.requires_grad_(False)
            self.held.eval()
        if self.start == "voice":  # registered last: the parameters of a P-loss checkpoint keep their order
            self.register_buffer("voice_bank", torch.zeros(self.num_voices, len(table)))
            free = torch.tensor([i != self.transpose_index for i in numeric], dtype=torch.bool) & ~self.held_numeric
            self.register_buffer("residual_mask", free, persistent=False)
            self.residual_head = nn.Linear(int(s["hidden"]), self.layout.num_numeric)
            nn.init.zeros_(self.residual_head.weight)
            nn.init.zeros_(self.residual_head.bias)
        if calibrate is True:  # checkpoints that stored a flag: the per-parameter calibration
            calibrate = "parameter"
        if calibrate not in (None, False, *CALIBRATIONS):
            raise ValueError(f"calibrate must be None or one of {CALIBRATIONS}, got {calibrate!r}")
        self.calibrate = str(calibrate) if calibrate else None
        if self.calibrate:  # a submodule registered last: its weights come after a P-loss checkpoint's
            n = self.layout.num_numeric
            held_numeric = self.held_numeric if self.held is not None else torch.zeros(n, dtype=torch.bool)
            self.calibration = OutputCalibration(self.numeric_loss_mask & ~held_numeric, self.calibrate)

    def activate_held(self) -> None:
        """Copy this estimator's weights into its held twin and return the twin's heads for the held
        parameters from now on (saved with the weights, so a checkpoint keeps it).

        Raises:
            ValueError: the estimator holds no parameters.
        """
        if self.held is None or self.start == "voice":
            raise ValueError("this estimator holds no parameters (held=())" if self.held is None else
                             "start='voice': the twin is the voice classifier (activate_voice_start)")
        own = {k: v for k, v in self.state_dict().items() if not k.startswith(("held", *_CALIBRATION_KEYS))}
        self.held.load_state_dict(own)
        self.held_active.fill_(True)

    def activate_calibration(self, center: np.ndarray) -> None:
        """With ``calibrate`` set: set the calibration's centre from ``center`` ``(145,)`` (a normalized preset, the
        training voices' mean) and apply the calibration from now on (at the identity until its weights train;
        saved with the weights).

        Raises:
            ValueError: the estimator has no calibration, or ``center`` is not ``(145,)`` on [0, 1].
        """
        if not self.calibrate:
            raise ValueError("this estimator has no output calibration (calibrate=None)")
        c = np.asarray(center, dtype=np.float32)
        if c.shape != (len(dexed_param_table()),) or not np.all((c >= 0) & (c <= 1)):
            raise ValueError(f"center must be a normalized preset ({len(dexed_param_table())},) on [0, 1], got shape {c.shape}")
        self.calibration.center.copy_(torch.from_numpy(c)[self.numeric_columns.cpu()])
        self.calibration.active.fill_(True)

    def calibration_parameters(self) -> list[nn.Parameter]:
        """The calibration's weights (log-scale, shift), empty without one."""
        return list(self.calibration.parameters()) if self.calibrate else []

    def _calibrated(self, out: EstimatorOutput) -> EstimatorOutput:
        if not self.calibrate or not bool(self.calibration.active):
            return out
        return replace(out, numeric=self.calibration(out.numeric), raw_numeric=out.numeric)

    def activate_voice_start(self, voice_model: Mapping[str, torch.Tensor], voices: np.ndarray) -> None:
        """``start='voice'``: load the voice classifier (the ``model`` state of the ``voice`` stage's
        checkpoint) into the twin and the training voices ``voices`` ``(num_voices, 145)`` (normalized) into
        ``voice_bank``; from now on the estimate is the chosen voice plus the residual (saved with the weights).

        Raises:
            ValueError: ``start`` is not ``"voice"``, or ``voices`` does not match the classes.
        """
        if self.start != "voice":
            raise ValueError(f"activate_voice_start needs start='voice' (this estimator starts at {self.start!r})")
        voices = np.asarray(voices, dtype=np.float32)
        if voices.shape != tuple(self.voice_bank.shape):
            raise ValueError(f"voices must be {tuple(self.voice_bank.shape)}, got {voices.shape}")
        own = {k: v for k, v in voice_model.items() if not k.startswith(_START_KEYS)}
        self.held.load_state_dict(own)
        self.voice_bank.copy_(torch.from_numpy(voices))
        self.held_active.fill_(True)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """As :meth:`torch.nn.Module.load_state_dict`; with ``start='voice'``, a state without the voice start
        (a checkpoint of the stages before it, to branch from) loads with the twin, voice bank and residual as
        they are here (the residual at zero, the voice start inactive); with ``calibrate``, likewise the
        calibration (identity, inactive)."""
        keys = (_START_KEYS if self.start == "voice" else ()) + (_CALIBRATION_KEYS if self.calibrate else ())
        if keys:  # a checkpoint of the stages before the voice start or the calibration: those as they are here
            state_dict = {**{k: v for k, v in self.state_dict().items() if k.startswith(keys)}, **state_dict}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def holding(self) -> bool:
        """Whether the held twin's heads replace this estimator's for the held parameters."""
        return self.held is not None and bool(self.held_active)

    def train(self, mode: bool = True) -> "DexedEstimator":
        """As :meth:`torch.nn.Module.train`; with :attr:`fixed_statistics` set, the network stays in eval
        mode (BatchNorm normalizes by its running statistics and leaves them unchanged, no dropout) while
        its weights train."""
        super().train(mode and not self.fixed_statistics)
        if self.held is not None:
            self.held.eval()  # the held twin is a fixed function: no dropout, frozen BatchNorm statistics
        return self

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """Input features of every note, ``(batch, notes * k, n_mels, frames)`` (``k`` = 1 for log-mel, 2 for
        IF-Mel: the log-mel channels of all notes first), rounded through float16 as the cached corpus stores them.

        Args:
            audio: ``(batch, notes, samples)`` with all the dataset's notes (``in_channels``).
        """
        if audio.dim() != 3 or audio.shape[1] != self.in_channels:
            raise ValueError(f"expected audio (batch, {self.in_channels}, samples), got {tuple(audio.shape)}")
        return self.front(audio.float()).half().float()

    def select(self, feats: torch.Tensor) -> torch.Tensor:
        """The network's input channels (``input_notes``) out of :meth:`features`' output
        (or cached features of the same layout), as float32."""
        c = self.in_channels
        parts = [feats[:, :c].index_select(1, self.note_index)]
        if self.settings["features"] == "ifmel":
            parts.append(feats[:, c : 2 * c].index_select(1, self.note_index))
        return torch.cat(parts, dim=1).float()

    def forward(self, audio: torch.Tensor, heads: str = "all") -> EstimatorOutput:
        """Heads for ``audio`` ``(batch, notes, samples)`` (see :class:`EstimatorOutput`), or for cached
        features ``(batch, notes * k, n_mels, frames)`` laid out as :meth:`features` returns them (a 4-D input
        goes to :meth:`forward_features`, so a DDP-wrapped model trains on either).

        ``heads``: ``"all"`` (default), ``"params"`` (the preset heads, no voice logits) or ``"voice"`` (the
        voice logits only; ``cnn2d`` with ``voice_classifier``). Raises ``ValueError`` on another value or
        ``"voice"`` without a voice classifier."""
        if audio.dim() == 4:
            return self.forward_features(audio, heads)
        return self.forward_features(self.features(audio), heads)

    def forward_features(self, feats: torch.Tensor, heads: str = "all") -> EstimatorOutput:
        """Heads for features ``(batch, notes * k, n_mels, frames)`` laid out as :meth:`features` returns them
        (``heads`` as in :meth:`forward`)."""
        if heads not in HEADS:
            raise ValueError(f"heads must be one of {HEADS}, got {heads!r}")
        if heads == "voice" and not self.num_voices:
            raise ValueError("this estimator has no voice classifier (model.voice_classifier: false)")
        if self.start == "voice" and self.holding and heads != "voice":
            return self._calibrated(self._voice_start(feats))
        if isinstance(self.net, SpectrogramCNN):
            out = self.net.forward_features(self.select(feats), heads)
        else:
            out = self.net.forward_features(self.select(feats))
        if heads == "voice":
            return out
        if not self.holding:
            return self._calibrated(out)
        with torch.no_grad():
            fixed = self.held.forward_features(feats, "params")
        logits = list(out.discrete_logits)
        for k in self.held_discrete:
            logits[k] = fixed.discrete_logits[k]
        return self._calibrated(EstimatorOutput(torch.where(self.held_numeric, fixed.numeric, out.numeric), logits,
                                                frame_numeric=out.frame_numeric, class_logits=out.class_logits))

    def _voice_start(self, feats: torch.Tensor) -> EstimatorOutput:
        """The active voice start: the twin's chosen voice, its numeric parameters plus the residual head's
        output where ``residual_mask`` allows (clipped to [0, 1]), its discrete classes as one-hot logits."""
        h = self.net.hidden(self.select(feats))
        with torch.no_grad():
            pick = self.held.forward_features(feats, "voice").class_logits
            voice = self.voice_bank[pick.argmax(1)]
        lay = self.layout
        numeric = (voice[:, self.numeric_columns] + self.residual_head(h) * self.residual_mask).clamp(0.0, 1.0)
        logits = [F.one_hot(torch.round(voice[:, i] * (n - 1)).long().clamp(0, n - 1), n).to(h.dtype)
                  for i, n in zip(lay.discrete_indices, lay.discrete_counts)]
        return EstimatorOutput(numeric, logits, class_logits=pick)

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
        """Parameter loss: L1 (numeric) + mean cross-entropy (discrete), the transpose excluded.

        Args:
            out: Heads.
            x_true: True normalized presets ``(batch, 145)``.

        Returns:
            ``(loss, {"l1": ..., "ce": ...})``.
        """
        numeric, classes = self.layout.split_targets(x_true)
        m = self.numeric_loss_mask
        l1 = (out.numeric[:, m] - numeric[:, m]).abs().mean() if bool(m.any()) else out.numeric.new_zeros(())
        ce = self.discrete_ce(out, torch.stack(classes, 1))
        return l1 + ce, {"l1": float(l1.detach()), "ce": float(ce.detach())}

    def discrete_ce(self, out: EstimatorOutput, classes: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the discrete heads against ``classes`` ``(batch, num_discrete)``."""
        if not out.discrete_logits:
            return out.numeric.new_zeros(())
        terms = [F.cross_entropy(lg, classes[:, k]) for k, lg in enumerate(out.discrete_logits)
                 if self.layout.discrete_indices[k] != self.transpose_index]
        return torch.stack(terms).mean()

    def voice_ce(self, out: EstimatorOutput, labels: torch.Tensor, label_smoothing: float = 0.1) -> torch.Tensor:
        """Cross-entropy of the voice classifier against voice indices ``labels`` ``(batch,)``.

        Raises:
            ValueError: the estimator has no voice classifier.
        """
        if out.class_logits is None:
            raise ValueError("this estimator has no voice classifier (model.voice_classifier: false)")
        return F.cross_entropy(out.class_logits, labels, label_smoothing=label_smoothing)

    def describe(self) -> dict[str, Any]:
        """Settings needed to rebuild this estimator (stored in checkpoints)."""
        return {"in_channels": self.in_channels, "sample_rate": self.sample_rate, "num_voices": self.num_voices,
                **({"held": list(self.held_patterns)} if self.held_patterns else {}),
                **({"start": self.start} if self.start != "ploss" else {}),
                **({"calibrate": self.calibrate} if self.calibrate else {}), **self.settings}

    @classmethod
    def from_description(cls, d: Mapping[str, Any]) -> "DexedEstimator":
        d = dict(d)
        return cls(d.pop("in_channels"), d.pop("sample_rate"), d.pop("num_voices", 0), d.pop("held", ()),
                   d.pop("start", "ploss"), d.pop("calibrate", None), **d)


@torch.no_grad()
def map_batches(model: DexedEstimator, audio: np.ndarray, fn, batch_size: int = 16) -> list:
    """``fn(heads, rows)`` for each batch of ``audio`` ``(M, notes, samples)`` (as float32), ``rows`` the batch's
    slice of the M items, with ``model`` in eval mode (its mode restored after); the list of results."""
    was = model.training
    model.eval()
    try:
        return [fn(model(torch.from_numpy(np.ascontiguousarray(audio[i : i + batch_size], dtype=np.float32))),
                   slice(i, i + batch_size)) for i in range(0, len(audio), batch_size)]
    finally:
        model.train(was)


def predict(model: DexedEstimator, audio: np.ndarray, pitch: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Estimated normalized presets ``(M, 145)`` for audio ``(M, notes, samples)`` and pitches ``(M,)``."""
    outs = map_batches(model, audio, lambda out, rows: model.to_normalized(
        out, torch.as_tensor(np.asarray(pitch[rows]), dtype=torch.float32)).double().numpy(), batch_size)
    return np.concatenate(outs) if outs else np.zeros((0, len(dexed_param_table())))


def predict_voice(model: DexedEstimator, voices: np.ndarray, audio: np.ndarray, pitch: np.ndarray,
                  batch_size: int = 16) -> np.ndarray:
    """The voice classifier's estimate: the argmax voice of ``voices`` ``(V, 145)`` (normalized, as stored in
    the checkpoint's ``voice_x``), intact, with its transpose set from ``pitch`` ``(M,)`` (MIDI), for audio
    ``(M, notes, samples)``; ``(M, 145)`` float64.

    Raises:
        ValueError: the estimator has no voice classifier, or ``voices`` does not match its classes.
    """
    from deepafx.recipes.dexed_matching.presets import set_transpose

    if model.num_voices == 0 or len(voices) != model.num_voices:
        raise ValueError(f"predict_voice needs an estimator with a voice classifier over the {len(voices)} voices "
                         f"given (it has {model.num_voices} classes)")
    picks = map_batches(model, audio, lambda out, rows: out.class_logits.argmax(1).numpy(), batch_size)
    if not picks:
        return np.zeros((0, voices.shape[1]))
    chosen = np.asarray(voices, dtype=np.float64)[np.concatenate(picks)]
    return set_transpose(chosen, np.asarray(pitch) - 60)


__all__ = ["DexedEstimator", "MAX_CATEGORIES", "MODEL_DEFAULTS", "map_batches", "predict", "predict_voice"]
