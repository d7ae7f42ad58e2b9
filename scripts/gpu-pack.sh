#!/usr/bin/env bash
# Packs what the GPU run (bench/gpu-check.sh) needs into .gpu/ (ignored): a CUDA build of
# transact and the bundled model in two parts that each fit the device tool's 64 MiB per call.
#
# The device machine has CUDA 13.0's driver and nvcc but no Rust, so the binary is built here
# with PyPI's nvcc pinned to 13.0: a newer nvcc writes PTX that the 13.0 driver cannot load.
# Usage: scripts/gpu-pack.sh   (then see bench/NOTES.md, "Running the GPU check")
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=assets/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$MODEL" ] || { echo "missing $MODEL: run scripts/fetch-assets.sh first" >&2; exit 1; }
VENV=${CUDA_VENV:-/tmp/cuda130}
if [ ! -x "$VENV/bin/pip" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" \
        "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-cccl==13.0.*" \
        "nvidia-cublas==13.0.*" "nvidia-cuda-nvrtc==13.0.*" nvidia-curand
fi
CU=$(ls -d "$VENV"/lib/python*/site-packages/nvidia/cu13)
TARGET=${CUDA_TARGET_DIR:-/tmp/cuda-target}
build() {
    PATH=$CU/bin:$PATH CUDA_ROOT=$CU CUDA_PATH=$CU CUDARC_CUDA_VERSION=13000 CUDA_COMPUTE_CAP=90 \
        CARGO_TARGET_DIR=$TARGET cargo build --release --locked "$@"
}
# candle links the CUDA libraries at build time (cudarc's dynamic-linking): the wheels give
# versioned names only, and no wheel has the driver's libcuda, so the linker gets a stub that
# defines every driver symbol the compiled crates use. The device's real libcuda.so.1 loads
# at run time.
build -p transact --lib --features cuda
(cd "$CU/lib" && for l in cublas cublasLt cudart nvrtc; do ln -sf lib$l.so.13 lib$l.so; done && ln -sf libcurand.so.10 libcurand.so)
nm -u "$TARGET"/release/deps/*.rlib 2>/dev/null | grep -oE " U cu[A-Z][A-Za-z0-9_]*" | sort -u |
    awk '{print "void " $2 "(void) {}"}' > "$TARGET/libcuda-stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CU/lib/libcuda.so" "$TARGET/libcuda-stub.c"
build -p transact-cli --bin transact --features cuda
rm -rf .gpu && mkdir -p .gpu/a .gpu/b
# Two calls, each under 64 MiB: the binary with the model's first half (call 1 can already
# check that the binary finds its libraries and the GPU), then the second half.
xz -T2 -c "$TARGET/release/transact" > .gpu/a/transact.xz
half=$(( ($(stat -c %s "$MODEL") + 1) / 2 ))
head -c "$half" "$MODEL" > .gpu/a/model.part1
tail -c +"$((half + 1))" "$MODEL" > .gpu/b/model.part2
sha256sum "$MODEL" | cut -d' ' -f1 > .gpu/a/model.sha256
du -sh .gpu/a .gpu/b
