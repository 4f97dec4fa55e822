"""The Ray render engine on a local 2-CPU Ray cluster started here: same outputs and gradients as the
multiprocessing pool, crashes and hangs survived, no Ray process left over."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason="ray not installed: pip install 'ray>=2.40' (scripts/install.sh does)")

from deepafx.chain import chain  # noqa: E402
from deepafx.fx import FxLayer  # noqa: E402
from deepafx.workers import RenderConfig, RenderPool, RenderRequest, WorkerError  # noqa: E402

from conftest import music_like, torchrun_train  # noqa: E402

RAY = RenderConfig(engine="ray")  # no address: the cluster this module started
CHEAP = chain(
    {"backend": "pedalboard.Compressor", "name": "comp"},
    {"backend": "pedalboard.LowShelfFilter", "name": "low"},
    {"backend": "pedalboard.PeakFilter", "name": "peak"},
    {"backend": "testing.one_pole", "name": "lp"},
    {"backend": "pedalboard.Limiter", "name": "lim"},
    sample_rate=44100, name="cheap",
)


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _fault(**options):
    return chain({"backend": "testing.fault", "name": "f", "options": options}, sample_rate=44100)


def test_chain_is_deterministic(rng):
    """Precondition of the bit-identity tests: two fresh instances render the same."""
    a = music_like(rng, samples=8192)
    x = np.full(len(CHEAP.param_table), 0.4)
    np.testing.assert_array_equal(CHEAP.build().process(a, x), CHEAP.build().process(a, x))


def test_outputs_and_spsa_gradients_bit_identical_to_process_pool():
    """Same seed, same chain: every render (main, +, −), output and gradient equal the process pool's,
    over consecutive blocks with a slot reset in between (state carried and cleared alike)."""
    x = np.stack([music_like(np.random.default_rng(s), samples=3 * 4096) for s in range(4)])
    p = torch.rand(4, len(CHEAP.param_table), generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    w = torch.randn(4, 2, 4096, generator=torch.Generator().manual_seed(2))
    res = {}
    for name, render in (("process", None), ("ray", RAY)):
        with FxLayer(CHEAP, batch_size=4, num_workers=2, seed=7, render=render) as layer:
            assert layer.pool.num_workers == 2 and layer.num_params == len(CHEAP.param_table)
            renders, grads, ys = [], [], []
            for k in range(3):
                layer.keep_last_renders = k < 2  # all renders back; then the workers' differences (the default)
                if k == 2:
                    layer.reset([1])
                pp = p.clone().requires_grad_(True)
                y = layer(torch.from_numpy(x[..., k * 4096 : (k + 1) * 4096]), pp)
                (y * w).sum().backward()
                if k < 2:
                    renders.append(layer.last_renders)
                grads.append(pp.grad)
                ys.append(y.detach())
            res[name] = (np.stack(renders), torch.stack(grads), torch.stack(ys))
    assert res["ray"][0].shape == (2, 4, 3, 2, 4096)  # blocks, slots, renders, channels, samples
    np.testing.assert_array_equal(res["ray"][0], res["process"][0])
    assert torch.equal(res["ray"][2], res["process"][2])
    assert torch.equal(res["ray"][1], res["process"][1])
    assert res["ray"][1].abs().sum() > 0


def test_render_requests_with_resets_match_the_process_pool(rng):
    """The engine API itself: RenderRequest with per-slot resets, copy=False views."""
    audio = music_like(rng, samples=2 * 2048)
    draws = np.random.default_rng(3).uniform(0.05, 0.95, (2, 2, 3, len(CHEAP.param_table)))
    outs = {}
    for name, engine in (("process", RenderPool), ("ray", RAY.build)):
        with engine(CHEAP, 2, 3, num_workers=1) as pool:
            got = []
            for k in range(2):
                blk = audio[:, k * 2048 : (k + 1) * 2048]
                reqs = [RenderRequest(s, blk * (1 + s), draws[k, s], reset=(k == 1 and s == 0),
                                      differences=(s == 1)) for s in range(2)]
                views = pool.render(reqs, copy=False)
                assert not views[0].flags.writeable
                assert views[0].shape == (3, 2, 2048) and views[1].shape == (2, 2, 2048)  # main, then y⁺ − y⁻
                got.append(np.concatenate(views))
            outs[name] = np.stack(got)
    np.testing.assert_array_equal(outs["ray"], outs["process"])


def test_cmaes_oracle_on_ray_equals_the_process_pool(rng):
    """The evaluation oracle (mastering, amp emulation) takes the config's render section too."""
    from deepafx.automation.oracle import CmaesOracle

    x = music_like(rng, samples=44100)
    y = (0.5 * x).astype(np.float32)
    found = {}
    for name, render in (("process", None), ("ray", RAY)):
        with CmaesOracle(CHEAP, renders=12, excerpt_seconds=0.5, preroll_seconds=0.0, num_workers=2, seed=1,
                         render=render) as oracle:
            assert type(oracle.pool).__name__ == ("RayRenderPool" if render else "RenderPool")
            found[name] = oracle.fit(x, y)
    np.testing.assert_array_equal(found["ray"].params, found["process"].params)


