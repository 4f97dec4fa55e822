"""A DeepAFx-ST-style SPSA channel, re-implemented here as the peer of ``benchmarks/spsa_step.py``.

DeepAFx-ST (Steinmetz, Bryan and Reiss, JAES 2022; ``deepafx_st/processors/spsa``)
scales black-box renders with one worker process per batch item, each holding a
single effect instance, and two rounds of pipe messages per step:

* forward: one ``("forward", (x_i, p_i))`` message per item (the audio pickled
  through the pipe); the worker renders ``y_i`` and sends it back;
* backward: one ``("backward", (x_i, p_i, dy_i, ε))`` message per item; the
  worker draws a Rademacher ``Δ``, renders ``θ ± εΔ`` (clipped to [0, 1]) *with
  the same instance*, and returns ``g_j = Σ_t dy_t (y⁺ − y⁻)_t / (2εΔ_j)``.

This module reproduces that orchestration (written from the paper's description
and the published design, not copied) around the *same* chain renderer as
deepafx (:meth:`deepafx.chain.Chain.process`), so the benchmark compares the
orchestration only. One instance per item also means the perturbed renders
advance the main instance's state, which deepafx avoids with per-render
instances; for timing this does not matter.
"""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import torch

from deepafx.chain import ChainSpec


def _worker(conn, spec: ChainSpec, seed: int) -> None:
    torch.set_num_threads(1)
    inst = spec.build()
    rng = np.random.default_rng(seed)
    conn.send(len(inst.param_table))
    while True:
        op, value = conn.recv()
        if op == "forward":
            x, p = value
            conn.send(inst.process(x, p))
        elif op == "backward":
            x, p, dy, eps = value
            delta = rng.choice([-1.0, 1.0], size=p.shape)
            y_plus = inst.process(x, np.clip(p + eps * delta, 0, 1))
            y_minus = inst.process(x, np.clip(p - eps * delta, 0, 1))
            s = float(np.sum(dy * (y_plus - y_minus)))
            conn.send(s / (2 * eps * delta))
        else:
            conn.close()
            return


class PeerSPSAChannel:
    """One worker process per batch item (DeepAFx-ST's layout); see the module docstring.

    Args:
        spec: The chain each worker builds once.
        batch_size: Items ``M`` (and worker processes).
        epsilon: SPSA ε on normalized parameters.

    Shapes: ``__call__(audio (batch, channels, samples), params (batch, num_params))``
    → ``(batch, channels, samples)``, differentiable in ``params``.
    """

    def __init__(self, spec: ChainSpec, batch_size: int, epsilon: float = 0.01):
        ctx = mp.get_context("spawn")
        self.epsilon = float(epsilon)
        self.conns, self.procs = [], []
        for i in range(batch_size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, spec, i), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        self.num_params = [c.recv() for c in self.conns][0]

    def __call__(self, audio: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return _PeerFunction.apply(audio, params, self)

    def close(self) -> None:
        for c in self.conns:
            c.send(("shutdown", None))
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()

    def __enter__(self) -> "PeerSPSAChannel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _PeerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, audio, params, channel: PeerSPSAChannel):
        ctx.save_for_backward(audio, params)
        ctx.channel = channel
        x, p = audio.detach().numpy(), params.detach().double().numpy()
        for i, conn in enumerate(channel.conns[: len(x)]):
            conn.send(("forward", (x[i], p[i])))
        return torch.from_numpy(np.stack([conn.recv() for conn in channel.conns[: len(x)]]))

    @staticmethod
    def backward(ctx, grad_out):
        audio, params = ctx.saved_tensors
        ch = ctx.channel
        x, p, dy = audio.numpy(), params.detach().double().numpy(), grad_out.detach().numpy()
        for i, conn in enumerate(ch.conns[: len(x)]):
            conn.send(("backward", (x[i], p[i], dy[i], ch.epsilon)))
        g = np.stack([conn.recv() for conn in ch.conns[: len(x)]])
        return None, torch.from_numpy(g).to(params.dtype), None
