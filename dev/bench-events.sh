#!/usr/bin/env bash
# Broker throughput: tansu on its memory engine vs tansu on the `bssctl kafka-store` S3 store
# (kafka.storage: s3). Produces N CloudEvent-sized records (default 50000 x 400 bytes) with kcat into
# a 3-partition topic, then consumes them all; prints records/s and MB/s for each, RUNS times
# (min / median / max). Ports 29400-29403 on 127.0.0.1; everything is removed at the end.
#   bash dev/bench-events.sh [N] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-50000}
RUNS=${2:-3}
TOOLS="${BSSCTL_TOOLS:-$HOME/.cache/bssctl/tools}"
export PATH="$TOOLS/bin:$PATH"
KCAT="$TOOLS/bin/kcat"
[ -x "$KCAT" ] || { echo "no $KCAT: run bash dev/setup.sh" >&2; exit 1; }
command -v tansu >/dev/null || { echo "no tansu: run bash dev/setup.sh" >&2; exit 1; }
cargo build -q -p controller 2>/dev/null || cargo build -p controller
BSSCTL=target/debug/bssctl

work=$(mktemp -d /tmp/bench-events.XXXXXX)
pids=()
# KEEP=1 keeps the work directory (logs, store) for a look afterwards.
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

payload=$(head -c 300 /dev/zero | tr '\0' 'x')
for i in $(seq 1 "$N"); do
  printf '{"specversion":"1.0","id":"%08d","source":"urn:bss:bench","type":"order.created","data":"%s"}\n' "$i" "$payload"
done > "$work/records"
bytes=$(wc -c < "$work/records")

wait_port() { for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; return 1; }

start_broker() { # port storage-url [extra env...]
  local port=$1 url=$2; shift 2
  env RUST_LOG=warn CLUSTER_ID=bench LISTENER_URL="tcp://127.0.0.1:$port" ADVERTISED_LISTENER_URL="tcp://127.0.0.1:$port" \
      STORAGE_ENGINE="$url" "$@" tansu broker > "$work/broker-$port.log" 2>&1 &
  pids+=($!)
  wait_port "$port"
}

"$BSSCTL" kafka-store --root "$work/store" --listen 127.0.0.1:29403 --bucket bench > "$work/store.log" 2>&1 &
pids+=($!)
wait_port 29403
start_broker 29400 memory://bench/
start_broker 29401 s3://bench/ AWS_ENDPOINT=http://127.0.0.1:29403 AWS_ALLOW_HTTP=true AWS_DEFAULT_REGION=us-east-1 AWS_SKIP_SIGNATURE=true

median() { sort -g | awk '{a[NR]=$1} END{print a[1], a[int((NR+1)/2)], a[NR]}'; }
run() { # label port
  local label=$1 port=$2 prod=() cons=()
  for r in $(seq 1 "$RUNS"); do
    local topic="bench-$r"
    tansu topic create "$topic" --partitions 3 --broker "tcp://127.0.0.1:$port" >/dev/null
    local s e
    s=$(date +%s.%N)
    "$KCAT" -b "127.0.0.1:$port" -P -t "$topic" -l -X acks=all -X linger.ms=5 "$work/records"
    e=$(date +%s.%N)
    prod+=("$(echo "$N / ($e - $s)" | bc -l)")
    s=$(date +%s.%N)
    got=$("$KCAT" -b "127.0.0.1:$port" -C -t "$topic" -o beginning -e -q | wc -l)
    e=$(date +%s.%N)
    [ "$got" -eq "$N" ] || { echo "$label: consumed $got of $N" >&2; exit 1; }
    cons+=("$(echo "$N / ($e - $s)" | bc -l)")
  done
  read -r pmin pmed pmax < <(printf '%s\n' "${prod[@]}" | median)
  read -r cmin cmed cmax < <(printf '%s\n' "${cons[@]}" | median)
  printf '%-22s produce records/s min %7.0f  median %7.0f  max %7.0f  (median %5.1f MB/s)\n' "$label" "$pmin" "$pmed" "$pmax" "$(echo "$pmed * $bytes / $N / 1000000" | bc -l)"
  printf '%-22s consume records/s min %7.0f  median %7.0f  max %7.0f  (median %5.1f MB/s)\n' "$label" "$cmin" "$cmed" "$cmax" "$(echo "$cmed * $bytes / $N / 1000000" | bc -l)"
}
echo "records: $N x $((bytes / N)) bytes, 3 partitions, acks=all, linger.ms=5, $RUNS runs each"
run "memory://" 29400
run "s3:// (kafka-store)" 29401
echo "store size after the runs: $(du -sh "$work/store" | cut -f1)"
