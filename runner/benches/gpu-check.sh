#!/usr/bin/env bash
# The GPU check: on a GPU machine with no compiler and no network, from prebuilt binaries and a
# prepared cache (runner/benches/gpu-pack.sh makes the bundle), in one command:
#   0. the fused ops on CUDA (trainer/tests/torch_ops.rs, TORCH_OPS_DEVICE=cuda): each LibTorch
#      fused op against its plain tensor formulation, values and gradients; a failure is printed
#      loudly, leads the table and makes the script exit 1 (the other steps still run);
#   1. a smoke training per GPU backend (cuda through LibTorch, vulkan through wgpu), each through
#      the real harness and its sandbox: the loss falls, val_bpb is printed, exit 0;
#   2. bench_step per backend at the reference size (d512, 8 layers, T 2048), and the PyTorch
#      side (torch_reference.py, eager and compiled, bf16 autocast) on the same GPU;
#      bench-cuda (fused ops on) and bench-cuda-unfused (--no-fused: every op its plain tensor
#      formulation, attention included) back to back;
#   3. one table: tokens/s, MFU, peak memory, ratio to compiled PyTorch;
#   4. when the bundle has bin/cubecl/ (gpu-pack.sh with CUBECL_TARGET): the CubeCL CUDA route
#      (`--device cubecl-cuda`, Burn's own CUDA backend with fusion and autotune, bf16), a bench
#      row beside LibTorch's and PyTorch's (bench-cubecl) and a smoke training through the
#      harness and its sandbox (smoke-cubecl). It needs libdevice.10.bc: the machine's pip
#      nvidia-nvvm when installed (site-packages/nvidia/cu13), else the bundle's, as CUDA_PATH.
#
#   runner/benches/gpu-check.sh [BUNDLE [OUT]]     (defaults: .gpu and $OUT or /tmp/gpu-check)
#
# OUT gets gpu-check.tar.gz (every log, summary, per-step CSV and memory trace, rewritten after
# each step, so a run cut short still leaves what it did) and table.md; the log goes to stdout.
# The steps run most important first, each under its own time limit.
#
# The bundle: bin/{harness,trainer,bench_step,torch_ops}.xz, cache.tar.xz, torch_reference.py and,
# optionally, debs/*.deb (Debian's libvulkan1, for machines without a Vulkan loader). LibTorch
# is the machine's own PyTorch (python3 -c 'import torch'), which the binaries were linked
# against (same version; see runner/benches/README.md, "GPU").
#
# Environment: BATCH (bench rows, default 32; vulkan 8), STEPS (timed bench steps, default 10),
# SMOKE_SECONDS (default 30), PEAK_FLOPS (MFU peak, default 989.5e12: H100/H200 dense bf16),
# SKIP (space-separated step names to skip: ops-cuda smoke-cuda smoke-vulkan bench-cuda
# bench-cuda-unfused bench-vulkan torch-eager torch-compiled bench-cubecl smoke-cubecl),
# CUBECL_BATCH (bench-cubecl rows, default BATCH).
set -u
BUNDLE=$(cd "${1:-.gpu}" && pwd)
FINAL=${2:-${OUT:-/tmp/gpu-check}}
mkdir -p "$FINAL"
WORK=$(mktemp -d)
OUT="$WORK/out"
mkdir -p "$OUT"
BATCH=${BATCH:-32}
STEPS=${STEPS:-10}
SMOKE_SECONDS=${SMOKE_SECONDS:-30}
PEAK_FLOPS=${PEAK_FLOPS:-989.5e12}
SKIP=" ${SKIP:-} "
LOG="$OUT/gpu-check.log"
exec > >(tee -a "$LOG") 2>&1
t_start=$(date +%s)
say() { echo "== $(($(date +%s) - t_start))s $*"; }
# Everything so far into one file in FINAL (few files come back from a device machine).
save() { tar -czf "$FINAL/.gpu-check.tar.gz" -C "$WORK" out && mv "$FINAL/.gpu-check.tar.gz" "$FINAL/gpu-check.tar.gz"; }
skip() { [[ "$SKIP" == *" $1 "* ]]; }

