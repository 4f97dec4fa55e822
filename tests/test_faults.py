"""Faults survived, nothing lost: SIGTERM/Ctrl-C mid-epoch, unreadable checkpoints, a changed config on
resume, a full disk during a checkpoint write. Real training (the mastering recipe on tiny real data)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deepafx.cli import main
from deepafx.config import load_config
from deepafx.recipes import get_recipe
from deepafx.recipes.mastering.train import MasteringTask, train_from_config
from deepafx.runs import atomic_save, load_checkpoint
from deepafx.trainer import Interrupted, config_changes, resume_may_change, signals_deferred, stop_on_signals

QUICK = Path(__file__).resolve().parent.parent / "recipes" / "mastering" / "quick_scores.yaml"
#: The mastering recipe's tiny settings (2 pretraining steps, then 2 epochs of 3 SPSA steps, one render worker).
TINY = get_recipe("mastering").tiny({})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fault_data")


def _cfg(*extra):
    return load_config(QUICK, TINY + list(extra))


def _epochs(history):
    return [h for h in history if h["stage"] == "spsa" and h.get("epoch", -1) >= 0]


def test_sigterm_mid_epoch_keeps_last_and_resume_is_exact(tmp_path, data_dir, monkeypatch):
    full = train_from_config(_cfg(), tmp_path / "a", data_dir)
    handlers = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))

    # SIGTERM arrives during the second SPSA step of epoch 1 (epoch 0 has 3 steps)
    original, calls = MasteringTask.step, {"spsa": 0}

    def step(self, stage, batch):
        if stage.name == "spsa":
            calls["spsa"] += 1
            if calls["spsa"] == 5:
                os.kill(os.getpid(), signal.SIGTERM)
        return original(self, stage, batch)

    monkeypatch.setattr(MasteringTask, "step", step)
    with pytest.raises(Interrupted) as info:
        train_from_config(_cfg(), tmp_path / "b", data_dir)
    monkeypatch.setattr(MasteringTask, "step", original)
    assert info.value.signum == signal.SIGTERM
    assert "SIGTERM" in str(info.value) and "--resume" in str(info.value) and "\n" not in str(info.value)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers  # handlers restored
    # last.pt is whole and is the end of epoch 0: 2 pretraining steps + 3 SPSA steps
    state = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["state"]
    assert (state["stage"], state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, 0, 5)
    assert not [p for p in (tmp_path / "b").rglob("*.tmp")]

    resumed = train_from_config(_cfg(), tmp_path / "b", data_dir, resume=True)
    assert [h["train_loss"] for h in _epochs(resumed["history"])] == [h["train_loss"] for h in _epochs(full["history"])]
    assert [h["valid_loss"] for h in _epochs(resumed["history"])] == [h["valid_loss"] for h in _epochs(full["history"])]
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    # a changed config is refused on resume, naming every changed key; allowed keys pass the check
    with pytest.raises(ValueError) as refused:
        train_from_config(_cfg("train.lr=0.01", "model.n_mels=40", "render.num_workers=2"), tmp_path / "b", data_dir,
                          resume=True)
    msg = str(refused.value)
    assert "train.lr (0.001 → 0.01)" in msg and "model.n_mels (32 → 40)" in msg and "render.num_workers" not in msg.split(
        "; train with")[0]
    done = train_from_config(_cfg("render.num_workers=2", "train.log_every=1"), tmp_path / "b", data_dir, resume=True)
    assert done["history"] == resumed["history"]  # finished: nothing more to train


def test_signal_during_checkpoint_write_waits_for_it():
    """A signal inside :func:`signals_deferred` is raised only when the block (a checkpoint write) ends."""
    done = []
    with stop_on_signals():
        with pytest.raises(Interrupted):
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                done.append("written")
    assert done == ["written"]
    with stop_on_signals(), pytest.raises(Interrupted) as info:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    assert info.value.signum == signal.SIGTERM


def _descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_to_the_cli_leaves_no_process_and_a_whole_checkpoint(tmp_path, data_dir):
    """``deepafx train`` killed with SIGTERM while its render workers run: exit 143, one line, no orphans."""
    run = tmp_path / "run"
    sets = [a for o in TINY + ["train.epochs=100"] for a in ("--set", o)]
    proc = subprocess.Popen([sys.executable, "-m", "deepafx.cli", "train", "--config", str(QUICK), "--run-dir", str(run),
                             "--data-dir", str(data_dir), *sets], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 300
        workers: set[int] = set()
        while time.time() < deadline and proc.poll() is None:
            history = run / "history.jsonl"
            if history.is_file() and any('"spsa"' in line for line in history.read_text().splitlines()) \
                    or (history.is_file() and len(history.read_text().splitlines()) >= 2):
                workers = _descendants(proc.pid)
                if workers:
                    break
            time.sleep(0.2)
        assert proc.poll() is None and workers, "training did not reach its SPSA stage with render workers"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    said = [line for line in err.splitlines() if line.startswith("deepafx train:")]  # not progress bars
    assert len(said) == 1 and said[0].startswith("deepafx train: interrupted: stopped by SIGTERM"), err[-2000:]
    assert "--resume" in said[0]
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    assert not [p for p in workers if _alive(p)], "render workers outlived the training process"
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["recipe"] == "mastering" and ckpt["state"]["global_step"] >= 2
    assert not [p for p in run.rglob("*.tmp")]


def test_unreadable_checkpoint_is_named_in_one_line(tmp_path, data_dir, capsys):
    bad = tmp_path / "run" / "checkpoints" / "last.pt"
    bad.parent.mkdir(parents=True)
    atomic_save({"recipe": "mastering", "model": {"w": torch.zeros(1000)}}, bad)
    bad.write_bytes(bad.read_bytes()[:300])  # truncated, as by a crash of a non-atomic copy
    with pytest.raises(RuntimeError) as info:
        load_checkpoint(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    sets = [a for o in TINY for a in ("--set", o)]
    code = main(["train", "--config", str(QUICK), "--run-dir", str(tmp_path / "run"), "--data-dir", str(data_dir),
                 "--resume", *sets])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("deepafx")]  # not progress bars
    assert code == 1 and len(err) == 1 and err[0].startswith("deepafx train: error: could not read checkpoint")
    assert str(bad) in err[0]
    assert bad.read_bytes()[:4] == b"PK\x03\x04" and bad.stat().st_size == 300  # left as it was


def test_config_changes_and_what_may_change():
    old = {"recipe": "mastering", "train": {"lr": 0.001, "seed": 0, "max_steps": 0},
           "render": {"num_workers": 1}, "chain": {"processors": [{"name": "a"}]}}
    new = {"recipe": "mastering", "train": {"lr": 0.001, "seed": 1, "max_steps": 7},
           "render": {"num_workers": 2}, "chain": {"processors": [{"name": "b"}]}, "evaluate": {"x": 1}}
    changes = config_changes(old, new)
    assert set(changes) == {"train.seed", "train.max_steps", "render.num_workers", "chain.processors", "evaluate"}
    assert changes["train.seed"] == (0, 1)
    assert sorted(k for k in changes if not resume_may_change(k)) == ["chain.processors", "train.seed"]
    assert resume_may_change("evaluate.cmaes_renders") and resume_may_change("evaluate")
    assert not resume_may_change("train.lr") and not resume_may_change("evaluated.x")


_FULL_DISK = r"""
import os, resource, signal, sys
import torch
from deepafx.runs import atomic_copy, atomic_save, load_checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the kernel then fails the write with EFBIG
path = sys.argv[1]
atomic_save({"step": 1, "w": torch.arange(10.0)}, path)
big = path + ".big"
atomic_save({"step": 3, "w": torch.zeros(1_000_000)}, big)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
try:
    atomic_save({"step": 2, "w": torch.zeros(1_000_000)}, path)
    print("saved")
except OSError as exc:
    print("errno", exc.errno)
    assert exc.filename == path and "the file there is unchanged" in exc.strerror, exc
try:
    atomic_copy(big, path)
    print("copied")
except OSError as exc:
    print("copy_errno", exc.errno)
os.unlink(big)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
print("step", load_checkpoint(path)["step"])
"""


def test_full_disk_during_checkpoint_write_keeps_the_previous_one(tmp_path):
    """A write that the kernel stops part way (file-size limit: the write fails mid-file as on a full disk), by
    atomic_save and by atomic_copy (a checkpoint carried into a branch)."""
    path = tmp_path / "checkpoints" / "last.pt"
    out = subprocess.run([sys.executable, "-c", _FULL_DISK, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split()
    import errno

    assert lines[:4] == ["errno", str(errno.EFBIG), "copy_errno", str(errno.EFBIG)], out.stdout
    assert lines[4:] == ["step", "1"]  # the previous checkpoint, intact and readable (after a save and a copy)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left
