#!/usr/bin/env bash
# Runs bench/serve-side-by-side.py in the llama.cpp venv (bench/llama-venv.sh), with
# llama-cpp-python's [server] extra added on first use. Arguments go to the Python script:
#   bench/serve-side-by-side.sh --transact target/release/transact --model dense:f32:dense-f32.gguf [...]
set -euo pipefail
VENV=${LLAMA_VENV:-/tmp/llamavenv}
here=$(dirname "$0")
"$here/llama-venv.sh" -c "import llama_cpp"
if ! "$VENV/bin/python" -c "import uvicorn, fastapi, sse_starlette, starlette_context, pydantic_settings" 2>/dev/null; then
    echo "installing llama-cpp-python's server extra into $VENV" >&2
    version=$("$VENV/bin/python" -c "import llama_cpp; print(llama_cpp.__version__)")
    "$VENV/bin/pip" install -q "llama-cpp-python[server]==$version"
fi
exec "$VENV/bin/python" "$here/serve-side-by-side.py" "$@"
