"""Spectral input features for the encoders.

:class:`LogMel` turns audio ``(batch, channels, samples)`` into a log-mel
spectrogram ``(batch, channels, n_mels, frames)`` in torch, on whatever device and
dtype the audio is on, so the encoders can run it inside ``forward``.

Defaults follow DeepAFx (Ramírez et al., ICASSP 2021: 22,050 Hz, FFT 1024,
hop 256, 128 mel bands); the Dexed preset estimator of Le Vaillant et al.
(DAFx 2021) uses FFT 1024, hop 256, 257 mel bins and a −120 dB floor, which is
``LogMel(16000, n_mels=257, floor_db=-120)``.
See `Ramírez et al., 2021 <https://arxiv.org/abs/2010.04237>`_ and
`Le Vaillant et al., 2021 <https://arxiv.org/abs/2106.14856>`_.
"""

from __future__ import annotations

import math
from typing import Any

import librosa
import numpy as np
import torch
from torch import nn

#: Accepted values of ``LogMel(normalize=...)``.
NORMALIZATIONS = ("range", "standardize", "none")


class LogMel(nn.Module):
    """Log-mel spectrogram of audio ``(batch, channels, samples)``.

    The short-time Fourier transform uses a periodic Hann window of ``n_fft``
    samples and ``center=True`` framing with ``pad_mode`` padding, exactly like
    ``librosa.stft``, so a signal of ``samples`` samples gives
    ``frames = 1 + samples // hop_length``. The magnitude is scaled by
    ``2 / sum(window)`` so that a full-scale sine centred on an FFT bin has
    magnitude 1; the power is projected on a mel filterbank from
    ``librosa.filters.mel`` and converted to dB:

    ``mel_db = 10 * log10(max(mel_power, 10 ** (floor_db / 10)))``.

    With ``mel_norm=None`` (triangles peaking at 1, the default) a full-scale
    sine at a band centre reads about 0 dB; with ``mel_norm="slaney"`` the
    result equals ``librosa.feature.melspectrogram`` (times the constant
    ``(2 / sum(window)) ** 2``) in dB.

    Normalization (``normalize``):

    * ``"range"`` — ``(mel_db - floor_db) / -floor_db``: the floor maps to 0 and
      0 dB to 1 (louder, broadband content may exceed 1; nothing is clipped).
    * ``"standardize"`` — per item: subtract the mean and divide by the standard
      deviation over ``(channels, n_mels, frames)`` (plus ``1e-5``).
    * ``"none"`` — plain dB values on ``[floor_db, ...]``.

    Args:
        sample_rate: Audio sample rate in Hz (> 0).
        n_fft: FFT size in samples (>= 2). Default 1024.
        hop_length: Hop between frames in samples (>= 1). Default 256.
        n_mels: Number of mel bands (>= 1). Default 128.
        f_min_hz: Lowest mel band edge in Hz, on ``[0, f_max_hz)``. Default 0.
        f_max_hz: Highest mel band edge in Hz, ``<= sample_rate / 2``;
            ``None`` for ``sample_rate / 2``.
        floor_db: Log floor in dB (< 0). Default −120 dB.
        normalize: ``"range"``, ``"standardize"`` or ``"none"`` (see above).
            Default ``"range"``.
        downmix: Average the channels to mono first, so the output has one
            channel. Default False.
        mel_norm: ``None`` (unit-peak triangles) or ``"slaney"`` (unit-area
            triangles, librosa's default), passed to ``librosa.filters.mel``.
        htk: Use the HTK mel formula instead of Slaney's. Default False.
        pad_mode: Padding of the centred frames, ``"constant"`` (zeros, librosa's
            default) or ``"reflect"``.

    Raises:
        ValueError: on an invalid argument; the message names it.

    Example:
        >>> feat = LogMel(22050)
        >>> feat(torch.zeros(2, 1, 40960)).shape
        torch.Size([2, 1, 128, 161])
    """

    def __init__(
        self,
        sample_rate: float,
        n_fft: int = 1024,
        hop_length: int = 256,
        n_mels: int = 128,
        f_min_hz: float = 0.0,
        f_max_hz: float | None = None,
        floor_db: float = -120.0,
        normalize: str = "range",
        downmix: bool = False,
        mel_norm: str | None = None,
        htk: bool = False,
        pad_mode: str = "constant",
    ) -> None:
        super().__init__()
        if not sample_rate > 0:
            raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
        if int(n_fft) < 2:
            raise ValueError(f"n_fft must be >= 2 samples, got {n_fft}")
        if int(hop_length) < 1:
            raise ValueError(f"hop_length must be >= 1 sample, got {hop_length}")
        if int(n_mels) < 1:
            raise ValueError(f"n_mels must be >= 1, got {n_mels}")
        nyquist = sample_rate / 2.0
        f_max = nyquist if f_max_hz is None else float(f_max_hz)
        if not (0.0 <= f_min_hz < f_max <= nyquist + 1e-9):
            raise ValueError(
                f"need 0 <= f_min_hz < f_max_hz <= sample_rate / 2 = {nyquist} Hz, "
                f"got f_min_hz={f_min_hz}, f_max_hz={f_max}"
            )
        if not floor_db < 0:
            raise ValueError(f"floor_db must be negative (e.g. -120 dB), got {floor_db}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if mel_norm not in (None, "slaney"):
            raise ValueError(f"mel_norm must be None or 'slaney', got {mel_norm!r}")
        if pad_mode not in ("constant", "reflect"):
            raise ValueError(f"pad_mode must be 'constant' or 'reflect', got {pad_mode!r}")

        self.sample_rate = float(sample_rate)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.n_mels = int(n_mels)
        self.f_min_hz = float(f_min_hz)
        self.f_max_hz = f_max
        self.floor_db = float(floor_db)
        self.normalize = normalize
        self.downmix = bool(downmix)
        self.pad_mode = pad_mode

        fb = librosa.filters.mel(
            sr=self.sample_rate,
            n_fft=self.n_fft,
            n_mels=self.n_mels,
            fmin=self.f_min_hz,
            fmax=self.f_max_hz,
            htk=htk,
            norm=mel_norm,
            dtype=np.float64,
        )
        window = torch.hann_window(self.n_fft, periodic=True, dtype=torch.float64)
        # Magnitude scale: a full-scale sine on a bin centre has |X| = sum(w) / 2.
        self.power_scale = float((2.0 / window.sum()) ** 2)
        self.register_buffer("mel_basis", torch.from_numpy(fb).float(), persistent=False)
        self.register_buffer("window", window.float(), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` input samples: ``1 + num_samples // hop_length``."""
        return 1 + int(num_samples) // self.hop_length

    def mel_power(self, audio: torch.Tensor) -> torch.Tensor:
        """Linear mel power (before the log), ``(batch, channels, n_mels, frames)``.

        Args:
            audio: ``(batch, channels, samples)`` float tensor.

        Returns:
            Mel power in the input's dtype (half inputs are computed in float32).

        Raises:
            ValueError: if ``audio`` is not a 3-D floating-point tensor.
        """
        return self._mel_power(audio).to(audio.dtype)

    def _mel_power(self, audio: torch.Tensor) -> torch.Tensor:
        """Mel power in float32 (or float64 for float64 input); validates ``audio``."""
        spec, batch, channels = self._stft(audio)
        return self._project(spec, batch, channels)

    def _project(self, spec: torch.Tensor, batch: int, channels: int) -> torch.Tensor:
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(self.mel_basis.to(device=spec.device, dtype=power.dtype), power) * self.power_scale
        return mel.reshape(batch, channels, self.n_mels, -1)

    def _stft(self, audio: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Complex STFT ``(batch * channels, n_fft // 2 + 1, frames)`` of validated ``audio``."""
        if not isinstance(audio, torch.Tensor) or audio.dim() != 3:
            shape = tuple(audio.shape) if isinstance(audio, torch.Tensor) else type(audio).__name__
            raise ValueError(
                f"LogMel expects audio of shape (batch, channels, samples), got {shape}; "
                "add missing axes with audio[None] or audio[:, None]"
            )
        if not audio.is_floating_point():
            raise ValueError(f"LogMel expects floating-point audio, got dtype {audio.dtype}")
        in_dtype = audio.dtype
        x = audio if in_dtype in (torch.float32, torch.float64) else audio.float()
        if self.downmix:
            x = x.mean(dim=1, keepdim=True)
        batch, channels, samples = x.shape
        if samples < 1:
            raise ValueError("LogMel needs at least one sample per channel")
        if self.pad_mode == "reflect" and samples <= self.n_fft // 2:
            raise ValueError(
                f"pad_mode='reflect' needs more than n_fft // 2 = {self.n_fft // 2} samples, got {samples}; "
                "use pad_mode='constant' or longer audio"
            )
        window = self.window.to(device=x.device, dtype=x.dtype)
        spec = torch.stft(
            x.reshape(batch * channels, samples),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.n_fft,
            window=window,
            center=True,
            pad_mode=self.pad_mode,
            return_complex=True,
        )
        return spec, batch, channels

    def _log(self, mel: torch.Tensor) -> torch.Tensor:
        floor = 10.0 ** (self.floor_db / 10.0)
        db = 10.0 * torch.log10(torch.clamp(mel, min=floor))
        if self.normalize == "range":
            return (db - self.floor_db) / (-self.floor_db)
        if self.normalize == "standardize":
            mean = db.mean(dim=(1, 2, 3), keepdim=True)
            std = db.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
            return (db - mean) / (std + 1e-5)
        return db

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Log-mel spectrogram.

        Args:
            audio: ``(batch, channels, samples)`` float tensor on any device.

        Returns:
            ``(batch, channels, n_mels, frames)`` (``channels`` is 1 with
            ``downmix=True``), normalized as set by ``normalize``, in the input's
            dtype and on its device.

        Raises:
            ValueError: if ``audio`` is not a 3-D floating-point tensor.
        """
        return self._log(self._mel_power(audio)).to(audio.dtype)

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate:g}, n_fft={self.n_fft}, hop_length={self.hop_length}, "
            f"n_mels={self.n_mels}, f_min_hz={self.f_min_hz:g}, f_max_hz={self.f_max_hz:g}, "
            f"floor_db={self.floor_db:g}, normalize={self.normalize!r}, downmix={self.downmix}"
        )


class IFMel(LogMel):
    """GANSynth's IF-Mel input: log-mel magnitude plus mel-scaled instantaneous frequency.

    Engel et al., "GANSynth: Adversarial Neural Audio Synthesis", ICLR 2019:
    the phase is unwrapped along time, projected on the mel scale, and
    differentiated in time (the instantaneous frequency, IF). Differencing and
    the (linear) mel projection commute, so the IF of every STFT bin is the
    principal value of its frame-to-frame phase difference divided by π (on
    [−1, 1]; the first frame uses its phase), and the mel-scaled IF is the
    average of the bins' IF weighted by each mel triangle (rows of the mel
    filterbank normalized to sum 1). The magnitude channels are exactly
    :class:`LogMel`'s output with the same arguments.

    Args:
        Those of :class:`LogMel`.

    Shapes:
        audio ``(batch, channels, samples)`` → ``(batch, 2 * channels, n_mels,
        frames)``: channels ``0 .. C-1`` the log-mel magnitude (normalized as
        ``normalize`` says), channels ``C .. 2C-1`` the mel-scaled IF on [−1, 1].

    Raises:
        ValueError: as :class:`LogMel`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        w = self.mel_basis / self.mel_basis.sum(dim=1, keepdim=True).clamp_min(1e-12)
        self.register_buffer("if_basis", w, persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec, batch, channels = self._stft(audio)
        mag = self._log(self._project(spec, batch, channels))
        phase = torch.angle(spec)
        dphi = torch.diff(phase, dim=-1, prepend=torch.zeros_like(phase[..., :1]))
        inst = torch.remainder(dphi + math.pi, 2 * math.pi) - math.pi
        inst = torch.matmul(self.if_basis.to(device=spec.device, dtype=inst.dtype), inst / math.pi)
        inst = inst.reshape(batch, channels, self.n_mels, -1)
        return torch.cat([mag, inst], dim=1).to(audio.dtype)