say "unpacking $BUNDLE into $WORK"
mkdir -p "$WORK/bin" "$WORK/cache"
for b in harness trainer bench_step torch_ops; do
  [ "$b" = torch_ops ] && [ ! -f "$BUNDLE/bin/$b.xz" ] && { say "no bin/torch_ops.xz in the bundle: the ops check will fail"; continue; }
  python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" "$BUNDLE/bin/$b.xz" "$WORK/bin/$b" && chmod +x "$WORK/bin/$b"
done
python3 -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$BUNDLE/cache.tar.xz" "$WORK/cache"
CUBECL=""
if [ -f "$BUNDLE/bin/cubecl/trainer.xz" ]; then
  mkdir -p "$WORK/cubecl"
  for b in harness trainer bench_step; do
    python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" "$BUNDLE/bin/cubecl/$b.xz" "$WORK/cubecl/$b" && chmod +x "$WORK/cubecl/$b"
  done
  # libdevice: the machine's pip nvidia-nvvm, else the bundle's (CUDA_PATH for the cubecl steps only).
  CUBECL_CUDA_PATH=$(python3 -c 'import nvidia.cu13 as m, os; p = m.__path__[0]; print(p if os.path.isfile(os.path.join(p, "nvvm/libdevice/libdevice.10.bc")) else "")' 2>/dev/null || true)
  if [ -z "$CUBECL_CUDA_PATH" ] && [ -f "$BUNDLE/cuda/nvvm/libdevice/libdevice.10.bc.xz" ]; then
    mkdir -p "$WORK/cuda/nvvm/libdevice"
    python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" "$BUNDLE/cuda/nvvm/libdevice/libdevice.10.bc.xz" "$WORK/cuda/nvvm/libdevice/libdevice.10.bc"
    CUBECL_CUDA_PATH="$WORK/cuda"
  fi
  CUBECL=1
  say "cubecl-cuda route: CUDA_PATH=${CUBECL_CUDA_PATH:-<none: the cubecl rows will say libdevice is missing>}"
fi
cp "$BUNDLE/torch_reference.py" "$WORK/"

