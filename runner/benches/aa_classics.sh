#!/bin/sh
# A/A on a prepared cache (the classics): 10 changes that do nothing (a comment in
# trainer/hparams.toml) at time:60 through the real trainer, harness and loop, under today's
# rule (significant) and the earlier default (noise-aware, 2 baseline runs), one loop after the
# other: at a time budget the score follows the steps the machine allows, so two loops at once
# measure each other's load (2026-12-05: the significant loop kept a null change scored after
# the other loop ended, 25-31 steps against the baseline's 8-15). TOGETHER=1 runs them at once.
# Run from a clean checkout with the
# workspace built:  CACHE=<prepared classics> OUT=/tmp/aa runner/benches/aa_classics.sh
# Then per rule: sigma and its df (the log's last lines, `autoresearch watch --tag aa-RULE`), the
# keeps among the 10 (results.tsv), and experiments per hour (start and end in OUT/times).
: "${CACHE:?a prepared cache}"
out=${OUT:-/tmp/aa}
mkdir -p "$out"
null='echo "# null change $AUTORESEARCH_ITERATION" >> trainer/hparams.toml'
run() {
  rule=$1; shift
  date -u +"start $rule %s %FT%TZ" >> "$out/times"
  target/release/autoresearch run --tag "aa-$rule" --budget time:60 --max-experiments 10 \
    --proposer command --proposer-command "$null" --cache-dir "$CACHE" \
    --results-file "$out/$rule.tsv" --yes "$@" > "$out/$rule.log" 2>&1
  date -u +"end $rule %s %FT%TZ" >> "$out/times"
}
if [ -n "$TOGETHER" ]; then
  run significant --keep-rule significant &
  run noise-aware --keep-rule noise-aware --baseline-runs 2 --held-out false &
  wait
else
  run significant --keep-rule significant
  run noise-aware --keep-rule noise-aware --baseline-runs 2 --held-out false
fi
