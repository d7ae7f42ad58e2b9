#!/usr/bin/env bash
# Runs a Python script in a throw-away venv with llama-cpp-python and gguf from PyPI, creating the
# venv on first use (~6-7 min on 2 cores when pip compiles llama.cpp). llama.cpp is a benchmark
# peer here, never a dependency of the tool.
#   bench/llama-venv.sh SCRIPT.py [ARGS...]
# LLAMA_VENV picks the venv's folder (default /tmp/llamavenv).
set -euo pipefail
VENV=${LLAMA_VENV:-/tmp/llamavenv}
if ! "$VENV/bin/python" -c "import llama_cpp, gguf" 2>/dev/null; then
    echo "installing llama-cpp-python and gguf into $VENV (may compile llama.cpp, several minutes)" >&2
    python3 -m venv "$VENV"
    CMAKE_ARGS="-DGGML_NATIVE=ON" CMAKE_BUILD_PARALLEL_LEVEL=2 "$VENV/bin/pip" install -q llama-cpp-python gguf
fi
exec "$VENV/bin/python" "$@"
