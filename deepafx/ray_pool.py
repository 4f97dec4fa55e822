"""Render engine ``"ray"``: one Ray actor per render worker, on any machine of a Ray cluster.

:class:`RayRenderPool` keeps the layout, API and fault semantics of
:class:`deepafx.workers.RenderPool` (see :mod:`deepafx.workers`): worker ``w`` is
one actor that owns slots ``s % num_workers == w`` and builds all their chain
instances in its own process (:class:`~deepafx.workers.SlotInstances`, the same
code as a worker process). A render call is one actor method call per worker,
carrying that worker's items and resets; the actors run in parallel.

Audio travels through Ray's object store: the driver's input blocks become one
object per worker call (written once by Ray), an actor reads them without a
copy on its own machine (or after one transfer from another), and it returns
one flat float32 array holding every render of its items, which the driver
reads in place (on the same machine) or after one transfer. With
``render(copy=False)`` (what :class:`deepafx.fx.FxLayer` uses) no further copy
is made. Measured in ``benchmarks/spsa_step.py --engine ray``.

Faults: a call that raises ``RayActorError`` (the actor's process died: abort,
segfault, lost node) or does not finish within ``timeout_seconds`` (then the actor is
killed with ``ray.kill``) restarts the worker as a new actor — its instances
rebuilt fresh — and retries the request, up to ``max_retries``, then raises
:class:`~deepafx.workers.WorkerError`. Actors are created with
``max_restarts=0``: restarts are the engine's, so a hang is handled like a crash.

Cluster connection (:func:`connect`): ``address=None`` starts a private local
Ray instance (stopped when the last engine using it closes, at the latest at
interpreter exit); ``"auto"``, ``"HOST:PORT"`` or ``"ray://HOST:10001"``
connect to a running cluster (disconnected the same way; the cluster keeps
running). A process that called ``ray.init`` itself keeps its connection: the
engines use it and never shut it down. Each actor reserves ``cpus_per_worker``
CPUs of the cluster, and actors are spread over its machines (Ray's ``SPREAD``
strategy). See the README's "Rendering on a Ray cluster" for the multi-machine
set-up.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np
import ray

from deepafx.chain import ChainSpec
from deepafx.workers import (RenderEngine, RenderRequest, SlotInstances, WorkerError, WorkerHandle, _Failure,
                             rank_workers, remote_error, usable_cpus)

log = logging.getLogger(__name__)

#: Logical CPUs of a private local Ray instance. They are scheduling slots, not cores: like the
#: process engine, the embedded instance lets ``num_workers`` decide how many workers run (Ray
#: still starts worker processes only as actors need them).
LOCAL_LOGICAL_CPUS = 1024


class _RenderActor:
    """The actor behind one Ray render worker (created through ``ray.remote``; see :class:`RayRenderPool`)."""

    def __init__(self, spec: ChainSpec, slots: Sequence[int], instances_per_slot: int):
        self.owned: SlotInstances | None = None
        self.error: tuple | None = None
        try:
            self.owned = SlotInstances(spec, slots, instances_per_slot)
        except BaseException as exc:  # reported by ready(), as a worker process reports it
            self.error = remote_error(exc)

    def ready(self) -> tuple:
        if self.error is not None:
            return self.error
        return ("ready", {**self.owned.info, "pid": os.getpid(), "host": socket.gethostname(),  # type: ignore[union-attr]
                          "node": ray.get_runtime_context().get_node_id(), "clock": _clock_id()})

    def render(self, items: Sequence[tuple[int, np.ndarray, np.ndarray, bool, bool, int]]) -> tuple:
        """Items ``(slot, audio (C, N), params (R, P), reset, differences, rows out)`` →
        ``("ok", (per-item results, flat renders), (received, replied))`` (``time.perf_counter`` of this machine)."""
        t_in = time.perf_counter()
        try:
            offsets = np.cumsum([0] + [a.size * rows for _, a, _, _, _, rows in items])
            out = np.empty(int(offsets[-1]), np.float32)
            res = self.owned.render([(*item[:5], int(off)) for item, off in zip(items, offsets)], out)  # type: ignore[union-attr]
            return ("ok", (res, out), (t_in, time.perf_counter()))
        except Exception as exc:
            return remote_error(exc)

    def reset(self, slots: Sequence[int]) -> tuple:
        try:
            self.owned.reset(slots)  # type: ignore[union-attr]
            return ("ok", None)
        except Exception as exc:
            return remote_error(exc)

    def close(self) -> tuple:
        if self.owned is not None:
            self.owned.close()
        return ("ok", None)


@functools.cache
def _clock_id() -> str:
    """Names this machine's monotonic clock: its kernel's boot id (processes that report the same one can
    compare ``time.perf_counter`` values), else the host name. Read once per process."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return socket.gethostname()


