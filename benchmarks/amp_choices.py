"""Choose an amp plugin's discrete settings (tube model, tone stack, ...) on the validation split.

A player picks the amp model closest to the amp they match before turning knobs;
this does the same, measured. For every value of each ``--choice`` parameter in turn
(coordinate search, one pass, in the order given, the others at the best found so
far, starting from the config's ``fixed`` values), CMA-ES searches the learned knobs
(:class:`deepafx.automation.oracle.CmaesOracle`, objective ``esr_pre``: pre-emphasised
ESR after the chain's reported latency, the objective the model trains on) on a
search track made of the middle ``--excerpt-seconds`` of every piece of ``--split``
(0.25 s of silence between them), with ``--renders`` renders, starting from the
knobs' defaults. The value with the lowest best objective wins. Each value's best
objective is the static bound of that amp model on that audio, not a trained
model's score; only the winning values go into a config.

The test split is never read (``--split test`` is refused).

Usage:
    python benchmarks/amp_choices.py --config amp_emulation/quick_gx \\
        --choice model 0-17 --choice tonestack_model 0-26 [--stage amp] [--renders 81] \\
        [--excerpt-seconds 4] [--split valid] [--data-dir DIR] [--invert] [--set KEY=VALUE ...]

``--invert`` appends a polarity flip to the chain (amp models with an odd number of inverting
stages come out inverted, and ESR is polarity-sensitive).

Prints one line per value tried, a table, then one JSON line (the choices, every
value's objective, the winners, the time taken).

Raises (exits with the message): an unknown stage or parameter, a parameter that is
learned rather than fixed, a value outside the parameter's range, the test split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def parse_values(text: str) -> list[float]:
    """``"0-3,7"`` → ``[0, 1, 2, 3, 7]`` (integer ranges inclusive; plain numbers as given)."""
    values: list[float] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part[1:]:
            lo, hi = part.split("-", 1) if not part.startswith("-") else ("-" + part[1:].split("-", 1)[0],
                                                                            part[1:].split("-", 1)[1])
            values.extend(float(v) for v in range(int(lo), int(hi) + 1))
        elif part:
            values.append(float(part))
    if not values:
        raise SystemExit(f"no values in {text!r}")
    return values


def search_track(pairs, sample_rate: float, excerpt_seconds: float, gap_seconds: float = 0.25):
    """The middle ``excerpt_seconds`` of every ``(input, target)`` pair, joined with silence.

    Returns:
        ``(input, target)``, each ``(channels, samples)`` float32.
    """
    n_ex, gap = int(round(excerpt_seconds * sample_rate)), int(round(gap_seconds * sample_rate))
    xs, ys = [], []
    for x, y in pairs:
        n = min(x.shape[1], y.shape[1])
        start = max(0, (n - n_ex) // 2)
        stop = min(n, start + n_ex)
        for out, a in ((xs, x), (ys, y)):
            out.append(a[:, start:stop])
            out.append(np.zeros((a.shape[0], gap), np.float32))
    return np.concatenate(xs, 1).astype(np.float32), np.concatenate(ys, 1).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    from deepafx.automation.oracle import CmaesOracle
    from deepafx.chain import ChainSpec
    from deepafx.commands.train import load_recipe_config
    from deepafx.recipes import default_data_dir
    from deepafx.recipes.amp_emulation.data import build_dataset, load_split

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="amp_emulation/quick_gx")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--data-dir")
    ap.add_argument("--split", default="valid", choices=("train", "valid", "test"))
    ap.add_argument("--stage", help="processor name holding the choices (default: the first with them)")
    ap.add_argument("--choice", nargs=2, action="append", required=True, metavar=("PARAM", "VALUES"),
                    help="a fixed parameter and the values to try, e.g. model 0-17")
    ap.add_argument("--renders", type=int, default=81, help="CMA-ES renders per value (default 81)")
    ap.add_argument("--excerpt-seconds", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--invert", action="store_true",
                    help="append a polarity flip (pedalboard.Invert) to the chain: for amp models that invert")
    args = ap.parse_args(argv)
    if args.split == "test":
        raise SystemExit("choices are made on the validation split; the test split is scored once per config")

    _, cfg = load_recipe_config(args.config, args.set)
    base = cfg.sections["chain"].to_dict()
    if args.invert:
        base["processors"].append({"backend": "pedalboard.Invert", "name": "invert"})
    procs = base["processors"]
    names = [p for p, _ in args.choice]
    if args.stage is None:
        idx = next((i for i, p in enumerate(procs) if all(n in (p.get("fixed") or {}) for n in names)), None)
    else:
        idx = next((i for i, p in enumerate(procs) if p.get("name") == args.stage), None)
    if idx is None:
        raise SystemExit(f"no stage of chain {base.get('name')!r} fixes all of {names} "
                         f"(stages: {[p.get('name') for p in procs]}); list them under its `fixed:`")
    stage = procs[idx]
    ddir = args.data_dir or default_data_dir(cfg)
    build_dataset(cfg.sections["data"], ddir)
    sr = float(base.get("sample_rate", 44100))
    pieces, pairs = load_split(ddir, args.split)
    if not pairs:
        raise SystemExit(f"split {args.split!r} of {ddir} has no pieces")
    x, y = search_track(pairs, sr, args.excerpt_seconds)
    print(f"search track: {len(pieces)} {args.split} pieces, {x.shape[1] / sr:.1f} s; chain {base.get('name')}, "
          f"stage {stage.get('name')}, {args.renders} renders per value", flush=True)

    best = {n: float(stage["fixed"][n]) for n in names}
    tried: dict[str, dict[str, dict]] = {}
    t_all = time.perf_counter()
    for name, text in args.choice:
        tried[name] = {}
        for v in parse_values(text):
            spec_d = json.loads(json.dumps(base))
            spec_d["processors"][idx]["fixed"] = {**stage["fixed"], **best, name: v}
            try:
                spec = ChainSpec.from_dict(spec_d)
            except ValueError as exc:
                raise SystemExit(f"{name}={v:g}: {exc}") from None
            t0 = time.perf_counter()
            with CmaesOracle(spec, renders=args.renders, excerpt_seconds=None, objective="esr_pre",
                             seed=args.seed) as oracle:
                res = oracle.fit(x, y)
                values = dict(zip(spec.param_table.names, spec.param_table.denormalize(res.params).tolist()))
            tried[name][f"{v:g}"] = {"objective": res.objective, "default_objective": res.default_objective,
                                     "seconds": time.perf_counter() - t0, "knobs": values}
            print(f"  {name}={v:g}: ESR pre-emph. {res.objective:.4f} (defaults {res.default_objective:.4f}), "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        winner = min(tried[name], key=lambda k: tried[name][k]["objective"])
        best[name] = float(winner)
        print(f"{name}: best {winner} (ESR pre-emph. {tried[name][winner]['objective']:.4f})", flush=True)

    print()
    print("| parameter | value | best ESR pre-emph. | at the knobs' defaults |")
    print("|---|---:|---:|---:|")
    for name in tried:
        for v, r in sorted(tried[name].items(), key=lambda kv: kv[1]["objective"]):
            print(f"| {name} | {v} | {r['objective']:.4f} | {r['default_objective']:.4f} |")
    print(json.dumps({"benchmark": "amp_choices", "config": args.config, "split": args.split,
                      "pieces": pieces, "search_seconds_audio": x.shape[1] / sr, "renders": args.renders,
                      "excerpt_seconds": args.excerpt_seconds, "invert": args.invert, "stage": stage.get("name"), "best": best,
                      "tried": tried, "seconds": time.perf_counter() - t_all}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
