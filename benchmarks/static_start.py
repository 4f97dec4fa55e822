"""How reliably CMA-ES finds the static start of ``train.start: static`` on the training pieces.

For each ``--search SIGMA,RENDERS,SEED`` the amp-emulation config's chain is fitted once,
as :func:`deepafx.automation.task.search_static_start` does it
(:func:`deepafx.automation.oracle.static_preset`: the middle of every training piece,
``--seconds`` in all per render, laid end to end, objective the mean of the pieces'
pre-emphasised ESRs after the chain's latency), with that initial step size, render budget
and seed. The spread over seeds at one setting shows how much the start depends on the
search's luck; the curve (best so far every 5 generations) whether more renders still help.
Only training pieces are read.

Usage:
    python benchmarks/static_start.py --config amp_emulation/quick_gx [--data-dir DIR] [--seconds 24] \\
        --search 0.1,300,0 --search 0.25,600,0 ... [--set KEY=VALUE ...]

Prints one JSON line per search, then one JSON line with all of them.

Raises (exits with the message): a malformed ``--search``, a data folder without training pieces.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def parse_search(text: str) -> tuple[float, int, int]:
    """``"0.25,600,0"`` → ``(sigma0, renders, seed)``.

    Raises:
        SystemExit: not three comma-separated numbers, sigma <= 0 or renders < 1.
    """
    try:
        sigma, renders, seed = text.split(",")
        out = float(sigma), int(renders), int(seed)
    except ValueError:
        raise SystemExit(f"--search takes SIGMA,RENDERS,SEED (e.g. 0.25,600,0), got {text!r}") from None
    if not out[0] > 0 or out[1] < 1:
        raise SystemExit(f"--search needs sigma > 0 and renders >= 1, got {text!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    from deepafx.automation.oracle import static_preset
    from deepafx.commands.train import load_recipe_config
    from deepafx.recipes import default_data_dir
    from deepafx.recipes.amp_emulation.data import build_dataset, load_split

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="amp_emulation/quick_gx")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--data-dir")
    ap.add_argument("--seconds", type=float, default=24.0, help="seconds of training audio per render")
    ap.add_argument("--search", action="append", default=[], metavar="SIGMA,RENDERS,SEED", required=True)
    args = ap.parse_args(argv)
    searches = [parse_search(s) for s in args.search]
    _, cfg = load_recipe_config(args.config, args.set)
    ddir = args.data_dir or default_data_dir(cfg)
    build_dataset(cfg.sections["data"], ddir)
    _, tracks = load_split(ddir, "train")
    if not tracks:
        raise SystemExit(f"{ddir} has no training pieces")
    results = []
    for sigma, renders, seed in searches:
        t0 = time.perf_counter()
        r = static_preset(cfg.sections["chain"], tracks, renders=renders, seconds=args.seconds, seed=seed,
                          sigma0=sigma, render=cfg.sections.get("render"))
        row = {"sigma": sigma, "renders": renders, "seed": seed, "objective": round(r.objective, 4),
               "default_objective": round(r.default_objective, 4),
               "curve_every_5_generations": [round(h, 4) for h in r.history[::5]],
               "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps(row), flush=True)
        results.append(row)
    print(json.dumps({"benchmark": "static_start", "config": args.config, "training_pieces": len(tracks),
                      "seconds_per_render": args.seconds, "searches": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
