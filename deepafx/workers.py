"""Render engines: workers owning per-slot stateful chain instances.

DeepAFx's stateful training scheme: batch slot ``i`` is fed consecutive frames
of one file, and owns its own chain instances — the *main* instance (forward
pass) and one instance per perturbed render (SPSA ``+`` and ``−``; ``2K`` for
K perturbations, ``2P`` for finite differences) — so every instance keeps a
coherent history. See Ramírez et al., "Differentiable signal processing with
black-box audio effects", ICASSP 2021.

Instances live in workers (crash isolation; a segfaulting or hanging plugin
cannot take the training process down). Slot ``s`` belongs to worker
``s % num_workers``. One :meth:`RenderEngine.render` call sends *one message per
worker* carrying every item that worker owns, all the renders each item needs
and the slots to reset first (:attr:`RenderRequest.reset`), and waits for all
workers in parallel.

Two engines share that layout, the :class:`RenderRequest` API and the fault
semantics; :data:`ENGINES` holds them by name and :class:`RenderConfig` (the
``render:`` config section) chooses one:

* ``"process"`` (:class:`RenderPool`, the embedded default): worker processes
  on this machine, audio through shared memory.
* ``"ray"`` (:class:`deepafx.ray_pool.RayRenderPool`): one Ray actor per
  worker, on any machine of a Ray cluster, audio through Ray's object store.

Fault handling: a worker that dies (signal, abort) or exceeds ``timeout_seconds`` is
killed and restarted; its slots' instances are rebuilt fresh (their state is
lost, which is reported in the warning) and the request is retried up to
``max_retries`` times before :class:`WorkerError` is raised. A Python exception
in a worker (bad input, a plugin error) is re-raised with its class and not
retried. Worker processes die with their parent (``PR_SET_PDEATHSIG``), ignore
Ctrl-C (the parent decides), and are shut down by :meth:`RenderEngine.close`, a
context manager exit, or at interpreter exit — no worker is left behind.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
import weakref
from dataclasses import dataclass
from multiprocessing import shared_memory
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Sequence

import numpy as np

from deepafx.chain import ChainSpec
from deepafx.hosts.base import AudioError, PluginError
from deepafx.params import ParameterError
from deepafx.registry import Registry

log = logging.getLogger(__name__)

_ERRORS = {"ParameterError": ParameterError, "AudioError": AudioError, "PluginError": PluginError}


class WorkerError(PluginError):
    """A render worker crashed or hung and retries were exhausted (or it could not start)."""


@dataclass
class RenderRequest:
    """Renders needed for one batch slot in one step.

    Attributes:
        slot: Batch slot index (owns instances ``0 .. instances_per_slot - 1``).
        audio: ``(channels, samples)`` float32 input block (the same for every instance).
        params: Normalized learned parameters ``(num_renders, num_params)``; row ``r``
            is rendered by instance ``r`` of the slot.
        reset: Reset every instance of the slot before rendering (as
            :meth:`RenderEngine.reset` would, without a message of its own).
        differences: Return SPSA differences instead of the perturbed renders:
            with ``num_renders = 1 + 2R`` (main, R ``+``, R ``−``), the result has
            ``1 + R`` rows: the main render, then ``y⁺_k − y⁻_k`` for each k. The
            worker subtracts, so a third less audio travels back and the caller
            skips a pass over it.
    """

    slot: int
    audio: np.ndarray
    params: np.ndarray
    reset: bool = False
    differences: bool = False

    @property
    def num_outputs(self) -> int:
        """Rows of the result: ``num_renders``, or ``1 + R`` with :attr:`differences`."""
        return 1 + (len(self.params) - 1) // 2 if self.differences else len(self.params)


#: glibc ``mallopt`` settings of render workers: blocks up to 32 MiB (glibc's largest threshold) come
#: from the heap and freed memory is kept, instead of a fresh ``mmap`` per output block whose pages
#: fault in one by one. Measured once on the project's 2-core machine (not idle): 12 renders of 1 s
#: stereo through an identity chain 3.1 → 1.8 ms, the benchmark's cheap 7-plugin chain 4.3 → 3.7 ms
#: per render; the identity chain's SPSA step (benchmarks/spsa_step.py, idle machine) 6.8 → 5.0 ms.
MALLOC_SETTINGS = {"M_MMAP_THRESHOLD": (-3, 32 << 20), "M_TRIM_THRESHOLD": (-1, 256 << 20), "M_TOP_PAD": (-2, 64 << 20)}


def tune_allocator() -> bool:
    """Apply :data:`MALLOC_SETTINGS` to this process (glibc only); True if applied.

    Render workers call it at start. A benchmark calls it before timing plugins
    alone, so that its render-bound ideal pays the same allocation costs.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return all(libc.mallopt(code, value) == 1 for code, value in MALLOC_SETTINGS.values())
    except (OSError, AttributeError):  # not glibc
        return False


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def rank_workers(num_workers: int | None, share: int = 1, available: int | None = None) -> int:
    """The render workers one engine starts: its share of ``render.num_workers``.

    The one rule of both engines (:class:`RenderPool`, :class:`deepafx.ray_pool.RayRenderPool`) and of
    every caller that sizes an engine: ``num_workers`` counts the workers of all the engines started
    at once by ``share`` cooperating processes (DDP ranks) together, and each gets ``1 / share`` of it.

    Args:
        num_workers: The configured total (:attr:`RenderConfig.num_workers`); ``None``: ``available``.
        share: Cooperating processes starting an engine each (the DDP world size; 1 alone).
        available: The engine's default total: what it can run at once (default :func:`usable_cpus`;
            the Ray engine passes the cluster's CPUs ÷ ``cpus_per_worker``).

    Returns:
        ``max(1, total // share)``. The engine further caps it at its batch slots.
    """
    total = int(num_workers) if num_workers is not None else int(available if available is not None else usable_cpus())
    return max(1, total // max(1, int(share)))


# -- worker side ------------------------------------------------------------------------------
class SlotInstances:
    """Worker side: the chain instances of the slots one worker owns (a process or a Ray actor).

    Builds ``instances_per_slot`` instances per slot, serially on the calling
    thread (VST3 and dawdreamer plugins must load on a process's main thread),
    after :func:`tune_allocator`.

    Args:
        spec: The chain every instance is built from.
        slots: The slots this worker owns.
        instances_per_slot: Instances per slot.

    Raises:
        PluginError, ParameterError: the chain cannot be built.
    """

    def __init__(self, spec: ChainSpec, slots: Sequence[int], instances_per_slot: int):
        tune_allocator()
        self.chains = {s: [spec.build() for _ in range(instances_per_slot)] for s in slots}
        if "torch" in sys.modules:  # imported by the worker or by a processor (ddsp. stages): one thread each
            sys.modules["torch"].set_num_threads(1)
        first = next(iter(self.chains.values()))[0] if self.chains else spec.build()
        self.info = {"num_params": len(first.param_table), "latency_samples": first.latency_samples,
                     "names": first.param_table.names}

    def render(self, items: Sequence[tuple[int, np.ndarray, np.ndarray, bool, bool, int]], out: np.ndarray | None) -> list:
        """Render items ``(slot, audio (C, N), params (R, P), reset, differences, out_offset)``.

        Outputs (:attr:`RenderRequest.num_outputs` rows) with the input's shape
        are written into the flat float32 buffer ``out`` at ``out_offset`` (in
        samples) and reported as ``None``; an output with another channel count
        is returned as an array.
        """
        res: list[np.ndarray | None] = []
        for slot, audio, params, reset, differences, off in items:
            insts = self.chains[slot]
            if reset:
                for inst in insts:
                    inst.reset()
            ys = [insts[r].process(audio, params[r]) for r in range(len(params))]
            k = (len(ys) - 1) // 2 if differences else 0
            rows = len(ys) - k
            if out is not None and ys[0].shape == audio.shape:  # into the shared buffer, reported as None
                target = out[off : off + rows * audio.size].reshape(rows, *audio.shape)
                res.append(None)
            else:
                target = np.empty((rows, *ys[0].shape), ys[0].dtype)
                res.append(target)
            if differences:  # main, then y⁺ − y⁻ written in place
                target[0] = ys[0]
                for j in range(k):
                    np.subtract(ys[1 + j], ys[1 + k + j], out=target[1 + j])
            else:
                for r, y in enumerate(ys):
                    target[r] = y
        return res

    def reset(self, slots: Sequence[int]) -> None:
        for slot in slots:
            for inst in self.chains[slot]:
                inst.reset()

    def close(self) -> None:
        for insts in self.chains.values():
            for inst in insts:
                inst.close()


def remote_error(exc: BaseException) -> tuple[str, str, str, str]:
    """``("error", class name, message, traceback)``: how a worker reports a Python exception."""
    return ("error", type(exc).__name__, str(exc), traceback.format_exc())


def _set_pdeathsig() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphans)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: rely on the parent's close()/atexit
        pass