# -- the cluster connection ----------------------------------------------------------------------
#: Attempts of a Ray Client (``ray://``) connection whose server-side session process died while
#: starting: Ray's client proxier forks it from a multithreaded gRPC process, which intermittently
#: kills the child (ray-project/ray#63202, a few % of connections); a new attempt gets a new process.
CLIENT_START_ATTEMPTS = 3
#: The messages of that failure, as the proxier reports it to the client: the session process gone, or caught
#: as a zombie while the proxier reads its command line (psutil's ``ZombieProcess``).
_CLIENT_START_FAILED = ("Starting Ray client server failed", "ZombieProcess")
_CONN_LOCK = threading.Lock()
_CONN = {"users": 0, "owned": False, "private": False}


def connect(address: str | None) -> None:
    """Connect this process to a Ray cluster (or start a private local instance), counting users.

    Args:
        address: ``None`` or ``"local"``: a private local instance (logical CPUs
            :data:`LOCAL_LOGICAL_CPUS`); ``"auto"``: the cluster this machine
            joined (``ray start``); ``"HOST:PORT"``; ``"ray://HOST:10001"`` (Ray Client).
            Ignored when this process is already connected (``ray.init`` called
            before, by the user or another engine).

    Raises:
        ConnectionError: no cluster at ``address`` (the message says how to start one).
    """
    with _CONN_LOCK:
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "logging_level": logging.WARNING}
            try:
                if address in (None, "local"):
                    ray.init(address="local", num_cpus=LOCAL_LOGICAL_CPUS, **kwargs)
                    _CONN["private"] = True
                else:
                    _probe(address)
                    _init_retrying_client_start(address, kwargs)
            except ConnectionError as exc:
                raise ConnectionError(
                    f"no Ray cluster at {address!r} ({exc}). Start one with `ray start --head` on "
                    "the head machine and `ray start --address HEAD:6379` on each render machine, or leave "
                    "render.address empty for a private local instance"
                ) from None
            _CONN["owned"] = True
        elif address not in (None, "local", "auto"):
            log.debug("already connected to Ray; render.address=%r is not used", address)
        _CONN["users"] += 1


def _init_retrying_client_start(address: str, kwargs: dict[str, Any]) -> None:
    """``ray.init(address, **kwargs)``, retried up to :data:`CLIENT_START_ATTEMPTS` times when a Ray Client
    server reports that its session process died while starting (any other error is raised at once)."""
    for attempt in range(1, CLIENT_START_ATTEMPTS + 1):
        try:
            ray.init(address=address, **kwargs)
            return
        except ConnectionError as exc:
            if not any(m in str(exc) for m in _CLIENT_START_FAILED) or attempt == CLIENT_START_ATTEMPTS:
                raise
            log.warning("Ray Client session process at %s died while starting (attempt %d of %d); retrying",
                        address, attempt, CLIENT_START_ATTEMPTS)


def _probe(address: str, timeout_seconds: float = 5.0) -> None:
    """Fail fast on a ``HOST:PORT`` or ``ray://HOST:PORT`` nobody listens on (Ray itself retries for minutes).

    Raises:
        ConnectionError: the port does not accept a TCP connection within ``timeout_seconds``.
    """
    hostport = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms: Ray resolves them
    try:
        socket.create_connection((host, int(port)), timeout=timeout_seconds).close()
    except OSError as exc:
        raise ConnectionError(f"cannot reach {hostport}: {exc}") from None


def disconnect() -> None:
    """Release one :func:`connect`; the last one shuts down a connection (or local instance) this module made."""
    with _CONN_LOCK:
        _CONN["users"] = max(0, _CONN["users"] - 1)
        if _CONN["users"] == 0 and _CONN["owned"]:
            _CONN["owned"] = _CONN["private"] = False
            ray.shutdown()


