#!/usr/bin/env bash
# End to end: `transact prune` with recovery between shots done by scripts/recover_accelerate.py
# (stock transformers + accelerate) through --recover-cmd, a few CPU steps per shot. Creates its
# own throw-away venv (CPU-only torch, transformers, accelerate, safetensors) on first use; never
# part of CI. The dense teacher is the bundled GGUF converted to HF; the text is the KJV Bible from
# the training-text assets (no overlap with any evaluation set).
#   scripts/recover-accelerate-demo.sh [OUTDIR]     (default /tmp/recover-accelerate-demo)
# ACCEL_VENV picks the venv's folder (default /tmp/accelvenv); TRANSACT another binary.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/recover-accelerate-demo}
VENV=${ACCEL_VENV:-/tmp/accelvenv}
T=${TRANSACT:-target/release/transact}
DENSE=assets/SmolLM2-135M-Instruct.Q4_1.gguf
TEXT=assets/corpora/kjv/kjv.txt
[ -x "$T" ] || cargo build --release
[ -f "$TEXT" ] || { echo "run scripts/fetch-assets.sh first ($TEXT is missing)" >&2; exit 2; }
if ! "$VENV/bin/python" -c "import torch, transformers, accelerate, safetensors" 2>/dev/null; then
    echo "installing torch (CPU), transformers, accelerate and safetensors into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch --index-url https://download.pytorch.org/whl/cpu || "$VENV/bin/pip" install -q torch
    "$VENV/bin/pip" install -q transformers accelerate safetensors
fi
mkdir -p "$OUT"
[ -d "$OUT/dense-hf" ] || "$T" convert "$DENSE" "$OUT/dense-hf" --to hf
# Two shots, two optimizer steps of 2 × 2 × 128 tokens after each, on one CPU process.
CMD="$VENV/bin/accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
scripts/recover_accelerate.py --in {in} --out {out} --teacher $OUT/dense-hf --data $TEXT --steps 2 --batch 2 --grad-accum 2 --seq-len 128"
"$T" prune "$DENSE" --out "$OUT/half" --ratio 0.5 --shots 2 --samples 32 --seq-len 128 --format hf --force --recover-cmd "$CMD"
"$T" eval "$OUT/half" --ppl wiki --limit 4 --seq-len 512
echo "recover-accelerate-demo: ok ($OUT/half; per-shot training logs were in the recover_report.json of each {out})"
