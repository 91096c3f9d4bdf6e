#!/bin/sh
# The evaluation sealed by its order (one position at a time, a fresh process per group, witness
# rows) beside the teacher-forced one it replaced, alternating, the real trainer on the cpu
# profile, a prepared cache, a time budget: what evaluation costs, and its share of an
# experiment. Build the old side in its own worktree and target directory first:
#   git worktree add ../base 4ea4df1 && (cd ../base && CARGO_TARGET_DIR=../target-base cargo build --release --workspace)
#   OLD=../target-base/release/harness OLD_PROFILE=../base/configs/platforms/cpu.toml \
#     CACHE=<prepared classics> OUT=/tmp/eval-cost runner/benches/eval_before_after.sh
# Both sides read the same cache (prepare did not change). BUDGET (time:300) and PAIRS (2).
set -e
: "${OLD:?the teacher-forced harness}" "${OLD_PROFILE:?its cpu.toml}" "${CACHE:?a prepared cache}"
new=${NEW:-target/release/harness}
budget=${BUDGET:-time:300}
pairs=${PAIRS:-2}
out=${OUT:-/tmp/eval-cost}
mkdir -p "$out"
i=1
while [ "$i" -le "$pairs" ]; do
  "$OLD" --profile "$OLD_PROFILE" --budget "$budget" --cache-dir "$CACHE" --summary-json "$out/old-$i.json" > "$out/old-$i.log" 2>&1
  "$new" --profile configs/platforms/cpu.toml --budget "$budget" --cache-dir "$CACHE" --summary-json "$out/new-$i.json" > "$out/new-$i.log" 2>&1
  i=$((i + 1))
done
OUT="$out" PAIRS="$pairs" python3 - <<'PY'
import json, os
out, pairs = os.environ["OUT"], int(os.environ["PAIRS"])
print("| side | run | val_bpb | steps | training s | evaluation s | outside training s | total s | evaluation share of the run |")
print("|---|---|---|---|---|---|---|---|---|")
for side in ["old", "new"]:
    for i in range(1, pairs + 1):
        d = json.load(open(f"{out}/{side}-{i}.json"))
        ev = d["eval_seconds"]
        print(f"| {side} | {i} | {d['val_bpb']:.6f} | {d['num_steps']} | {d['training_seconds']:.1f} | {ev:.1f} | {d['total_seconds'] - d['training_seconds']:.1f} | {d['total_seconds']:.1f} | {100 * ev / d['total_seconds']:.1f} % |")
PY
