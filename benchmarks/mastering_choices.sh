#!/bin/bash
# Training choices of the real-music mastering configs, made on the VALIDATION album only (hyperrogue):
# variants of mastering/quick, seed 0, each trained into /tmp/choices/<name> and evaluated with
# `--split valid` (model and loudnorm rows; no matchering, an 8-render oracle, no saturation pass).
# Usage: bash benchmarks/mastering_choices.sh [OUT_DIR]; one line per variant, then one JSON line.
set -euo pipefail
OUT=${1:-/tmp/choices}
V="--split valid --set evaluate.matchering=false --set evaluate.cmaes_renders=8 --set evaluate.saturation_tracks=0 \
   --set evaluate.plot=false --set evaluate.num_examples=0"
LEVEL='model.encoder_kwargs={width_mult: 0.5, level_features: true}'
mkdir -p "$OUT"
run() { name=$1; shift
  rm -rf "$OUT/$name"
  deepafx train --config mastering/quick --run-dir "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  deepafx evaluate --config mastering/quick --checkpoint "$OUT/$name" --out "$OUT/$name/eval_valid" $V >> "$OUT/$name.log" 2>&1
}
run base --set train.gain_augment_db=null
run gainaug
run level --set train.gain_augment_db=null --set "$LEVEL"
run both --set "$LEVEL"
python - "$OUT" <<'PY'
import json, sys
out, rows = sys.argv[1], {}
for name in ("base", "gainaug", "level", "both"):
    r = json.load(open(f"{out}/{name}/eval_valid/results.json"))["valid"]
    rows[name] = {m: {k: round(r[m][k], 4) for k in ("mfcc_cosine", "mrstft", "lufs_error", "true_peak_dbtp_max")}
                  for m in ("model", "loudnorm")}
    print(name, rows[name]["model"])
print(json.dumps({"benchmark": "mastering_choices", "split": "valid", "variants": rows}))
PY
