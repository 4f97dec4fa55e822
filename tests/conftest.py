"""Shared fixtures. Tests use real components; a test skips only when a component is absent."""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def music_like(rng, channels=2, samples=44100, sample_rate=44100):
    """Decaying harmonic tones plus a little noise: deterministic, music-like test audio (float32)."""
    t = np.arange(samples) / sample_rate
    sig = np.zeros((channels, samples))
    for k, f in enumerate((110.0, 220.0, 330.0, 523.25, 880.0)):
        env = np.exp(-((t * 2.0 + 0.3 * k) % 1.0) * 3.0)
        for c in range(channels):
            sig[c] += 0.15 * env * np.sin(2 * np.pi * f * t + 0.7 * c + k)
    sig += 0.01 * rng.standard_normal((channels, samples))
    return sig.astype(np.float32)
