"""Crash isolation: aborting and hanging plugins, and no orphan worker processes."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from deepafx.chain import chain
from deepafx.fx import FxLayer
from deepafx.workers import WorkerError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); check its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _fault(**options):
    return chain({"backend": "testing.fault", "name": "f", "options": options}, sample_rate=44100)


def test_abort_once_is_survived_and_retried(tmp_path):
    spec = _fault(mode="abort", on_render=2, once_file=str(tmp_path / "crashed"))
    x = torch.ones(2, 1, 256)
    with FxLayer(spec, batch_size=2, num_workers=2, timeout_seconds=30) as layer:
        layer.eval()
        p = torch.full((2, 1), 0.5)
        layer(x, p)
        pids = layer.pool.pids
        y = layer(x, p)  # the 2nd render of one instance aborts; its worker restarts and retries
        assert (tmp_path / "crashed").exists()
        assert layer.pool.restarts == 1
        torch.testing.assert_close(y, x)  # gain_db = 0 at p = 0.5
        assert sorted(layer.pool.pids) != sorted(pids)
        assert sum(not _alive(p) for p in pids) == 1


def test_last_timeline_orders_send_work_and_replies(tmp_path):
    spec = _fault(mode="abort", on_render=10**9, once_file=str(tmp_path / "never"))
    with FxLayer(spec, batch_size=3, num_workers=2, timeout_seconds=30) as layer:
        assert layer.pool.last_timeline == {}
        t0 = time.perf_counter()
        layer(torch.ones(3, 1, 256), torch.full((3, 1), 0.5, requires_grad=True)).sum().backward()
        t1 = time.perf_counter()
        tl = layer.pool.last_timeline
        assert sorted(tl["workers"]) == [0, 1]
        for start, end in tl["workers"].values():  # one monotonic clock across the local processes
            assert t0 <= tl["sent"] <= start <= end <= tl["received"] <= t1


def test_always_crashing_plugin_raises_clear_error_and_training_survives():
    spec = _fault(mode="abort", on_render=1)
    with FxLayer(spec, batch_size=1, num_workers=1, timeout_seconds=30, max_retries=1) as layer:
        layer.eval()
        with pytest.raises(WorkerError, match=r"died with signal SIGABRT.*gave up after 2 attempt"):
            layer(torch.ones(1, 1, 64), torch.full((1, 1), 0.5))
        assert layer.pool.restarts == 2
    assert os.getpid() > 0  # still here


def test_hanging_plugin_times_out():
    spec = _fault(mode="hang", on_render=1)
    with FxLayer(spec, batch_size=1, num_workers=1, timeout_seconds=2, max_retries=0) as layer:
        layer.eval()
        t0 = time.monotonic()
        with pytest.raises(WorkerError, match="timed out after 2 s"):
            layer(torch.ones(1, 1, 64), torch.full((1, 1), 0.5))
        assert time.monotonic() - t0 < 15


def test_python_error_in_plugin_is_reraised_not_retried():
    spec = _fault(mode="raise", on_render=1)
    with FxLayer(spec, batch_size=1, num_workers=1) as layer:
        layer.eval()
        with pytest.raises(Exception, match="raised on purpose"):
            layer(torch.ones(1, 1, 64), torch.full((1, 1), 0.5))
        assert layer.pool.restarts == 0


SCRIPT = textwrap.dedent("""
    import os, signal, sys, time, torch
    # a shell that starts jobs in the background sets SIGINT to "ignore" for them; act as a terminal would
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from deepafx.chain import chain
    from deepafx.fx import FxLayer
    mode = sys.argv[1]
    spec = chain({"backend": "testing.fault", "name": "f",
                  "options": {"mode": "hang" if mode == "sigint" else "abort", "on_render": 99}})
    if mode == "sigint":
        spec = chain({"backend": "testing.fault", "name": "f", "options": {"mode": "hang", "on_render": 1}})
    layer = FxLayer(spec, batch_size=2, num_workers=2)
    print(" ".join(map(str, layer.pool.pids)), flush=True)
    if mode == "exception":
        raise RuntimeError("boom")
    if mode in ("sigint", "sigkill"):
        layer.eval()
        layer(torch.ones(2, 1, 64), torch.full((2, 1), 0.5))  # hangs (sigint) or stays in a render loop
        time.sleep(60)
""")


@pytest.mark.parametrize("mode", ["normal", "exception", "sigint", "sigkill"])
def test_no_orphan_workers(tmp_path, mode):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    if mode == "sigint":
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
    elif mode == "sigkill":
        time.sleep(0.5)
        proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), f"orphan workers left after {mode}"


# -- how many workers: render.num_workers, shared by the ranks --------------------------------
def test_rank_workers_shares_the_configured_total_among_ranks():
    from deepafx.workers import rank_workers, usable_cpus

    assert rank_workers(8, 1) == 8 and rank_workers(8, 2) == 4 and rank_workers(8, 3) == 2
    assert rank_workers(1, 4) == 1  # never below one per rank
    assert rank_workers(None, 1, available=6) == 6 and rank_workers(None, 2, available=6) == 3
    assert rank_workers(None) == usable_cpus()


def test_the_render_section_sizes_each_rank_engine():
    from deepafx.workers import RenderConfig

    spec = chain({"backend": "pedalboard.Gain", "name": "g"}, sample_rate=44100)
    with RenderConfig(num_workers=4).build(spec, 4, 1, share=2) as pool:  # rank 0 of 2: half of 4
        assert pool.num_workers == 2 and len(set(pool.pids)) == 2
    with RenderConfig(num_workers=4).build(spec, 1, 1) as pool:  # never more workers than slots
        assert pool.num_workers == 1