def test_abort_is_survived_and_retried(tmp_path):
    spec = _fault(mode="abort", on_render=2, once_file=str(tmp_path / "crashed"))
    x = torch.ones(2, 1, 256)
    with FxLayer(spec, batch_size=2, num_workers=2, timeout_seconds=60, render=RAY) as layer:
        layer.eval()
        p = torch.full((2, 1), 0.5)
        layer(x, p)
        pids = layer.pool.pids
        y = layer(x, p)  # one actor aborts on its 2nd render: restarted, instances rebuilt, retried
        assert (tmp_path / "crashed").exists()
        assert layer.pool.restarts == 1
        torch.testing.assert_close(y, x)  # gain_db = 0 at p = 0.5
        assert len(set(layer.pool.pids) - set(pids)) == 1


def test_always_crashing_plugin_raises_worker_error():
    with FxLayer(_fault(mode="abort", on_render=1), batch_size=1, num_workers=1, timeout_seconds=60, max_retries=0,
                 render=RAY) as layer:
        layer.eval()
        with pytest.raises(WorkerError, match=r"died during render request.*gave up after 1 attempt"):
            layer(torch.ones(1, 1, 64), torch.full((1, 1), 0.5))
        assert layer.pool.restarts == 1  # restarted so that later calls can proceed


def test_hang_is_killed_restarted_and_retried(tmp_path):
    spec = _fault(mode="hang", on_render=1, once_file=str(tmp_path / "hung"))
    with FxLayer(spec, batch_size=1, num_workers=1, timeout_seconds=3, max_retries=1, render=RAY) as layer:
        layer.eval()
        t0 = time.monotonic()
        y = layer(torch.ones(1, 1, 64), torch.full((1, 1), 0.5))
        assert time.monotonic() - t0 < 60
        assert layer.pool.restarts == 1
        torch.testing.assert_close(y, torch.ones(1, 1, 64))


def test_hang_beyond_retries_raises():
    with FxLayer(_fault(mode="hang", on_render=1), batch_size=1, num_workers=1, timeout_seconds=2, max_retries=0,
                 render=RAY) as layer:
        layer.eval()
        with pytest.raises(WorkerError, match="timed out after 2 s"):
            layer(torch.ones(1, 1, 64), torch.full((1, 1), 0.5))


def test_python_error_is_reraised_not_retried():
    with FxLayer(_fault(mode="raise", on_render=1), batch_size=1, num_workers=1, render=RAY) as layer:
        layer.eval()
        with pytest.raises(Exception, match="raised on purpose.*Ray actor"):
            layer(torch.ones(1, 1, 64), torch.full((1, 1), 0.5))
        assert layer.pool.restarts == 0


def test_too_few_cluster_cpus_is_a_clear_error():
    with pytest.raises(WorkerError, match=r"has 2 CPUs, 3 render workers need 3.*ray start --address"):
        RAY.build(CHEAP, 4, 3, num_workers=3)


def test_plugins_listed_on_every_machine():
    from concurrent.futures import ThreadPoolExecutor

    from deepafx.commands.plugins import cluster_plugins, find_plugins

    with ThreadPoolExecutor(1) as ex:  # list here while the cluster lists there
        here = ex.submit(find_plugins)
        report = cluster_plugins(address=None)
    assert len(report) == 1  # one machine in this cluster
    (found,) = report.values()
    local = here.result()
    # backends: the remote process registers those of the host modules; this one may have more (deepafx.ddsp)
    assert {k: v for k, v in found.items() if k != "backends"} == {k: v for k, v in local.items() if k != "backends"}
    assert set(found["backends"]) <= set(local["backends"]) and "pedalboard.Compressor" in found["backends"]
    assert len(found["lv2"]) == len(local["lv2"]) and len(found["vst3"]) == len(local["vst3"])


