"""``deepafx process``: render an audio file with a trained model's parameter automation.

The checkpoint names its recipe and the command runs that recipe's ``process``
entry point (:data:`deepafx.recipes.RECIPES`; e.g. ``mastering``). It predicts per-frame chain parameters, renders the chain, and writes the mastered
audio, optionally the parameter automation (JSON or CSV, plugin units) and a
PNG figure. Any sample rate (resampled with soxr to the model's and back) and
any channel count (the output is stereo: mono is duplicated, 5.1 is downmixed
with the ITU-R BS.775 coefficients, other counts are averaged; see
:mod:`deepafx.audio`). A silent input is processed with a warning on stderr.
With ``--loudness LUFS`` the output-gain parameter's automation is offset
until the output meets that integrated loudness
(:func:`deepafx.automation.process.match_loudness`). Existing outputs are never
overwritten without ``--force``; a failed run
writes nothing and leaves existing files as they were. Errors are printed in
one line by :func:`deepafx.cli.main`.
"""

from __future__ import annotations

import argparse
import logging
import sys


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from deepafx.recipes import checkpoint_recipe

    if args.loudness_param is not None and args.loudness is None:
        raise ValueError("--loudness-param needs --loudness LUFS (the target it sets the parameter for)")
    recipe = checkpoint_recipe(args.checkpoint, "process")
    result = recipe.process(
        args.checkpoint, args.input, args.output, automation_path=args.automation, plot_path=args.plot,
        block_samples=args.block_samples, smoothing_frames=args.smoothing_frames, force=args.force,
        loudness_lufs=args.loudness, loudness_param=args.loudness_param, static=args.static,
        lv2_preset_dir=args.lv2_preset,
    )
    for w in result.warnings:
        print(f"deepafx process: warning: {w}", file=sys.stderr)
    print(result.summary())
    return 0


def add_render_arguments(p: argparse.ArgumentParser) -> None:
    """``--block-samples``, ``--smoothing-frames`` and ``--static``: how a model's automation is rendered
    (shared by ``deepafx process`` and ``deepafx export``, which must render alike)."""
    p.add_argument("--block-samples", type=int, default=1024,
                   help="render block in samples at the model's rate; parameters are interpolated per block, and an "
                        "exported lane steps once per block (default 1024)")
    p.add_argument("--smoothing-frames", type=int, default=3,
                   help="moving-average length over frames for the parameter curves; 1 = none (default 3)")
    p.add_argument("--static", action="store_true",
                   help="one parameter set for the whole file (the encoder's mean outputs over the frames, the gain "
                        "from the file's loudness): a preset instead of automation")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "process", help="master an audio file with a trained mastering model",
        description="Master IN with a trained mastering checkpoint and write OUT (same rate as IN, stereo; "
                    "mono is duplicated, 5.1 downmixed by ITU-R BS.775, other channel counts averaged). "
                    "Optionally write the parameter automation (.json/.csv, plugin units) and a PNG figure.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint .pt or run folder (best.pt, else last.pt)")
    p.add_argument("input", metavar="IN", help="input audio (any rate, any channel count, any length)")
    p.add_argument("output", metavar="OUT", help="mastered audio; format from the extension (.wav, .flac, .aiff …)")
    p.add_argument("--automation", metavar="FILE", default=None,
                   help="write per-frame parameters to FILE (.json or .csv): time in s, values in plugin units")
    p.add_argument("--plot", metavar="PNG", default=None,
                   help="write a figure: input/output log spectrograms and the most varying parameter curves")
    add_render_arguments(p)
    p.add_argument("--lv2-preset", metavar="DIR", default=None,
                   help="with --static: also write the parameter set as an LV2 preset bundle per LV2 stage in DIR "
                        "(<input name>-<stage>.lv2/); copy it to ~/.lv2 to load it in the same plugin in any LV2 host")
    p.add_argument("--loudness", metavar="LUFS", type=float, default=None,
                   help="integrated-loudness target of the output, e.g. -14: the output-gain parameter's automation "
                        "is offset until the output meets it (ITU-R BS.1770-4; a few more renders)")
    p.add_argument("--loudness-param", metavar="NAME", default=None,
                   help="with --loudness: the dB parameter to offset (default: the chain's <processor>.gain_db)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log details (worker restarts, notes); show the traceback of an error")
    p.set_defaults(func=run)
