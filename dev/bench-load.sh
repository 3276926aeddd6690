#!/usr/bin/env bash
# The four-figure load benchmark, on ONE bssctl-applied copy of the root topology (whole
# stack: PostgreSQL primary + 2 replicas behind HAProxy, Redis, tansu, backend, both stream
# processors, Envoy, exporters, Prometheus, Alertmanager), in one run:
#   (a) pgbench, raw single-row INSERT              -> the database's limit
#   (b) pgbench, the backend's own write statements -> the limit of the write shape
#   (c) bss-backend loadgen straight at the backend (open loop, the seeds' mix)
#   (d) the same through Envoy
# Each is stepped up in rate until p99 >= 100 ms or any error; the knee is the highest rate that
# passed. All pgbench traffic goes through the HAProxy write port, as the backend's does.
# Prints the four knees, the ratios, and the CPU split per component at the (c) knee.
#   STEP_S=10 bash dev/bench-load.sh          # RAW_RATES, SHAPE_RATES, API_RATES override steps
#   PHASES="b c" VERBOSE=1 NO_BUILD=1 CARGO_TARGET_DIR=... bash dev/bench-load.sh
#   MAX_DB=8                           # the backend's pool size in the copy (maxDbConnections)
#   LOADGEN_BIN=/path/to/bss-backend   # the measuring client (default: the measured backend's
#                                      # binary); an A/B of two backends keeps one client
#   BARE=1                             # an upper bound: the copy keeps only the tiers a request
#                                      # crosses: the primary (no replicas, async), Redis, the
#                                      # brokers, the backend and Envoy; no HAProxy, processors
#                                      # or monitoring
# Each loadgen step's CPU split also gives core-ms per request (the whole machine's busy CPU
# over the requests sent in the step, warm-up included), in all and per component.
# Envoy's seeds' rate limit (100 tokens) and circuit breakers (100) are lifted in the copy:
# they would otherwise answer 429/503 to nearly everything above 100 req/s.
set -euo pipefail
cd "$(dirname "$0")/.."
STEP_S=${STEP_S:-10}
WARM_S=${WARM_S:-3}
# Every port of the copy is shifted by OFF; 13000 keeps the highest (Envoy's 15006 + OFF) below
# the ephemeral range (32768-60999), where a client socket in TIME-WAIT fails bssctl's preflight.
OFF=${OFF:-13000}
RAW_RATES=${RAW_RATES:-"3000 5000 7000 9000 11000"}
SHAPE_RATES=${SHAPE_RATES:-"1000 1500 2000 2500 3000 3500"}
API_RATES=${API_RATES:-"800 1000 1250 1500 1750 2000 2500"}
PHASES=${PHASES:-"a b c d"}     # which of (a) (b) (c) (d) to run
export PATH="$HOME/.cache/bssctl/tools/bin:$HOME/.cargo/bin:$PATH"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
export PATH="$PATH:$PGBIN"
for t in pgbench psql python3; do
  command -v "$t" >/dev/null || { echo "missing tool $t: run \`bash dev/setup.sh\`" >&2; exit 2; }
done
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
# NO_BUILD=1 uses the release binaries already in $TARGET (a build cannot run inside /work/bin/quiet).
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release -q -p backend $([ -n "${BSSCTL:-}" ] || echo -p controller)
# BSSCTL: another bssctl binary (it only applies, observes and destroys the stack; its agent's
# probes are counted under "other").
B=${BSSCTL:-$TARGET/release/bssctl}
BE=$TARGET/release/bss-backend
export BSS_BACKEND_BIN=$BE   # the stack runs the backend built here, whatever bssctl finds first
LG=${LOADGEN_BIN:-$BE}
work=$(mktemp -d /tmp/bssctl-bench-load-XXXXXX); chmod 755 "$work"
topo="$work/topology.yaml"
cleanup() { "$B" destroy "$topo" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
BARE=${BARE:-0}
python3 - "$topo" "$OFF" "$work/state" "${MAX_DB:-}" "$BARE" <<'PY'
import sys, yaml
out, off, state, max_db, bare = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] == "1"
t = yaml.safe_load(open("topology.yaml"))
t["metadata"]["name"] = "benchload"
t["spec"]["runtime"].update({"portOffset": off, "stateDir": state})
sp = t["spec"]
# bssctl shifts explicit ports by portOffset like the defaults; the explicit ones are dropped
# anyway so the copy uses the defaults (shifted).
for sec, keys in {"postgres": ["port"], "haproxy": ["writePort", "readPort"], "redis": ["port"],
                  "backend": ["port"], "envoy": ["adminPort"],
                  "prometheus": ["port"], "alertmanager": ["port"]}.items():
    for k in keys:
        sp.get(sec, {}).pop(k, None)
