"""Dexed estimator inputs compared on the same cached corpus: IF-Mel vs log-mel, six notes vs one.

Each variant is the recipe's :class:`~deepafx.recipes.dexed_matching.model.DexedEstimator`
(the config's ``model:`` section with ``features`` and ``input_notes`` changed)
trained with the P-loss alone on the cached corpus for the same number of
steps, batch size, learning rate and seed (the same batches), then scored —
network alone — on every held-out factory voice of the test split: the
estimated preset renders all six notes and the log-spectral distortion (LSD,
dB) against the target's six notes is averaged. Also scored: nearest-preset
retrieval over the training factory voices and over the whole corpus (cached
log-mel, Euclidean). Means with 95 % percentile-bootstrap intervals, and the
paired per-sound difference of every variant against ``logmel6``.

Variants: ``logmel6`` (log-mel, six notes), ``ifmel6`` (IF-Mel, six notes;
Engel et al., GANSynth, ICLR 2019), ``logmel1`` and ``ifmel1`` (the single note
(60, 85) only, the input most sound-matching work uses).

The corpus is built in ``<data dir>/corpus`` first when missing (the dataset's
``in_domain.npz`` must exist: ``deepafx data --config dexed_matching/medium``).

Usage:
    python benchmarks/dexed_input_ablation.py --config dexed_matching/medium \\
        [--data-dir data/dexed_matching/medium] [--steps 3000] [--batch-size 64] \\
        [--device cpu|cuda] [--variants logmel6,ifmel6,logmel1,ifmel1] [--corpus-workers 2]
Prints one line per variant and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

VARIANTS = {
    "logmel6": {"features": "logmel", "input_notes": None},
    "ifmel6": {"features": "ifmel", "input_notes": None},
    "logmel1": {"features": "logmel", "input_notes": [3]},
    "ifmel1": {"features": "ifmel", "input_notes": [3]},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="dexed_matching/medium")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--corpus-workers", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from deepafx.metrics import bootstrap_ci, lsd_db, paired_bootstrap_ci
    from deepafx.config import load_config
    from deepafx.recipes import default_data_dir, get_recipe
    from deepafx.recipes.dexed_matching.corpus import Corpus
    from deepafx.recipes.dexed_matching.data import _ensure_corpus
    from deepafx.recipes.dexed_matching.model import DexedEstimator, predict
    from deepafx.recipes.dexed_matching.search import CorpusIndex, RetrievalIndex

    config = get_recipe("dexed_matching").bind(load_config(args.config))
    dcfg = config.data
    if args.corpus_workers:
        dcfg = dataclasses.replace(dcfg, corpus_workers=args.corpus_workers)
    ddir = Path(args.data_dir) if args.data_dir else default_data_dir(config)
    t0 = time.perf_counter()
    _ensure_corpus(dcfg, ddir, force=False, progress=True)
    corpus_s = time.perf_counter() - t0
    corpus = Corpus(ddir / "corpus")
    ind = np.load(ddir / "in_domain.npz")
    x_test, x_train = ind["x_test"].astype(np.float64), ind["x_train"].astype(np.float64)
    renderer = dcfg.renderer()
    targets = renderer.render_batch(x_test)
    pitch = np.full(len(x_test), 60)
    sr = dcfg.sample_rate

    def score(xs: np.ndarray) -> np.ndarray:
        return np.array([lsd_db(y, t) for y, t in zip(renderer.render_batch(xs), targets)])

    rows: dict[str, np.ndarray] = {}
    info: dict[str, dict] = {}
    rindex = RetrievalIndex(x_train, renderer)
    rows["retrieval"] = score(np.stack([rindex.retrieve(t, 60) for t in targets]))
    rows["retrieval_corpus"] = score(CorpusIndex(corpus).retrieve(targets))
    device = torch.device(args.device)
    for name in args.variants.split(","):
        settings = {**dataclasses.asdict(config.model), **VARIANTS[name]}
        torch.manual_seed(args.seed)
        model = DexedEstimator(len(dcfg.notes), sr, **settings).to(device)
        kinds = ["logmel", "ifmel"] if settings["features"] == "ifmel" else ["logmel"]
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        rng = np.random.default_rng(args.seed)
        model.train()
        t1 = time.perf_counter()
        losses = []
        for step in range(args.steps):
            idx = rng.choice(corpus.valid_index, args.batch_size)
            feats = torch.from_numpy(corpus.batch(idx, kinds).astype(np.float32)).to(device, non_blocking=True)
            x_true = torch.from_numpy(corpus.params[idx]).float().to(device)
            loss, _ = model.p_loss(model(feats), x_true)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            losses.append(float(loss.detach()))
        train_s = time.perf_counter() - t1
        model = model.cpu().eval()
        rows[name] = score(predict(model, targets, pitch))
        info[name] = {"train_seconds": round(train_s, 1), "final_ploss": float(np.mean(losses[-100:]))}
        print(f"{name}: LSD {rows[name].mean():.2f} dB, P-loss {info[name]['final_ploss']:.3f}, {train_s:.0f} s", flush=True)

    summary = {}
    for name, v in rows.items():
        lo, hi = bootstrap_ci(v, seed=args.seed)
        summary[name] = {"lsd": float(v.mean()), "ci": [lo, hi], **info.get(name, {})}
        if name != "logmel6" and "logmel6" in rows:
            m, plo, phi = paired_bootstrap_ci(v, rows["logmel6"], seed=args.seed)
            summary[name]["minus_logmel6"] = {"mean": m, "ci": [plo, phi]}
        if name not in ("retrieval", "retrieval_corpus"):
            m, plo, phi = paired_bootstrap_ci(v, rows["retrieval"], seed=args.seed)
            summary[name]["minus_retrieval"] = {"mean": m, "ci": [plo, phi]}
    out = {"benchmark": "dexed_input_ablation", "n_test_voices": int(len(x_test)), "corpus_valid": int(len(corpus.valid_index)),
           "corpus_build_seconds": round(corpus_s, 1), "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
           "device": str(device), "architecture": config.model.architecture, "results": summary,
           "per_sound_lsd": {k: [round(float(x), 3) for x in v] for k, v in rows.items()}}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
