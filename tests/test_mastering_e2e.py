"""End-to-end smoke test: the real quick config (real masters from Debian soundtracks) with tiny overrides through the real CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

QUICK = Path(__file__).resolve().parent.parent / "recipes" / "mastering" / "quick.yaml"
TINY = [
    "data.train_albums=[singularity]", "data.valid_albums=[hyperrogue]", "data.test_albums=[nexuiz]",
    "data.tracks_per_album={train: 2, valid: 1, test: 1}", "data.excerpts_per_track=1", "data.excerpt_seconds=8",
    "model.context_seconds=0.5", "model.frame_seconds=0.25", "model.hop_length=2048", "model.n_mels=32",
    "model.encoder_kwargs={width_mult: 0.25}",
    "train.batch_size=2", "render.num_workers=1", "train.epochs=1", "train.steps_per_epoch=3",
    "train.valid_steps=2", "train.pretrain_steps=2", "train.num_threads=1",
    "evaluate.cmaes_renders=8", "evaluate.excerpt_seconds=3", "evaluate.saturation_tracks=1",
]


def _cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "deepafx.cli", *map(str, args)], capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, f"deepafx {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}"
    return proc


def test_train_process_evaluate(tmp_path):
    sets = [x for o in TINY for x in ("--set", o)]
    run, data = tmp_path / "run", tmp_path / "data"
    _cli("train", "--config", QUICK, "--run-dir", run, "--data-dir", data, *sets)
    assert (run / "checkpoints" / "best.pt").exists() and (run / "checkpoints" / "last.pt").exists()
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    epochs = [h for h in history if "valid_loss" in h]
    assert [h["epoch"] for h in epochs] == [-1, 0]  # validated before training, then after the epoch
    assert all(np.isfinite(h["valid_loss"]) for h in epochs)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert "recipe: mastering" in (run / "config.yaml").read_text()

    # process a held-out piece at another rate, mono, with automation and a plot
    test_input = sorted((data / "test").glob("*_input.wav"))[0]
    audio, sr = sf.read(test_input, dtype="float32", always_2d=True)
    mono48 = tmp_path / "in48.wav"
    import soxr
    sf.write(mono48, soxr.resample(audio[: 4 * sr].mean(1), sr, 48000), 48000)
    out = tmp_path / "out.wav"
    proc = _cli("process", "--checkpoint", run, mono48, out, "--automation", tmp_path / "auto.json", "--plot", tmp_path / "p.png")
    y, sr_out = sf.read(out, always_2d=True)
    assert sr_out == 48000 and abs(y.shape[0] - 4 * 48000) <= 1 and y.shape[1] == 2
    assert "48000" in proc.stdout + proc.stderr  # the conversion is stated
    auto = json.loads((tmp_path / "auto.json").read_text())
    assert len(json.dumps(auto)) > 100
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # evaluate on the held-out test pieces (default output RUN/eval): four methods, finite metrics
    _cli("evaluate", "--config", QUICK, "--checkpoint", run, "--data-dir", data, *sets)
    results = json.loads((run / "eval" / "results.json").read_text())["test"]
    assert set(results) >= {"unprocessed", "default", "oracle_cmaes", "model"}
    for method, m in results.items():
        for key in ("mfcc_cosine", "mrstft", "lufs_error"):
            assert np.isfinite(m[key]) and m[key] >= 0, (method, key, m[key])
    assert all(results[m]["seconds_per_track"] > 0 for m in ("oracle_cmaes", "model"))
    assert (run / "eval" / "results.md").read_text().count("|") > 10
    saturation = json.loads((run / "eval" / "results.json").read_text())["saturation"]
    assert len(saturation["tracks"]) == 1 and 0.0 <= saturation["max_share"] <= 1.0
    assert "saturation_share" in auto and "saturation:" in proc.stdout
