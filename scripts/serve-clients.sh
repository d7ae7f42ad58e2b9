#!/usr/bin/env bash
# Real clients against `transact serve`: the `openai` Python package (completions, chat, streaming)
# and lm-evaluation-harness 0.4 `local-completions` scoring PIQA and ARC-Easy (first 100 docs,
# local task files built from the bundled request files, no hub access); lm-eval's acc/acc_norm
# must equal `transact eval`'s on the same docs, doc by doc. Exit status 1 when they differ.
#   scripts/serve-clients.sh [MODEL] [-- ARGS for scripts/serve_clients.py]
# MODEL defaults to assets/SmolLM2-135M-Instruct.Q4_1.gguf. Environment:
#   TRANSACT_BIN        transact binary (default target/release/transact)
#   CLIENTS_VENV        the throw-away venv (default /tmp/clientsvenv; first run installs openai,
#                       lm-eval[api] 0.4.13 and transformers from PyPI, ~4 min on 2 cores, no torch)
#   SERVE_CLIENTS_OUT   JSON summary (default out/serve-clients.json)
#   SERVE_CLIENTS_WORK  scratch folder (default: a temporary one, removed afterwards)
#   SERVE_ARGS          extra `transact serve` options, e.g. "--dtype q8_0"
# The server gets an API key (TRANSACT_API_KEY; clients send OPENAI_API_KEY). Apart from the pip
# install everything stays on 127.0.0.1: lm-eval runs with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${1:-$ROOT/assets/SmolLM2-135M-Instruct.Q4_1.gguf}
[[ $# -gt 0 ]] && shift
[[ ${1:-} == -- ]] && shift
BIN=${TRANSACT_BIN:-$ROOT/target/release/transact}
VENV=${CLIENTS_VENV:-/tmp/clientsvenv}
OUT=${SERVE_CLIENTS_OUT:-$ROOT/out/serve-clients.json}
NAME=transact-test-model

[[ -x $BIN ]] || { echo "no transact binary at $BIN (build with cargo build --release, or set TRANSACT_BIN)" >&2; exit 2; }
[[ -f $MODEL ]] || { echo "no model at $MODEL" >&2; exit 2; }

if ! "$VENV/bin/python" -c "import openai, lm_eval, transformers, aiohttp, tenacity" 2>/dev/null; then
    echo "installing openai, lm-eval[api]==0.4.13 and transformers into $VENV (several minutes)" >&2
    python3 -m venv "$VENV"
    nice -n 10 "$VENV/bin/pip" install -q "lm-eval[api]==0.4.13" transformers openai
fi

WORK=${SERVE_CLIENTS_WORK:-}
if [[ -z $WORK ]]; then
    WORK=$(mktemp -d /tmp/serve-clients.XXXXXX)
    CLEAN_WORK=1
fi
mkdir -p "$WORK" "$(dirname "$OUT")"
SERVER_PID=
cleanup() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then kill -TERM "$SERVER_PID" 2>/dev/null || true; fi
    if [[ -n ${CLEAN_WORK:-} ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

export TRANSACT_ASSETS=${TRANSACT_ASSETS:-$ROOT/assets}
export TRANSACT_API_KEY=serve-clients-$RANDOM$RANDOM
export OPENAI_API_KEY=$TRANSACT_API_KEY

# Port 0: the server picks a free loopback port and prints it.
LOG=$WORK/serve.log
# shellcheck disable=SC2086
"$BIN" serve "$MODEL" --host 127.0.0.1 --port 0 --model-name "$NAME" ${SERVE_ARGS:-} 2>"$LOG" &
SERVER_PID=$!
PORT=
for _ in $(seq 600); do
    PORT=$(sed -n 's|^serving .* on http://127\.0\.0\.1:\([0-9]*\)/v1.*|\1|p' "$LOG" | head -n1)
    [[ -n $PORT ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$LOG" >&2; echo "transact serve exited before listening" >&2; exit 1; }
    sleep 0.2
done
[[ -n $PORT ]] || { cat "$LOG" >&2; echo "transact serve did not start listening" >&2; exit 1; }
head -n2 "$LOG" >&2
curl -sf "http://127.0.0.1:$PORT/health" >/dev/null || { echo "GET /health failed" >&2; exit 1; }

set +e
"$VENV/bin/python" "$ROOT/scripts/serve_clients.py" --base-url "http://127.0.0.1:$PORT/v1" --model-name "$NAME" \
    --model-path "$MODEL" --transact "$BIN" --assets "$TRANSACT_ASSETS" --work "$WORK" --out "$OUT" "$@"
STATUS=$?
set -e

kill -TERM "$SERVER_PID"
set +e
wait "$SERVER_PID"
SERVER_STATUS=$?
set -e
SERVER_PID=
if [[ $SERVER_STATUS -ne 0 ]]; then
    tail -n 20 "$LOG" >&2
    echo "transact serve exited with status $SERVER_STATUS after SIGTERM (expected 0)" >&2
    exit 1
fi
echo "transact serve stopped cleanly on SIGTERM" >&2
exit "$STATUS"
