"""The Ray render engine on a cluster of several machines, simulated on this host with Ray's own
multi-node harness (``ray.cluster_utils.Cluster``: one head without CPUs and three 1-CPU render
nodes, each a separate raylet with its own object store): actors are spread over the machines, every
machine answers ``on_every_node``, a Ray Client (``ray://``) driver renders the same, and losing a
render machine mid-training is survived by restarting its worker on another machine."""

import json
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="ray not installed: pip install 'ray>=2.40' (scripts/install.sh does)")
cluster_utils = pytest.importorskip("ray.cluster_utils", reason="this Ray build lacks ray.cluster_utils")

from deepafx import ray_pool  # noqa: E402
from deepafx.chain import chain  # noqa: E402
from deepafx.workers import RenderConfig, RenderPool, RenderRequest  # noqa: E402

SPEC = dict(sample_rate=44100, name="cheap2")
STAGES = ({"backend": "pedalboard.Compressor", "name": "comp"}, {"backend": "pedalboard.PeakFilter", "name": "peak"})
CHEAP = chain(*STAGES, **SPEC)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    client_port = _free_port()
    c = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "ray_client_server_port": client_port,
        # a lost machine is noticed in about 1.5 s instead of the default 30 s
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3}})
    nodes = [c.add_node(num_cpus=1) for _ in range(3)]
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    yield c, nodes, client_port
    ray.shutdown()
    c.shutdown()


def _requests(seed: int = 0, slots: int = 4) -> list[RenderRequest]:
    rng = np.random.default_rng(seed)
    return [RenderRequest(s, (0.1 * rng.standard_normal((2, 4410))).astype(np.float32),
                          rng.uniform(0.05, 0.95, (3, CHEAP.num_params)), reset=True) for s in range(slots)]


def _process_pool_renders(seed: int = 0) -> list[np.ndarray]:
    with RenderPool(CHEAP, 4, 3, num_workers=2) as pool:
        return pool.render(_requests(seed))


def test_actors_spread_over_machines_and_every_machine_answers(cluster):
    c, nodes, _ = cluster
    render_nodes = {n.node_id for n in nodes}
    with RenderConfig(engine="ray").build(CHEAP, 4, 3, num_workers=2) as pool:
        assert len(set(pool.nodes)) == 2 and set(pool.nodes) <= render_nodes  # one actor per machine, none on the head
        got = pool.render(_requests())
        assert set(pool.last_timeline["workers"]) == {0, 1}  # same host here: the worker times are comparable
    for a, b in zip(got, _process_pool_renders()):
        np.testing.assert_array_equal(a, b)
    report = ray_pool.on_every_node(ray_pool.cluster_cpus)
    assert len(report) == 4  # head + three render machines, told apart although they share a host name
    assert set(report.values()) == {3.0}


def test_ray_client_driver_renders_the_same(cluster, tmp_path):
    """A driver outside the cluster connects with ``render.address: ray://HOST:PORT`` (Ray Client)."""
    _, _, port = cluster
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from deepafx import ray_pool
        from deepafx.chain import chain
        from deepafx.workers import RenderConfig
        sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r})
        from test_ray_cluster import CHEAP, _requests
        with RenderConfig(engine="ray", address="ray://127.0.0.1:{port}").build(CHEAP, 4, 3, num_workers=2) as pool:
            out = pool.render(_requests())
            machines = len(ray_pool.on_every_node(ray_pool.cluster_cpus))
        import ray
        np.save({str(tmp_path / 'out.npy')!r}, np.stack(out))
        print(json.dumps({{"machines": machines, "still_connected": ray.is_initialized()}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info == {"machines": 4, "still_connected": False}  # the engine disconnected its client on close
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.stack(_process_pool_renders()))


def test_lost_render_machine_is_survived(cluster):
    """A render machine disappears between two calls: its worker is restarted on a spare machine, the
    request retried, and the outputs equal the process pool's (runs last: it removes a machine)."""
    c, nodes, _ = cluster
    with RenderConfig(engine="ray").build(CHEAP, 4, 3, num_workers=2, timeout_seconds=60) as pool:
        before = pool.render(_requests(1))
        victim = next(n for n in nodes if n.node_id == pool.nodes[0])
        c.remove_node(victim)
        after = pool.render(_requests(1))
        assert pool.restarts == 1
        assert pool.nodes[0] != victim.node_id and len(set(pool.nodes)) == 2
    expected = _process_pool_renders(1)
    for a, b, e in zip(before, after, expected):
        np.testing.assert_array_equal(a, e)
        np.testing.assert_array_equal(b, e)
    assert len(ray_pool.on_every_node(ray_pool.cluster_cpus)) == 3