sp.get("haproxy", {}).get("stats", {}).pop("port", None)
for e in (sp.get("exporters") or {}).values():
    if isinstance(e, dict): e.pop("port", None)
# The brokers keep the topology's own port (the default 9092.. would meet Alertmanager's 9093)
# and Envoy its listener ports: bssctl shifts them (adding the offset here too shifted them twice,
# into the ephemeral range).
# MAX_DB: the backend's database pool size in the copy (the topology's maxDbConnections).
if max_db:
    sp["backend"]["maxDbConnections"] = int(max_db)
env = t["spec"]["envoy"]
env["rateLimit"] = {"enabled": False}
env["circuitBreakers"] = {"maxConnections": 4096, "maxPendingRequests": 4096, "maxRequests": 4096, "maxRetries": 3}
# BARE: every tier a request does not cross is left out, so whatever this copy's knees are, the
# whole topology's (the same work plus more on the same cores) cannot be higher.
if bare:
    sp["postgres"]["replicas"] = 0
    sp["postgres"]["replication"] = {"mode": "async", "slots": False}
    sp["postgres"].pop("failover", None)
    for sec in ("haproxy", "streamProcessors", "exporters", "prometheus", "alerts", "alertmanager"):
        sp.pop(sec, None)
yaml.safe_dump(t, open(out, "w"), sort_keys=False)
PY
# The stack's processes must not inherit this script's open files: `flock /work/stack.lock`
# passes its locked descriptor down, and a component holding it would keep the lock after the
# script (and the `destroy` that needs the lock would wait for it forever).
close_inherited() { local fd; for fd in $(ls /proc/$BASHPID/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null; done; return 0; }
( close_inherited; exec "$B" apply "$topo" ) >"$work/apply.log" 2>&1 || { cat "$work/apply.log"; exit 1; }
root="$work/state/benchload"
key=$(cat "$root/secrets/backend-api-key")
cfg="$root/config/backend/backend.yaml"
export PGPASSWORD; PGPASSWORD=$(cat "$root/secrets/postgres-app-password")
# pgbench goes through HAProxy's write port, as the backend does; without HAProxy (BARE) to the primary.
PGW=(-h 127.0.0.1 -p $((5436 + OFF)) -U bss_app -d bss)
[ "$BARE" = 1 ] && PGW=(-h 127.0.0.1 -p $((5432 + OFF)) -U bss_app -d bss)
direct="http://$(sed -n 's/^listen: *//p' "$cfg")"
# Envoy's ingress port as rendered (whether bssctl shifts explicit listener ports changed once:
# the bench then measured a closed port and reported "loadgen failed").
envoy="http://127.0.0.1:$(python3 -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"])' "$root/config/envoy/envoy.yaml")"
for _ in $(seq 1 120); do curl -fs "$direct/health/ready" >/dev/null 2>&1 && curl -fs "$envoy/health" >/dev/null 2>&1 && break; sleep 0.5; done
curl -fs "$direct/health/ready" >/dev/null || { echo "backend not ready at $direct" >&2; tail -20 "$root/logs/"*backend* >&2 || true; exit 1; }
echo "stack: $([ "$BARE" = 1 ] && echo "BARE copy (primary, Redis, brokers, backend, Envoy)" || echo "root topology"), portOffset $OFF, $(nproc) cores; load of other agents on this machine: $(cut -d' ' -f1-3 /proc/loadavg)"

