"""How much of the mastering model's gap is SPSA? One model trained four ways, scored through the real plugins.

The quick mastering recipe's encoder (:class:`deepafx.automation.model.AutomationModel`,
``recipes/mastering/quick.yaml``: MobileNetV2 ×0.5, 4 s context, 0.5 s frames, the learned
parameters of its chain) on the quick mastering data (its ``train`` split, about 8 minutes
of rendered music; its ``valid`` split held out), from the same pretrained start (the
recipe's stage 1: steps toward the chain's defaults), with the same seed, batches
(:class:`deepafx.data.stateful.StatefulBatcher`, consecutive frames per slot), Adam
learning rate, gradient clip and loss (the registered training loss, DeepAFx's
delay-invariant loss), trained:

* ``autodiff`` — exact gradients through the differentiable twin of the chain
  (:class:`deepafx.automation.twin.ChainTwin`, stateful per slot like the plugins; its
  renders equal the black box's to float32 rounding);
* ``spsa_k1`` / ``spsa_k4`` — VJP-SPSA with K = 1 / 4 draws through the black-box
  pedalboard chain in render workers (:class:`deepafx.fx.FxLayer`, ε from the config);
* ``fd`` — two-sided finite differences through the black box (2P + 1 renders per item),
  for a shorter run (``--fd-steps``).

Every method is scored on the same held-out frames (every frame of ``valid``, slots
reset per track) by rendering the model's predicted parameters through the *black-box*
chain and taking the training loss. ``final_valid_loss``: the score after the last step;
``spsa_to_autodiff_ratio``: SPSA's final score / autodiff's (DeepAFx-ST reports 1.64 for
its SPSA model against autodiff, Steinmetz et al. 2022). Single scores swing from one
checkpoint to the next, so the summary also gives the mean held-out score over the
last third of the scores and the mean training loss over the last third of the steps
(``*_last_third_*``). The learning curves go to a PNG next to the JSON.

``grad_cosine`` (skip with ``--grad-cosine-batches 0``): on training batches at the
pretrained start, after the same warm-up history through twin and black box, the cosine
between the twin's exact gradient and the black-box estimates of the same batch, for
the loss w.r.t. the chain parameters ``(batch, P)`` (``theta_*``) and after
backpropagation into the encoder's weights (``weights_*``): SPSA with K = 1, 4, 16
(K = 1 and 4 averaged over the 16 draws of one K = 16 estimate, split into groups) and
finite differences.

Usage::

    python benchmarks/spsa_vs_autodiff.py --steps 480 --fd-steps 80 --out runs/bench/spsa_vs_autodiff.json

Prints one JSON line last (also written to ``--out`` with the curves; the PNG is
``--out`` with ``.png``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from deepafx.automation.model import AutomationModel, pretrain_target
from deepafx.automation.twin import ChainTwin
from deepafx.config import load_config
from deepafx.data.stateful import StatefulBatcher
from deepafx.fx import FxLayer
from deepafx.losses import build_loss
from deepafx.recipes import default_data_dir, get_recipe
from deepafx.recipes.mastering.music import build_dataset
from deepafx.automation.task import load_tracks
from deepafx.spsa import gradient_from_differences

METHODS = ("autodiff", "spsa_k1", "spsa_k4", "fd")


class Setup:
    """Config, data, loss and the pretrained starting point shared by every method."""

    def __init__(self, args):
        cfg = get_recipe("mastering").bind(load_config(args.config, args.set))
        self.cfg, self.args = cfg, args
        self.chain = cfg.chain
        self.table = self.chain.param_table
        self.num_params = len(self.table)
        data_dir = Path(args.data_dir) if args.data_dir else default_data_dir(cfg)
        build_dataset(cfg.data, data_dir)
        self.train_tracks = load_tracks(data_dir / "train")
        self.valid_tracks = load_tracks(data_dir / "valid")
        self.defaults = pretrain_target(self.table.defaults_normalized())
        tc = cfg.train
        self.epsilon = tc.epsilon if args.epsilon is None else args.epsilon
        self.lr = tc.lr if args.lr is None else args.lr
        self.grad_clip = tc.grad_clip
        twin = ChainTwin(self.chain, 1)
        self.latency = twin.latency_samples
        self.loss_fn = build_loss(tc.loss, sample_rate=self.chain.sample_rate, latency_samples=self.latency,
                                  max_delay_ms=tc.max_delay_ms, alpha_time=tc.alpha_time, alpha_freq=tc.alpha_freq,
                                  reduction="none")
        torch.manual_seed(args.seed)
        self.model = AutomationModel(cfg.model, self.chain, self.num_params, self.defaults)
        self.frame, self.context = self.model.frame_samples, self.model.context_samples
        self._pretrain(tc.pretrain_steps, tc.pretrain_lr)
        self.start_state = copy.deepcopy(self.model.state_dict())

    def batcher(self, tracks, seed: int, mode: str, batch_size: int | None = None) -> StatefulBatcher:
        return StatefulBatcher(tracks, batch_size or self.args.batch_size, self.frame, self.context, seed=seed,
                               epoch_mode=mode, random_offset=mode == "wrap")

    def _pretrain(self, steps: int, lr: float) -> None:
        """The recipe's stage 1: MSE toward the (margin-clipped) defaults, no rendering."""
        if steps <= 0:
            return
        opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        target = torch.tensor(self.defaults, dtype=torch.float32)
        batches = self.batcher(self.train_tracks, self.args.seed * 7919 + 1, "wrap")
        for _ in range(steps):
            ctx = torch.from_numpy(batches.next_batch().context)
            loss = torch.nn.functional.mse_loss(self.model(ctx), target.expand(ctx.shape[0], -1))
            opt.zero_grad()
            loss.backward()
            opt.step()

    def fresh_model(self) -> AutomationModel:
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.start_state)
        return model

    def frame_loss(self, y: torch.Tensor, target: torch.Tensor, active: np.ndarray) -> torch.Tensor:
        idx = torch.from_numpy(np.flatnonzero(active))
        return self.loss_fn(y[idx], target[idx]).mean()


