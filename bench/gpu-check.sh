#!/usr/bin/env bash
# The GPU run of issue #5, on the device machine: CPU-vs-GPU logit parity on the bundled model
# and the bench numbers (dense, and pruned to half its non-embedding parameters), each dtype
# the GPU path has. Needs what scripts/gpu-pack.sh put in .gpu/ (see bench/NOTES.md).
#   bash bench/gpu-check.sh --smoke   with .gpu/a only: the binary, its libraries, the GPU
#   bash bench/gpu-check.sh           with .gpu/a and .gpu/b: parity and the bench
set -euo pipefail
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
G=.gpu
[ -x $G/transact ] || { xz -dc $G/a/transact.xz > $G/transact && chmod +x $G/transact; }
# cuBLAS, cuRAND and the CUDA runtime come from the NVIDIA wheels beside the image's PyTorch.
LIBS=$(python3 -c 'import nvidia, os; print(":".join(os.path.join(p, d, "lib") for p in nvidia.__path__ for d in sorted(os.listdir(p)) if os.path.isdir(os.path.join(p, d, "lib"))))' || true)
export LD_LIBRARY_PATH=$LIBS:${LD_LIBRARY_PATH:-}
if ldd $G/transact | grep "not found"; then echo "libraries missing (above); LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >&2; exit 1; fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee $OUT/gpu.txt
# The device opens before the (missing) model is looked for: an error naming the file means
# CUDA initialised.
init=$($G/transact --device cuda inspect $G/none.gguf 2>&1 || true)
echo "$init" | tee -a $OUT/gpu.txt
case "$init" in *none.gguf*) ;; *) echo "CUDA did not initialise" >&2; exit 1 ;; esac
[ "${1:-}" = --smoke ] && exit 0
MODEL=$G/model.gguf
[ -f $MODEL ] || cat $G/a/model.part1 $G/b/model.part2 > $MODEL
[ "$(sha256sum $MODEL | cut -d' ' -f1)" = "$(cat $G/a/model.sha256)" ] || { echo "model parts do not match" >&2; exit 1; }
# Shapes decide speed, so the pruned model uses the magnitude scorer (no calibration data).
$G/transact prune $MODEL --device cuda --ratio 0.5 --mlp-multiple 32 --scorer magnitude --compensate none \
    --format gguf --out /tmp/half 2>&1 | tail -5
# Each dtype reports max |Δlogit| against the CPU forward in f32 ("vs CPU f32").
$G/transact bench $MODEL --vs /tmp/half/model.gguf --device cuda --dtype f32,bf16,f16 --kv-dtype f32,f16 --repeats 3 \
    --json $OUT/bench-cuda.json 2>&1 | tee $OUT/bench-cuda.txt
