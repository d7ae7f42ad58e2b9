#!/usr/bin/env bash
# Issue 22, "Sharing the CPU": `transact generate` decode tok/s with the default thread count
# and with RAYON_NUM_THREADS=1, for one or more binaries, alternating, while HOGS processes
# (default: one per core) burn the CPU at normal priority; or with HOGS=0 on a quiet machine.
# Before each run it waits (up to 10 min) until processes other than the hogs use under 0.15
# of a core, so that a third party's work does not land on one side only. Not run in CI.
# Prints one line per run: binary, threads, decode tok/s.
#   bash bench/background-load.sh MODEL ROUNDS BIN [BIN...]
#   e.g. HOGS=2 bash bench/background-load.sh out/half 5 before/transact target/release/transact
set -euo pipefail
MODEL=$1; ROUNDS=$2; shift 2
HOGS=${HOGS:-$(nproc)}
TOKENS=${TOKENS:-128}
THREADS=${THREADS:-"default 1"}
PROMPT="The history of the city begins"
pids=()
# The hogs die with the script, however it ends.
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
for _ in $(seq "$HOGS"); do
  python3 -c 'while True: pass' &
  pids+=($!)
done
sleep 1
quiet() {
  python3 - "${pids[@]}" <<'PY'
import os, sys, time
def busy():  # all CPU time: user nice system irq softirq
    v = list(map(int, open('/proc/stat').readline().split()[1:]))
    return v[0] + v[1] + v[2] + v[5] + v[6]
def hogs():
    t = 0
    for p in sys.argv[1:]:
        s = open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()
        t += int(s[11]) + int(s[12])
    return t
end = time.time() + 600
while time.time() < end:
    a, b = busy(), hogs()
    time.sleep(1)
    if (busy() - a - (hogs() - b)) / os.sysconf('SC_CLK_TCK') < 0.15:
        break
PY
}
for r in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    for t in $THREADS; do
      quiet
      if [ "$t" = default ]; then env=(env -u RAYON_NUM_THREADS); else env=(env RAYON_NUM_THREADS=$t); fi
      tps=$("${env[@]}" "$bin" generate "$MODEL" --prompt "$PROMPT" --max-tokens "$TOKENS" 2>&1 >/dev/null \
        | sed -n 's/.*decode \([0-9.]*\) tok\/s.*/\1/p')
      echo "round $r  $bin  threads=$t  decode $tps tok/s"
    done
  done
done
