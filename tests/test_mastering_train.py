"""Mastering trainer: exact resume, DDP agreement, and the real CLI."""

import json
from pathlib import Path

import pytest
import torch

from deepafx.config import load_config
from deepafx.recipes.mastering.train import train_from_config
from conftest import torchrun_train

QUICK = Path(__file__).resolve().parent.parent / "recipes" / "mastering" / "quick.yaml"
TINY = [
    "data.train_minutes=0.4", "data.max_piece_seconds=12", "data.min_piece_seconds=6",
    "model.context_seconds=0.5", "model.frame_seconds=0.25", "model.hop_length=2048", "model.n_mels=32",
    "model.encoder_kwargs={width_mult: 0.25}",
    "train.batch_size=2", "render.num_workers=1", "train.epochs=2", "train.steps_per_epoch=3",
    "train.valid_steps=2", "train.pretrain_steps=2", "train.num_threads=1", "train.seed=3",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mastering_data")


def _cfg(*extra):
    return load_config(QUICK, TINY + list(extra))


def test_resume_continues_exactly(tmp_path, data_dir):
    full = train_from_config(_cfg(), tmp_path / "a", data_dir)
    first = train_from_config(_cfg("train.epochs=1"), tmp_path / "b", data_dir)
    assert len(_epochs(first["history"])) == 1
    resumed = train_from_config(_cfg(), tmp_path / "b", data_dir, resume=True)
    assert len(_epochs(full["history"])) == 2
    assert [h["train_loss"] for h in _epochs(resumed["history"])] == [h["train_loss"] for h in _epochs(full["history"])]
    assert [h["valid_loss"] for h in _epochs(resumed["history"])] == [h["valid_loss"] for h in _epochs(full["history"])]
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the history file holds the same records as the uninterrupted run
    lines = [json.loads(x) for x in (tmp_path / "b" / "history.jsonl").read_text().splitlines()]
    assert [h.get("train_loss") for h in lines] == [h.get("train_loss") for h in full["history"]]
    # checkpoints are written atomically: no temporary files are left behind
    assert not [p for p in (tmp_path / "b").rglob("*") if p.name.endswith(".tmp")]
    # a fresh run into a folder with checkpoints keeps the earlier run whole, beside it
    before = (tmp_path / "b" / "checkpoints" / "last.pt").read_bytes()
    train_from_config(_cfg("train.epochs=1"), tmp_path / "b", data_dir)
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("b.previous-")]
    assert len(kept) == 1 and (kept[0] / "checkpoints" / "last.pt").read_bytes() == before
    assert (kept[0] / "history.jsonl").exists() and (tmp_path / "b" / "checkpoints" / "last.pt").exists()


def _epochs(history):
    return [h for h in history if h["stage"] == "spsa" and h.get("epoch", -1) >= 0]


def test_ddp_two_processes_agree(tmp_path, data_dir):
    proc = torchrun_train(QUICK, tmp_path / "ddp", data_dir, TINY + ["train.epochs=1", "train.steps_per_epoch=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = [json.loads(x) for x in (tmp_path / "ddp" / "history.jsonl").read_text().splitlines()]
    sums = _epochs(history)[-1]["param_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    last = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=False)
    assert last["state"]["global_step"] == 2 + 2  # pretrain steps + one epoch of 2 steps


def test_gain_augmentation_is_exact_for_the_reference_engineer(rng):
    """The trainer scales inputs and keeps targets: valid because the engineer is level-invariant."""
    import numpy as np

    from deepafx.recipes.mastering.engineer import master

    from conftest import music_like

    x = music_like(rng, 2, 5 * 44100) * 0.3
    ref = master(x, 44100)
    for g_db in (-12.0, 4.0):
        y = master(x * 10 ** (g_db / 20), 44100)
        assert np.abs(y - ref).max() < 2e-3 * np.abs(ref).max()
