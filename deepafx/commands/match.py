"""``deepafx match``: estimate a synthesizer preset that sounds like a recording.

The checkpoint names its recipe; the command runs that recipe's ``match``
entry point (:data:`deepafx.recipes.RECIPES`), e.g. ``dexed_matching``: a DX7
preset through the real Dexed engine (see
:mod:`deepafx.recipes.dexed_matching.match`).
"""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from deepafx.recipes import checkpoint_recipe

    recipe = checkpoint_recipe(args.checkpoint, "match")
    return int(recipe.match(args) or 0)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "match",
        help="estimate a synth preset from a recorded note (dexed_matching: a DX7 preset, real Dexed engine)",
        description="Estimate a DX7/Dexed preset that sounds like IN (one note; any rate, length and channels), "
        "refine it with test-time SPSA through Dexed, and write OUT_DIR/preset.syx, preset_bank.syx, "
        "match.wav, target.wav, comparison.png and preset.json.",
    )
    p.add_argument("input", metavar="IN", help="audio file of one note (WAV/FLAC/OGG)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created)")
    p.add_argument("--checkpoint", required=True, help="dexed_matching run folder or checkpoint (.pt)")
    p.add_argument("--refine-renders", type=int, default=1000,
                   help="test-time SPSA budget in Dexed renders (default 1000, about 10 s; 0 disables)")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="refinement step size (normalized units, default 1e-3)")
    p.add_argument("--pitch", type=int, default=None, help="MIDI pitch of the note (default: estimated with pYIN)")
    p.add_argument("--no-retrieval", action="store_true", help="start from the network's preset only")
    p.add_argument("--name", default=None, help="voice name in the .syx (10 characters; default: input file name)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the refinement")
    p.set_defaults(func=run)
