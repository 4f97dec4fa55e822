"""Shared fixtures. Tests use real components; a test skips only when a component is absent."""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)


def load_script(name: str):
    """The module of ``benchmarks/<name>.py`` (a script, not a package: loaded from its file)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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


def torchrun_train(config, run_dir, data_dir, overrides, nproc=2, timeout=600):
    """Run ``deepafx train`` under ``torchrun --standalone --nproc_per_node nproc`` (gloo on CPU).

    Returns the completed process; the caller asserts on it and on the run folder.
    """
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun") or f"{sys.executable} -m torch.distributed.run"
    cmd = (f"{torchrun} --standalone --nproc_per_node {nproc} -m deepafx.cli train --config {config} "
           f"--run-dir {run_dir} --data-dir {data_dir} " + " ".join(f"--set '{o}'" for o in overrides))
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="session")
def bank_dir(tmp_path_factory):
    """The real DX7 factory banks (Debian hexter), fetched once; skips when they or the GM SoundFont are absent."""
    from pathlib import Path

    from deepafx.recipes.dexed_matching.data import DEFAULT_SOUNDFONT
    from deepafx.recipes.dexed_matching.presets import fetch_hexter_banks

    if not Path(DEFAULT_SOUNDFONT).exists():
        pytest.skip(f"General MIDI SoundFont {DEFAULT_SOUNDFONT} absent (apt-get install fluid-soundfont-gm)")
    try:
        return fetch_hexter_banks(tmp_path_factory.mktemp("hexter"))
    except RuntimeError as exc:
        pytest.skip(f"DX7 factory banks unavailable: {exc}")