def _worker_main(conn: Connection, spec: ChainSpec, slots: Sequence[int], instances_per_slot: int, parent_pid: int) -> None:
    _set_pdeathsig()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.getppid() != parent_pid:  # parent died before prctl took effect
        os._exit(1)
    try:
        owned = SlotInstances(spec, slots, instances_per_slot)
        conn.send(("ready", owned.info))
    except BaseException as exc:  # report load failures to the parent, then exit
        conn.send(remote_error(exc))
        return
    shm = _SharedBuffers()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        op = msg[0]
        try:
            if op == "render":
                t_in = time.perf_counter()
                in_buf, out_buf = shm.attach(msg[1]), shm.attach(msg[2])
                flat_in = np.ndarray((in_buf.size // 4,), np.float32, in_buf.buf)
                flat_out = np.ndarray((out_buf.size // 4,), np.float32, out_buf.buf)
                items = [(slot, flat_in[i_off : i_off + int(np.prod(shape))].reshape(shape), params, reset, diff, o_off)
                         for slot, i_off, shape, params, reset, diff, o_off in msg[3]]
                res = owned.render(items, flat_out)
                del items, flat_in, flat_out  # release the buffer views before a later close()
                conn.send(("ok", res, (t_in, time.perf_counter())))
            elif op == "reset":
                owned.reset(msg[1])
                conn.send(("ok", None))
            elif op == "close":
                shm.close()
                owned.close()
                conn.send(("ok", None))
                return
            else:
                conn.send(("error", "PluginError", f"unknown worker op {op!r}", ""))
        except Exception as exc:
            conn.send(remote_error(exc))


@contextlib.contextmanager
def _main_module_hidden():
    """Keep spawned workers from re-importing the user's ``__main__`` (a script,
    stdin or a notebook): workers only need :mod:`deepafx`. Without this,
    ``python - < script`` fails and unguarded top-level code would run again."""
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if main is not None and hasattr(main, k)}
    for k in saved:
        setattr(main, k, None) if k == "__spec__" else delattr(main, k)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


class _SharedBuffers:
    """Worker side: attach to the parent's shared-memory blocks by name (cached)."""

    def __init__(self) -> None:
        self._open: dict[str, shared_memory.SharedMemory] = {}

    def attach(self, name: str) -> shared_memory.SharedMemory:
        if name not in self._open:
            # Spawned workers share the parent's resource tracker, so attaching only
            # re-registers the parent's block; the parent unlinks it.
            self._open[name] = shared_memory.SharedMemory(name=name)
            for old in [n for n in self._open if n != name and len(self._open) > 4]:
                self._open.pop(old).close()
        return self._open[name]

    def close(self) -> None:
        for blk in self._open.values():
            blk.close()
        self._open.clear()


class _Block:
    """Parent side: a growable shared-memory block."""

    def __init__(self) -> None:
        self.shm: shared_memory.SharedMemory | None = None

    def ensure(self, nbytes: int) -> shared_memory.SharedMemory:
        if self.shm is None or self.shm.size < nbytes:
            self.release()
            self.shm = shared_memory.SharedMemory(create=True, size=max(int(nbytes * 1.25), 4096))
        return self.shm

    def release(self) -> None:
        if self.shm is not None:
            try:
                self.shm.close()
            except BufferError:  # a caller still holds a view (render(copy=False)): unmapped when it is freed
                pass
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass
            self.shm = None


# -- parent side: the engine interface ---------------------------------------------------------
class _Failure(Exception):
    """Internal: a worker died or timed out."""


class WorkerHandle(abc.ABC):
    """Parent side of one worker, as :class:`RenderEngine` drives it.

    Attributes:
        index: Worker index ``w``; it owns the slots ``s`` with ``s % num_workers == w``.
        slots: Those slots.
        info: What the worker reported when ready (``num_params``, ``latency_samples``, ``names``).
    """

    index: int
    slots: list[int]
    info: dict | None = None

    @abc.abstractmethod
    def submit(self, msg: tuple) -> None:
        """Start request ``msg`` (``(op, *args)``) without waiting; a dead worker is detected by :meth:`result`."""

    @abc.abstractmethod
    def result(self, timeout: float, what: str, limit_seconds: float | None = None) -> tuple:
        """The reply to the last :meth:`submit`: ``("ok", payload)`` or ``("error", class, message, traceback)``.

        Args:
            timeout: Seconds left to wait.
            what: The request, for messages (``"render request"``).
            limit_seconds: The request's time limit, for messages (default ``timeout``).

        Raises:
            _Failure: the worker died or did not answer within ``timeout`` seconds.
        """

    @abc.abstractmethod
    def start(self) -> None:
        """Start the worker (it builds its slots' instances) without waiting for it."""

    @abc.abstractmethod
    def kill(self, grace_seconds: float = 0.0) -> None:
        """Stop the worker: wait up to ``grace_seconds`` seconds for it to exit by itself, then kill it."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Ask the worker to close its instances and exit (no waiting); :meth:`kill` follows."""

    @abc.abstractmethod
    def describe(self) -> str:
        """``"worker 1 (pid 1234)"``, for messages."""


class RenderEngine(abc.ABC):
    """Workers holding ``instances_per_slot`` chain instances for each of ``num_slots`` slots.

    The common API of :data:`ENGINES`: the instance layout, :class:`RenderRequest`,
    :meth:`render`, :meth:`reset`, :meth:`close`, and the fault semantics of the
    module docstring. Subclasses create the :class:`WorkerHandle` objects and
    turn requests into messages.

    Attributes:
        num_params, latency_samples, param_names: Of the chain, as the workers built it.
        restarts: Workers restarted after a crash or hang so far.
        num_workers: Workers.
    """

    spec: ChainSpec
    num_slots: int
    instances_per_slot: int
    num_workers: int
    timeout_seconds: float
    start_timeout_seconds: float
    max_retries: int
    _workers: list[WorkerHandle]

    def _setup(self, spec: ChainSpec, num_slots: int, instances_per_slot: int, timeout_seconds: float, max_retries: int,
               start_timeout_seconds: float | None) -> None:
        if num_slots < 1 or instances_per_slot < 1:
            raise ValueError("num_slots and instances_per_slot must be ≥ 1")
        if timeout_seconds <= 0 or max_retries < 0:
            raise ValueError(f"timeout_seconds must be > 0 and max_retries ≥ 0, got {timeout_seconds} and {max_retries}")
        self.spec = spec
        self.num_slots = int(num_slots)
        self.instances_per_slot = int(instances_per_slot)
        self.timeout_seconds = float(timeout_seconds)
        self.start_timeout_seconds = float(start_timeout_seconds if start_timeout_seconds is not None else max(timeout_seconds, 120.0))
        self.max_retries = int(max_retries)
        self.restarts = 0
        #: Timeline of the last successful :meth:`render` on this machine's monotonic clock
        #: (``time.perf_counter``, shared by local processes): ``{"sent": first message sent,
        #: "received": all replies read, "workers": {index: (request received, reply sent)}}``; engines that cannot tell leave ``workers`` empty.
        self.last_timeline: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _slots_of(self, w: int) -> list[int]:
        return [s for s in range(self.num_slots) if s % self.num_workers == w]

    def _launch(self, make: Callable[[int, list[int]], WorkerHandle]) -> None:
        """Start worker ``w`` with ``make(w, its slots)`` for every ``w``, then await them all.

        Raises:
            WorkerError, PluginError, ParameterError: a worker could not start (everything is closed first).
        """
        try:
            for w in range(self.num_workers):
                self._workers.append(make(w, self._slots_of(w)))
        except BaseException:
            self.close()
            raise
        self._start_all()

    def _start_all(self) -> None:
        """Await every started worker's ready message; on failure close everything and raise."""
        _LIVE_ENGINES.add(self)
        try:
            for w in self._workers:
                self._await_ready(w)
        except BaseException:
            self.close()
            raise
        info = self._workers[0].info or {}
        self.num_params: int = info.get("num_params", 0)
        self.latency_samples: int = info.get("latency_samples", 0)
        self.param_names: list[str] = info.get("names", [])

    # -- lifecycle ------------------------------------------------------------
    def _await_ready(self, w: WorkerHandle) -> None:
        try:
            reply = w.result(self.start_timeout_seconds, what="start")
        except _Failure as f:
            raise WorkerError(f"{f}: could not build chain {self.spec.name!r}") from None
        if reply[0] == "error":
            self._raise_remote(reply, w)
        w.info = reply[1]

    def _raise_remote(self, reply, w: WorkerHandle) -> None:
        _, name, msg, tb = reply
        cls = _ERRORS.get(name, PluginError)
        if tb:
            log.debug("%s traceback:\n%s", w.describe(), tb)
        raise cls(f"{msg} [in render {w.describe()}, chain {self.spec.name!r}; {name}]")

    def _restart(self, w: WorkerHandle, reason: str) -> None:
        log.warning("%s; restarting it and rebuilding slots %s (their plugin state is reset)", reason, w.slots)
        w.kill()
        w.start()
        self.restarts += 1
        self._await_ready(w)

    def close(self) -> None:
        """Shut every worker down (idempotent). Workers that do not answer within 5 s are killed."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            with contextlib.suppress(Exception):
                w.shutdown()
        deadline = time.monotonic() + 5
        for w in self._workers:
            with contextlib.suppress(Exception):
                w.kill(grace_seconds=max(0.0, deadline - time.monotonic()))
        self._release()
        _LIVE_ENGINES.discard(self)

    def _release(self) -> None:
        """Engine resources beyond the workers (shared memory, a cluster connection)."""

    def __enter__(self) -> "RenderEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests -------------------------------------------------------------
    def _call(self, payloads: dict[int, tuple]) -> dict[int, Any]:
        """Send ``payloads[worker_index]`` to each worker, gather replies, handle faults."""
        if self._closed:
            raise WorkerError("render engine is closed")
        with self._lock:
            results: dict[int, Any] = {}
            pending = dict(payloads)
            attempts = {i: 0 for i in pending}
            worker_times: dict[int, tuple[float, float]] = {}
            while pending:
                sent = time.perf_counter()
                for i, msg in pending.items():
                    self._workers[i].submit(msg)
                failed: dict[int, str] = {}
                deadline = time.monotonic() + self.timeout_seconds
                for i in list(pending):
                    w = self._workers[i]
                    try:
                        reply = w.result(max(0.0, deadline - time.monotonic()), what=f"{pending[i][0]} request",
                                         limit_seconds=self.timeout_seconds)
                    except _Failure as f:
                        failed[i] = str(f)
                        continue
                    if reply[0] == "error":
                        # A Python exception (bad input, plugin error): deterministic, do not retry.
                        for j in pending:
                            if j != i and j not in failed and j not in results:
                                try:
                                    self._workers[j].result(self.timeout_seconds, what="drain")
                                except _Failure as f:
                                    self._restart(self._workers[j], str(f))
                        self._raise_remote(reply, w)
                    results[i] = reply[1]
                    if len(reply) > 2:
                        worker_times[i] = reply[2]
                    del pending[i]
                for i, reason in failed.items():
                    attempts[i] += 1
                    if attempts[i] > self.max_retries:
                        self._restart(self._workers[i], reason)
                        raise WorkerError(
                            f"{reason}; gave up after {attempts[i]} attempt(s) on chain {self.spec.name!r}. "
                            "The worker was restarted so later calls can proceed; check the plugin "
                            "(run `deepafx plugins --details PATH`) or raise timeout_seconds."
                        )
                    self._restart(self._workers[i], reason)
            self.last_timeline = {"sent": sent, "received": time.perf_counter(), "workers": worker_times}
            return results

    def _group(self, requests: Sequence[RenderRequest]) -> dict[int, list[int]]:
        """Request indices by worker, after checking slots, render counts and audio rank.

        Raises:
            ValueError: a slot outside ``[0, num_slots)`` or too many renders for a slot.
            AudioError: audio that is not ``(channels, samples)``.
        """
        by_worker: dict[int, list[int]] = {}
        for k, req in enumerate(requests):
            if not 0 <= req.slot < self.num_slots:
                raise ValueError(f"slot {req.slot} outside [0, {self.num_slots})")
            if len(req.params) > self.instances_per_slot:
                raise ValueError(f"{len(req.params)} renders requested for slot {req.slot}, but it owns {self.instances_per_slot} instances")
            if np.ndim(req.audio) != 2:
                raise AudioError(f"audio must be (channels, samples), got shape {np.shape(req.audio)}")
            if req.differences and (len(req.params) < 3 or len(req.params) % 2 == 0):
                raise ValueError(f"differences need 1 + 2R renders (main, R plus, R minus), got {len(req.params)}")
            by_worker.setdefault(req.slot % self.num_workers, []).append(k)
        return by_worker

    def render(self, requests: Sequence[RenderRequest], copy: bool = True) -> list[np.ndarray]:
        """Render every request; returns one ``(num_renders, channels_out, samples)`` float32 array per request.

        Row ``r`` of request ``k``'s array is instance ``r`` of its slot rendering
        ``requests[k].audio`` with ``requests[k].params[r]``, continuing that
        instance's state (reset first if ``requests[k].reset``); with
        ``requests[k].differences`` the perturbed rows are replaced by their
        differences (:class:`RenderRequest`).

        Args:
            requests: At most one request per slot is usual; several for one slot
                render one after the other.
            copy: ``True`` (default): arrays the caller owns. ``False``: read-only
                views of the engine's transfer buffers, valid until the next
                :meth:`render` call (saves one copy of every output sample).

        Raises:
            ValueError: a slot outside ``[0, num_slots)``, too many renders for a
                slot, or ``differences`` without ``1 + 2R`` renders.
            ParameterError / AudioError / PluginError: raised in a worker (not retried).
            WorkerError: a worker crashed or hung beyond ``max_retries``.
        """
        by_worker = self._group(requests)
        outs = self._render(requests, by_worker)
        if copy:
            return [np.array(o) for o in outs]
        for o in outs:
            o.flags.writeable = False
        return outs

    @abc.abstractmethod
    def _render(self, requests: Sequence[RenderRequest], by_worker: dict[int, list[int]]) -> list[np.ndarray]:
        """Engine part of :meth:`render`: messages out, replies in, one (view) array per request."""

    def reset(self, slots: Sequence[int] | None = None) -> None:
        """Reset every instance of ``slots`` (default: all slots), one message per worker.

        Raises:
            ValueError: a slot outside ``[0, num_slots)``.
            WorkerError: a worker crashed or hung beyond ``max_retries``.
        """
        slots = list(range(self.num_slots)) if slots is None else [int(s) for s in slots]
        by_worker: dict[int, list[int]] = {}
        for s in slots:
            if not 0 <= s < self.num_slots:
                raise ValueError(f"slot {s} outside [0, {self.num_slots})")
            by_worker.setdefault(s % self.num_workers, []).append(s)
        self._call({i: ("reset", ss) for i, ss in by_worker.items()})


_LIVE_ENGINES: "weakref.WeakSet[RenderEngine]" = weakref.WeakSet()


@atexit.register
def _close_all_engines() -> None:
    for engine in list(_LIVE_ENGINES):
        engine.close()


# -- the multiprocessing engine ----------------------------------------------------------------
class _ProcessWorker(WorkerHandle):
    def __init__(self, ctx, spec: ChainSpec, slots: list[int], instances_per_slot: int, index: int):
        self.spec, self.slots, self.ips, self.index = spec, slots, instances_per_slot, index
        self.ctx = ctx
        self.in_block, self.out_block = _Block(), _Block()
        self.start()

    def start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        with _main_module_hidden():
            self.proc = self.ctx.Process(
                target=_worker_main,
                args=(child, self.spec, self.slots, self.ips, os.getpid()),
                name=f"deepafx-render-{self.index}",
                daemon=True,
            )
            self.proc.start()
        child.close()
        self.info = None

    def submit(self, msg: tuple) -> None:
        try:
            self.conn.send(msg)
        except (OSError, BrokenPipeError):
            pass  # detected as a dead worker by result()

    def result(self, timeout: float, what: str, limit_seconds: float | None = None) -> tuple:
        ready = wait([self.conn, self.proc.sentinel], timeout=timeout)
        if self.conn in ready:
            try:
                return self.conn.recv()
            except (EOFError, OSError):
                pass
        if not ready:
            raise _Failure(f"{self.describe()} timed out after {limit_seconds or timeout:g} s during {what}")
        self.proc.join(timeout=1)
        code = self.proc.exitcode
        sig = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        raise _Failure(f"{self.describe()} died with {sig} during {what}")

    def shutdown(self) -> None:
        if self.proc.is_alive():
            self.conn.send(("close",))

    def kill(self, grace_seconds: float = 0.0) -> None:
        if grace_seconds > 0:
            self.proc.join(timeout=grace_seconds)
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()

    def describe(self) -> str:
        return f"worker {self.index} (pid {self.proc.pid})"


class RenderPool(RenderEngine):
    """Render engine ``"process"``: worker processes on this machine (the embedded default).

    Audio travels through shared memory: each worker has an input and an output
    block that grow as needed; a render message carries only offsets, shapes and
    parameters, and an output with the input's shape is written in place.

    Args:
        spec: The chain every instance is built from.
        num_slots: Batch slots (the batch size ``M``).
        instances_per_slot: Instances per slot: ``1 + 2K`` for SPSA with K
            perturbations, ``1 + 2P`` for finite differences.
        num_workers: Worker processes of all the engines started at once by ``share``
            cooperating processes (default: usable CPU cores); this engine starts its share
            (:func:`rank_workers`), at most ``num_slots``.
        timeout_seconds: Longest a worker may take for one render/reset request.
        start_timeout_seconds: Longest a worker may take to start and build its
            instances (default ``max(timeout_seconds, 120)``).
        max_retries: Restarts + retries of a failed request before giving up.
        start_method: multiprocessing start method (``"spawn"`` default: plugins
            must be loaded on the main thread of a clean process).
        share: Engines started at once by cooperating processes (DDP ranks), sharing ``num_workers``.

    Raises:
        ValueError: ``num_slots`` or ``instances_per_slot`` below 1.
        WorkerError / PluginError / ParameterError: if the chain cannot be built
            (the worker's error is re-raised with its message).
    """

    def __init__(
        self,
        spec: ChainSpec,
        num_slots: int,
        instances_per_slot: int = 3,
        num_workers: int | None = None,
        timeout_seconds: float = 120.0,
        max_retries: int = 1,
        start_method: str = "spawn",
        start_timeout_seconds: float | None = None,
        *,
        share: int = 1,
    ):
        self._setup(spec, num_slots, instances_per_slot, timeout_seconds, max_retries, start_timeout_seconds)
        self.num_workers = min(rank_workers(num_workers, share), self.num_slots)
        ctx = mp.get_context(start_method)
        self._workers = []
        self._launch(lambda w, slots: _ProcessWorker(ctx, spec, slots, instances_per_slot, w))

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers (they change when a worker is restarted)."""
        return [w.proc.pid for w in self._workers]

    def _release(self) -> None:
        for w in self._workers:
            w.in_block.release()
            w.out_block.release()

    def _render(self, requests: Sequence[RenderRequest], by_worker: dict[int, list[int]]) -> list[np.ndarray]:
        payloads, layouts = {}, {}
        for i, ks in by_worker.items():
            w = self._workers[i]
            audios = [np.ascontiguousarray(requests[k].audio, dtype=np.float32) for k in ks]
            in_shm = w.in_block.ensure(4 * sum(a.size for a in audios))
            out_shm = w.out_block.ensure(4 * sum(a.size * requests[k].num_outputs for a, k in zip(audios, ks)))
            flat_in = np.ndarray((in_shm.size // 4,), np.float32, in_shm.buf)
            entries, in_off, out_off = [], 0, 0
            for a, k in zip(audios, ks):
                flat_in[in_off : in_off + a.size] = a.reshape(-1)
                req = requests[k]
                entries.append((req.slot, in_off, a.shape, np.asarray(req.params, dtype=np.float64), bool(req.reset),
                                bool(req.differences), out_off))
                in_off += a.size
                out_off += a.size * req.num_outputs
            del flat_in
            payloads[i] = ("render", in_shm.name, out_shm.name, entries)
            layouts[i] = entries
        replies = self._call(payloads)
        out: list[np.ndarray] = [None] * len(requests)  # type: ignore[list-item]
        for i, ks in by_worker.items():
            shm = self._workers[i].out_block.shm
            flat_out = np.ndarray((shm.size // 4,), np.float32, shm.buf)  # type: ignore[union-attr]
            for k, (_, _, shape, _, _, _, off), arr in zip(ks, layouts[i], replies[i]):
                rows = requests[k].num_outputs
                out[k] = arr if arr is not None else flat_out[off : off + rows * int(np.prod(shape))].reshape(rows, *shape)
        return out


# -- choosing an engine ---------------------------------------------------------------------------
#: Render engines by name: ``"process"`` (:class:`RenderPool`) and ``"ray"`` (:class:`deepafx.ray_pool.RayRenderPool`).
ENGINES: Registry[type[RenderEngine]] = Registry("render engine")
ENGINES.register("process", RenderPool)
ENGINES.register("ray", "deepafx.ray_pool:RayRenderPool")


@dataclass
class RenderConfig:
    """Where renders run: the ``render:`` section of a training config.

    Attributes:
        engine: Name in :data:`ENGINES`: ``"process"`` (worker processes on this
            machine, the default) or ``"ray"`` (Ray actors on a Ray cluster).
        address: Ray only: ``"auto"`` (the cluster this machine joined with
            ``ray start``), ``"ray://HOST:10001"`` (Ray Client), ``"HOST:6379"``,
            or ``None`` (a private local Ray instance started and stopped with
            the engine). Must be ``None`` for ``"process"``.
        num_workers: How many render workers: the one place a config sets it. It counts the
            workers of all the engines started at once by cooperating processes (DDP ranks)
            together: each rank starts ``num_workers // ranks`` (:func:`rank_workers`), never
            more than its batch slots. ``None``: usable CPU cores for ``"process"``, the Ray
            cluster's CPUs for ``"ray"``.

    Raises:
        ValueError: an unknown engine (the known ones are listed), an address
            for the process engine, or ``num_workers`` below 1.
    """

    engine: str = "process"
    address: str | None = None
    num_workers: int | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:  # checked by name: the ray engine is imported only when started
            raise ValueError(f"unknown render engine {self.engine!r}; known: {', '.join(ENGINES.names())}")
        if self.engine == "process" and self.address is not None:
            raise ValueError(f"render.address ({self.address!r}) applies to engine 'ray' only; "
                             "set render.engine=ray or remove the address")
        if self.num_workers is not None and int(self.num_workers) < 1:
            raise ValueError(f"render.num_workers must be ≥ 1, got {self.num_workers}")

    def build(self, spec: ChainSpec, num_slots: int, instances_per_slot: int, *, num_workers: int | None = None,
              share: int = 1, **options: Any) -> RenderEngine:
        """Start this engine for ``spec``.

        Args:
            spec: The chain.
            num_slots, instances_per_slot: The instance layout.
            num_workers: Replaces :attr:`num_workers` when given (a caller that sizes its own engine).
            share: Engines started at once by cooperating processes (DDP ranks): this one starts
                its share of the workers (:func:`rank_workers`).
            **options: ``timeout_seconds``, ``max_retries``, ``start_timeout_seconds``.

        Returns:
            A started :class:`RenderEngine`.

        Raises:
            WorkerError, PluginError, ParameterError: as the engine's constructor.
            ImportError: ``"ray"`` without the ``ray`` package.
        """
        cls = ENGINES.get(self.engine)
        workers = num_workers if num_workers is not None else self.num_workers
        if self.engine == "ray":
            options.update(address=self.address)
        return cls(spec, num_slots, instances_per_slot, num_workers=workers, share=share, **options)


__all__ = ["ENGINES", "MALLOC_SETTINGS", "RenderConfig", "RenderEngine", "RenderPool", "RenderRequest", "SlotInstances",
           "WorkerError", "WorkerHandle", "rank_workers", "tune_allocator", "usable_cpus"]
