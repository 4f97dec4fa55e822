"""``deepafx export``: a trained model's automation as a DAW session (Ardour 7).

Writes OUT_DIR, an Ardour session: one stereo track playing IN, the chain's
plugins inserted in order with their fixed parameters set, and one automation
lane per learned parameter (plugin units, Discrete, Play mode) that reproduces
what ``deepafx process`` renders (:mod:`deepafx.daw`). ``--tolerance`` thins the
lanes. Needs Ardour's headless tools (Debian ``ardour``). A chain with stages no
DAW hosts is refused in one line; nothing is written on an error, and an
existing OUT_DIR is replaced only with ``--force``.
"""

from __future__ import annotations

import argparse

from deepafx.commands.process import add_render_arguments


def run(args: argparse.Namespace) -> int:
    from deepafx.daw import export_ardour

    if args.format != "ardour":
        raise ValueError(f"--format {args.format!r}: the only format is 'ardour'")
    result = export_ardour(args.checkpoint, args.input, args.out_dir, tolerance=args.tolerance,
                           block_samples=args.block_samples, smoothing_frames=args.smoothing_frames,
                           static=args.static, force=args.force)
    print(result.summary())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write a DAW session (Ardour) that plays a model's automation on the real plugins",
        description="Write OUT_DIR, an Ardour 7 session: one track with IN, the checkpoint's chain of LV2 plugins "
                    "inserted in order with the fixed parameters set, and each learned parameter as an automation "
                    "lane in plugin units (Discrete, Play mode) that renders what `deepafx process` renders. "
                    "Needs Ardour's headless tools (apt-get install ardour).",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint .pt or run folder (best.pt, else last.pt)")
    p.add_argument("input", metavar="IN", help="input audio (any rate and channel count, as for deepafx process)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="session folder to create (its name names the session)")
    p.add_argument("--format", default="ardour", choices=["ardour"], help="session format (default ardour: Ardour 7)")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="thin each lane: keep a point only where the value moves more than this fraction of the "
                        "parameter's range (normalized scale, e.g. 0.01 = 1%%) from the last point kept; 0 keeps "
                        "every block's change (default 0: renders like deepafx process)")
    add_render_arguments(p)  # as deepafx process, so the session renders what it renders
    p.add_argument("--force", action="store_true", help="replace an existing OUT_DIR")
    p.set_defaults(func=run)