def cluster_cpus() -> float:
    """CPUs of the connected cluster (every alive machine together)."""
    return float(ray.cluster_resources().get("CPU", 0.0))


def on_every_node(fn: Callable[..., Any], *args: Any, timeout_seconds: float = 300.0) -> dict[str, Any]:
    """Run ``fn(*args)`` once on every alive machine of the connected cluster.

    Each call is a Ray task pinned to its machine (no CPU reserved, so busy
    render workers do not block it).

    Args:
        fn: A picklable function (importable on every machine).
        timeout_seconds: Longest wait for all machines.

    Returns:
        ``{"HOST (IP)": result}``, or the exception a machine raised as its value; machines that share a
        host name and address (several Ray nodes on one host) are told apart by their node id,
        ``"HOST (IP) node ID8"``.

    Raises:
        TimeoutError: not every machine answered within ``timeout_seconds``.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(fn)
    refs = {}
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    labels = [f"{n.get('NodeManagerHostname', '?')} ({n.get('NodeManagerAddress', '?')})" for n in nodes]
    for node, label in zip(nodes, labels):
        if labels.count(label) > 1:
            label = f"{label} node {node['NodeID'][:8]}"
        strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        refs[label] = task.options(scheduling_strategy=strategy).remote(*args)
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_seconds)
    if len(ready) < len(refs):
        raise TimeoutError(f"only {len(ready)} of {len(refs)} machines answered within {timeout_seconds:g} s")
    out = {}
    for label, ref in refs.items():
        try:
            out[label] = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            out[label] = exc.cause if isinstance(exc.cause, BaseException) else exc
    return out


# -- the engine ----------------------------------------------------------------------------------
class _RayWorker(WorkerHandle):
    def __init__(self, actor_cls, spec: ChainSpec, slots: list[int], instances_per_slot: int, index: int):
        self.actor_cls, self.spec, self.slots, self.ips, self.index = actor_cls, spec, slots, instances_per_slot, index
        self.actor = None
        self.start()

    def start(self) -> None:
        self.info = None
        self.actor = self.actor_cls.remote(self.spec, self.slots, self.ips)
        self.future = self.actor.ready.remote()

    def submit(self, msg: tuple) -> None:
        op, *args = msg
        self.future = getattr(self.actor, op).remote(*args)

    def result(self, timeout: float, what: str, limit_seconds: float | None = None) -> tuple:
        try:
            return ray.get(self.future, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise _Failure(f"{self.describe()} timed out after {limit_seconds or timeout:g} s during {what}") from None
        except ray.exceptions.RayActorError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise _Failure(f"{self.describe()} died during {what} ({type(exc).__name__}: {reason})") from None
        except ray.exceptions.RayTaskError as exc:  # the actor method raised outside its own handler
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            return ("error", type(cause).__name__, str(cause), str(exc))

    def shutdown(self) -> None:
        if self.actor is not None:
            self.future = self.actor.close.remote()

    def kill(self, grace_seconds: float = 0.0) -> None:
        if self.actor is None:
            return
        if grace_seconds > 0:
            with contextlib.suppress(Exception):
                ray.wait([self.future], timeout=grace_seconds)
        with contextlib.suppress(Exception):
            ray.kill(self.actor, no_restart=True)
        self.actor = None

    def describe(self) -> str:
        where = f"pid {self.info['pid']} on {self.info['host']}" if self.info else "starting"
        return f"worker {self.index} (Ray actor, {where})"


class RayRenderPool(RenderEngine):
    """Render engine ``"ray"``: Ray actors holding ``instances_per_slot`` chain instances per slot.

    Args:
        spec: The chain every instance is built from (every render machine
            needs its plugins: check with ``deepafx plugins --cluster ADDRESS``).
        num_slots: Batch slots (the batch size ``M``).
        instances_per_slot: Instances per slot (``1 + 2K`` for SPSA).
        num_workers: Actors of all the engines started at once by ``share`` cooperating
            processes (default: the cluster's CPUs ÷ ``cpus_per_worker``, or this machine's
            usable cores on a private local instance); this engine starts its share
            (:func:`deepafx.workers.rank_workers`), at most ``num_slots``.
        timeout_seconds: Longest one render/reset call may take before the actor is
            considered hung, killed and restarted.
        max_retries: Restarts + retries of a failed request before giving up.
        start_timeout_seconds: Longest an actor may take to be placed and build its
            instances (default ``max(timeout_seconds, 120)``).
        address: The cluster (see :func:`connect`); ``None``: a private local instance.
        share: Engines started at once by cooperating processes (DDP ranks), sharing ``num_workers``.
        cpus_per_worker: CPUs each actor reserves (default 1).

    Raises:
        ValueError: ``num_slots`` or ``instances_per_slot`` below 1.
        ConnectionError: no cluster at ``address``.
        WorkerError: the cluster has fewer CPUs than the actors need, or an
            actor could not start in time.
        PluginError / ParameterError: the chain cannot be built on a render
            machine (its error, with the machine named).
    """

    def __init__(
        self,
        spec: ChainSpec,
        num_slots: int,
        instances_per_slot: int = 3,
        num_workers: int | None = None,
        timeout_seconds: float = 120.0,
        max_retries: int = 1,
        start_timeout_seconds: float | None = None,
        *,
        address: str | None = None,
        share: int = 1,
        cpus_per_worker: float = 1.0,
    ):
        self._setup(spec, num_slots, instances_per_slot, timeout_seconds, max_retries, start_timeout_seconds)
        self._workers = []
        self.address = address
        connect(address)
        self._connected = True
        try:
            cpus = cluster_cpus()
            # a private instance's CPUs are logical: its default counts this machine's cores
            available = usable_cpus() if _CONN["private"] else int(cpus // cpus_per_worker)
            self.num_workers = min(rank_workers(num_workers, share, available), self.num_slots)
            if self.num_workers * cpus_per_worker > cpus:
                raise WorkerError(
                    f"the Ray cluster has {cpus:g} CPUs, {self.num_workers} render workers need "
                    f"{self.num_workers * cpus_per_worker:g}: add render machines (`ray start --address HEAD:6379`) "
                    "or lower render.num_workers"
                )
            actor_cls = ray.remote(_RenderActor).options(
                num_cpus=cpus_per_worker, max_restarts=0, max_task_retries=0, scheduling_strategy="SPREAD")
        except BaseException:
            self.close()
            raise
        self._launch(lambda w, slots: _RayWorker(actor_cls, spec, slots, instances_per_slot, w))

    @property
    def pids(self) -> list[int]:
        """Process ids of the actors (on their machines; they change when a worker is restarted)."""
        return [w.info["pid"] if w.info else -1 for w in self._workers]

    @property
    def hosts(self) -> list[str]:
        """Host name of each actor's machine."""
        return [w.info["host"] if w.info else "?" for w in self._workers]

    @property
    def nodes(self) -> list[str]:
        """Ray node id of each actor's machine (they change when a worker is restarted elsewhere)."""
        return [w.info["node"] if w.info else "?" for w in self._workers]

    def _release(self) -> None:
        if self._connected:
            self._connected = False
            disconnect()

    def _render(self, requests: Sequence[RenderRequest], by_worker: dict[int, list[int]]) -> list[np.ndarray]:
        payloads = {}
        for i, ks in by_worker.items():
            items = [(requests[k].slot, np.ascontiguousarray(requests[k].audio, dtype=np.float32),
                      np.asarray(requests[k].params, dtype=np.float64), bool(requests[k].reset),
                      bool(requests[k].differences), requests[k].num_outputs) for k in ks]
            payloads[i] = ("render", items)
        replies = self._call(payloads)
        here = _clock_id()  # worker times on another machine's clock are not comparable: left out
        times = self.last_timeline.get("workers", {})
        self.last_timeline["workers"] = {i: t for i, t in times.items()
                                         if self._workers[i].info and self._workers[i].info.get("clock") == here}
        out: list[np.ndarray] = [None] * len(requests)  # type: ignore[list-item]
        for i, ks in by_worker.items():
            res, flat = replies[i]
            off = 0
            for k, arr in zip(ks, res):
                shape = (requests[k].num_outputs, *np.shape(requests[k].audio))
                n = int(np.prod(shape))
                out[k] = arr if arr is not None else flat[off : off + n].reshape(shape)
                off += n
        return out


__all__ = ["LOCAL_LOGICAL_CPUS", "RayRenderPool", "cluster_cpus", "connect", "disconnect", "on_every_node"]
