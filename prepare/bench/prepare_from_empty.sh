#!/usr/bin/env bash
# Whole `prepare` runs from an empty cache, alternating binaries, one wall time per run.
#
#     prepare/bench/prepare_from_empty.sh DIR ROUNDS BINARY...
#
# Each round runs every binary once (the order rotates each round) on a fresh temporary
# cache with `--source-dir DIR`, and prints `binary seconds`; the cache is removed after.
set -euo pipefail
dir=$1 rounds=$2
shift 2
bins=("$@")
for ((r = 0; r < rounds; r++)); do
  for ((i = 0; i < ${#bins[@]}; i++)); do
    bin=${bins[$(((i + r) % ${#bins[@]}))]}
    cache=$(mktemp -d)
    start=$(date +%s.%N)
    "$bin" --source-dir "$dir" --cache-dir "$cache" > /dev/null 2>&1
    end=$(date +%s.%N)
    rm -rf "$cache"
    echo "$bin $(echo "$end - $start" | bc)"
  done
done
