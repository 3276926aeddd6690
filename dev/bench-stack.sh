#!/usr/bin/env bash
# Load benchmark with the WHOLE stack running under bssctl (PostgreSQL primary + 2 streaming
# replicas behind HAProxy, Redis, tansu, backend, both stream processors, Envoy, exporters,
# Prometheus, Alertmanager): `bss-backend loadgen` (open loop, the seeds' mix) straight at the
# backend and through Envoy. Envoy's local rate limit is lifted for the measurement (the seeds'
# 100-token budget would answer 429 to nearly everything). Prints one line per run.
#   RATES="500 1000 1500" DURATION=20 WARMUP=5 bash dev/bench-stack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RATES=${RATES:-"500 1000 1500 2000"}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-5}
bash dev/setup.sh >/dev/null
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -q -p controller -p backend
B=$PWD/target/release/bssctl
BE=$PWD/target/release/bss-backend
work=$(mktemp -d /tmp/bssctl-loadbench-XXXXXX); chmod 755 "$work"
trap '$B destroy "$work/t.yaml" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
OFF=20000
cat > "$work/t.yaml" <<YAML
apiVersion: bssctl.io/v1alpha1
kind: Topology
metadata: {name: loadbench}
spec:
  runtime: {portOffset: $OFF, stateDir: state}
  postgres: {replicas: 2}
  haproxy: {}
  redis: {}
  kafka: {}
  backend: {maxDbConnections: 16}
  streamProcessors: {customerAnalytics: {}, orderProcessor: {}}
  envoy:
    rateLimit: {enabled: false}
    circuitBreakers: {maxConnections: 1024, maxPendingRequests: 1024, maxRequests: 1024, maxRetries: 3}
  exporters: {node: {}, postgres: {}, redis: {}}
  prometheus: {}
  alerts: {}
  alertmanager: {}
YAML
$B apply "$work/t.yaml" >/dev/null 2>&1 || { $B apply "$work/t.yaml"; exit 1; }
root="$work/state/loadbench"
key=$(cat "$root/secrets/backend-api-key")
cfg="$root/config/backend/backend.yaml"
printf '%-7s %-6s %9s %9s %8s %8s %8s %8s %7s\n' path rate achieved events/s p50ms p95ms p99ms maxms errors
for r in $RATES; do
  for path in direct envoy; do
    if [ "$path" = direct ]; then url="http://127.0.0.1:$((8080 + OFF))"; else url="http://127.0.0.1:$((15006 + OFF))"; fi
    out=$("$BE" loadgen --config "$cfg" --target "$url" --api-key "$key" --rate "$r" --duration "$DURATION" --warmup "$WARMUP" --json 2>/dev/null)
    python3 - "$path" "$r" "$out" <<'PY'
import json, sys
path, rate, raw = sys.argv[1], sys.argv[2], sys.argv[3]
d = json.loads(raw)
def g(*ks):
    for k in ks:
        v = d
        ok = True
        for part in k.split('.'):
            if isinstance(v, dict) and part in v: v = v[part]
            else: ok = False; break
        if ok: return v
    return None
ach = g('achieved_rate', 'achievedRate', 'throughput')
ev = g('writes_per_second')  # every write emits one event
lat = g('latency_ms', 'latencyMs', 'latency') or {}
errs = g('errors')
rate_err = g('error_rate') or 0.0
if isinstance(errs, dict): errs = sum(errs.values())
def f(x): return '-' if x is None else (f"{x:.2f}" if isinstance(x, float) else str(x))
print(f"{path:<7} {rate:<6} {f(ach):>9} {f(ev):>9} {f(lat.get('p50')):>8} {f(lat.get('p95')):>8} {f(lat.get('p99')):>8} {f(lat.get('max')):>8} {f(errs):>7} ({rate_err*100:.2f}%)")
PY
  done
done
