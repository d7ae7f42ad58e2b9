#!/usr/bin/env bash
# `transact eval` against lm-evaluation-harness 0.4.13's stock transformers backend (`--model hf`,
# CPU PyTorch, f32) on the same requests, in one run: the first N docs of PIQA and ARC-Easy
# (N = 100: 599 requests), as local task files both tools read. Reports each tool's wall time
# and checks the results are identical (acc and acc_norm per doc; log-likelihoods within 5e-4, or
# 5e-6 relative for the long continuations whose log-likelihoods sum 100+ f32 terms).
#   bench/eval-side-by-side.sh [MODEL] [-- ARGS for bench/eval-side-by-side.py]
# MODEL defaults to assets/SmolLM2-135M-Instruct.Q4_1.gguf. Environment:
#   TRANSACT_BIN   transact binary (default target/release/transact)
#   EVAL_VENV      the throw-away venv (default /tmp/evalvenv; the first run installs torch (CPU
#                  index when reachable, else PyPI), transformers and lm-eval 0.4.13, minutes)
#   EVAL_OUT       JSON summary (default out/eval-side-by-side.json)
#   EVAL_WORK      keep the task files, both tools' per-doc scores and logs in this (empty) folder
# Run it on a quiet machine: both tools use every core.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=$ROOT/assets/SmolLM2-135M-Instruct.Q4_1.gguf
if [[ $# -gt 0 && $1 != -- ]]; then MODEL=$1; shift; fi
[[ ${1:-} == -- ]] && shift
BIN=${TRANSACT_BIN:-$ROOT/target/release/transact}
VENV=${EVAL_VENV:-/tmp/evalvenv}
[[ -x $BIN ]] || { echo "no transact binary at $BIN (cargo build --release, or set TRANSACT_BIN)" >&2; exit 2; }
if ! "$VENV/bin/python" -c "import torch, transformers, accelerate, lm_eval" 2>/dev/null; then
    echo "installing torch (CPU), transformers, accelerate and lm-eval 0.4.13 into $VENV" >&2
    python3 -m venv "$VENV"
    if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
        "$VENV/bin/pip" install -q torch --index-url https://download.pytorch.org/whl/cpu || "$VENV/bin/pip" install -q torch
    fi
    "$VENV/bin/pip" install -q transformers accelerate "lm-eval==0.4.13"
fi
if [[ -n ${EVAL_WORK:-} ]]; then
    WORK=$EVAL_WORK && mkdir -p "$WORK"
else
    WORK=$(mktemp -d) && trap 'rm -rf "$WORK"' EXIT
fi
exec "$VENV/bin/python" "$ROOT/bench/eval-side-by-side.py" --transact "$BIN" --model "$MODEL" --assets "$ROOT/assets" \
    --work "$WORK" --out "${EVAL_OUT:-$ROOT/out/eval-side-by-side.json}" "$@"