def build_layer(setup: Setup, method: str, seed: int):
    """The Fx layer of a method: the twin, or the black box with an estimator."""
    if method == "autodiff":
        return ChainTwin(setup.chain, setup.args.batch_size)
    estimator, k = ("fd", 1) if method == "fd" else ("spsa", int(method.rsplit("k", 1)[1]))
    return FxLayer(setup.chain, setup.args.batch_size, num_workers=setup.args.workers, estimator=estimator,
                   epsilon=setup.epsilon, num_perturbations=k, seed=seed)


@torch.no_grad()
def score(setup: Setup, model: AutomationModel, scorer: FxLayer) -> float:
    """Mean training loss over every held-out frame, rendered through the black box (slots reset per track)."""
    model.eval()
    scorer.eval()
    scorer.reset()
    total, count = 0.0, 0
    slots = min(setup.args.batch_size, len(setup.valid_tracks))  # one track per slot: no idle slots
    for b in setup.batcher(setup.valid_tracks, 12345, "drain", slots):
        resets = [i for i in range(b.batch_size) if b.reset[i]]
        if resets:
            scorer.reset(resets)
        y = scorer(torch.from_numpy(b.frame), model(torch.from_numpy(b.context)))
        n = int(b.active.sum())
        total += float(setup.frame_loss(y, torch.from_numpy(b.target), b.active)) * n
        count += n
    model.train()
    return total / max(count, 1)


