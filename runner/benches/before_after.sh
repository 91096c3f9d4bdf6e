#!/bin/sh
# Two builds of bench_step side by side (the trainer before and after a change), with PyTorch
# in the same rounds: for each round and size, each optimizer through OLD then NEW, then
# PyTorch eager and compiled (AdamW). Rounds alternate, so a load change hits both sides; the table keeps
# each side's median and says how far apart the rounds were. Build the old commit in its own
# worktree and target directory first, e.g.
#   git worktree add ../pre 19b9bbd && (cd ../pre && CARGO_TARGET_DIR=../target-pre cargo build --release --workspace)
#   OLD=../target-pre/release/bench_step OUT=/tmp/before-after runner/benches/before_after.sh
set -e
: "${OLD:?the old bench_step}"
new=${NEW:-target/release/bench_step}
torch=${TORCH:-../shared/bench/torch_reference.py}
rounds=${ROUNDS:-3}
out=${OUT:-/tmp/before-after}
mkdir -p "$out"
: > "$out/rows.jsonl"
# name, then bench_step's size flags (small and large as `autoresearch bench` defines them)
small="--width 256 --depth 4 --heads 4 --batch 8 --seq 256 --steps 8 --warmup 2"
large="--width 512 --depth 8 --heads 4 --batch 4 --seq 1024 --steps 3 --warmup 1"
row() { # round size side optim json-line
  echo "{\"round\": $1, \"size\": \"$2\", \"side\": \"$3\", \"optim\": \"$4\", \"row\": $5}" >> "$out/rows.jsonl"
}
burn() { # round size flags side binary optim
  line=$("$5" $3 --devices flex --optim "$6" | grep '"impl":"burn-' | tail -n 1)
  row "$1" "$2" "$4" "$6" "$line"
}
r=1
while [ "$r" -le "$rounds" ]; do
  for size in small large; do
    eval flags=\$$size
    for optim in muon adamw; do
      burn "$r" "$size" "$flags" old "$OLD" "$optim"
      burn "$r" "$size" "$flags" new "$new" "$optim"
    done
    line=$(python3 "$torch" $flags 2>/dev/null | grep tokens_per_s | tail -n 1)
    row "$r" "$size" torch adamw "$line"
    line=$(python3 "$torch" $flags --compile 2>/dev/null | grep tokens_per_s | tail -n 1)
    row "$r" "$size" torch-compile adamw "$line"
  done
  date -u +"round $r done %FT%TZ" >&2
  r=$((r + 1))
done
OUT="$out" python3 - <<'PY'
import json, os, statistics
rows = [json.loads(l) for l in open(os.path.join(os.environ["OUT"], "rows.jsonl"))]
def tps(size, side, optim):
    return [r["row"]["tokens_per_s"] for r in rows if (r["size"], r["side"], r["optim"]) == (size, side, optim)]
rng = lambda v: f"{min(v):.0f}-{max(v):.0f}"
print("| size | optimizer | old tokens/s | new tokens/s | new vs old | old / new vs PyTorch eager | old / new vs torch.compile |")
print("|---|---|---|---|---|---|---|")
for size in ["small", "large"]:
    e, c = tps(size, "torch", "adamw"), tps(size, "torch-compile", "adamw")
    em, cm = statistics.median(e), statistics.median(c)
    for optim in ["muon", "adamw"]:
        o, n = tps(size, "old", optim), tps(size, "new", optim)
        om, nm = statistics.median(o), statistics.median(n)
        print(f"| {size} | {optim} | {om:.0f} ({rng(o)}) | {nm:.0f} ({rng(n)}) | {nm / om:.3f}x | {om / em:.2f}x / {nm / em:.2f}x | {om / cm:.2f}x / {nm / cm:.2f}x |")
    print(f"| {size} | PyTorch AdamW | eager {em:.0f} ({rng(e)}) | compiled {cm:.0f} ({rng(c)}) | | | |")
PY