# CPU per component: user+system ticks of every process, named from its command line. The
# clients (loadgen, pgbench) exit between two snapshots, so they are run under client_cpu, which
# appends their user+system ticks (getrusage of the child) to $work/client-cpu when they exit.
client_cpu() { # label cmd...
  local label=$1; shift
  set -- "$label" "$work/client-cpu" "$@"
  python3 -c 'import os, resource, subprocess, sys
r = subprocess.run(sys.argv[3:]).returncode
u = resource.getrusage(resource.RUSAGE_CHILDREN)
t = round((u.ru_utime + u.ru_stime) * os.sysconf(os.sysconf_names["SC_CLK_TCK"]))
open(sys.argv[2], "a").write(sys.argv[1] + " " + str(t) + "\n")
sys.exit(r)' "$@"
}
cpu_snap() { python3 - "$1" "$work/client-cpu" <<'PY'
import json, os, sys
# Components named from each process's command line (bssctl status gives no pids to a bssctl
# other than the one built beside this script, and a cmdline names a process in any case).
def name(comm, cmd):
    a = cmd.split("\0")
    exe = os.path.basename(a[0]) if a else comm
    if comm == "postgres" or exe == "postgres" or cmd.startswith("postgres:"):
        # children: "postgres: postgres-N: ..."; the postmaster: "-D .../data/postgres-N"
        for part in cmd.replace("\0", " ").split():
            part = part.rstrip(":").rsplit("/", 1)[-1]
            if part.startswith("postgres-") and part[9:].isdigit():
                if part != "postgres-0":
                    return "postgres replicas"
                # The primary's WAL senders apart: what streaming to the replicas costs it.
                return "postgres walsenders" if "walsender" in cmd else "postgres primary"
        return "postgres primary"
    if exe == "bss-backend" or comm.startswith("bss-backend"):
        if "loadgen" in a: return "loadgen"
        if "stream" in a: return "stream processors"
        return "backend"
    if exe == "bssctl" or comm == "bssctl":
        return "kafka-store" if "kafka-store" in a else "bssctl agent"
    for k in ("haproxy", "envoy", "redis-server", "tansu", "pgbench"):
        if comm.startswith(k[:15]) or exe.startswith(k):
            return k.replace("redis-server", "redis")
    if "prometheus" in exe or "alertmanager" in exe or "exporter" in exe:
        return "monitoring"
    return "other"
ticks = {}
for p in os.listdir("/proc"):
    if not p.isdigit(): continue
    try:
        s = open(f"/proc/{p}/stat").read()
        cmd = open(f"/proc/{p}/cmdline").read()
    except OSError:
        continue
    rest = s[s.rindex(")") + 2:].split()
    ut, stt = int(rest[11]), int(rest[12])
    comm = s[s.index("(") + 1:s.rindex(")")]
    n = name(comm, cmd)
    if n in ("loadgen", "pgbench"):
        continue  # counted when they exit (client_cpu), not while running
    ticks[n] = ticks.get(n, 0) + ut + stt
try:
    for line in open(sys.argv[2]):
        k, v = line.split()
        ticks[k] = ticks.get(k, 0) + int(v)
except OSError:
    pass
total = sum(int(x) for x in open("/proc/stat").readline().split()[1:8])
json.dump({"ticks": ticks, "total": total}, open(sys.argv[1], "w"))
PY
}
cpu_split() { # before.json after.json [requests sent in between]
python3 - "$1" "$2" "${3:-0}" <<'PY'
import json, os, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
reqs = float(sys.argv[3])
ms_per_tick = 1000 / os.sysconf(os.sysconf_names["SC_CLK_TCK"])
d = {k: b["ticks"].get(k, 0) - a["ticks"].get(k, 0) for k in set(a["ticks"]) | set(b["ticks"])}
busy = sum(v for v in d.values() if v > 0) or 1
wall = b["total"] - a["total"] or 1
groups = {}
for k, v in d.items():
    groups[k] = groups.get(k, 0) + max(v, 0)
print("  CPU split (share of busy CPU): " + ", ".join(f"{k} {100*v/busy:.1f} %" for k, v in sorted(groups.items(), key=lambda x: -x[1]) if v > 0))
print(f"  machine busy: {100*busy/wall:.0f} % of {__import__('os').cpu_count()} cores")
if reqs > 0:
    per = lambda v: v * ms_per_tick / reqs
    stack = sum(v for k, v in groups.items() if k != "loadgen")
    print(f"  CPU per request: {per(busy):.3f} core-ms in all, {per(stack):.3f} without the loadgen ({reqs:.0f} requests): "
          + ", ".join(f"{k} {per(v):.3f}" for k, v in sorted(groups.items(), key=lambda x: -x[1]) if v > 0))
PY
}

