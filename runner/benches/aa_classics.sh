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
# keeps among the 10 (results.tsv), experiments per hour (start and end in OUT/times), the steps
# of every run (OUT/steps, OUT/RULE-steps.tsv) and the decisions the throughput guard flagged
# ("Like with like" in .autoresearch/aa-RULE/autoresearch-summary.md).
: "${CACHE:?a prepared cache}"
out=${OUT:-/tmp/aa}
mkdir -p "$out"
null='echo "# null change $AUTORESEARCH_ITERATION" >> trainer/hparams.toml'
# The steps each run got, from its summary: OUT/RULE-steps.tsv, one line a run (n1-0..3: the
# baseline's seeds; nK-0: a null change's first run; n1-again-nK-1: the baseline run again
# beside nK by the throughput guard), and the mean steps of each kind.
steps() {
  rule=$1
  for f in .autoresearch/aa-$rule/runs/n*.json; do
    v() { grep -o "\"$1\": *[0-9.e+-]*" "$f" | head -1 | sed 's/.*: *//'; }
    printf '%s\t%s\t%s\t%s\t%s\n' "$(basename "$f" .json)" "$(v num_steps)" "$(v tokens_per_sec)" "$(v warmup_seconds)" "$(v training_seconds)"
  done > "$out/$rule-steps.tsv"
  awk -F'\t' '{ k = ($1 ~ /^n1-[0-9]+$/) ? "baseline" : ($1 ~ /again/) ? "beside" : "null"; n[k]++; s[k] += $2; if (!(k in lo) || $2 < lo[k]) lo[k] = $2; if ($2 > hi[k]) hi[k] = $2 }
       END { for (k in n) printf "%s %s: %d runs, steps %d-%d, mean %.1f\n", rule, k, n[k], lo[k], hi[k], s[k] / n[k] }' rule="$rule" "$out/$rule-steps.tsv" | tee -a "$out/steps"
}
run() {
  rule=$1; shift
  date -u +"start $rule %s %FT%TZ" >> "$out/times"
  target/release/autoresearch run --tag "aa-$rule" --budget time:60 --max-experiments 10 \
    --proposer command --proposer-command "$null" --cache-dir "$CACHE" \
    --results-file "$out/$rule.tsv" --yes "$@" > "$out/$rule.log" 2>&1
  date -u +"end $rule %s %FT%TZ" >> "$out/times"
  steps "$rule"
}
if [ -n "$TOGETHER" ]; then
  run significant --keep-rule significant &
  run noise-aware --keep-rule noise-aware --baseline-runs 2 --held-out false &
  wait
else
  run significant --keep-rule significant
  run noise-aware --keep-rule noise-aware --baseline-runs 2 --held-out false
fi
