"""Round trip into Ardour: how close is Ardour's render of an exported session to ``deepafx process``, per tolerance?

For one checkpoint and one input, renders the input with ``deepafx process`` (the
reference), then for each ``--tolerances`` value exports an Ardour session with
``deepafx export --tolerance`` (:func:`deepafx.daw.export_ardour`), renders it with
``ardour7-export`` and compares (an input at another rate is first resampled
to the model's, at which the session runs): the difference after aligning by the chain's
latency (Ardour compensates it, deepafx does not), in dB relative to the reference
(energy of ``ardour - deepafx`` over the energy of ``deepafx``), and the automation
points kept over all lanes (the trade of thinning: fewer points, editable lanes,
a larger difference).

Usage:
    python benchmarks/export_round_trip.py --checkpoint RUN IN.wav [--seconds 30] [--tolerances 0 0.01 0.05]
Prints one line per tolerance and, last, one JSON line
(``rows``: tolerance, points, points_per_lane, round_trip_db, export_s, render_s).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from deepafx.audio import resample
from deepafx.automation.process import load_automation_checkpoint, process_file
from deepafx.daw import export_ardour, render_session


def relative_db(test: np.ndarray, reference: np.ndarray) -> float:
    """Energy of ``test - reference`` over the energy of ``reference``, dB."""
    return float(10 * np.log10(np.sum((test - reference) ** 2) / np.sum(reference ** 2)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("input")
    ap.add_argument("--seconds", type=float, default=30.0, help="use the input's first SECONDS (default 30)")
    ap.add_argument("--offset-seconds", type=float, default=0.0, help="start that many seconds into the input")
    ap.add_argument("--tolerances", type=float, nargs="+", default=[0.0, 0.005, 0.01, 0.05])
    args = ap.parse_args()
    model, _, ckpt = load_automation_checkpoint(args.checkpoint)
    chain = model.chain.build()
    latency = chain.latency_samples
    chain.close()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        audio, sr = sf.read(args.input, dtype="float32", always_2d=True)
        a = int(args.offset_seconds * sr)
        audio = audio[a: a + int(args.seconds * sr)]
        if sr != model.sample_rate:  # the session runs at the model's rate: compare at that rate
            audio = resample(np.ascontiguousarray(audio.T), sr, model.sample_rate).T
            sr = int(model.sample_rate)
        clip = d / "in.wav"
        sf.write(clip, audio, sr, subtype="FLOAT")
        process_file(args.checkpoint, clip, d / "deepafx.wav")
        reference = sf.read(str(d / "deepafx.wav"), dtype="float64", always_2d=True)[0]
        for tol in args.tolerances:
            t0 = time.perf_counter()
            result = export_ardour(args.checkpoint, clip, d / f"session_{tol:g}", tolerance=tol)
            t1 = time.perf_counter()
            rendered = sf.read(str(render_session(result.session_dir, d / f"ardour_{tol:g}.wav")),
                               dtype="float64", always_2d=True)[0]
            t2 = time.perf_counter()
            n = min(len(rendered), len(reference) - latency)
            db = relative_db(rendered[:n], reference[latency: latency + n])
            row = {"tolerance": tol, "points": result.num_points, "lanes": len(result.lanes),
                   "points_per_lane": result.num_points / max(1, len(result.lanes)), "blocks": result.num_blocks,
                   "round_trip_db": round(db, 2), "export_s": round(t1 - t0, 1), "render_s": round(t2 - t1, 1)}
            rows.append(row)
            print(f"tolerance {tol:g}: {row['points']} points ({row['points_per_lane']:.1f} per lane, "
                  f"{row['blocks']} blocks), round trip {db:.1f} dB; export {row['export_s']} s, "
                  f"render {row['render_s']} s", flush=True)
    print(json.dumps({"checkpoint": str(ckpt), "input": args.input, "seconds": args.seconds,
                      "offset_seconds": args.offset_seconds, "latency_samples": latency, "rows": rows}))


if __name__ == "__main__":
    main()