# Seed: a few hundred entities through the API for the pgbench scripts to refer to, then
# SEED_ORDERS orders (one item each) in SQL, so that the status-change script's 16 clients each
# update a slice of their own (a few hundred orders shared by 16 clients measured row-lock waits,
# not the shape). The seed session carries bss.origin=api like the backend's, so it fires no
# cache notification (rows nobody has read yet).
SEED_ORDERS=${SEED_ORDERS:-32000}
"$LG" loadgen --config "$cfg" --target "$direct" --api-key "$key" --rate 200 --duration 5 --warmup 1 --json >/dev/null
PGOPTIONS="-c bss.origin=api" psql "${PGW[@]}" -qAt -v ON_ERROR_STOP=1 -v seed_orders="$SEED_ORDERS" <<'SQL'
CREATE TABLE IF NOT EXISTS bench_raw (id bigserial PRIMARY KEY, v text, t timestamptz DEFAULT now());
-- The pgbench write shape lists its outbox rows here, as the handlers list theirs in outbox_pending.
CREATE TABLE IF NOT EXISTS bench_pending (seq bigint PRIMARY KEY);
DROP TABLE IF EXISTS bench_customers, bench_products, bench_orders;
CREATE TABLE bench_customers AS SELECT row_number() OVER () AS n, id FROM customers WHERE status = 'ACTIVE';
CREATE TABLE bench_products AS SELECT row_number() OVER () AS n, id FROM products WHERE status = 'ACTIVE';
CREATE UNIQUE INDEX ON bench_customers (n); CREATE UNIQUE INDEX ON bench_products (n);
WITH o AS (
  INSERT INTO orders (id, order_number, customer_id, order_type, priority, status, currency, subtotal, tax_amount, total_amount, created_at, updated_at, version)
  SELECT gen_random_uuid(), 'ORD-PGB' || lpad(g::text, 9, '0'), c.id, 'NEW', 'NORMAL', 'PENDING', 'EUR', 29.99, 5.70, 35.69, now(), now(), 1
  FROM generate_series(1, :seed_orders) g
  JOIN bench_customers c ON c.n = 1 + g % (SELECT count(*) FROM bench_customers)
  RETURNING id)
INSERT INTO order_items (id, order_id, line_no, product_id, quantity, unit_price, tax_rate, line_total)
SELECT gen_random_uuid(), o.id, 0, (SELECT id FROM bench_products WHERE n = 1), 1, 29.99, 0.19, 29.99 FROM o;
CREATE TABLE bench_orders AS SELECT row_number() OVER () AS n, id FROM orders;
ANALYZE orders; ANALYZE order_items;
CREATE UNIQUE INDEX ON bench_orders (n);
SQL
ncust=$(psql "${PGW[@]}" -qAt -c "SELECT count(*) FROM bench_customers")
nprod=$(psql "${PGW[@]}" -qAt -c "SELECT count(*) FROM bench_products")
nord=$(psql "${PGW[@]}" -qAt -c "SELECT count(*) FROM bench_orders")
S=backend/bench/pgbench

