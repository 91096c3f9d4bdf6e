#!/bin/sh
# Two builds of bench_step side by side (the trainer before and after a change), with PyTorch
# in the same rounds: for each round and size, each optimizer through OLD and NEW, then
# PyTorch eager and compiled (AdamW). Rounds alternate, so a load change hits both sides, and
# the side that goes first alternates from round to round; the table keeps each side's median,
# says how far apart the rounds were, and gives new / old within each round (the paired
# ratio, which a slow round does not move). SIZES="small" limits the sizes, TORCH=none leaves
# PyTorch out. Build the old commit in its own
# worktree and target directory first, e.g.
#   git worktree add ../pre 19b9bbd && (cd ../pre && CARGO_TARGET_DIR=../target-pre cargo build --release --workspace)
#   OLD=../target-pre/release/bench_step OUT=/tmp/before-after runner/benches/before_after.sh
set -e
: "${OLD:?the old bench_step}"
new=${NEW:-target/release/bench_step}
torch=${TORCH:-../shared/bench/torch_reference.py}
sizes=${SIZES:-small large}
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
  for size in $sizes; do
    eval flags=\$$size
    for optim in muon adamw; do
      if [ $((r % 2)) -eq 1 ]; then
        burn "$r" "$size" "$flags" old "$OLD" "$optim"
        burn "$r" "$size" "$flags" new "$new" "$optim"
      else
        burn "$r" "$size" "$flags" new "$new" "$optim"
        burn "$r" "$size" "$flags" old "$OLD" "$optim"
      fi
    done
    if [ "$torch" != none ]; then
      line=$(python3 "$torch" $flags 2>/dev/null | grep tokens_per_s | tail -n 1)
      row "$r" "$size" torch adamw "$line"
      line=$(python3 "$torch" $flags --compile 2>/dev/null | grep tokens_per_s | tail -n 1)
      row "$r" "$size" torch-compile adamw "$line"
    fi
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
def paired(size, optim):
    by = {(r["round"], r["side"]): r["row"]["tokens_per_s"] for r in rows if (r["size"], r["optim"]) == (size, optim)}
    return [by[(k, "new")] / by[(k, "old")] for (k, side) in by if side == "old" and (k, "new") in by]
print("| size | optimizer | old tokens/s | new tokens/s | new vs old | new / old within a round | old / new vs PyTorch eager | old / new vs torch.compile |")
print("|---|---|---|---|---|---|---|---|")
for size in [s for s in ["small", "large"] if tps(s, "old", "muon")]:
    e, c = tps(size, "torch", "adamw"), tps(size, "torch-compile", "adamw")
    vs = lambda o, n, t: f"{o / statistics.median(t):.2f}x / {n / statistics.median(t):.2f}x" if t else "-"
    for optim in ["muon", "adamw"]:
        o, n, p = tps(size, "old", optim), tps(size, "new", optim), paired(size, optim)
        om, nm = statistics.median(o), statistics.median(n)
        print(f"| {size} | {optim} | {om:.0f} ({rng(o)}) | {nm:.0f} ({rng(n)}) | {nm / om:.3f}x | {statistics.median(p):.3f}x ({min(p):.3f}-{max(p):.3f}) | {vs(om, nm, e)} | {vs(om, nm, c)} |")
    if e and c:
        print(f"| {size} | PyTorch AdamW | eager {statistics.median(e):.0f} ({rng(e)}) | compiled {statistics.median(c):.0f} ({rng(c)}) | | | | |")
PY
