#!/usr/bin/env bash
# Runs bench/quant-side-by-side.py (transact's GGUF quantization next to llama.cpp's
# llama_model_quantize on the same f32 files) in the llama.cpp venv (bench/llama-venv.sh).
#   bench/quant-side-by-side.sh --transact target/release/transact --model dense:dense-f32.gguf --out DIR
set -euo pipefail
exec "$(dirname "$0")/llama-venv.sh" "$(dirname "$0")/quant-side-by-side.py" "$@"
