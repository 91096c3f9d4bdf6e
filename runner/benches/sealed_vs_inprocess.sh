#!/bin/sh
# The sealed harness beside the in-process one it replaced (c69eebd), alternating, the real
# trainer on the cpu profile, a prepared cache, a fixed token budget. Build c69eebd in its own
# worktree and target directory first:
#   git worktree add ../old c69eebd && (cd ../old && CARGO_TARGET_DIR=../target-old cargo build --release --workspace)
#   OLD=../target-old/release/harness OLD_PROFILE=../old/configs/platforms/cpu.toml \
#     CACHE=<prepared classics> OUT=/tmp/sealed runner/benches/sealed_vs_inprocess.sh
# The cache's formats changed since c69eebd, so each side can read a cache prepared by its own
# `prepare` from the same shards (OLD_CACHE, by default CACHE). Compare scores only between runs
# that read one cache: with two caches they differed (2.4308 and 2.4600, benches/README.md).
set -e
: "${OLD:?the c69eebd harness}" "${OLD_PROFILE:?its cpu.toml}" "${CACHE:?a prepared cache}"
new=${NEW:-target/release/harness}
budget=${BUDGET:-tokens:131072}
pairs=${PAIRS:-3}
out=${OUT:-/tmp/sealed-vs-inprocess}
mkdir -p "$out"
i=1
while [ "$i" -le "$pairs" ]; do
  "$OLD" --profile "$OLD_PROFILE" --budget "$budget" --cache-dir "${OLD_CACHE:-$CACHE}" --summary-json "$out/old-$i.json" > "$out/old-$i.log" 2>&1
  "$new" --profile configs/platforms/cpu.toml --budget "$budget" --cache-dir "$CACHE" --summary-json "$out/new-$i.json" > "$out/new-$i.log" 2>&1
  i=$((i + 1))
done
OUT="$out" PAIRS="$pairs" python3 - <<'PY'
import json, os
out, pairs = os.environ["OUT"], int(os.environ["PAIRS"])
for side in ["old", "new"]:
    for i in range(1, pairs + 1):
        d = json.load(open(f"{out}/{side}-{i}.json"))
        print(side, i, "tok/s %.0f" % d["tokens_per_sec"], "outside training %.2f s" % (d["total_seconds"] - d["training_seconds"]), "val_bpb %.6f" % d["val_bpb"])
PY
