#!/usr/bin/env bash
# Benchmarks that print numbers (not tests): render, check, cold/no-op/reload apply, destroy of
# the root topology's stack on shifted ports (portOffset) so it does not collide with a running one.
#   bash dev/bench.sh [RUNS]
# dev/bench-compare.sh runs it for two builds side by side: BSSCTL=<binary> uses that build (no
# cargo build), BENCH_TOPOLOGY=<file> is applied instead of the root topology shifted by 10000
# (it must use free ports and a state dir of its own), BENCH_KV=<file> receives `figure=ms` lines,
# BENCH_STEPS=<file> the cold apply's step events (JSON lines, `apply -o json`).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-50}
if [ -z "${BSSCTL:-}" ]; then
  bash dev/setup.sh >/dev/null
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  cargo build --release -q -p controller -p backend
fi
B=${BSSCTL:-$PWD/target/release/bssctl}
kv() { [ -z "${BENCH_KV:-}" ] || echo "$1=$2" >> "$BENCH_KV"; }
work=$(mktemp -d /tmp/bssctl-bench-XXXXXX)
# PostgreSQL runs as its own user and must be able to enter the state directory.
chmod 755 "$work"
trap '$B destroy "$work/t.yaml" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
ms() { date +%s%N; }
# Runs bssctl; on failure shows its output and stops.
run() { local out; if ! out=$("$B" "$@" 2>&1); then echo "bssctl $* failed:"; echo "$out"; exit 1; fi; LAST="$out"; }
elapsed() { echo "scale=1; ($2 - $1) / 1000000" | bc; }

# render: in-process time as bssctl reports it, and wall time of the whole command
inproc=0; t0=$(ms)
for _ in $(seq "$RUNS"); do
  x=$($B render "${BENCH_TOPOLOGY:-topology.yaml}" --out "$work/render" -o json | jq -r .millis)
  inproc=$(echo "$inproc + $x" | bc -l)
done
t1=$(ms)
printf 'render (root topology, %d runs): %.2f ms in-process, %.1f ms per command (wall)\n' "$RUNS" "$(echo "$inproc / $RUNS" | bc -l)" "$(echo "($t1 - $t0) / 1000000 / $RUNS" | bc -l)"
kv render_inproc "$(echo "$inproc / $RUNS" | bc -l)"; kv render_wall "$(echo "($t1 - $t0) / 1000000 / $RUNS" | bc -l)"

t0=$(ms); $B check "${BENCH_TOPOLOGY:-topology.yaml}" >/dev/null; t1=$(ms)
echo "check (every file by its real tool, postgres and redis started): $(elapsed "$t0" "$t1") ms"; kv check "$(elapsed "$t0" "$t1")"

if [ -n "${BENCH_TOPOLOGY:-}" ]; then cp "$BENCH_TOPOLOGY" "$work/t.yaml"; else
sed -e 's/name: bss-dev/name: bench/' -e 's/stateDir: .bssctl/stateDir: state\n    portOffset: 10000/' topology.yaml > "$work/t.yaml"
python3 - "$work/t.yaml" <<'PY'
import sys; p=sys.argv[1]; s=open(p).read()
s=s.replace("stateDir: state\\n    portOffset: 10000", "stateDir: state\n    portOffset: 10000")
# portOffset shifts every port, the explicit ones of the root topology included.
open(p,'w').write(s)
PY
fi
if [ -n "${BENCH_STEPS:-}" ]; then
  # The same apply, with its events as JSON lines (one per step start and end) kept for a per-step
  # comparison; the human output costs the same few lines either way.
  t0=$(ms); run apply "$work/t.yaml" -o json; t1=$(ms)
  grep '^{' <<<"$LAST" >> "$BENCH_STEPS" || true
  gated=$(grep '^{' <<<"$LAST" | jq -r 'select(.step == "health" and .status == "ok") | .component' | wc -l)
else
  t0=$(ms); run apply "$work/t.yaml"; t1=$(ms)
  gated=$(grep -c 'health *ok' <<<"$LAST")
fi
echo "cold apply (full stack, $gated health-gated components): $(elapsed "$t0" "$t1") ms"; kv cold_apply "$(elapsed "$t0" "$t1")"
t0=$(ms); run apply "$work/t.yaml"; t1=$(ms)
echo "no-op apply: $(elapsed "$t0" "$t1") ms"; kv noop_apply "$(elapsed "$t0" "$t1")"
sed -i 's/balance: roundrobin/balance: leastconn/' "$work/t.yaml"
t0=$(ms); run apply "$work/t.yaml"; t1=$(ms)
kv haproxy_reload "$(elapsed "$t0" "$t1")"; echo "reload apply (haproxy balance): $(elapsed "$t0" "$t1") ms  [$(grep 'haproxy.*reload' <<<"$LAST" | sed 's/  */ /g')]"
sed -i 's/request: 15s/request: 10s/' "$work/t.yaml"
t0=$(ms); run apply "$work/t.yaml"; t1=$(ms)
kv envoy_reload "$(elapsed "$t0" "$t1")"; echo "reload apply (envoy route timeout, hot restart): $(elapsed "$t0" "$t1") ms  [$(grep 'envoy.*reload' <<<"$LAST" | sed 's/  */ /g')]"
sed -i 's/retention: 15d/retention: 10d/' "$work/t.yaml"
t0=$(ms); run apply "$work/t.yaml"; t1=$(ms)
echo "apply (prometheus retention flag -> restart): $(elapsed "$t0" "$t1") ms"; kv prometheus_restart "$(elapsed "$t0" "$t1")"
t0=$(ms); run destroy "$work/t.yaml"; t1=$(ms)
echo "destroy: $(elapsed "$t0" "$t1") ms"; kv destroy "$(elapsed "$t0" "$t1")"
