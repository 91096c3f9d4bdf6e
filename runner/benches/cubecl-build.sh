#!/usr/bin/env bash
# Builds the CubeCL CUDA route (`--device cubecl-cuda`: Burn's own CUDA backend, with fusion and
# autotune) on a CPU machine, with no download outside PyPI and crates.io:
#
#   runner/benches/cubecl-build.sh [ENV]     (default ../cubecl-env, beside the checkout)
#
# 1. LLVM 23 for cubecl-llvm (the kernels are lowered through LLVM's NVPTX backend to PTX, which
#    the driver loads; no NVRTC, no nvcc): PyPI's mlc-llvm-static (static libraries, headers, an
#    `llvm-config`) and mlc-llvm-static-extra-targets (NVPTX), pip-installed into ENV/venv.
# 2. cubecl-llvm's build script (through tracel-llvm-bundler) looks for LLVM in
#    $XDG_DATA_HOME/tracel/tracel-llvm-<bundler version>/ and downloads a bundle there unless
#    `.tracel-llvm-installed` exists in it. The script lays that folder out in ENV/data (links to
#    the pip LLVM) with the marker, and points XDG_DATA_HOME at ENV/data for the build only: the
#    download is never tried, and nothing is written to ~/.local/share.
# 3. CUDARC_CUDA_VERSION=13000 pins cudarc's CUDA bindings without nvcc (they load the driver
#    and its libraries at run time).
# 4. cargo build --release --workspace --features harness/cubecl-cuda,trainer/cubecl-cuda,
#    harness/fusion,trainer/fusion,harness/autotune,trainer/autotune, into CARGO_TARGET_DIR
#    (default target/cubecl: the feature set differs from the default build's, so it must not
#    share its target folder). Extra cargo arguments come from CARGO_ARGS (e.g. `--examples`).
#
# Run time needs the NVIDIA driver (libcuda.so.1) and libdevice.10.bc (pip nvidia-nvvm, or a CUDA
# toolkit), found as $CUDA_PATH/nvvm/libdevice/libdevice.10.bc; the trainer and the harness say
# so when either is missing. runner/benches/gpu-pack.sh packs the binaries (CUBECL_TARGET) and
# libdevice for the GPU check.
set -euo pipefail
cd "$(dirname "$0")/../.."
ENV_DIR=$(mkdir -p "${1:-../cubecl-env}" && cd "${1:-../cubecl-env}" && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cubecl}
LLVM_VERSION=23.1.1.post0
# The folder name cubecl-llvm's bundler looks for: its crate version, from Cargo.lock.
BUNDLER=$(awk '/^name = "tracel-llvm-bundler"/ { getline; gsub(/"/, "", $3); print $3 }' Cargo.lock)
[ -n "$BUNDLER" ] || { echo "cubecl-build: no tracel-llvm-bundler in Cargo.lock: does burn still pull cubecl-llvm? (cargo tree -i cubecl-llvm)" >&2; exit 1; }

venv="$ENV_DIR/venv"
[ -x "$venv/bin/python" ] || nice -n 19 python3 -m venv "$venv"
if ! "$venv/bin/python" -c "import mlc_llvm_static" 2>/dev/null; then
  echo "cubecl-build: pip install mlc-llvm-static==$LLVM_VERSION mlc-llvm-static-extra-targets==$LLVM_VERSION into $venv"
  nice -n 19 "$venv/bin/pip" install -q "mlc-llvm-static==$LLVM_VERSION" "mlc-llvm-static-extra-targets==$LLVM_VERSION"
fi
prefix=$("$venv/bin/python" -c 'import mlc_llvm_static, os; print(os.path.join(os.path.dirname(mlc_llvm_static.__file__), "static"))')
[ -x "$prefix/bin/llvm-config" ] || { echo "cubecl-build: no $prefix/bin/llvm-config: mlc-llvm-static's layout changed" >&2; exit 1; }
version=$("$prefix/bin/llvm-config" --version)
[ "${version%%.*}" = "${BUNDLER%%.*}" ] || { echo "cubecl-build: pip LLVM is $version, cubecl-llvm wants LLVM ${BUNDLER%%.*} (tracel-llvm-bundler $BUNDLER)" >&2; exit 1; }
"$prefix/bin/llvm-config" --targets-built | grep -qw NVPTX || { echo "cubecl-build: the pip LLVM has no NVPTX target: pip install mlc-llvm-static-extra-targets==$LLVM_VERSION" >&2; exit 1; }

export XDG_DATA_HOME="$ENV_DIR/data"
bundle="$XDG_DATA_HOME/tracel/tracel-llvm-$BUNDLER"
mkdir -p "$bundle"
for d in bin lib include share; do ln -sfn "$prefix/$d" "$bundle/$d"; done
touch "$bundle/.tracel-llvm-installed"
echo "cubecl-build: LLVM $version (NVPTX) from $prefix, as $bundle"

# libdevice for the run side (gpu-pack.sh packs it; CUDA_PATH=ENV/cuda runs the route where no
# toolkit or pip nvidia-nvvm is installed): the one file of pip's nvidia-nvvm that is needed.
libdevice="$ENV_DIR/cuda/nvvm/libdevice/libdevice.10.bc"
if [ ! -f "$libdevice" ]; then
  dl=$(mktemp -d)
  nice -n 19 "$venv/bin/pip" download -q --no-deps -d "$dl" "nvidia-nvvm>=13,<14"
  "$venv/bin/python" - "$dl" "$libdevice" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "nvidia_nvvm-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("nvvm/libdevice/libdevice.10.bc"))
    os.makedirs(os.path.dirname(sys.argv[2]), exist_ok=True)
    open(sys.argv[2], "wb").write(z.read(name))
PY
  rm -rf "$dl"
fi
echo "cubecl-build: libdevice at $libdevice (CUDA_PATH=$ENV_DIR/cuda)"

export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
features=harness/cubecl-cuda,trainer/cubecl-cuda,harness/fusion,trainer/fusion,harness/autotune,trainer/autotune
echo "cubecl-build: cargo build --release --workspace --features $features ${CARGO_ARGS:-} into $CARGO_TARGET_DIR"
# shellcheck disable=SC2086
nice -n 19 cargo build --release --workspace --features "$features" ${CARGO_ARGS:-}
ls -l "$CARGO_TARGET_DIR/release/harness" "$CARGO_TARGET_DIR/release/trainer" "$CARGO_TARGET_DIR/release/bench_step"