def train_method(setup: Setup, method: str, steps: int, scorer: FxLayer, initial_score: float) -> dict:
    """Train one method for ``steps`` steps; score every ``--eval-every`` steps and at the end."""
    args = setup.args
    torch.manual_seed(args.seed)
    model = setup.fresh_model()
    opt = torch.optim.Adam(model.parameters(), lr=setup.lr)
    layer = build_layer(setup, method, seed=args.seed * 1009)
    batches = setup.batcher(setup.train_tracks, args.seed * 7919 + 2, "wrap")
    curve = [(0, initial_score, 0.0)]
    train_losses, step_seconds = [], 0.0
    try:
        layer.train()
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            b = batches.next_batch()
            resets = [i for i in range(b.batch_size) if b.reset[i]]
            if resets:
                layer.reset(resets)
            y = layer(torch.from_numpy(b.frame), model(torch.from_numpy(b.context)))
            loss = setup.frame_loss(y, torch.from_numpy(b.target), b.active)
            opt.zero_grad()
            loss.backward()
            if setup.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), setup.grad_clip)
            opt.step()
            step_seconds += time.perf_counter() - t0
            train_losses.append(loss.item())
            if step % args.eval_every == 0 or step == steps:
                curve.append((step, score(setup, model, scorer), step_seconds))
                print(json.dumps({"method": method, "step": step, "train_loss": round(float(np.mean(train_losses[-args.eval_every:])), 4),
                                  "valid_loss": round(curve[-1][1], 4), "seconds_per_step": round(step_seconds / step, 3)}),
                      flush=True)
    finally:
        if isinstance(layer, FxLayer):
            layer.close()
    return {"curve": curve, "train_losses": train_losses, "seconds_per_step": step_seconds / max(steps, 1),
            "final_valid_loss": curve[-1][1], "steps": steps}


# --------------------------------------------------------------------------- gradient cosines
def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def _estimates(layer: FxLayer, frame, params, target, setup, active, groups) -> dict[str, list[torch.Tensor]]:
    """Black-box gradient estimates w.r.t. ``params`` ``(batch, P)`` from one training render of ``layer``.

    ``groups(R)`` maps a name to lists of render-pair indices; each list gives one
    estimate averaging those pairs (:func:`deepafx.spsa.gradient_from_differences`).
    """
    layer.keep_last_renders = True
    with torch.no_grad():
        layer(frame, params.detach().requires_grad_())
    renders = torch.from_numpy(layer.last_renders).double()  # (B, 1 + 2R, C, N)
    rows = torch.from_numpy(layer.last_render_params)  # (B, 1 + 2R, P)
    r = (renders.shape[1] - 1) // 2
    y = renders[:, 0].float().requires_grad_()
    (dy,) = torch.autograd.grad(setup.frame_loss(y, target, active), y)
    s = torch.einsum("bcn,brcn->br", dy.double(), renders[:, 1 : 1 + r] - renders[:, 1 + r :])  # (B, R)
    step = rows[:, 1 : 1 + r] - rows[:, 1 + r :]
    draws = 1 if layer.estimator_name == "fd" else None
    return {name: [gradient_from_differences(s[:, idx], step[:, idx], draws or len(idx)) for idx in lists]
            for name, lists in groups(r).items()}


