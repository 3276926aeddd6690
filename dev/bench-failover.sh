#!/usr/bin/env bash
# Failover benchmark: runs chaos scenarios N times per replication mode and prints, per scenario
# and mode, the write gap (min / median / max, seconds), the lost acknowledged writes (total and
# worst run) and the unpaced writer's commit rate (median of the runs' medians, commits/s).
#
#   bash dev/bench-failover.sh                     5 runs, node-loss and postmaster-kill, async + sync
#   RUNS=7 MODES="sync" SCENARIOS="node_loss_of_the_primary" bash dev/bench-failover.sh
#
# Each run is one test of controller/tests/chaos.rs (a fresh three-member stack with the root
# topology's PostgreSQL and HAProxy settings, destroyed afterwards); the raw `CHAOS` lines are
# kept in $OUT (default /tmp/bench-failover.log).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${BSSCTL_TOOLS:-$HOME/.cache/bssctl/tools}/bin:$PATH"
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
RUNS=${RUNS:-5}
MODES=${MODES:-"async sync"}
SCENARIOS=${SCENARIOS:-"node_loss_of_the_primary postmaster_only_kill"}
OUT=${OUT:-/tmp/bench-failover.log}
[ "$RUNS" -ge 1 ] || { echo "RUNS must be at least 1" >&2; exit 2; }

cargo test -q -p controller --test chaos --no-run 2>&1 | tail -n 3 >&2
: > "$OUT"
for mode in $MODES; do
  for sc in $SCENARIOS; do
    for i in $(seq 1 "$RUNS"); do
      echo "== $sc mode=$mode run $i/$RUNS" >&2
      if ! BSSCTL_CHAOS_MODE=$mode cargo test -q -p controller --test chaos -- \
          --exact "$sc" --nocapture --test-threads=1 > /tmp/bench-failover-run.log 2>&1; then
        keep="/tmp/bench-failover-failed-$sc-$mode-$i.log"
        cp /tmp/bench-failover-run.log "$keep"
        echo "run failed (log: $keep):" >&2
        grep -E "panicked|CHAOS" -A 3 "$keep" | head -n 8 >&2 || true
        echo "FAILED test=$sc mode=$mode run=$i" >> "$OUT"
      fi
      grep '^CHAOS ' /tmp/bench-failover-run.log >> "$OUT" || true
    done
  done
done

python3 - "$OUT" <<'EOF'
import re, sys, statistics
rows = {}
failed = {}
for line in open(sys.argv[1]):
    kv = dict(re.findall(r'(\w+)=(\S+)', line))
    if line.startswith('FAILED'):
        k = (kv.get('test'), kv.get('mode'))
        failed[k] = failed.get(k, 0) + 1
        continue
    key = (kv.get('scenario'), kv.get('mode'))
    rows.setdefault(key, []).append(kv)
print(f"{'scenario':<16} {'mode':<6} {'runs':>4} {'gap min':>8} {'median':>8} {'max':>8} {'lost sum':>8} {'lost max':>8} {'writes/s':>9}")
for (sc, mode), v in sorted(rows.items()):
    gaps = [float(r['gap_s']) for r in v]
    lost = [int(r['lost']) for r in v]
    rate = statistics.median(float(r['rate_per_s']) for r in v)
    print(f"{sc:<16} {mode:<6} {len(v):>4} {min(gaps):>8.3f} {statistics.median(gaps):>8.3f} {max(gaps):>8.3f} {sum(lost):>8} {max(lost):>8} {rate:>9.0f}")
for (test, mode), n in sorted(failed.items()):
    print(f"failed runs (not counted above): {test} mode={mode}: {n}")
EOF
