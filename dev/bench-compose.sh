#!/usr/bin/env bash
# Side by side on this machine's Docker engine: `docker-compose up` of the Compose file bssctl
# renders (`bssctl render --runtime docker --format compose`) versus `bssctl docker-apply` of the
# same topology, with the same images. Prints, for each: time until every container is healthy,
# a no-op re-apply, and what a changed Prometheus rule file does (Compose does not notice a
# changed bind-mounted config: docker/compose issues 11900, 13045; bssctl reloads it, verified).
#
# The topology is the monitoring slice of the stack (Redis, exporters, Prometheus with the alert
# rules, Alertmanager): Compose cannot bootstrap PostgreSQL replicas or run migrations by itself,
# so those are left out of the comparison rather than faked. One stack runs at a time.
#   usage: dev/bench-compose.sh [port-offset]   (default 23000)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cache/bssctl/tools/bin:$PATH"
OFFSET=${1:-23000}
BSSCTL=${BSSCTL:-target/debug/bssctl}
[ -x "$BSSCTL" ] || cargo build -q -p controller
command -v docker-compose >/dev/null || { echo "docker-compose not found: apt-get install docker-compose" >&2; exit 1; }
WORK=$(mktemp -d /tmp/bssctl-bench-compose-XXXXXX)
trap 'cd /; (cd "$WORK/compose" 2>/dev/null && docker-compose -p cmpbench down -v >/dev/null 2>&1) || true; "$BSSCTL" docker-destroy "$WORK/bss.yaml" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

topology() { # name
  cat <<YAML
apiVersion: bssctl.io/v1alpha1
kind: Topology
metadata: {name: $1}
spec:
  runtime: {kind: docker, portOffset: $OFFSET, stateDir: state}
  redis: {}
  exporters: {node: {}, redis: {}}
  prometheus: {scrapeInterval: 1s, evaluationInterval: 1s}
  alerts: {}
  alertmanager: {}
YAML
}
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.2f'; }
all_healthy() { # env
  local ids; ids=$(docker ps -aq --filter "label=io.bssctl.environment=$1")
  [ -n "$ids" ] || return 1
  ! docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' $ids | grep -qv -e '^healthy$' -e '^running$'
}
wait_healthy() { # env
  for _ in $(seq 1 600); do all_healthy "$1" && return 0; sleep 0.2; done
  echo "not healthy after 120 s" >&2; docker ps -a --filter "label=io.bssctl.environment=$1" >&2; return 1
}
rule_loaded() { # alert name -> yes/no
  curl -fsS "http://127.0.0.1:$((9090 + OFFSET))/api/v1/rules" | grep -q "\"$1\"" && echo yes || echo no
}

"$BSSCTL" images build >/dev/null

# --- Compose ----------------------------------------------------------------------------------
topology cmpbench > "$WORK/cmp.yaml"
"$BSSCTL" render "$WORK/cmp.yaml" --runtime docker --format compose --out "$WORK/compose" >/dev/null 2>&1
# Secret files the compose header lists: generated here, owned by the container's uid, 0400.
grep -E '^#   \./secrets/' "$WORK/compose/compose.yaml" | while read -r _ path _ uid; do
  uid=${uid%)}; f="$WORK/compose/${path#./}"
  mkdir -p "$(dirname "$f")"; head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$f"
  chown "$uid:$uid" "$f" "$(dirname "$f")"; chmod 0400 "$f"; chmod 0500 "$(dirname "$f")"
done
# Files bssctl derives from secret values (docs/security.md, "Redis users"): written here from the
# values just generated, as the Docker runtime writes them.
S="$WORK/compose/secrets"
put() { # file content
  mkdir -p "$(dirname "$1")"; [ -f "$1" ] && chmod 0600 "$1"
  printf '%s\n' "$2" > "$1"; chmod 0400 "$1"
}
if [ -f "$S/redis/redis-acl.conf" ]; then
  xpw=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
  rnd() { head -c 24 /dev/urandom | sha256sum | cut -d' ' -f1; }
  addr=$(grep -rh '^REDIS_ADDR=' "$WORK/compose" | head -n1 | cut -d= -f2-)
  put "$S/redis/redis-acl.conf" "user default reset off
