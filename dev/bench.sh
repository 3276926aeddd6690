#!/usr/bin/env bash
# Benchmarks that print numbers (not tests): render, check, cold/no-op/reload apply, destroy of
# the root topology's stack on shifted ports (portOffset) so it does not collide with a running one.
#   bash dev/bench.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-50}
bash dev/setup.sh >/dev/null
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -q -p controller -p backend
B=$PWD/target/release/bssctl
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
  x=$($B render topology.yaml --out "$work/render" -o json | jq -r .millis)
  inproc=$(echo "$inproc + $x" | bc -l)
done
t1=$(ms)
printf 'render (root topology, %d runs): %.2f ms in-process, %.1f ms per command (wall)\n' "$RUNS" "$(echo "$inproc / $RUNS" | bc -l)" "$(echo "($t1 - $t0) / 1000000 / $RUNS" | bc -l)"

t0=$(ms); $B check topology.yaml >/dev/null; t1=$(ms)
echo "check (every file by its real tool, postgres and redis started): $(elapsed "$t0" "$t1") ms"

sed -e 's/name: bss-dev/name: bench/' -e 's/stateDir: .bssctl/stateDir: state\n    portOffset: 30000/' topology.yaml > "$work/t.yaml"
python3 - "$work/t.yaml" <<'PY'
import sys; p=sys.argv[1]; s=open(p).read()
s=s.replace("stateDir: state\\n    portOffset: 30000", "stateDir: state\n    portOffset: 30000")
# portOffset shifts every port, the explicit ones of the root topology included.
open(p,'w').write(s)
PY
t0=$(ms); run apply "$work/t.yaml"; t1=$(ms)
echo "cold apply (full stack, $(grep -c 'health *ok' <<<"$LAST") health-gated components): $(elapsed "$t0" "$t1") ms"
t0=$(ms); run apply "$work/t.yaml"; t1=$(ms)
echo "no-op apply: $(elapsed "$t0" "$t1") ms"
sed -i 's/balance: roundrobin/balance: leastconn/' "$work/t.yaml"
t0=$(ms); run apply "$work/t.yaml"; t1=$(ms)
echo "reload apply (haproxy balance): $(elapsed "$t0" "$t1") ms  [$(grep 'haproxy.*reload' <<<"$LAST" | sed 's/  */ /g')]"
sed -i 's/request: 15s/request: 10s/' "$work/t.yaml"
t0=$(ms); run apply "$work/t.yaml"; t1=$(ms)
echo "reload apply (envoy route timeout, hot restart): $(elapsed "$t0" "$t1") ms  [$(grep 'envoy.*reload' <<<"$LAST" | sed 's/  */ /g')]"
sed -i 's/retention: 15d/retention: 10d/' "$work/t.yaml"
t0=$(ms); run apply "$work/t.yaml"; t1=$(ms)
echo "apply (prometheus retention flag -> restart): $(elapsed "$t0" "$t1") ms"
t0=$(ms); run destroy "$work/t.yaml"; t1=$(ms)
echo "destroy: $(elapsed "$t0" "$t1") ms"
