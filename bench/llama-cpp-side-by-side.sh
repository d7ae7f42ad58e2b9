#!/usr/bin/env bash
# Runs bench/llama-cpp-side-by-side.py in the llama.cpp venv (bench/llama-venv.sh). Arguments go
# to the Python script:
#   bench/llama-cpp-side-by-side.sh --transact target/release/transact --model dense:f32:dense-f32.gguf [...]
set -euo pipefail
exec "$(dirname "$0")/llama-venv.sh" "$(dirname "$0")/llama-cpp-side-by-side.py" "$@"