@pytest.mark.slow
def test_torchrun_ranks_render_on_the_cluster(tmp_path, ray_cluster):
    """`deepafx train` under torchrun (2 ranks, gloo) with render.engine=ray: each rank connects to this
    module's cluster and owns its share of render.num_workers=2, one actor (1 CPU); the ranks' models agree
    as with processes."""
    import json
    from pathlib import Path

    quick = Path(__file__).resolve().parent.parent / "recipes" / "mastering" / "quick.yaml"
    tiny = ["data.train_minutes=0.4", "data.max_piece_seconds=12", "data.min_piece_seconds=6",
            "model.context_seconds=0.5", "model.frame_seconds=0.25", "model.hop_length=2048", "model.n_mels=32",
            "model.encoder_kwargs={width_mult: 0.25}", "train.batch_size=2", "train.epochs=1",
            "train.steps_per_epoch=2", "train.valid_steps=2", "train.pretrain_steps=2", "train.num_threads=1",
            "train.seed=3", "render.engine=ray", f"render.address={ray_cluster}", "render.num_workers=2"]
    proc = torchrun_train(quick, tmp_path / "run", tmp_path / "data", tiny)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    sums = [h for h in history if h["stage"] == "spsa"][-1]["param_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    assert ray.available_resources().get("CPU") == 2  # both ranks' actors are gone


# -- no Ray process left over ------------------------------------------------------------------
SCRIPT = textwrap.dedent("""
    import signal, sys, time, torch
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal would
    from deepafx.chain import chain
    from deepafx.fx import FxLayer
    from deepafx.workers import RenderConfig
    mode = sys.argv[1]
    spec = chain({"backend": "testing.fault", "name": "f",
                  "options": {"mode": "hang", "on_render": 1 if mode == "sigint" else 99}})
    layer = FxLayer(spec, batch_size=1, num_workers=1, render=RenderConfig(engine="ray"))  # a private local Ray
    print("ready", flush=True)
    if mode != "sigint":
        sys.stdin.readline()  # the test looks at the process tree first
    if mode == "exception":
        raise RuntimeError("boom")
    if mode == "sigint":
        layer.eval()
        layer(torch.ones(1, 1, 64), torch.full((1, 1), 0.5))  # hangs until Ctrl-C
    layer.close()
""")


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_no_ray_process_left_over(tmp_path):
    """After close, an exception and Ctrl-C (run side by side), every process of each private Ray instance is gone."""
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "RAY_ADDRESS": ""}  # a private instance, whatever this machine runs
    procs = {mode: subprocess.Popen([sys.executable, str(script), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
             for mode in ("close", "exception", "sigint")}
    trees = {}
    for mode, proc in procs.items():
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-3000:]
    time.sleep(1.0)
    for mode, proc in procs.items():
        trees[mode] = _descendants(proc.pid)
        names = {open(f"/proc/{p}/comm").read().strip() for p in trees[mode] if _alive(p)}
        assert {"gcs_server", "raylet"} <= names, names
        if mode == "sigint":
            proc.send_signal(signal.SIGINT)  # while it waits for a hung render
        else:
            proc.stdin.write("\n")
            proc.stdin.flush()
    for mode, proc in procs.items():
        proc.wait(timeout=60)
        assert (proc.returncode == 0) == (mode == "close"), (mode, proc.stderr.read()[-2000:])
    deadline = time.monotonic() + 20
    while any(_alive(p) for t in trees.values() for p in t) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {mode: [p for p in t if _alive(p)] for mode, t in trees.items()}
    assert not any(left.values()), f"Ray processes left over: {left}"


def test_ray_client_session_start_failures_are_retried_and_other_errors_are_not(monkeypatch):
    """Ray's client proxier intermittently loses the session process it forks (ray-project/ray#63202,
    seen in this suite, also as a zombie the proxier trips on); the connection is retried for that failure
    only, CLIENT_START_ATTEMPTS times.
    The failure cannot be caused on demand, so ray.init is replaced here by one that raises it."""
    from deepafx import ray_pool

    calls = []

    def flaky(failures, exc):
        def init(address, **kwargs):
            calls.append(address)
            if len(calls) <= failures:
                raise exc
        return init

    died = ConnectionAbortedError("Initialization failure from server:\nRuntimeError: Starting Ray client server "
                                  "failed. See ray_client_server_23000.err for detailed logs.")
    monkeypatch.setattr(ray_pool.ray, "init", flaky(2, died))
    ray_pool._init_retrying_client_start("ray://127.0.0.1:10001", {})
    assert calls == ["ray://127.0.0.1:10001"] * 3
    calls.clear()
    monkeypatch.setattr(ray_pool.ray, "init", flaky(ray_pool.CLIENT_START_ATTEMPTS, died))
    with pytest.raises(ConnectionAbortedError, match="Starting Ray client server failed"):
        ray_pool._init_retrying_client_start("ray://127.0.0.1:10001", {})
    assert len(calls) == ray_pool.CLIENT_START_ATTEMPTS
    calls.clear()
    zombie = ConnectionAbortedError("Initialization failure from server:\nTraceback (most recent call last):\n  ...\n"
                                    "psutil.ZombieProcess: PID still exists but it's a zombie (pid=4860)\n")
    monkeypatch.setattr(ray_pool.ray, "init", flaky(1, zombie))  # the same failure, caught as a zombie
    ray_pool._init_retrying_client_start("ray://127.0.0.1:10001", {})
    assert calls == ["ray://127.0.0.1:10001"] * 2
    calls.clear()
    monkeypatch.setattr(ray_pool.ray, "init", flaky(1, ConnectionError("no cluster")))
    with pytest.raises(ConnectionError, match="no cluster"):
        ray_pool._init_retrying_client_start("10.0.0.1:6379", {})
    assert len(calls) == 1
