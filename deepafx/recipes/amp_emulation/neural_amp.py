"""The baseline users pick instead: a direct neural amp model (LSTM with a residual skip).

A single-layer LSTM reads the DI sample by sample; a linear layer maps its
hidden state to the output, added to the input (the residual skip of Wright,
Damskägg & Välimäki, DAFx 2019, also used by Neural Amp Modeler's LSTM
models): ``ŷ[n] = x[n] + w · h[n] + b``.

Training follows Wright et al. 2019: random segments of the training pairs;
the first ``warmup_samples`` of each segment run without gradient to settle the
hidden state; then truncated back-propagation through time, one Adam update
per ``tbptt_samples`` chunk, state carried (detached) across chunks. Loss:
ESR of the pre-emphasised signals (``1 − 0.95 z⁻¹``) plus their DC error
``(mean(y) − mean(ŷ))² / mean(y²)``. Training stops at a wall-clock budget
(the evaluation gives it the automation model's own training time), so the
number of updates depends on the machine; the seed fixes the initial weights
and the sequence of segments.

References:
    A. Wright, E.-P. Damskägg, V. Välimäki, "Real-time black-box modelling with
    recurrent neural networks", DAFx 2019.
    A. Wright, V. Välimäki, "Perceptual loss function for neural modelling of
    audio systems", ICASSP 2020.
    S. Atkinson, Neural Amp Modeler (NAM), https://github.com/sdatkinson/neural-amp-modeler.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from deepafx.recipes.amp_emulation.esr import esr_loss

__all__ = ["LstmAmp", "NeuralAmpConfig", "TrainedNeuralAmp", "train_neural_amp"]


@dataclass
class NeuralAmpConfig:
    """Settings of the LSTM baseline (the ``evaluate.neural_amp`` mapping).

    Attributes:
        hidden_size: LSTM hidden units (Wright et al.: 32–96).
        segment_samples: Samples per training segment, warm-up included.
        warmup_samples: Leading samples of a segment run without gradient.
        tbptt_samples: Samples per truncated back-propagation chunk (one update each).
        batch_size: Segments per batch.
        lr: Adam learning rate.
        seed: Seed of the initial weights and of the segment draws.
        budget_seconds: Wall-clock training budget in seconds (``None``: the
            automation model's measured training time).
        min_segment_rms: Segments quieter than this rms (target) are redrawn.
        threads: torch threads while training and processing (an LSTM step is a small matrix
            product: on a busy 2-core machine one thread ran an update 4–50x faster than two).
    """

    hidden_size: int = 32
    segment_samples: int = 22050
    warmup_samples: int = 1000
    tbptt_samples: int = 2048
    batch_size: int = 16
    lr: float = 5e-3
    seed: int = 0
    budget_seconds: float | None = None
    min_segment_rms: float = 1e-3
    threads: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.hidden_size <= 1024:
            raise ValueError(f"hidden_size must be in [1, 1024], got {self.hidden_size}")
        if not 0 <= self.warmup_samples < self.segment_samples:
            raise ValueError(f"need 0 <= warmup_samples ({self.warmup_samples}) < segment_samples "
                             f"({self.segment_samples})")
        if self.tbptt_samples < 1 or self.batch_size < 1 or self.threads < 1 or not self.lr > 0:
            raise ValueError("tbptt_samples, batch_size and threads must be >= 1 and lr > 0")


@contextlib.contextmanager
def torch_threads(count: int):
    """Run the block with ``count`` torch threads, restoring the previous count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LstmAmp(nn.Module):
    """``ŷ = x + Linear(LSTM(x))``: one LSTM layer and a residual skip (Wright et al. 2019).

    Args:
        hidden_size: LSTM hidden units.
    """

    def __init__(self, hidden_size: int = 32, threads: int = 1):
        super().__init__()
        self.threads = int(threads)
        self.lstm = nn.LSTM(1, hidden_size, num_layers=1, batch_first=True)
        self.out = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        """``(batch, 1, samples)`` → ``((batch, 1, samples), state)``; ``state`` continues a stream."""
        h, state = self.lstm(x.transpose(1, 2), state)
        return x + self.out(h).transpose(1, 2), state

    @property
    def num_parameters(self) -> int:
        return int(sum(p.numel() for p in self.parameters()))

    @torch.no_grad()
    def process(self, audio: np.ndarray, chunk_samples: int = 1 << 16) -> np.ndarray:
        """Process a whole track, state carried across chunks.

        Args:
            audio: ``(1, samples)`` float32 (mono DI).
            chunk_samples: Samples per LSTM call (the output does not depend on it).

        Returns:
            ``(1, samples)`` float32, with :attr:`threads` torch threads.
        """
        x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
        outs, state = [], None
        with torch_threads(self.threads):
            for start in range(0, x.shape[-1], chunk_samples):
                y, state = self(x[..., start : start + chunk_samples], state)
                outs.append(y)
        return torch.cat(outs, -1)[0].numpy()


@dataclass
class TrainedNeuralAmp:
    """Result of :func:`train_neural_amp`.

    Attributes:
        model: The trained :class:`LstmAmp` (eval mode).
        updates: Adam updates made.
        segments: Training segments drawn.
        seconds: Wall time spent, seconds.
        final_loss: Mean loss over the last 20 updates.
    """

    model: LstmAmp
    updates: int
    segments: int
    seconds: float
    final_loss: float


def _draw_segments(tracks: Sequence[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator, count: int,
                   length: int, min_rms: float) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random aligned segments ``(count, 1, length)`` of input and target (long tracks drawn more often)."""
    lengths = np.array([x.shape[-1] for x, _ in tracks], dtype=float)
    usable = np.maximum(lengths - length, 0)
    p = (usable + 1) / (usable + 1).sum()
    xs, ys = [], []
    for _ in range(count):
        for _attempt in range(20):
            i = int(rng.choice(len(tracks), p=p))
            x, y = tracks[i]
            start = int(rng.integers(0, max(x.shape[-1] - length, 0) + 1))
            xi = x[:1, start : start + length]
            yi = y[:1, start : start + length]
            if xi.shape[-1] < length:
                pad = length - xi.shape[-1]
                xi, yi = np.pad(xi, ((0, 0), (0, pad))), np.pad(yi, ((0, 0), (0, pad)))
            if float(np.sqrt(np.mean(yi.astype(np.float64) ** 2))) >= min_rms:
                break
        xs.append(xi)
        ys.append(yi)
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)


def train_neural_amp(tracks: Sequence[tuple[np.ndarray, np.ndarray]], config: NeuralAmpConfig,
                     budget_seconds: float) -> TrainedNeuralAmp:
    """Train an :class:`LstmAmp` on ``(DI, target)`` pairs until ``budget_seconds`` of wall time have passed.

    Args:
        tracks: ``(input, target)`` pairs, each ``(1, samples)`` float32 (mono).
        config: :class:`NeuralAmpConfig`.
        budget_seconds: Wall-clock budget in seconds (> 0): no batch is started that the mean
            time of the batches so far says would end past it.

    Returns:
        :class:`TrainedNeuralAmp`.

    Raises:
        ValueError: no tracks, a non-positive budget, or tracks that are not mono.
    """
    if not tracks:
        raise ValueError("the neural amp needs at least one training pair")
    if not budget_seconds > 0:
        raise ValueError(f"budget_seconds must be > 0 s, got {budget_seconds}")
    if any(x.shape[0] != 1 or y.shape[0] != 1 for x, y in tracks):
        raise ValueError("the neural amp models mono DI → mono output; got multichannel tracks")
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, 101])
    model = LstmAmp(config.hidden_size, config.threads)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    updates = segments = batches = 0
    recent: list[float] = []
    train_len = config.segment_samples - config.warmup_samples
    chunks = max(1, math.ceil(train_len / config.tbptt_samples))
    model.train()
    with torch_threads(config.threads):
        while True:
            elapsed = time.perf_counter() - t0
            if elapsed + (elapsed / batches if batches else 0.0) > budget_seconds:
                break
            x, y = _draw_segments(tracks, rng, config.batch_size, config.segment_samples, config.min_segment_rms)
            segments += len(x)
            x, y = torch.from_numpy(x), torch.from_numpy(y)
            state = None
            if config.warmup_samples:
                with torch.no_grad():
                    _, state = model(x[..., : config.warmup_samples])
            for c in range(chunks):
                a = config.warmup_samples + c * config.tbptt_samples
                b = min(a + config.tbptt_samples, config.segment_samples)
                y_hat, state = model(x[..., a:b], state)
                state = (state[0].detach(), state[1].detach())
                target = y[..., a:b]
                dc = (target.mean(-1) - y_hat.mean(-1)).pow(2).sum() / (target.pow(2).mean(-1).sum() + 1e-8)
                loss = esr_loss(y_hat, target).mean() + dc
                opt.zero_grad()
                loss.backward()
                opt.step()
                updates += 1
                recent = (recent + [loss.item()])[-20:]
            batches += 1
    model.eval()
    return TrainedNeuralAmp(model, updates, segments, time.perf_counter() - t0,
                            float(np.mean(recent)) if recent else float("nan"))
