"""Render worker processes owning per-slot stateful chain instances.

DeepAFx's stateful training scheme: batch slot ``i`` is fed consecutive frames
of one file, and owns its own chain instances — the *main* instance (forward
pass) and one instance per perturbed render (SPSA ``+`` and ``−``; ``2K`` for
K perturbations, ``2P`` for finite differences) — so every instance keeps a
coherent history. See Ramírez et al., "Differentiable signal processing with
black-box audio effects", ICASSP 2021.

Instances live in worker processes (crash isolation; a segfaulting or hanging
plugin cannot take the training process down). Slot ``s`` belongs to worker
``s % num_workers``. One :meth:`RenderPool.render` call sends *one message per
worker* carrying every item that worker owns and all the renders each item
needs, and waits for all workers in parallel.

Fault handling: a worker that dies (signal, abort) or exceeds ``timeout_s`` is
killed and restarted; its slots' instances are rebuilt fresh (their state is
lost, which is reported in the warning) and the request is retried up to
``max_retries`` times before :class:`WorkerError` is raised. Workers die with
their parent (``PR_SET_PDEATHSIG``), ignore Ctrl-C (the parent decides), and are
shut down by :meth:`RenderPool.close`, a context manager exit, or at interpreter
exit — no worker process is left behind.
"""

from __future__ import annotations

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
from typing import Sequence

import numpy as np

