#!/bin/sh
# Build time per experiment through the real loop: a baseline and four Rust edits of the trainer
# (three values of ROPE_BASE in trainer/src/model.rs, then the MLP's activation in
# Block::forward), at a small token budget, so that the run is mostly builds. Each edit is
# proposed on the baseline (strict rule, nothing kept), as an agent's one-change experiment is.
# The build seconds are cargo's own ("Finished ... in"), read from each node's log.
#
# Run from a checkout with the workspace built (its target/ is the runner's build target):
#   CACHE=<prepared classics> runner/benches/build_per_experiment.sh
# It makes the branch autoresearch/bld-<time> and its worktrees; `git branch -D` them after.
set -eu
: "${CACHE:?a prepared cache (prepare --source-dir ../shared/data/classics --cache-dir DIR)}"
tag=bld-$(date -u +%H%M%S)
out=$(mktemp -d)
propose='case $AUTORESEARCH_ITERATION in
  1) sed -i "s/^pub const ROPE_BASE: f64 = .*/pub const ROPE_BASE: f64 = 20000.0;/" trainer/src/model.rs ;;
  2) sed -i "s/^pub const ROPE_BASE: f64 = .*/pub const ROPE_BASE: f64 = 50000.0;/" trainer/src/model.rs ;;
  3) sed -i "s/^pub const ROPE_BASE: f64 = .*/pub const ROPE_BASE: f64 = 5000.0;/" trainer/src/model.rs ;;
  *) sed -i "s/let h = relu_squared(dense(/let h = burn::tensor::activation::relu(dense(/" trainer/src/model.rs ;;
esac
echo "edit $AUTORESEARCH_ITERATION" > "$AUTORESEARCH_PROPOSAL_FILE"'
target/release/autoresearch run --yes --tag "$tag" --budget tokens:16384 --max-experiments 4 \
  --keep-rule strict --proposer command --proposer-command "$propose" --cache-dir "$CACHE" \
  --results-file "$out/results.tsv" > "$out/run.log" 2>&1 || { tail -30 "$out/run.log"; exit 1; }
echo "| node | build (cargo, s) |"
echo "|---|---|"
for log in .autoresearch/"$tag"/logs/*.log; do
  printf '| %s | %s |\n' "$(basename "$log" .log)" \
    "$(grep -o 'Finished `release` profile.* in [0-9.]*s' "$log" | sed 's/.* in //' | tr '\n' ' ')"
done
echo "run log and results: $out"
