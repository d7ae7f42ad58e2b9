#!/usr/bin/env bash
# Recovery of the 50 % SmolLM2 (the README's prune) by `transact train`, measured:
#   1. kd, ce and kd+ce at equal tokens (SHORT tokens each);
#   2. one longer kd run (LONG tokens, default 400K; 0 skips it) with held-out perplexity along the way;
#   3. every model (dense, pruned, each trained one) on wiki perplexity (20 windows of 2048)
#      and the eight zero-shot tasks (first 100 docs each).
# Usage: experiments/recovery/run.sh OUTDIR [SHORT_TOKENS] [LONG_TOKENS]
# Everything lands in OUTDIR (models, train reports, eval JSON, run.log); run it from the repo root
# after `cargo build --release` and scripts/fetch-assets.sh ($TRANSACT picks another binary).
set -euo pipefail
OUT=${1:?usage: run.sh OUTDIR [SHORT_TOKENS] [LONG_TOKENS]}
SHORT=${2:-100K}
LONG=${3:-400K}
T=${TRANSACT:-target/release/transact}
DENSE=assets/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/run.log"; }
log "loadavg $(cat /proc/loadavg)"
[ -d "$OUT/half" ] || { log "prune"; $T prune $DENSE --out "$OUT/half" --ratio 0.5 --compensate none --format hf >> "$OUT/run.log" 2>&1; }
for loss in kd ce kd+ce; do
  name="short-${loss/+/}"
  [ -d "$OUT/$name" ] && continue
  log "train $loss $SHORT"
  $T train "$OUT/half" --teacher $DENSE --loss $loss --tokens $SHORT --eval-every 10 --out "$OUT/$name" >> "$OUT/run.log" 2>&1
done
if [ "$LONG" != 0 ] && [ ! -d "$OUT/long-kd" ]; then
  log "train kd $LONG"
  $T train "$OUT/half" --teacher $DENSE --loss kd --tokens $LONG --eval-every 20 --out "$OUT/long-kd" >> "$OUT/run.log" 2>&1
fi
for m in dense half short-kd short-ce short-kdce long-kd; do
  src="$OUT/$m"; [ $m = dense ] && src=$DENSE
  [ -e "$src" ] || continue
  [ -f "$OUT/eval-$m-wiki.json" ] || { log "eval $m wiki"; $T eval "$src" --ppl wiki --seq-len 2048 --limit 20 --json "$OUT/eval-$m-wiki.json" >> "$OUT/run.log" 2>&1; }
  [ -f "$OUT/eval-$m-tasks.json" ] || { log "eval $m tasks"; $T eval "$src" --tasks all --limit 100 --json "$OUT/eval-$m-tasks.json" >> "$OUT/run.log" 2>&1; }
done
log "done; loadavg $(cat /proc/loadavg)"