from deepafx.chain import ChainSpec
from deepafx.hosts.base import AudioError, PluginError
from deepafx.params import ParameterError

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
    """

    slot: int
    audio: np.ndarray
    params: np.ndarray


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
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)
        # Build serially on this process's main thread (VST3 and dawdreamer need it).
        chains = {s: [spec.build() for _ in range(instances_per_slot)] for s in slots}
        first = next(iter(chains.values()))[0] if chains else spec.build()
        conn.send(("ready", {"num_params": len(first.param_table), "latency_samples": first.latency_samples,
                             "names": first.param_table.names}))
    except BaseException as exc:  # report load failures to the parent, then exit
        conn.send(("error", type(exc).__name__, f"{exc}", traceback.format_exc()))
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
                in_buf, out_buf = shm.attach(msg[1]), shm.attach(msg[2])
                out = []
                for slot, in_off, shape, params, out_off in msg[3]:
                    audio = np.ndarray(shape, np.float32, in_buf.buf, in_off)
                    insts = chains[slot]
                    ys = [insts[r].process(audio, params[r]) for r in range(len(params))]
                    dest = (len(ys), *ys[0].shape)
                    if dest == (len(params), *shape):  # written in place; only a flag goes back
                        target = np.ndarray(dest, np.float32, out_buf.buf, out_off)
                        for r, y in enumerate(ys):
                            target[r] = y
                        out.append(None)
                    else:  # channel count changed: send the arrays themselves
                        out.append(np.stack(ys))
                conn.send(("ok", out))
            elif op == "reset":
                for slot in msg[1]:
                    for inst in chains[slot]:
                        inst.reset()
                conn.send(("ok", None))
            elif op == "close":
                shm.close()
                for insts in chains.values():
                    for inst in insts:
                        inst.close()
                conn.send(("ok", None))
                return
            else:
                conn.send(("error", "PluginError", f"unknown worker op {op!r}", ""))
        except Exception as exc:
            conn.send(("error", type(exc).__name__, str(exc), traceback.format_exc()))


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
            self.shm.close()
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass
            self.shm = None


class _Worker:
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
        self.info: dict | None = None

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


_LIVE_POOLS: "weakref.WeakSet[RenderPool]" = weakref.WeakSet()


@atexit.register
def _close_all_pools() -> None:
    for pool in list(_LIVE_POOLS):
        pool.close()


class RenderPool:
    """Worker processes holding ``instances_per_slot`` chain instances for each of ``num_slots`` slots.

    Args:
        spec: The chain every instance is built from.
        num_slots: Batch slots (the batch size ``M``).
        instances_per_slot: Instances per slot: ``1 + 2K`` for SPSA with K
            perturbations, ``1 + 2P`` for finite differences.
        num_workers: Worker processes (default: usable CPU cores, at most ``num_slots``).
        timeout_s: Longest a worker may take for one render/reset request.
        start_timeout_s: Longest a worker may take to start and build its
            instances (default ``max(timeout_s, 120)``).
        max_retries: Restarts + retries of a failed request before giving up.
        start_method: multiprocessing start method (``"spawn"`` default: plugins
            must be loaded on the main thread of a clean process).

    Raises:
        WorkerError / PluginError / ParameterError: if the chain cannot be built
            (the worker's error is re-raised with its message).
    """

    def __init__(
        self,
        spec: ChainSpec,
        num_slots: int,
        instances_per_slot: int = 3,
        num_workers: int | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 1,
        start_method: str = "spawn",
        start_timeout_s: float | None = None,
    ):
        if num_slots < 1 or instances_per_slot < 1:
            raise ValueError("num_slots and instances_per_slot must be ≥ 1")
        self.spec = spec
        self.num_slots = num_slots
        self.instances_per_slot = instances_per_slot
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.num_workers = max(1, min(num_workers or usable, num_slots))
        self.timeout_s = float(timeout_s)
        self.start_timeout_s = float(start_timeout_s if start_timeout_s is not None else max(timeout_s, 120.0))
        self.max_retries = int(max_retries)
        self.restarts = 0
        self._lock = threading.Lock()
        self._closed = False
        ctx = mp.get_context(start_method)
        self._workers = [
            _Worker(ctx, spec, [s for s in range(num_slots) if s % self.num_workers == w], instances_per_slot, w)
            for w in range(self.num_workers)
        ]
        _LIVE_POOLS.add(self)
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
    def _await_ready(self, w: _Worker) -> None:
        try:
            reply = self._recv(w, self.start_timeout_s, what="start")
        except _Failure as f:
            raise WorkerError(f"{f}: could not build chain {self.spec.name!r}") from None
        if reply[0] == "error":
            self._raise_remote(reply, w)
        w.info = reply[1]

    def _recv(self, w: _Worker, timeout: float, what: str):
        ready = wait([w.conn, w.proc.sentinel], timeout=timeout)
        if w.conn in ready:
            try:
                return w.conn.recv()
            except (EOFError, OSError):
                pass
        if not ready:
            raise _Failure(f"worker {w.index} (pid {w.proc.pid}) timed out after {timeout:g} s during {what}")
        w.proc.join(timeout=1)
        code = w.proc.exitcode
        sig = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        raise _Failure(f"worker {w.index} (pid {w.proc.pid}) died with {sig} during {what}")

    def _raise_remote(self, reply, w: _Worker) -> None:
        _, name, msg, tb = reply
        cls = _ERRORS.get(name, PluginError)
        if tb:
            log.debug("worker %d traceback:\n%s", w.index, tb)
        raise cls(f"{msg} [in render worker {w.index}, chain {self.spec.name!r}; {name}]")

    def _restart(self, w: _Worker, reason: str) -> None:
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
            try:
                if w.proc.is_alive():
                    w.conn.send(("close",))
            except (OSError, BrokenPipeError):
                pass
        deadline = time.monotonic() + 5
        for w in self._workers:
            w.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            w.kill()
            w.in_block.release()
            w.out_block.release()
        _LIVE_POOLS.discard(self)

    def __enter__(self) -> "RenderPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    # -- requests -------------------------------------------------------------
    def _call(self, payloads: dict[int, tuple]) -> dict[int, object]:
        """Send ``payloads[worker_index]`` to each worker, gather replies, handle faults."""
        if self._closed:
            raise WorkerError("render pool is closed")
        with self._lock:
            results: dict[int, object] = {}
            pending = dict(payloads)
            attempts = {i: 0 for i in pending}
            while pending:
                for i, msg in pending.items():
                    try:
                        self._workers[i].conn.send(msg)
                    except (OSError, BrokenPipeError):
                        pass  # detected as a dead worker below
                failed: dict[int, str] = {}
                deadline = time.monotonic() + self.timeout_s
                for i in list(pending):
                    w = self._workers[i]
                    try:
                        reply = self._recv(w, max(0.0, deadline - time.monotonic()), what=f"{msg[0]} request")
                    except _Failure as f:
                        failed[i] = str(f)
                        continue
                    if reply[0] == "error":
                        # A Python exception (bad input, plugin error): deterministic, do not retry.
                        for j in pending:
                            if j != i and j not in failed and j not in results:
                                try:
                                    self._recv(self._workers[j], self.timeout_s, what="drain")
                                except _Failure as f:
                                    self._restart(self._workers[j], str(f))
                        self._raise_remote(reply, w)
                    results[i] = reply[1]
                    del pending[i]
                for i, reason in failed.items():
                    attempts[i] += 1
                    if attempts[i] > self.max_retries:
                        self._restart(self._workers[i], reason)
                        raise WorkerError(
                            f"{reason}; gave up after {attempts[i]} attempt(s) on chain {self.spec.name!r}. "
                            "The worker was restarted so later calls can proceed; check the plugin "
                            "(run `deepafx plugins --details PATH`) or raise timeout_s."
                        )
                    self._restart(self._workers[i], reason)
            return results

    def render(self, requests: Sequence[RenderRequest]) -> list[np.ndarray]:
        """Render every request; returns one ``(num_renders, channels_out, samples)`` array per request.

        Raises:
            ValueError: a slot outside ``[0, num_slots)`` or too many renders for a slot.
            ParameterError / AudioError / PluginError: raised in a worker (not retried).
            WorkerError: a worker crashed or hung beyond ``max_retries``.
        """
        by_worker: dict[int, list[tuple[int, int]]] = {}
        for k, req in enumerate(requests):
            if not 0 <= req.slot < self.num_slots:
                raise ValueError(f"slot {req.slot} outside [0, {self.num_slots})")
            if len(req.params) > self.instances_per_slot:
                raise ValueError(f"{len(req.params)} renders requested for slot {req.slot}, but it owns {self.instances_per_slot} instances")
            by_worker.setdefault(req.slot % self.num_workers, []).append((k, req.slot))
        payloads, layouts = {}, {}
        for i, items in by_worker.items():
            w = self._workers[i]
            audios = [np.ascontiguousarray(requests[k].audio, dtype=np.float32) for k, _ in items]
            for a in audios:
                if a.ndim != 2:
                    raise AudioError(f"audio must be (channels, samples), got shape {a.shape}")
            in_sizes = [a.nbytes for a in audios]
            out_sizes = [a.nbytes * len(requests[k].params) for a, (k, _) in zip(audios, items)]
            in_shm = w.in_block.ensure(sum(in_sizes))
            out_shm = w.out_block.ensure(sum(out_sizes))
            entries, in_off, out_off = [], 0, 0
            for a, (k, slot), n_in, n_out in zip(audios, items, in_sizes, out_sizes):
                np.ndarray(a.shape, np.float32, in_shm.buf, in_off)[...] = a
                entries.append((slot, in_off, a.shape, np.asarray(requests[k].params, dtype=np.float64), out_off))
                in_off += n_in
                out_off += n_out
            payloads[i] = ("render", in_shm.name, out_shm.name, entries)
            layouts[i] = entries
        replies = self._call(payloads)
        out: list[np.ndarray] = [None] * len(requests)  # type: ignore[list-item]
        for i, items in by_worker.items():
            buf = self._workers[i].out_block.shm.buf  # type: ignore[union-attr]
            for (k, _), (_, _, shape, params, off), arr in zip(items, layouts[i], replies[i]):  # type: ignore[arg-type]
                out[k] = arr if arr is not None else np.ndarray((len(params), *shape), np.float32, buf, off).copy()
        return out

    def reset(self, slots: Sequence[int] | None = None) -> None:
        """Reset every instance of ``slots`` (default: all slots)."""
        slots = list(range(self.num_slots)) if slots is None else [int(s) for s in slots]
        by_worker: dict[int, list[int]] = {}
        for s in slots:
            if not 0 <= s < self.num_slots:
                raise ValueError(f"slot {s} outside [0, {self.num_slots})")
            by_worker.setdefault(s % self.num_workers, []).append(s)
        self._call({i: ("reset", ss) for i, ss in by_worker.items()})


class _Failure(Exception):
    """Internal: a worker died or timed out."""
