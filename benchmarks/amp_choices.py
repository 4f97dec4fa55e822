"""Choose an amp plugin's discrete settings (tube model, tone stack, ...) on the validation split.

A player picks the amp model closest to the amp they match before turning knobs;
this does the same, measured. For every value of each ``--choice`` parameter in turn
(coordinate search, one pass, in the order given, the others at the best found so
far, starting from the config's ``fixed`` values), CMA-ES searches the learned knobs
of every piece of ``--split`` on its own (:class:`deepafx.automation.oracle.CmaesOracle`,
objective ``esr_pre``: pre-emphasised ESR after the chain's reported latency, the
objective the model trains on; the middle ``--excerpt-seconds`` of the piece after
0.5 s of unscored pre-roll; ``--renders`` renders from the knobs' defaults). A value's
score is the mean over pieces of each piece's best: the static bound of that amp model
per piece, as the model sets the knobs per piece (per frame, in fact), not a trained
model's score. The value with the lowest mean wins; only the winners go into a config.

The test split is never read (``--split test`` is refused).

Usage:
    python benchmarks/amp_choices.py --config amp_emulation/quick_gx \\
        --choice model 0-17 --choice tonestack_model 0-26 [--stage amp] [--renders 81] \\
        [--excerpt-seconds 4] [--split valid] [--data-dir DIR] [--invert] [--without STAGE] [--set KEY=VALUE ...]

Without ``--choice`` the chain is scored as configured, the same way (a per-piece static
bound on validation, to compare chains, e.g. ``--config amp_emulation/quick``).
``--chain FILE`` replaces the config's chain by a chain file (``plugins/chains/*.yaml``, by name or path,
e.g. ``--chain guitarix_jcm800``), to compare amp plugins on the same data.
``--without STAGE`` drops a processor (e.g. ``--without boost``: the amp alone).
``--invert`` appends a polarity flip to the chain (amp models with an odd number of inverting
stages come out inverted, and ESR is polarity-sensitive).

Prints one line per value tried (its per-piece bests), a table, then one JSON line (the choices, every
value's objective, the winners, the time taken).

Raises (exits with the message): an unknown stage or parameter, a parameter that is
learned rather than fixed, a value outside the parameter's range, the test split.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time

import numpy as np


def parse_values(text: str) -> list[float]:
    """``"0-3,7"`` → ``[0, 1, 2, 3, 7]`` (``a-b``: the integers from a to b inclusive; plain numbers as given).

    Raises:
        SystemExit: no values, or a part that is neither a number nor an integer range.
    """
    values: list[float] = []
    for part in (p.strip() for p in text.split(",")):
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            values.extend(float(v) for v in range(int(m[1]), int(m[2]) + 1))
            continue
        try:
            values.append(float(part))
        except ValueError:
            raise SystemExit(f"{part!r} in {text!r} is neither a number nor a range such as 0-17") from None
    if not values:
        raise SystemExit(f"no values in {text!r}")
    return values


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
    ap.add_argument("--choice", nargs=2, action="append", default=[], metavar=("PARAM", "VALUES"),
                    help="a fixed parameter and the values to try, e.g. model 0-17 (none: score the chain as "
                         "configured, the same way: to compare chains)")
    ap.add_argument("--renders", type=int, default=81, help="CMA-ES renders per value (default 81)")
    ap.add_argument("--excerpt-seconds", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chain", help="a chain file (plugins/chains/NAME.yaml, by name or path) instead of the config's")
    ap.add_argument("--without", action="append", default=[], metavar="STAGE",
                    help="drop this processor from the chain (e.g. boost: the amp alone); repeatable")
    ap.add_argument("--invert", action="store_true",
                    help="append a polarity flip (pedalboard.Invert) to the chain: for amp models that invert")
    args = ap.parse_args(argv)
    if args.split == "test":
        raise SystemExit("choices are made on the validation split; the test split is scored once per config")

    _, cfg = load_recipe_config(args.config, args.set)
    base = ChainSpec.from_file(args.chain).to_dict() if args.chain else cfg.sections["chain"].to_dict()
    names_in_chain = [p.get("name") for p in base["processors"]]
    for stage_name in args.without:
        if stage_name not in names_in_chain:
            raise SystemExit(f"--without {stage_name}: chain {base.get('name')!r} has no such stage ({names_in_chain})")
    base["processors"] = [p for p in base["processors"] if p.get("name") not in args.without]
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
    pieces, pairs = load_split(ddir, args.split)
    if not pairs:
        raise SystemExit(f"split {args.split!r} of {ddir} has no pieces")
    print(f"{len(pieces)} {args.split} pieces, {args.excerpt_seconds:g} s of each; chain {base.get('name')}, "
          f"stage {stage.get('name')}, {args.renders} renders per piece and value", flush=True)

    def score(spec: ChainSpec) -> dict:
        """Every piece searched on its own: mean and per-piece best, defaults, knobs, time."""
        t0 = time.perf_counter()
        per_piece, knobs, defaults = [], [], []
        with CmaesOracle(spec, renders=args.renders, excerpt_seconds=args.excerpt_seconds, preroll_seconds=0.5,
                         objective="esr_pre", seed=args.seed) as oracle:
            for x, y in pairs:
                res = oracle.fit(x, y)
                per_piece.append(res.objective)
                defaults.append(res.default_objective)
                knobs.append(dict(zip(spec.param_table.names, spec.param_table.denormalize(res.params).tolist())))
        return {"objective": float(np.mean(per_piece)), "per_piece": per_piece,
                "default_objective": float(np.mean(defaults)), "default_per_piece": defaults,
                "seconds": time.perf_counter() - t0, "knobs": knobs}

    def report(label: str, r: dict) -> None:
        print(f"  {label}: ESR pre-emph. {r['objective']:.4f} (defaults {r['default_objective']:.4f}; pieces "
              f"{' '.join(f'{o:.3f}' for o in r['per_piece'])}), {r['seconds']:.0f} s", flush=True)

    fixed = dict(stage.get("fixed") or {})
    best = {n: float(fixed[n]) for n in names}
    tried: dict[str, dict[str, dict]] = {}
    t_all = time.perf_counter()
    if not args.choice:
        tried["config"] = {"as configured": score(ChainSpec.from_dict(base))}
        report("as configured", tried["config"]["as configured"])
    for name, text in args.choice:
        tried[name] = {}
        for v in parse_values(text):
            spec_d = copy.deepcopy(base)
            spec_d["processors"][idx]["fixed"] = {**fixed, **best, name: v}
            try:
                spec = ChainSpec.from_dict(spec_d)
            except ValueError as exc:
                raise SystemExit(f"{name}={v:g}: {exc}") from None
            tried[name][f"{v:g}"] = score(spec)
            report(f"{name}={v:g}", tried[name][f"{v:g}"])
        winner = min(tried[name], key=lambda k: tried[name][k]["objective"])
        best[name] = float(winner)
        print(f"{name}: best {winner} (ESR pre-emph. {tried[name][winner]['objective']:.4f})", flush=True)

    print()
    print("| parameter | value | best ESR pre-emph. (mean of pieces) | at the knobs' defaults |")
    print("|---|---:|---:|---:|")
    for name in tried:
        for v, r in sorted(tried[name].items(), key=lambda kv: kv[1]["objective"]):
            print(f"| {name} | {v} | {r['objective']:.4f} | {r['default_objective']:.4f} |")
    print(json.dumps({"benchmark": "amp_choices", "config": args.config, "split": args.split,
                      "pieces": pieces, "renders": args.renders,
                      "excerpt_seconds": args.excerpt_seconds, "invert": args.invert, "without": args.without, "chain": base.get("name"), "stage": stage.get("name"), "best": best,
                      "tried": tried, "seconds": time.perf_counter() - t_all}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
