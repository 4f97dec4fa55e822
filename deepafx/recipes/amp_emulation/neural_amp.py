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
``(mean(y) − mean(ŷ))² / mean(y²)``.

It trains **to convergence**, as a user trains their LSTM or NAM capture: every
``valid_every_updates`` updates the same loss is measured on a fixed set of
``valid_segments`` segments of the *validation* pairs (drawn once with the seed,
warm-up excluded); training stops after ``patience`` checks without a relative
improvement of ``min_improvement``, and the weights of the best check are kept
(early stopping, Prechelt, "Early stopping — but when?", 1998). ``budget_seconds``
and ``max_updates`` cap it; the result says which criterion stopped it and how
long it took, so its training cost is reported beside the automation model's.
Without validation pairs it trains until a cap. The seed fixes the initial
weights and the sequence of segments.

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
from dataclasses import dataclass, field
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
        budget_seconds: Wall-clock cap on training, seconds (``None``: none; then
            ``max_updates`` or early stopping must end it).
        max_updates: Cap on Adam updates (``None``: none).
        valid_every_updates: Updates between two validation checks.
        valid_segments: Validation segments (``segment_samples`` long, drawn once).
        patience: Validation checks without improvement before training stops.
        min_improvement: Relative decrease of the validation loss that counts as an improvement, [0, 1).
        match_model_time: The budget of earlier tables instead: train for exactly the automation
            model's training time (read from its checkpoint), no early stopping.
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
    budget_seconds: float | None = 1800.0
    max_updates: int | None = None
    valid_every_updates: int = 200
    valid_segments: int = 32
    patience: int = 8
    min_improvement: float = 0.005
    match_model_time: bool = False
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
        if self.budget_seconds is not None and not self.budget_seconds > 0:
            raise ValueError(f"budget_seconds must be > 0 s or null, got {self.budget_seconds}")
        if self.max_updates is not None and self.max_updates < 1:
            raise ValueError(f"max_updates must be >= 1 or null, got {self.max_updates}")
        if self.valid_every_updates < 1 or self.valid_segments < 1 or self.patience < 1:
            raise ValueError("valid_every_updates, valid_segments and patience must be >= 1")
        if not 0.0 <= self.min_improvement < 1.0:
            raise ValueError(f"min_improvement must be on [0, 1), got {self.min_improvement}")


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
        model: The trained :class:`LstmAmp` (eval mode; the best validation check's weights
            when validation pairs were given).
        updates: Adam updates made.
        segments: Training segments drawn.
        seconds: Wall time spent, seconds (validation checks included).
        final_loss: Mean training loss over the last 20 updates.
        stopped: What ended training: ``"early_stop"`` (no validation improvement for
            ``patience`` checks), ``"budget"`` (``budget_seconds``) or ``"max_updates"``.
        best_valid_loss: Validation loss of the kept weights (``None`` without validation pairs).
        best_update: Update count at the kept weights (the last update without validation pairs).
        valid_history: ``(updates, validation loss)`` of every check.
    """

    model: LstmAmp
    updates: int
    segments: int
    seconds: float
    final_loss: float
    stopped: str = "budget"
    best_valid_loss: float | None = None
    best_update: int = 0
    valid_history: list = field(default_factory=list)


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


def _segment_loss(model: LstmAmp, x: torch.Tensor, y: torch.Tensor, warmup: int, state=None) -> torch.Tensor:
    """Pre-emphasised ESR + DC error of one chunk (``(batch, 1, samples)``), after ``warmup`` samples."""
    y_hat, state = model(x, state)
    y_hat, target = y_hat[..., warmup:], y[..., warmup:]
    dc = (target.mean(-1) - y_hat.mean(-1)).pow(2).sum() / (target.pow(2).mean(-1).sum() + 1e-8)
    return esr_loss(y_hat, target).mean() + dc, state


def train_neural_amp(tracks: Sequence[tuple[np.ndarray, np.ndarray]], config: NeuralAmpConfig,
                     budget_seconds: float | None = None,
                     valid_tracks: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> TrainedNeuralAmp:
    """Train an :class:`LstmAmp` on ``(DI, target)`` pairs, to convergence on ``valid_tracks`` or to a cap.

    Args:
        tracks: Training ``(input, target)`` pairs, each ``(1, samples)`` float32 (mono).
        config: :class:`NeuralAmpConfig`.
        budget_seconds: Wall-clock cap in seconds (> 0), replacing ``config.budget_seconds`` when
            given: no batch is started that the mean time of the batches so far says would end past it.
        valid_tracks: Validation pairs (mono, as ``tracks``): early stopping on them, keeping the
            best weights (module docstring). ``None`` or empty: train until a cap.

    Returns:
        :class:`TrainedNeuralAmp`.

    Raises:
        ValueError: no tracks, a non-positive budget, tracks that are not mono, or no
            stopping criterion at all (no cap and no validation pairs).
    """
    if not tracks:
        raise ValueError("the neural amp needs at least one training pair")
    budget = config.budget_seconds if budget_seconds is None else float(budget_seconds)
    if budget is not None and not budget > 0:
        raise ValueError(f"budget_seconds must be > 0 s, got {budget}")
    valid_tracks = list(valid_tracks or [])
    if any(x.shape[0] != 1 or y.shape[0] != 1 for x, y in list(tracks) + valid_tracks):
        raise ValueError("the neural amp models mono DI → mono output; got multichannel tracks")
    if budget is None and config.max_updates is None and not valid_tracks:
        raise ValueError("nothing would stop the neural amp's training: give validation pairs, "
                         "budget_seconds or max_updates")
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, 101])
    model = LstmAmp(config.hidden_size, config.threads)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    valid = None
    if valid_tracks:
        vx, vy = _draw_segments(valid_tracks, np.random.default_rng([config.seed, 202]), config.valid_segments,
                                config.segment_samples, config.min_segment_rms)
        valid = torch.from_numpy(vx), torch.from_numpy(vy)
    updates = segments = batches = 0
    recent: list[float] = []
    history: list[tuple[int, float]] = []
    best_loss, best_update, best_state, since_best = math.inf, 0, None, 0
    stopped = "budget"
    chunks = max(1, math.ceil((config.segment_samples - config.warmup_samples) / config.tbptt_samples))

    def check() -> bool:
        """Validation check; ``True`` when patience ran out."""
        nonlocal best_loss, best_update, best_state, since_best
        model.eval()
        with torch.no_grad():
            loss = float(_segment_loss(model, valid[0], valid[1], config.warmup_samples)[0])
        model.train()
        history.append((updates, loss))
        if loss < best_loss * (1.0 - config.min_improvement) or best_state is None:
            best_loss, best_update, since_best = loss, updates, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
        return since_best >= config.patience

    model.train()
    with torch_threads(config.threads):
        while True:
            elapsed = time.perf_counter() - t0
            if budget is not None and elapsed + (elapsed / batches if batches else 0.0) > budget:
                stopped = "budget"
                break
            if config.max_updates is not None and updates >= config.max_updates:
                stopped = "max_updates"
                break
            x, y = _draw_segments(tracks, rng, config.batch_size, config.segment_samples, config.min_segment_rms)
            segments += len(x)
            x, y = torch.from_numpy(x), torch.from_numpy(y)
            state = None
            if config.warmup_samples:
                with torch.no_grad():
                    _, state = model(x[..., : config.warmup_samples])
            done = False
            for c in range(chunks):
                a = config.warmup_samples + c * config.tbptt_samples
                b = min(a + config.tbptt_samples, config.segment_samples)
                loss, state = _segment_loss(model, x[..., a:b], y[..., a:b], 0, state)
                state = (state[0].detach(), state[1].detach())
                opt.zero_grad()
                loss.backward()
                opt.step()
                updates += 1
                recent = (recent + [loss.item()])[-20:]
                if valid is not None and updates % config.valid_every_updates == 0 and check():
                    stopped, done = "early_stop", True
                    break
            batches += 1
            if done:
                break
    if valid is not None:
        if not history or history[-1][0] != updates:
            check()
        model.load_state_dict(best_state)
    model.eval()
    return TrainedNeuralAmp(model, updates, segments, time.perf_counter() - t0,
                            float(np.mean(recent)) if recent else float("nan"), stopped,
                            None if valid is None else float(best_loss), best_update if valid is not None else updates,
                            history)
