"""How well the learned Dexed proxy predicts Dexed, and whether its gradient points where Dexed's does.

Trains :class:`deepafx.recipes.dexed_matching.proxy.DexedProxy` on a built corpus (as
``train.spectral_gradient: proxy`` does before the spectral stages) and reports:

* its held-out error: log-mel LSD (dB) of the proxy's prediction against Dexed's cached
  features on corpus presets it never trained on, beside that of the hold-out's mean features
  (a proxy that ignores the preset);
* gradient agreement: for ``--checks`` held-out presets ``x₀``, a start ``x = x₀ + r·u₀`` moved on
  the free numeric parameters (``--radius``), and ``--directions`` Rademacher directions ``u`` each:
  the proxy's directional derivative ``∇ₓ mel_lsd(proxy(x), features(x₀)) · u`` against Dexed's
  central difference ``(LSD(x + εu) − LSD(x − εu)) / 2ε`` of the evaluation's LSD
  (:class:`~deepafx.recipes.dexed_matching.spectral.LSDTarget`) to the render of ``x₀``. Reported:
  the share of directions on which both agree on the sign, and their Pearson correlation. SPSA's
  own two-render estimate is Dexed's central difference along ``u``, so the sign agreement is the
  share of directions on which the proxy moves the preset as a K = 1 SPSA step would;
* the cost: proxy training seconds on this machine (``--threads``).

Usage:
    python benchmarks/dexed_proxy.py --data-dir data/dexed_matching/medium [--steps 3000] [--checks 24]

Prints one line per measurement, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    from deepafx.recipes.dexed_matching.corpus import Corpus
    from deepafx.recipes.dexed_matching.data import load_dataset
    from deepafx.recipes.dexed_matching.model import DexedEstimator
    from deepafx.recipes.dexed_matching.proxy import mel_lsd, train_proxy
    from deepafx.recipes.dexed_matching.search import numeric_free_mask
    from deepafx.recipes.dexed_matching.spectral import LSDTarget

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path("data/dexed_matching/medium"))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--proxy-frames", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checks", type=int, default=24, help="held-out presets of the gradient check (0: none)")
    ap.add_argument("--directions", type=int, default=4, help="Rademacher directions per preset")
    ap.add_argument("--radius", type=float, default=0.05, help="start offset from the preset, normalized units")
    ap.add_argument("--epsilon", type=float, default=0.02, help="central-difference step, normalized units")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        corpus = Corpus(args.data_dir / "corpus")
        data = load_dataset(args.data_dir)
    except FileNotFoundError as exc:
        sys.exit(str(exc))
    proxy, info = train_proxy(corpus, steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                              seed=args.seed, hidden=args.hidden, layers=args.layers, proxy_frames=args.proxy_frames,
                              progress=True)
    print(f"proxy: held-out log-mel LSD {info['holdout_mel_lsd_db']:.2f} dB (mean features: "
          f"{info['holdout_mean_mel_lsd_db']:.2f} dB) over {info['holdout']} presets; training "
          f"{info['train_mel_lsd_db']:.2f} dB; {info['seconds']:.0f} s for {args.steps} steps")
    out = {"benchmark": "dexed_proxy", **info, "settings": {k: v for k, v in vars(args).items() if k != "data_dir"}}
    if args.checks:
        rng = np.random.default_rng([args.seed, 11])
        held = np.sort(np.random.default_rng([args.seed, 7]).permutation(corpus.valid_index)[: info["holdout"]])
        rows = rng.choice(held, min(args.checks, len(held)), replace=False)
        free = numeric_free_mask()
        renderer = data.config.renderer()
        f = corpus.meta["feature"]  # the cached features' STFT settings: the estimator's front computes them alike
        est = DexedEstimator(len(data.config.notes), data.config.sample_rate, n_fft=int(f["n_fft"]),
                             hop_length=int(f["hop_length"]), n_mels=int(f["n_mels"]))
        t0 = time.perf_counter()
        proxy_d, dexed_d = [], []
        for row in rows:
            x0 = corpus.params[row].astype(np.float64)
            target = renderer.render(x0)
            lsd = LSDTarget(target)
            with torch.no_grad():
                feats = est.features(torch.from_numpy(target[None].astype(np.float32)))[:, : est.in_channels]
            u0 = np.where(free, rng.choice([-1.0, 1.0], x0.shape), 0.0)
            x = np.clip(x0 + args.radius * u0, 0.0, 1.0)
            xt = torch.tensor(x[None], dtype=torch.float32, requires_grad=True)
            mel_lsd(proxy(xt), feats).sum().backward()
            g = xt.grad[0].double().numpy()
            for _ in range(args.directions):
                u = np.where(free, rng.choice([-1.0, 1.0], x0.shape), 0.0)
                plus, minus = np.clip(x + args.epsilon * u, 0, 1), np.clip(x - args.epsilon * u, 0, 1)
                both = lsd(np.stack([renderer.render(plus), renderer.render(minus)]))
                dexed_d.append(float(both[0] - both[1]) / float(np.dot(plus - minus, u)))
                proxy_d.append(float(g @ u))
        p, d = np.asarray(proxy_d), np.asarray(dexed_d)
        agree = float(np.mean(np.sign(p) == np.sign(d)))
        corr = float(np.corrcoef(p, d)[0, 1])
        print(f"gradient check: {len(p)} directions at {len(rows)} held-out presets (start offset {args.radius}, "
              f"step {args.epsilon}): the proxy agrees with Dexed on the sign on {agree:.2f} of them, correlation "
              f"{corr:+.2f}; {time.perf_counter() - t0:.0f} s of renders")
        out.update(sign_agreement=agree, correlation=corr, directions=len(p))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