def grad_cosines(setup: Setup, num_batches: int, warmup: int) -> dict:
    """Cosines of black-box estimates with the twin's exact gradient (see the module docstring)."""
    args = setup.args
    model = setup.fresh_model().eval()
    twin = ChainTwin(setup.chain, args.batch_size)
    spsa = FxLayer(setup.chain, args.batch_size, num_workers=args.workers, epsilon=setup.epsilon,
                   num_perturbations=16, seed=args.seed * 31 + 7)
    fd = FxLayer(setup.chain, args.batch_size, num_workers=args.workers, estimator="fd", epsilon=setup.epsilon)
    weights = [p for p in model.parameters() if p.requires_grad]
    out: dict[str, list[float]] = {}
    batches = setup.batcher(setup.train_tracks, args.seed * 7919 + 3, "wrap")
    try:
        for layer in (twin, spsa, fd):
            layer.train()
        for i in range(num_batches * (warmup + 1)):
            b = batches.next_batch()
            resets = [j for j in range(b.batch_size) if b.reset[j]]
            for layer in (twin, spsa, fd):
                if resets:
                    layer.reset(resets)
            frame, target = torch.from_numpy(b.frame), torch.from_numpy(b.target)
            params = model(torch.from_numpy(b.context))
            if i % (warmup + 1) != warmup:  # same history in every instance, no gradient
                with torch.no_grad():
                    for layer in (twin, spsa, fd):
                        layer(frame, params.detach())
                continue
            theta = params.detach().requires_grad_()
            (exact,) = torch.autograd.grad(setup.frame_loss(twin(frame, theta), target, b.active), theta)
            est = _estimates(spsa, frame, params, target, setup, b.active,
                             lambda r: {"k1": [[d] for d in range(r)], "k4": [list(range(g, g + 4)) for g in range(0, r, 4)],
                                        "k16": [list(range(r))]})
            est |= _estimates(fd, frame, params, target, setup, b.active, lambda r: {"fd": [list(range(r))]})
            w_exact = torch.cat([g.flatten() for g in torch.autograd.grad(params, weights, exact.float(), retain_graph=True)])
            for name, gs in est.items():
                for g in gs:
                    out.setdefault(f"theta_{name}", []).append(_cos(g, exact))
                    w = torch.cat([x.flatten() for x in torch.autograd.grad(params, weights, g.float(), retain_graph=True)])
                    out.setdefault(f"weights_{name}", []).append(_cos(w, w_exact))
    finally:
        spsa.close()
        fd.close()
    return {k: round(float(np.mean(v)), 4) for k, v in sorted(out.items())}


def _moving_average(values: list[float], width: int) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    width = max(1, min(width, len(v)))
    return np.convolve(v, np.ones(width) / width, mode="valid")


