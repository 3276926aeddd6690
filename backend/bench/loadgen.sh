#!/usr/bin/env bash
# Benchmark: starts PostgreSQL, Redis and tansu on free ports, the release bss-backend against
# them, and runs `bss-backend loadgen` (open loop) at each rate in RATES; prints the numbers.
#   RATES="250 500 1000" DURATION=20 WARMUP=5 backend/bench/loadgen.sh
# Needs the tools of `bash dev/setup.sh`. Everything started here is stopped on exit.
set -euo pipefail
RATES=${RATES:-"250 500 1000 1500"}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-5}
MAXCONN=${MAXCONN:-16}
HERE=$(cd "$(dirname "$0")/.." && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TOOLS="${BSSCTL_TOOLS:-$HOME/.cache/bssctl/tools}"
export PATH="$PATH:$TOOLS/bin:$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
for t in initdb postgres redis-server tansu; do
  command -v "$t" >/dev/null || { echo "missing tool $t: run \`bash dev/setup.sh\`" >&2; exit 2; }
done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-backend}
(cd "$ROOT" && cargo build --release -q -p backend)
BIN="$CARGO_TARGET_DIR/release/bss-backend"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

WORK=$(mktemp -d /tmp/bss-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

AS_PG=()
if [ "$(id -u)" = 0 ]; then
  AS_PG=(setpriv --reuid="$(id -u postgres)" --regid="$(id -g postgres)" --clear-groups)
  chown postgres:postgres "$WORK"
fi
PGPORT=$(free_port); RPORT=$(free_port); KPORT=$(free_port); APORT=$(free_port)
"${AS_PG[@]}" initdb -D "$WORK/pg" -U postgres -A trust -E UTF8 --no-sync >/dev/null
"${AS_PG[@]}" postgres -D "$WORK/pg" -p "$PGPORT" -k "$WORK" -c listen_addresses=127.0.0.1 \
  -c synchronous_commit=off -c shared_buffers=256MB -c max_connections=200 >"$WORK/pg.log" 2>&1 &
PIDS+=($!)
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
PIDS+=($!)
tansu broker --listener-url "tcp://127.0.0.1:$KPORT" --advertised-listener-url "tcp://127.0.0.1:$KPORT" \
  --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1 &
PIDS+=($!)
wait_port "$PGPORT"; wait_port "$RPORT"; wait_port "$KPORT"
sleep 1
psql -h 127.0.0.1 -p "$PGPORT" -U postgres -qc "CREATE ROLE bss_app LOGIN PASSWORD 'bench'" >/dev/null
psql -h 127.0.0.1 -p "$PGPORT" -U postgres -qc "CREATE DATABASE bss OWNER bss_app" >/dev/null
mkdir -p "$WORK/secrets"
printf 'bench' >"$WORK/secrets/pg"; printf 'bench-key\n' >"$WORK/secrets/keys"
cat >"$WORK/backend.yaml" <<YAML
listen: 127.0.0.1:$APORT
database:
  writeUrl: postgres://bss_app@127.0.0.1:$PGPORT/bss
  readUrl: postgres://bss_app@127.0.0.1:$PGPORT/bss
  passwordFile: $WORK/secrets/pg
  maxConnections: $MAXCONN
redis:
  url: redis://127.0.0.1:$RPORT/0
kafka:
  brokers: 127.0.0.1:$KPORT
  topicPrefix: bss
auth:
  apiKeysFile: $WORK/secrets/keys
cache:
  ttlSeconds: 300
outbox:
  pollIntervalMs: 20
  batchSize: 1000
streams:
  groupPrefix: bss
YAML
"$BIN" migrate --config "$WORK/backend.yaml"
BSS_LOG=warn "$BIN" serve --config "$WORK/backend.yaml" 2>"$WORK/backend.log" &
PIDS+=($!)
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$APORT/health/ready" >/dev/null && break; sleep 0.2
done
curl -fs "http://127.0.0.1:$APORT/health/ready" >/dev/null || { echo "backend not ready" >&2; cat "$WORK/backend.log" >&2; exit 1; }
echo "stack: postgres :$PGPORT (synchronous_commit=off), redis :$RPORT, tansu :$KPORT, backend :$APORT (pool $MAXCONN); $(nproc) cores"
printf '%8s %10s %10s %8s %8s %8s %9s %8s\n' rate achieved writes/s p50_ms p95_ms p99_ms max_ms errors%
for r in $RATES; do
  out=$("$BIN" loadgen --config "$WORK/backend.yaml" --rate "$r" --duration "$DURATION" --warmup "$WARMUP" --json)
  echo "$out" >"$WORK/loadgen-$r.json"
  python3 - "$r" "$WORK/loadgen-$r.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[2]))
l = d["latency_ms"]
print(f'{sys.argv[1]:>8} {d["achieved_rate"]:>10.1f} {d["writes_per_second"]:>10.1f} {l["p50"]:>8.2f} {l["p95"]:>8.2f} {l["p99"]:>8.2f} {l["max"]:>9.1f} {100*d["error_rate"]:>8.3f}')
if d["errors_by_kind"]:
    print("         errors:", d["errors_by_kind"])
PY
done
pending=$(psql -h 127.0.0.1 -p "$PGPORT" -U postgres -d bss -tAc "SELECT count(*) FROM outbox_pending")
total=$(psql -h 127.0.0.1 -p "$PGPORT" -U postgres -d bss -tAc "SELECT count(*) FROM outbox")
echo "outbox: $total events written, $pending not yet published at the end"