# One pgbench step: prints "tps ok|FAIL detail".
pgb_step() { # rate scripts...
  local rate=$1; shift
  # bss.origin=api: the backend's sessions carry it, so the triggers send no pg_notify for them
  # (migration 0002); pgbench must run the same statements the same way.
  PGOPTIONS="-c bss.origin=api" client_cpu pgbench pgbench "${PGW[@]}" -n -c 16 -j 2 -R "$rate" -T "$STEP_S" -L 100 \
    -D ncust="$ncust" -D nprod="$nprod" -D nord="$nord" -D nclients=16 "$@" >"$work/pgbench.out" 2>&1 || true
  python3 - "$work/pgbench.out" <<'PY'
import re, sys
o = open(sys.argv[1], errors="replace").read()
def num(p, d=0.0):
    m = re.search(p, o); return float(m.group(1)) if m else d
done = num(r"actually processed: (\d+)")
failed = num(r"number of failed transactions: (\d+)")
skipped = num(r"transactions skipped: (\d+)")
late = num(r"above the [\d.]+ ms latency limit: (\d+)")
tps = num(r"tps = ([\d.]+)")
ok = done > 0 and failed == 0 and (skipped + late) <= 0.01 * (done + skipped)
print(f"{tps:.0f} {'ok' if ok else 'FAIL'} late+skipped {100*(skipped+late)/max(done+skipped,1):.2f}% failed {failed:.0f}" + ("" if done else " | " + o.strip().splitlines()[-1][:200] if o.strip() else ""))
PY
}
knee_pgbench() { # label rates scripts...
  local label=$1 rates=$2; shift 2
  local knee=0 r line
  for r in $rates; do
    line=$(pgb_step "$r" "$@")
    echo "  $label rate $r: tps ${line}" >&2
    [[ "$line" == *" ok "* ]] || break
    knee=${line%% *}
  done
  echo "$knee"
}

raw=0; shape=0
if [[ " $PHASES " == *" a "* ]]; then
  echo "(a) pgbench raw single-row INSERT"
  raw=$(knee_pgbench raw "$RAW_RATES" -f "$S/raw_insert.sql")
fi
if [[ " $PHASES " == *" b "* ]]; then
  echo "(b) pgbench of the backend's write statements (mix of the seeds' writes)"
  cpu_snap "$work/cpu-a.json"
  shape=$(knee_pgbench shape "$SHAPE_RATES" -f "$S/customer.sql@10" -f "$S/order.sql@15" -f "$S/status.sql@24" -f "$S/invoice.sql@8" -f "$S/payment.sql@8")
  cpu_snap "$work/cpu-b.json"
  echo "  over the (b) steps:"; cpu_split "$work/cpu-a.json" "$work/cpu-b.json"
fi

