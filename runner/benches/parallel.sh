#!/bin/sh
# Local executor: wall time of the same batch of experiments with 1, 2 and 4 slots.
#
# A throwaway git repository whose "trainer" is one TOML file and whose experiment sleeps
# DURATION seconds (like a training run with a fixed time budget, but using no CPU, so that
# only the runner's own scheduling is measured) and then writes val_bpb. Every slot count runs
# the same EXPERIMENTS experiments after a 1-run baseline (strict keep rule, command proposer).
#
#   runner/benches/parallel.sh [EXPERIMENTS] [DURATION] [SLOTS...]
#   runner/benches/parallel.sh 8 5 1 2 4
set -eu
N=${1:-8}
D=${2:-5}
shift 2 2>/dev/null || shift $#
SLOTS=${*:-1 2 4}
BIN=$(cd "$(dirname "$0")/../.." && pwd)/target/release/autoresearch
[ -x "$BIN" ] || { echo "build first: cargo build --release --workspace" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cat > "$WORK/experiment.sh" <<'SH'
f=trainer/hparams.toml
lr=$(grep '^matrix_lr' $f | sed 's/.*= *//')
sleep "$DURATION"
awk -v lr="$lr" 'BEGIN { d = lr - 0.04; if (d < 0) d = -d; printf "{\"val_bpb\": %.6f}\n", 1 + d }' > "$1"
SH
cat > "$WORK/propose.sh" <<'SH'
n=$(cat "$STATE/count" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$STATE/count"
sed -i "s/^matrix_lr = .*/matrix_lr = 0.$((n + 10))/" trainer/hparams.toml
echo "lr 0.$((n + 10))" > "$AUTORESEARCH_PROPOSAL_FILE"
SH

echo "| slots | experiments | seconds each | wall time (s) | speed-up vs 1 slot | experiments/hour |"
echo "|---|---|---|---|---|---|"
base=""
for s in $SLOTS; do
  R="$WORK/repo-$s"
  mkdir -p "$R/trainer" "$R/configs/platforms" "$WORK/state-$s"
  printf '[gpu]\nmatrix_lr = 0.5\n' > "$R/trainer/hparams.toml"
  printf 'name = "cpu"\nclass = "cpu"\n' > "$R/configs/platforms/cpu.toml"
  printf '/.worktrees\n/.autoresearch\n/target\nresults.tsv\n' > "$R/.gitignore"
  cat > "$R/configs/research.toml" <<TOML
tag = "bench"
profile = "configs/platforms/cpu.toml"
read_only = []
keep_rule = "strict"
max_experiments = $N
slots = $s
proposer = "command"
experiment_command = "DURATION=$D sh $WORK/experiment.sh {summary_json}"
[command]
command = "STATE=$WORK/state-$s sh $WORK/propose.sh"
TOML
  (cd "$R" && git init -q -b main && git add -A && git -c user.name=b -c user.email=b@b commit -q -m init)
  t0=$(date +%s.%N)
  (cd "$R" && "$BIN" run --yes >/dev/null)
  t1=$(date +%s.%N)
  # The batch: from the first experiment's start to the last one's end (the baseline excluded).
  wall=$(awk -v a="$t0" -v b="$t1" -v d="$D" 'BEGIN { printf "%.1f", b - a - d }')
  [ -n "$base" ] || base=$wall
  rows=$(($(wc -l < "$R/.autoresearch/bench/results.tsv") - 2))
  [ "$rows" -eq "$N" ] || { echo "slots $s: $rows experiments recorded, expected $N" >&2; exit 1; }
  awk -v s="$s" -v n="$N" -v d="$D" -v w="$wall" -v b="$base" \
    'BEGIN { printf "| %d | %d | %d | %.1f | %.2fx | %.0f |\n", s, n, d, w, b / w, 3600 * n / w }'
done
