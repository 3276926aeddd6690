#!/usr/bin/env bash
# Side-by-side benchmark of two builds on one topology: dev/bench.sh's figures (render, check,
# cold / no-op apply, HAProxy reload, Envoy hot restart, Prometheus restart, destroy) for an older
# revision and for the working tree, alternating which goes first, then min / median / max of each.
#   bash dev/bench-compare.sh OLD_REV [ROUNDS]      (default 3 rounds)
#   NEW_BIN=DIR/bssctl bash dev/bench-compare.sh ...  (a prebuilt new build, bss-backend beside it)
# The raw figures and the cold applies' step events stay in $KEEP (default /tmp/bench-compare-steps).
# OLD_REV is built in release in a worktree under ~/.cache/bssctl/compare (kept for the next run).
# Both builds apply OLD_REV's root topology with its explicit ports shifted by 10000 (below the
# kernel's ephemeral range, where a client socket can hold a port), so both read
# the same file; where the newer schema adds a component by default (the broker's store), the
# newer build gets the older behaviour written out (`storage: memory`).
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: bash dev/bench-compare.sh OLD_REV [ROUNDS]}
ROUNDS=${2:-3}
bash dev/setup.sh >/dev/null
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
export PATH="${BSSCTL_TOOLS:-$HOME/.cache/bssctl/tools}/bin:$PATH"

rev=$(git rev-parse --short "$OLD")
cache=$HOME/.cache/bssctl/compare
src=$cache/$rev
if [ ! -d "$src" ]; then
  mkdir -p "$cache"
  git worktree add -q --detach "$src" "$rev"
fi
echo "== building $rev and the working tree (release)"
(cd "$src" && CARGO_TARGET_DIR=$cache/target-$rev cargo build --release -q -p controller -p backend)
old_bin=$cache/target-$rev/release/bssctl
if [ -n "${NEW_BIN:-}" ]; then
  # A build made earlier (its bss-backend beside it), e.g. while someone else edits the tree.
  new_bin=$NEW_BIN
  [ -x "$(dirname "$new_bin")/bss-backend" ] || { echo "NEW_BIN: no bss-backend beside $new_bin" >&2; exit 2; }
else
  cargo build --release -q -p controller -p backend
  new_bin=$PWD/target/release/bssctl
fi

work=$(mktemp -d /tmp/bssctl-compare-XXXXXX)
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
git show "$rev:topology.yaml" | python3 -c '
import re, sys
s = sys.stdin.read()
s = s.replace("name: bss-dev", "name: bench").replace("stateDir: .bssctl", "stateDir: state")
s = re.sub(r"\b(port|Port|writePort|readPort|adminPort): (\d+)", lambda m: f"{m.group(1)}: {int(m.group(2)) + 10000}", s)
print(s, end="")' > "$work/old.yaml"
cp "$work/old.yaml" "$work/new.yaml"
if "$new_bin" schema | grep -q '"storage"' && ! grep -q 'storage:' "$work/old.yaml"; then
  sed -i 's/^\(    brokers: .*\)$/\1\n    storage: memory/' "$work/new.yaml"
fi
for f in old new; do
  b=$old_bin; [ $f = new ] && b=$new_bin
  n=$("$b" render "$work/$f.yaml" --out "$work/render-$f" -o json | jq '.files | if type == "array" then length else . end')
  echo "$f: $("$b" -V 2>/dev/null || echo "$b"), $n rendered files"
done

for i in $(seq "$ROUNDS"); do
  order="old new"; [ $((i % 2)) -eq 0 ] && order="new old"
  for f in $order; do
    b=$old_bin; [ $f = new ] && b=$new_bin
    echo "== round $i: $f"
    BSSCTL=$b BENCH_TOPOLOGY=$work/$f.yaml BENCH_KV=$work/$f.kv BENCH_STEPS=$work/$f.steps.$i bash dev/bench.sh 20 | sed 's/^/  /'
  done
done

echo "== $rev (old) vs working tree (new), $ROUNDS rounds, ms: min / median / max"
python3 - "$work/old.kv" "$work/new.kv" <<'PY'
import statistics, sys
def load(p):
    d = {}
    for line in open(p):
        k, v = line.strip().split("=")
        d.setdefault(k, []).append(float(v))
    return d
old, new = load(sys.argv[1]), load(sys.argv[2])
fmt = lambda xs: f"{min(xs):9.1f} / {statistics.median(xs):9.1f} / {max(xs):9.1f}"
print(f"{'figure':20} {'old':>33}   {'new':>33}   new/old (median)")
for k in old:
    if k in new:
        r = statistics.median(new[k]) / statistics.median(old[k])
        print(f"{k:20} {fmt(old[k])}   {fmt(new[k])}   {r:5.2f}")
PY

keep=${KEEP:-/tmp/bench-compare-steps}
rm -rf "$keep"; mkdir -p "$keep"; cp "$work"/*.steps.* "$work"/*.kv "$keep"/ 2>/dev/null || true
echo "== cold apply per step, ms (median over the rounds): a step's own time, and when it ended (since the apply's first event)"
python3 - "$work" "$ROUNDS" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def load(f):
    own, end, total = {}, {}, []
    for i in range(1, rounds + 1):
        try:
            evs = [json.loads(l) for l in open(f"{work}/{f}.steps.{i}") if l.startswith("{")]
        except FileNotFoundError:
            continue
        if not evs:
            continue
        t0 = evs[0]["ts_ms"] - evs[0]["elapsed_ms"]
        for e in evs:
            if e["status"] == "ok":
                k = (e["component"], e["step"])
                own.setdefault(k, []).append(e["elapsed_ms"])
                end.setdefault(k, []).append(e["ts_ms"] - t0)
        total.append(max(e["ts_ms"] for e in evs) - t0)
    return own, end, total
o_own, o_end, o_tot = load("old")
n_own, n_end, n_tot = load("new")
med = lambda xs: statistics.median(xs) if xs else float("nan")
print(f"{'component':22} {'step':12} {'own old':>8} {'own new':>8} {'end old':>8} {'end new':>8}")
keys = sorted(set(o_own) | set(n_own), key=lambda k: med(n_end.get(k, o_end.get(k, []))))
for k in keys:
    print(f"{k[0]:22} {k[1]:12} {med(o_own.get(k, [])):8.0f} {med(n_own.get(k, [])):8.0f} {med(o_end.get(k, [])):8.0f} {med(n_end.get(k, [])):8.0f}")
print(f"{'first to last event':35} {'':8} {med(o_tot):8.0f} {med(n_tot):8.0f}")
PY