user admin reset on #$(rnd) ~* &* +@all
user redis-exporter reset on #$(printf '%s' "$xpw" | sha256sum | cut -d' ' -f1) resetkeys resetchannels -@all +ping +select +info +client|setname +client|list +config|get +slowlog|get +slowlog|len +latency|latest +latency|histogram +memory|stats +module|list +cluster|info"
  [ -f "$S/redis-exporter/redis-exporter-passwords.json" ] &&
    put "$S/redis-exporter/redis-exporter-passwords.json" "{\"$addr\":\"$xpw\"}"
fi
if [ -f "$S/alertmanager/alertmanager-web.yml" ] && [ -f "$S/prometheus/alertmanager-web-password" ]; then
  hash=$(python3 -c 'import crypt,sys; print(crypt.crypt(sys.stdin.read().strip(), crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1024)))' \
    < "$S/prometheus/alertmanager-web-password" 2>/dev/null)
  put "$S/alertmanager/alertmanager-web.yml" "basic_auth_users:
  bssctl: \"$hash\""
fi
cd "$WORK/compose"
t0=$(now)
docker-compose -p cmpbench up -d >"$WORK/up.log" 2>&1 || { tail -n 20 "$WORK/up.log" >&2; docker-compose -p cmpbench logs --tail 20 >&2; exit 1; }
wait_healthy cmpbench; t1=$(now)
c_cold=$(secs "$t0" "$t1")
t0=$(now); out=$(docker-compose -p cmpbench up -d 2>&1); t1=$(now)
c_noop=$(secs "$t0" "$t1"); c_noop_recreated=$(grep -c -e Recreating -e Creating <<<"$out" || true)
rules=$(ls prometheus/rules/*.yml | head -n1)
chmod u+w "$rules"; sed -i 's/^groups:/groups:\n  - name: bench-probe\n    rules:\n      - {alert: ComposeBenchProbe, expr: vector(1) > 2}/' "$rules"
t0=$(now); out=$(docker-compose -p cmpbench up -d 2>&1); t1=$(now); sleep 3
c_rule=$(secs "$t0" "$t1"); c_rule_loaded=$(rule_loaded ComposeBenchProbe)
c_rule_said=$(grep -i prometheus <<<"$out" | head -n1 | xargs || true)
docker-compose -p cmpbench down -v >/dev/null 2>&1
cd - >/dev/null

# --- bssctl -----------------------------------------------------------------------------------
topology bssbench > "$WORK/bss.yaml"
t0=$(now)
"$BSSCTL" docker-apply "$WORK/bss.yaml" >"$WORK/apply.log" 2>&1 || { tail -n 30 "$WORK/apply.log" >&2; exit 1; }
wait_healthy bssbench; t1=$(now)
b_cold=$(secs "$t0" "$t1")
t0=$(now); out=$("$BSSCTL" docker-apply "$WORK/bss.yaml" 2>&1); t1=$(now)
b_noop=$(secs "$t0" "$t1"); b_noop_changed=$(grep -o '[0-9]* component(s) changed' <<<"$out" || true)
sed -i 's/^  alerts: {}/  alerts:\n    rules:\n      - {alert: BssctlBenchProbe, expr: vector(1) > 2}/' "$WORK/bss.yaml"
t0=$(now); out=$("$BSSCTL" docker-apply "$WORK/bss.yaml" 2>&1); t1=$(now)
b_rule=$(secs "$t0" "$t1"); b_rule_loaded=$(rule_loaded BssctlBenchProbe)
b_rule_said=$(grep -E '^ *prometheus +reload' <<<"$out" | head -n1 | xargs || true)
"$BSSCTL" docker-destroy "$WORK/bss.yaml" >/dev/null 2>&1

echo "Compose vs bssctl on Docker (monitoring slice: redis, 2 exporters, prometheus, alertmanager)"
printf '%-34s %-22s %s\n' "" "docker-compose 1.29" "bssctl docker-apply"
printf '%-34s %-22s %s\n' "cold: up until all healthy (s)" "$c_cold" "$b_cold"
printf '%-34s %-22s %s\n' "no-op re-apply (s)" "$c_noop ($c_noop_recreated recreated)" "$b_noop ($b_noop_changed)"
printf '%-34s %-22s %s\n' "changed rule file: re-apply (s)" "$c_rule" "$b_rule"
printf '%-34s %-22s %s\n' "  new rule served by Prometheus" "$c_rule_loaded" "$b_rule_loaded"
printf '%-34s %-22s %s\n' "  what the tool said"  "${c_rule_said:-nothing}" "${b_rule_said:-nothing}"
