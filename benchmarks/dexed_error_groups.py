"""Which DX7 parameters carry a Dexed estimator's spectral error: oracle substitution by parameter group.

The checkpoint's network estimates a preset for every held-out factory voice of
the validation split (``--split valid``, the default: what this analysis shows
informs choices, so it does not look at the test split; ``--split test``
reproduces figures made before that rule) (network alone, six notes); then, one group at a time, that
group's values are replaced by the true ones and the six-note log-spectral
distortion (LSD, dB) is measured again. A group's figure is the mean LSD gain
(positive: the true values of that group alone would have lowered the error).
Groups: every global parameter, each per-operator parameter over the six
operators (``opN_…``), and each operator as a whole (``opK_all``). Gains do not
add up: DX7 parameters interact (a true level on a wrong ratio can be worse).

With ``--ceiling``, also the best any chooser of a *training voice* can do: the
LSD of every held-out voice against every training factory voice (transpose 0),
its minimum per held-out voice (the oracle choice), and how often nearest-preset
retrieval (the recipe's ``RetrievalIndex``) picks that voice.

Usage:
    python benchmarks/dexed_error_groups.py [--config dexed_matching/medium]
        [--checkpoint runs/dexed_matching/medium/checkpoints/ploss.pt] [--data-dir data/dexed_matching/medium]
        [--ceiling] [--split valid|test]
Prints one line per group and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="dexed_matching/medium")
    ap.add_argument("--checkpoint", default="runs/dexed_matching/medium/checkpoints/ploss.pt")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--ceiling", action="store_true", help="also the oracle choice among the training voices")
    ap.add_argument("--split", default="valid", choices=("valid", "test"),
                    help="held-out voices analysed (default valid: the test split is not used for choices)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from deepafx.config import load_config
    from deepafx.hosts.dexed_host import dexed_param_table
    from deepafx.metrics import lsd_db
    from deepafx.recipes import default_data_dir, get_recipe
    from deepafx.recipes.dexed_matching.model import predict
    from deepafx.recipes.dexed_matching.train import load_estimator

    config = get_recipe("dexed_matching").bind(load_config(args.config))
    ddir = Path(args.data_dir) if args.data_dir else default_data_dir(config)
    renderer = config.data.renderer()
    x_true = np.load(ddir / "in_domain.npz")[f"x_{args.split}"].astype(np.float64)
    targets = renderer.render_batch(x_true)
    model, _ = load_estimator(Path(args.checkpoint))
    x_est = predict(model, targets, np.full(len(x_true), 60))

    def lsd(x: np.ndarray) -> np.ndarray:
        return np.array([lsd_db(y, t) for y, t in zip(renderer.render_batch(x), targets)])

    base = lsd(x_est)
    names = dexed_param_table().names
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        if n != "transpose_semitones":  # set from the given pitch, not estimated
            groups.setdefault(re.sub(r"^op\d_", "opN_", n), []).append(i)
    for k in range(1, 7):
        groups[f"op{k}_all"] = [i for i, n in enumerate(names) if n.startswith(f"op{k}_")]
    gains = {}
    for g, idx in groups.items():
        x = x_est.copy()
        x[:, idx] = x_true[:, idx]
        gains[g] = float(base.mean() - lsd(x).mean())
    for g, v in sorted(gains.items(), key=lambda kv: -kv[1]):
        print(f"{g:28s} {v:+.2f} dB", flush=True)
    out = {"benchmark": "dexed_error_groups", "checkpoint": args.checkpoint, "split": args.split, "n_voices": len(x_true),
           "network_lsd": float(base.mean()),
           "gain_db": {g: round(v, 3) for g, v in sorted(gains.items(), key=lambda kv: -kv[1])}}
    if args.ceiling:
        from deepafx.recipes.dexed_matching.presets import set_transpose
        from deepafx.recipes.dexed_matching.search import RetrievalIndex

        x_train = np.load(ddir / "in_domain.npz")["x_train"].astype(np.float64)
        voices = renderer.render_batch(set_transpose(x_train, 0))
        table = np.array([[lsd_db(v, t) for v in voices] for t in targets])  # (test, train)
        index = RetrievalIndex(x_train, renderer)
        chosen = [int(index.query(t, 60, 1)[0][0]) for t in targets]  # the voice retrieve() returns
        ret = table[np.arange(len(targets)), chosen]
        out["ceiling"] = {"n_training_voices": len(x_train), "oracle_voice_lsd": float(table.min(1).mean()),
                          "retrieval_lsd": float(ret.mean()),
                          "retrieval_picks_oracle_voice": int(np.sum(np.isclose(ret, table.min(1))))}
        print(f"oracle training voice {out['ceiling']['oracle_voice_lsd']:.2f} dB, retrieval {ret.mean():.2f} dB, "
              f"retrieval picks the oracle voice for {out['ceiling']['retrieval_picks_oracle_voice']} of {len(ret)}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
