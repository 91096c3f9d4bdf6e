#!/usr/bin/env bash
# Packs the GPU check's bundle (runner/benches/gpu-check.sh) on a build machine: the stripped
# harness, trainer and bench_step compressed with xz, a prepared cache of the classics, the
# PyTorch reference script and Debian's Vulkan loader; and the fused ops' test binary
# (trainer/tests/torch_ops.rs), which the check runs on CUDA. It must fit in 64 MiB.
#
# Build the binaries first, against the PyTorch version the GPU machine has (torch 2.11.0 with
# CUDA 13 here; runner/benches/README.md, "GPU"):
#   python3 -m venv /tmp/t211 && /tmp/t211/bin/pip install torch==2.11.0
#   VIRTUAL_ENV=/tmp/t211 PATH=/tmp/t211/bin:$PATH LIBTORCH_USE_PYTORCH=1 LIBTORCH_BYPASS_VERSION_CHECK=1 \
#     cargo build --release --workspace --features harness/gpu,trainer/gpu
#   (the same environment) cargo test --release --workspace --features harness/gpu,trainer/gpu \
#     --test torch_ops --no-run      # the same features: nothing of Burn is rebuilt
#
# Optionally, the CubeCL CUDA route (`--device cubecl-cuda`): its own harness, trainer and
# bench_step from the build runner/benches/cubecl-build.sh makes (another feature set, another
# target folder), as bin/cubecl/*.xz, with libdevice.10.bc (cuda/nvvm/libdevice/, 0.2 MB
# compressed) for machines without pip's nvidia-nvvm:
#   CUBECL_TARGET=target/cubecl CUBECL_ENV=../cubecl-env runner/benches/gpu-pack.sh
# (CUBECL_TARGET: that build's target folder; CUBECL_ENV: the folder cubecl-build.sh was given.)
#
#   runner/benches/gpu-pack.sh [BUNDLE]     (default .gpu; add it to .git/info/exclude)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUNDLE=${1:-.gpu}
TARGET=${CARGO_TARGET_DIR:-target}/release
SHARED=${SHARED:-../shared}
rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/bin" "$BUNDLE/debs"
for b in harness trainer bench_step; do
  [ -x "$TARGET/$b" ] || { echo "$TARGET/$b is missing: build first (see the top of this script)" >&2; exit 1; }
  strip -o "$BUNDLE/bin/$b" "$TARGET/$b"
  xz -9 -T0 "$BUNDLE/bin/$b"
done
# The newest torch_ops test binary (cargo names it torch_ops-<hash> in deps/).
ops=$(ls -t "$TARGET"/deps/torch_ops-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
[ -n "$ops" ] && [ -x "$ops" ] || { echo "no $TARGET/deps/torch_ops-*: build it first (see the top of this script)" >&2; exit 1; }
strip -o "$BUNDLE/bin/torch_ops" "$ops"
xz -9 -T0 "$BUNDLE/bin/torch_ops"
if [ -n "${CUBECL_TARGET:-}" ]; then
  mkdir -p "$BUNDLE/bin/cubecl" "$BUNDLE/cuda/nvvm/libdevice"
  for b in harness trainer bench_step; do
    [ -x "$CUBECL_TARGET/release/$b" ] || { echo "$CUBECL_TARGET/release/$b is missing: run runner/benches/cubecl-build.sh first" >&2; exit 1; }
    strip -o "$BUNDLE/bin/cubecl/$b" "$CUBECL_TARGET/release/$b"
    xz -9 -T0 "$BUNDLE/bin/cubecl/$b"
  done
  libdevice=${CUBECL_ENV:-../cubecl-env}/cuda/nvvm/libdevice/libdevice.10.bc
  [ -f "$libdevice" ] || { echo "no $libdevice: run runner/benches/cubecl-build.sh first" >&2; exit 1; }
  xz -9 -c "$libdevice" > "$BUNDLE/cuda/nvvm/libdevice/libdevice.10.bc.xz"
fi
cache=$(mktemp -d)
"$TARGET/prepare" --source-dir "$SHARED/data/classics" --cache-dir "$cache" > "$BUNDLE/prepare.log"
tar -C "$cache" -cJf "$BUNDLE/cache.tar.xz" .
rm -rf "$cache"
cp "$SHARED/bench/torch_reference.py" "$BUNDLE/"
# The Vulkan loader, and the GL dispatch libraries the NVIDIA driver's ICD library
# (libGLX_nvidia) loads, for machines that have the driver but not these.
lists=$(mktemp -d)
o="-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=$lists"
mkdir -p "$lists/partial"
# shellcheck disable=SC2086
apt-get $o update -qq && (cd "$BUNDLE/debs" && apt-get $o download libvulkan1 libglvnd0 libglx0 libegl1 libgl1 libopengl0 libgles2 >/dev/null) || echo "no libvulkan1 package: the bundle has no Vulkan loader" >&2
rm -rf "$lists"
du -sh "$BUNDLE" "$BUNDLE"/* "$BUNDLE"/bin/* "$BUNDLE"/bin/cubecl/* 2>/dev/null
size=$(du -sb "$BUNDLE" | cut -f1)
[ "$size" -le $((64 * 1024 * 1024)) ] || echo "the bundle is $((size / 1024 / 1024)) MiB: over the GPU machine's 64 MiB" >&2