# Before each loadgen step the previous step's backlog is let drain (the outbox relay, at most
# 30 s), so a step that failed does not leave its catching-up work to the next one.
drain() {
  local n
  for _ in $(seq 1 60); do
    n=$(psql "${PGW[@]}" -qAt -c "SELECT count(*) FROM outbox_pending" 2>/dev/null || echo 1)
    [ "$n" = 0 ] && return 0
    sleep 0.5
  done
  echo "  (outbox still holds $n unsent rows after 30 s)" >&2
}
# The primary's WAL position; WAL bytes per request are what the replicas receive and replay.
wal_lsn() { psql "${PGW[@]}" -qAt -c "SELECT pg_current_wal_lsn()" 2>/dev/null || echo 0/0; }
wal_per() { # lsn-before lsn-after requests
  psql "${PGW[@]}" -qAt -c "SELECT round(pg_wal_lsn_diff('$2', '$1') / greatest($3, 1))" 2>/dev/null || echo "?"
}
# One loadgen step: prints "achieved writes/s ok|FAIL p99 errors".
lg_step() { # url rate
  local j
  j=$(client_cpu loadgen "$LG" loadgen --config "$cfg" --target "$1" --api-key "$key" --rate "$2" --duration "$STEP_S" --warmup "$WARM_S" --json 2>"$work/loadgen.err" || echo '{}')
  python3 - "$j" "$work/loadgen.err" <<'PY'
import json, sys
d = json.loads(sys.argv[1] or "{}")
if not d:
    err = open(sys.argv[2], errors="replace").read().strip().splitlines()
    print("0 0 FAIL loadgen failed: " + (err[-1][:300] if err else "no output")); sys.exit()
l = d["latency_ms"]
ok = d["errors"] == 0 and l["p99"] < 100
# Requests sent over the whole run (warm-up included: the CPU snapshots bracket all of it).
sent = d["scheduled"] * (d["duration_s"] + d["warmup_s"]) / d["duration_s"] if d["duration_s"] else 0
print(f'{d["achieved_rate"]:.0f} {d["writes_per_second"]:.0f} {"ok" if ok else "FAIL"} p50 {l["p50"]:.1f} p99 {l["p99"]:.1f} max {l["max"]:.0f} ms errors {d["errors"]} {d["errors_by_kind"] if d["errors"] else ""} sent {sent:.0f}')
PY
}
# Steps the loadgen at one target until a step fails; prints every step and keeps the last
# passing one's rate and writes/s in the variables named $3 and $4, its CPU snapshots and
# request count in $work/$5-{a,b}.json and $work/$5-sent.
# Each step's CPU split goes to the log with the step (the one at each knee is printed at the end).
api_phase() { # label url knee-var writes-var knee-file
  local r line sent lsn_a lsn_b
  for r in $API_RATES; do
    drain; sleep 2  # and the processors' and replicas' catching up, which the outbox does not show
    cpu_snap "$work/cpu-a.json"; lsn_a=$(wal_lsn)
    line=$(lg_step "$2" "$r")
    cpu_snap "$work/cpu-b.json"; lsn_b=$(wal_lsn)
    sent=${line##* sent }; [[ "$sent" =~ ^[0-9]+$ ]] || sent=0
    echo "  $1 rate $r: $line, WAL $(wal_per "$lsn_a" "$lsn_b" "$sent") bytes/request"
    [ "${VERBOSE:-0}" = 1 ] && cpu_split "$work/cpu-a.json" "$work/cpu-b.json" "$sent" | sed 's/^/  /'
    [[ "$line" == *" ok "* ]] || break
    printf -v "$3" '%s' "$(echo "$line" | cut -d' ' -f1)"; printf -v "$4" '%s' "$(echo "$line" | cut -d' ' -f2)"
    cp "$work/cpu-a.json" "$work/$5-a.json"; cp "$work/cpu-b.json" "$work/$5-b.json"; echo "$sent" >"$work/$5-sent"
  done
}
knee_api=0; knee_api_w=0; knee_envoy=0; knee_envoy_w=0
if [[ " $PHASES " == *" c "* ]]; then
  echo "(c) loadgen straight at the backend"
  api_phase direct "$direct" knee_api knee_api_w knee
fi
if [[ " $PHASES " == *" d "* ]]; then
  echo "(d) loadgen through Envoy"
  api_phase envoy "$envoy" knee_envoy knee_envoy_w kneed
fi

pending=$(psql "${PGW[@]}" -qAt -c "SELECT count(*) FROM outbox_pending")
hits=$(curl -s "$direct/metrics" | grep '^bss_cache_requests_total' || true)
echo
echo "== knees (p99 < 100 ms, 0 errors), one stack, one run =="
printf '(a) raw INSERT, pgbench            %6s tps\n' "$raw"
printf '(b) backend write shape, pgbench   %6s tps\n' "$shape"
printf '(c) backend, loadgen direct        %6s req/s = %s writes/s\n' "$knee_api" "$knee_api_w"
printf '(d) through Envoy                  %6s req/s = %s writes/s\n' "$knee_envoy" "$knee_envoy_w"
python3 - "$raw" "$shape" "$knee_api_w" "$knee_envoy_w" <<'PY'
import sys
a, b, c, d = (float(x or 0) for x in sys.argv[1:])
r = lambda x, y: f"{x/y:.2f}" if y else "-"
print(f"ratios: shape/raw {r(b,a)}  direct writes/shape {r(c,b)}  envoy writes/shape {r(d,b)}  envoy/direct {r(d,c)}")
if c: print(f"6,667 events/s would need {6667/c:.1f}x the direct knee's writes/s on this machine")
PY
if [ -f "$work/knee-a.json" ]; then echo "at the (c) knee:"; cpu_split "$work/knee-a.json" "$work/knee-b.json" "$(cat "$work/knee-sent")"; fi
if [ -f "$work/kneed-a.json" ]; then echo "at the (d) knee:"; cpu_split "$work/kneed-a.json" "$work/kneed-b.json" "$(cat "$work/kneed-sent")"; fi
# HOLD=1 keeps the stack until ENTER (profiling by hand); the lock stays held meanwhile.
if [ "${HOLD:-0}" = 1 ]; then echo "stack kept: $topo (state $root); press ENTER to destroy"; read -r _ || true; fi
echo "outbox rows not yet published at the end: $pending"
echo "cache lookups (whole run):"; echo "$hits" | sed 's/^/  /'
