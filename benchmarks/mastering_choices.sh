#!/bin/bash
# Training choices of the real-music mastering configs, made on the VALIDATION album only (hyperrogue, all 17
# tracks, one 20 s excerpt each): variants of mastering/medium trained 6 epochs (seed 0) into OUT/<name> and
# evaluated with `--split valid` (model and loudnorm rows, saturation on the 17 whole tracks; no matchering,
# an 8-render oracle). Each variant adds to the one before it:
#   A_gainaug  the medium config of commit ad4eb6e: input gain augmentation -20..+10 dB
#   B_rel      level-relative gain (mean-square level of a 4 s context) + level augmentation -34..-8 LUFS
#   C_rel_l2   + parameter penalty toward the defaults, param_l2 = 1
#   D_ctx10    + 10 s context
#   E_lufs     level-relative gain reading BS.1770 loudness instead of the mean square (the code as committed;
#              B-D were run before this change)
#   F_mss      + multi-resolution STFT loss instead of the delay-invariant loss
# and, evaluation only, E's checkpoint scored with its parameters smoothed over 1, 41 or 1001 frames instead of 9
# (E_sm1, E_sm41, E_sm1001), or held static per track (E_static: the encoder's mean outputs, the gain from the
# track's loudness; the configs as committed), and
#   G_both     E trained on both data sources (data.scores: the 48 min of scores of mastering/medium_scores added
#              to the real training excerpts; the config mastering/medium_both), scored static as E_static.
# Usage: bash benchmarks/mastering_choices.sh [OUT_DIR] [VARIANT ...]; one line per variant, then one JSON line.
set -euo pipefail
OUT=${1:-/tmp/choices}; shift || true
WANT=" ${*:-A_gainaug B_rel C_rel_l2 D_ctx10 E_lufs F_mss E_sm1 E_sm41 E_sm1001 E_static G_both} "
V="--split valid --set evaluate.matchering=false --set evaluate.cmaes_renders=8 --set evaluate.plot=false \
   --set evaluate.num_examples=0"
OLD=(--set model.level_relative=null --set model.context_seconds=4.0 --set "train.gain_augment_db=[-20,10]"
     --set train.level_augment_lufs=null --set train.param_l2=0 --set evaluate.static=false)
REL=(--set "model.level_relative={param: gain.gain_db, output_range_db: [-40, 0], default_db: -20}"
     --set train.gain_augment_db=null --set "train.level_augment_lufs=[-34,-8]")
mkdir -p "$OUT"
run() { name=$1; shift
  [[ "$WANT" == *" $name "* ]] || return 0
  rm -rf "${OUT:?}/$name"
  deepafx train --config mastering/medium --run-dir "$OUT/$name" --set train.epochs=6 --set train.early_stop_patience=10 \
    "$@" > "$OUT/$name.log" 2>&1
  deepafx evaluate --config mastering/medium --checkpoint "$OUT/$name" --out "$OUT/$name/eval_valid" $V "$@" \
    >> "$OUT/$name.log" 2>&1
}
run A_gainaug "${OLD[@]}"
run B_rel "${OLD[@]}" "${REL[@]}" --set train.param_l2=0
run C_rel_l2 "${OLD[@]}" "${REL[@]}" --set train.param_l2=1
run D_ctx10 "${OLD[@]}" "${REL[@]}" --set train.param_l2=1 --set model.context_seconds=10
run E_lufs --set train.loss=delay_invariant --set evaluate.static=false
run F_mss --set train.loss=mrstft --set evaluate.static=false
run G_both --data-dir data/mastering/medium_both \
  --set "data.scores={train_minutes: 48.0, max_piece_seconds: 20.0, test_fraction: 0.1, valid_fraction: 0.1, seed: 0}"
score() { name=$1; shift  # evaluation-only variants of E's checkpoint
  [[ "$WANT" == *" $name "* ]] || return 0
  deepafx evaluate --config mastering/medium --checkpoint "$OUT/E_lufs" --out "$OUT/$name/eval_valid" $V "$@" \
    > "$OUT/$name.log" 2>&1
}
score E_sm1 --set evaluate.static=false --set evaluate.smoothing_frames=1
score E_sm41 --set evaluate.static=false --set evaluate.smoothing_frames=41
score E_sm1001 --set evaluate.static=false --set evaluate.smoothing_frames=1001
score E_static --set evaluate.static=true
python - "$OUT" <<'PY'
import json, os, sys
out, rows = sys.argv[1], {}
for name in ("A_gainaug", "B_rel", "C_rel_l2", "D_ctx10", "E_lufs", "F_mss", "E_sm1", "E_sm41", "E_sm1001", "E_static", "G_both"):
    path = f"{out}/{name}/eval_valid/results.json"
    if not os.path.exists(path):
        continue
    r = json.load(open(path))
    v = r["valid"]
    rows[name] = {m: {k: round(v[m][k], 4) for k in ("mfcc_cosine", "mrstft", "lufs_error", "true_peak_dbtp_max")}
                  for m in ("model", "loudnorm")}
    rows[name]["saturation_max_share"] = r["saturation"]["max_share"]
    print(name, rows[name]["model"], "saturation", rows[name]["saturation_max_share"])
print(json.dumps({"benchmark": "mastering_choices", "split": "valid", "variants": rows}))
PY
