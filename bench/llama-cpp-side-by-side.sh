#!/usr/bin/env bash
# Runs bench/llama-cpp-side-by-side.py in a throw-away venv with llama-cpp-python from PyPI,
# creating the venv on first use (~6-7 min on 2 cores: pip compiles llama.cpp). llama.cpp is a
# benchmark peer here, never a dependency of the tool. Arguments go to the Python script:
#   bench/llama-cpp-side-by-side.sh --transact target/release/transact --model dense:f32:dense-f32.gguf [...]
# LLAMA_VENV picks the venv's folder (default /tmp/llamavenv).
set -euo pipefail
VENV=${LLAMA_VENV:-/tmp/llamavenv}
if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    echo "installing llama-cpp-python into $VENV (compiles llama.cpp, several minutes)" >&2
    python3 -m venv "$VENV"
    CMAKE_ARGS="-DGGML_NATIVE=ON" CMAKE_BUILD_PARALLEL_LEVEL=2 "$VENV/bin/pip" install -q llama-cpp-python
fi
exec "$VENV/bin/python" "$(dirname "$0")/llama-cpp-side-by-side.py" "$@"
