#!/usr/bin/env bash
# Runs bench/train-side-by-side.py in a throw-away venv with CPU-only PyTorch, transformers and
# safetensors, creating the venv on first use (a few minutes: the pip download is the slow part).
# PyTorch is a benchmark and parity peer here, never a dependency of the tool. Torch comes from
# the PyTorch CPU index when it is reachable (no CUDA libraries), else from plain PyPI. Arguments
# go to the Python script:
#   bench/train-side-by-side.sh --student hf/half --teacher hf/dense [--parity] [--speed] [...]
# TORCH_VENV picks the venv's folder (default /tmp/torchvenv).
set -euo pipefail
VENV=${TORCH_VENV:-/tmp/torchvenv}
if ! "$VENV/bin/python" -c "import torch, transformers, safetensors" 2>/dev/null; then
    echo "installing torch (CPU), transformers and safetensors into $VENV" >&2
    python3 -m venv "$VENV"
    if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
        if ! "$VENV/bin/pip" install -q torch --index-url https://download.pytorch.org/whl/cpu; then
            echo "the PyTorch CPU index is not reachable; torch from PyPI instead" >&2
            "$VENV/bin/pip" install -q torch
        fi
    fi
    "$VENV/bin/pip" install -q transformers safetensors
fi
exec "$VENV/bin/python" "$(dirname "$0")/train-side-by-side.py" "$@"