say "machine"
nvidia-smi -L; uname -r; ls /dev/nvidia* | tr '\n' ' '; echo
echo "loader config: $(cat /etc/ld.so.conf.d/*.conf 2>/dev/null | grep -v '^#' | tr '\n' ' ')"
ldconfig -p | grep -E 'libcuda.so.1|libvulkan.so.1|libGLX_nvidia' | head -4
TORCH_LIB=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ! ldconfig -p | grep -q 'libvulkan.so.1 '; then
  if ls "$BUNDLE"/debs/*.deb >/dev/null 2>&1; then
    say "no Vulkan loader: unpacking the bundle's Debian packages"
    for f in "$BUNDLE"/debs/*.deb; do dpkg -x "$f" /; done
    ldconfig
  else
    say "no Vulkan loader and none in the bundle: the vulkan rows will fail"
  fi
fi
if [ -z "${VK_DRIVER_FILES:-}" ] && ! ls /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json >/dev/null 2>&1; then
  for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.*.json; do
    if [ -f "$icd" ]; then export VK_DRIVER_FILES="$icd"; say "VK_DRIVER_FILES=$icd"; break; fi
  done
fi
"$WORK/bin/harness" --list-devices 2>&1 | tee "$OUT/devices.txt"
[ -n "$CUBECL" ] && env ${CUBECL_CUDA_PATH:+CUDA_PATH="$CUBECL_CUDA_PATH"} "$WORK/cubecl/harness" --list-devices 2>&1 | tee "$OUT/devices-cubecl.txt"

# GPU memory in use, sampled every 200 ms while a step runs: its peak over the idle level.
mem_start() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/mem-$1.txt" 2>/dev/null & MEM_PID=$!; }
mem_stop() { kill "$MEM_PID" 2>/dev/null; wait "$MEM_PID" 2>/dev/null; }

profile() { # name class backend seq_len eval_tokens eval_batch scale dtype
  cat > "$WORK/$1.toml" <<EOF
name = "$1"
class = "$2"
backend = "$3"
seq_len = $4
eval_tokens = $5
eval_batch_size = $6
device_batch_scale = $7
warmup_steps = 3
warmup_allowance_seconds = 10.0
dtype = "$8"
fusion = true
autotune = true
peak_flops = $PEAK_FLOPS
EOF
}
# CUDA: the reference model (class gpu: d512, 8 layers, 2^19 tokens a step) at T 2048, bf16.
profile smoke-cuda gpu cuda 2048 131072 32 0.5 bf16
# CubeCL CUDA: the same as smoke-cuda, on Burn's own CUDA backend.
profile smoke-cubecl gpu cubecl-cuda 2048 131072 32 0.5 bf16
# Vulkan: the small model (class cpu: 4 layers, 2^13 tokens a step) at T 512, f32.
profile smoke-vulkan cpu vulkan 512 131072 32 1.0 f32

smoke() { # name device [binaries folder]
  skip "$1" && return
  local bin=${3:-$WORK/bin}
  say "$1: harness --device $2 ($bin), $SMOKE_SECONDS s"
  mem_start "$1"
  timeout 150 "$bin/harness" --trainer "$bin/trainer" --profile "$WORK/$1.toml" --device "$2" \
    --budget "time:$SMOKE_SECONDS" --cache-dir "$WORK/cache" --summary-json "$OUT/$1.json" --steps-csv "$OUT/$1.steps.csv" \
    > "$OUT/$1.log" 2>&1
  echo "exit $?" >> "$OUT/$1.log"
  mem_stop
  grep -a "harness:\|exit\|val_bpb\|Matmuls" "$OUT/$1.log" | tail -12 | cut -c1-400
  save
}

bench() { # name timeout batch args... (BENCH_BIN: another bench_step)
  local name=$1 limit=$2 batch=$3; shift 3
  skip "$name" && return
  say "$name: bench_step --batch $batch $*"
  mem_start "$name"
  timeout "$limit" "${BENCH_BIN:-$WORK/bin/bench_step}" --depth 8 --width 512 --heads 4 --vocab 8192 --batch "$batch" --seq 2048 \
    --steps "$STEPS" --warmup 3 --optim adamw --peak-flops "$PEAK_FLOPS" "$@" > "$OUT/$name.txt" 2>&1
  echo "exit $?" >> "$OUT/$name.txt"
  mem_stop
  grep -v '^{' "$OUT/$name.txt" | tail -4 | cut -c1-400
  save
}

OPS_FAILED=""
ops_check() { # the fused ops against their formulations on CUDA, values and gradients
  skip ops-cuda && return
  say "ops-cuda: torch_ops (TORCH_OPS_DEVICE=cuda)"
  TORCH_OPS_DEVICE=cuda timeout 180 "$WORK/bin/torch_ops" --test-threads=1 > "$OUT/ops-cuda.txt" 2>&1
  local status=$?
  echo "exit $status" >> "$OUT/ops-cuda.txt"
  grep -a "^test \|test result\|panicked\|exit" "$OUT/ops-cuda.txt" | cut -c1-400
  if [ "$status" -ne 0 ]; then
    OPS_FAILED=1
    echo "!!!!!! FUSED OPS CHECK FAILED on CUDA (exit $status): the fused rows below are not to be trusted; see ops-cuda.txt"
  fi
  save
}

ops_check
smoke smoke-cuda cuda
bench bench-cuda 90 "$BATCH" --devices cuda --dtype bf16
bench bench-cuda-unfused 90 "$BATCH" --devices cuda --dtype bf16 --no-fused
bench torch-compiled 150 "$BATCH" --devices '' --dtype bf16 --torch "$WORK/torch_reference.py" --torch-device cuda --torch-compile
bench torch-eager 60 "$BATCH" --devices '' --dtype bf16 --torch "$WORK/torch_reference.py" --torch-device cuda
if [ -n "$CUBECL" ]; then
  # First steps compile and autotune every kernel (the cache starts empty): 3 warm-up steps.
  # CUDA_PATH for these two only, and only when there is a libdevice to point at (an empty one
  # would be a relative path to cubecl-llvm).
  saved_cuda_path=${CUDA_PATH-__unset__}
  [ -n "$CUBECL_CUDA_PATH" ] && export CUDA_PATH="$CUBECL_CUDA_PATH"
  BENCH_BIN="$WORK/cubecl/bench_step" bench bench-cubecl 180 "${CUBECL_BATCH:-$BATCH}" --devices cubecl-cuda --dtype bf16
  smoke smoke-cubecl cubecl-cuda "$WORK/cubecl"
  if [ "$saved_cuda_path" = __unset__ ]; then unset CUDA_PATH; else export CUDA_PATH="$saved_cuda_path"; fi
fi
bench bench-vulkan 90 "${VULKAN_BATCH:-8}" --devices vulkan --dtype f32
smoke smoke-vulkan vulkan

say "table"
python3 - "$OUT" <<'EOF' | tee "$OUT/table.md"
import glob, json, os, sys
out = sys.argv[1]
def peak_mem(name):
    try:
        xs = [float(l) for l in open(f"{out}/mem-{name}.txt") if l.strip()]
        return max(xs) - xs[0] if xs else None
    except OSError:
        return None
try:
    ops = open(f"{out}/ops-cuda.txt").read().splitlines()
    result = next((l for l in ops if l.startswith("test result")), "no test result")
    status = ops[-1] if ops and ops[-1].startswith("exit") else "exit ?"
    verdict = "passed" if status == "exit 0" else "FAILED"
    print(f"fused ops on CUDA vs their formulations (torch_ops): {verdict}: {result}, {status}\n")
except OSError:
    print("fused ops on CUDA vs their formulations (torch_ops): not run\n")
rows = []
for name in ["torch-compiled", "torch-eager", "bench-cuda", "bench-cuda-unfused", "bench-cubecl", "bench-vulkan"]:
    try:
        lines = [json.loads(l) for l in open(f"{out}/{name}.txt") if l.startswith("{")]
    except OSError:
        continue
    for r in lines:
        rows.append((name, r))
torch = next((r["tokens_per_s"] for n, r in rows if n == "torch-compiled"), None)
print("| row | implementation | tokens/s | step (s) | MFU % | peak GPU MiB (nvidia-smi) | own peak MiB | loss after | vs torch.compile |")
print("|---|---|---|---|---|---|---|---|---|")
for n, r in rows:
    ratio = f"{r['tokens_per_s'] / torch:.2f}x" if torch else "-"
    mfu = r.get("mfu_percent"); own = r.get("peak_mem_mb"); m = peak_mem(n)
    f = lambda v, p: "-" if v is None else f"{v:.{p}f}"
    print(f"| {n} | {r['impl']} | {r['tokens_per_s']:.0f} | {r['step_s']:.3f} | {f(mfu, 1)} | {f(m, 0)} | {f(own, 0)} ({r.get('memory_source', '')}) | {f(r.get('loss'), 4)} | {ratio} |")
for s in ["smoke-cuda", "smoke-cubecl", "smoke-vulkan"]:
    try:
        j = json.load(open(f"{out}/{s}.json"))
    except (OSError, ValueError):
        print(f"\n{s}: no summary"); continue
    try:
        losses = [float(l.split(",")[2]) for l in open(f"{out}/{s}.steps.csv").read().splitlines()[1:] if l.split(",")[2]]
    except (OSError, IndexError, ValueError):
        losses = []
    falls = f"loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps" if losses else "no per-step losses"
    print(f"\n{s}: val_bpb {j.get('val_bpb')}, {falls}, sandbox {j.get('sandbox')}, tokens/s {j.get('tokens_per_sec')}, mfu {j.get('mfu_percent')}, steps {j.get('num_steps')}, peak GPU {peak_mem(s)} MiB")
EOF
cp "$OUT/table.md" "$FINAL/table.md"
save
if [ -n "$OPS_FAILED" ]; then
  say "done, but the fused ops check FAILED on CUDA"
  exit 1
fi
say "done"