def plot(results: dict, path: Path, title: str, width: int) -> None:
    """Held-out loss against steps and training time, and the training loss (moving average) against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_step, ax_time, ax_train) = plt.subplots(1, 3, figsize=(15, 4))
    for method, r in results.items():
        steps, valid, seconds = zip(*r["curve"])
        line, = ax_step.plot(steps, valid, marker="o", ms=3, label=method)
        ax_time.plot(seconds, valid, marker="o", ms=3, color=line.get_color())
        smooth = _moving_average(r["train_losses"], width)
        ax_train.plot(np.arange(len(smooth)) + min(width, len(r["train_losses"])), smooth, color=line.get_color())
    ax_step.set_xlabel("training step")
    ax_time.set_xlabel("training time (s, excluding scoring)")
    ax_step.set_ylabel("held-out loss through the black box")
    ax_time.sharey(ax_step)
    ax_train.set_xlabel("training step")
    ax_train.set_ylabel(f"training loss ({width}-step moving average)")
    for ax in (ax_step, ax_time, ax_train):
        ax.grid(alpha=0.3)
    ax_step.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="mastering/quick", help="mastering recipe config (name or path)")
    ap.add_argument("--set", action="append", default=[], help="config override section.key=value (repeatable)")
    ap.add_argument("--data-dir", default=None, help="dataset folder (default data/mastering/<config>, rendered if missing)")
    ap.add_argument("--steps", type=int, default=480, help="training steps of autodiff and SPSA")
    ap.add_argument("--fd-steps", type=int, default=80, help="training steps of finite differences")
    ap.add_argument("--batch-size", type=int, default=8, help="batch slots (stateful streams)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: the config's)")
    ap.add_argument("--epsilon", type=float, default=None, help="SPSA/FD ε (default: the config's)")
    ap.add_argument("--eval-every", type=int, default=40, help="steps between held-out scores")
    ap.add_argument("--workers", type=int, default=None, help="render workers (default: usable cores)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the main process (default 1: on a busy 2-core machine 2 threads made an "
                         "autodiff step 4.5x slower, 6.3 s against 1.4 s, by OpenMP waits)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    ap.add_argument("--grad-cosine-batches", type=int, default=4, help="batches for grad_cosine (0 skips it)")
    ap.add_argument("--out", default="runs/bench/spsa_vs_autodiff.json", help="JSON path; the PNG goes next to it")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    args.workers = args.workers or cores
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        ap.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    t_start = time.perf_counter()
    setup = Setup(args)
    scorer = FxLayer(setup.chain, args.batch_size, num_workers=args.workers)
    results = {}
    try:
        initial = score(setup, setup.fresh_model(), scorer)  # every method starts from the same model
        for method in methods:
            results[method] = train_method(setup, method, args.fd_steps if method == "fd" else args.steps, scorer, initial)
    finally:
        scorer.close()
    cosines = grad_cosines(setup, args.grad_cosine_batches, warmup=2) if args.grad_cosine_batches > 0 else None
    out = Path(args.out)
    summary = {
        "benchmark": "spsa_vs_autodiff",
        "config": args.config, "data": f"{len(setup.train_tracks)} train / {len(setup.valid_tracks)} held-out tracks",
        "num_params": setup.num_params, "batch_size": args.batch_size, "seed": args.seed, "lr": setup.lr,
        "threads": args.threads, "workers": args.workers,
        "epsilon": setup.epsilon, "steps": {m: r["steps"] for m, r in results.items()},
        "initial_valid_loss": round(next(iter(results.values()))["curve"][0][1], 4) if results else None,
        "final_valid_loss": {m: round(r["final_valid_loss"], 4) for m, r in results.items()},
        "seconds_per_step": {m: round(r["seconds_per_step"], 3) for m, r in results.items()},
    }
    # single held-out scores swing between checkpoints: also the mean over the last third of
    # the scores and of the training losses (the twin's renders equal the black box's)
    last = {m: float(np.mean([v for st, v, _ in r["curve"] if st >= r["steps"] * 2 / 3 and st > 0]))
            for m, r in results.items()}
    train_last = {m: float(np.mean(r["train_losses"][-max(1, r["steps"] // 3):])) for m, r in results.items()}
    summary["valid_loss_last_third_mean"] = {m: round(v, 4) for m, v in last.items()}
    summary["train_loss_last_third_mean"] = {m: round(v, 4) for m, v in train_last.items()}
    if "autodiff" in results:
        ref = results["autodiff"]
        spsa = [m for m in ("spsa_k1", "spsa_k4") if m in results]
        summary["spsa_to_autodiff_ratio"] = {m.split("_")[1]: round(results[m]["final_valid_loss"] / ref["final_valid_loss"], 3)
                                             for m in spsa}
        summary["spsa_to_autodiff_ratio_last_third"] = {
            m.split("_")[1]: {"valid": round(last[m] / last["autodiff"], 3), "train": round(train_last[m] / train_last["autodiff"], 3)}
            for m in spsa}
        if "fd" in results:
            at = {m: next(v for st, v, _ in r["curve"] if st >= args.fd_steps) for m, r in results.items()
                  if r["steps"] >= args.fd_steps}
            summary["valid_loss_at_fd_steps"] = {m: round(v, 4) for m, v in at.items()}
            summary["train_loss_at_fd_steps"] = {m: round(float(np.mean(r["train_losses"][args.fd_steps * 2 // 3 : args.fd_steps])), 4)
                                                 for m, r in results.items() if r["steps"] >= args.fd_steps}
    if cosines is not None:
        summary["grad_cosine"] = cosines
    summary["png"] = str(out.with_suffix(".png"))
    summary["total_seconds"] = round(time.perf_counter() - t_start, 1)
    if results:
        plot(results, out.with_suffix(".png"),
             f"{args.config}: {setup.num_params} parameters, batch {args.batch_size}, lr {setup.lr}, ε {setup.epsilon}, "
             f"seed {args.seed}", width=max(1, args.eval_every))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**summary, "curves": {m: r["curve"] for m, r in results.items()}}) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
