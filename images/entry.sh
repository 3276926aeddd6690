#!/bin/sh
# bssctl container entrypoint: loads the component's environment file and its secret environment
# variables (one file per variable, delivered 0400 under /run/secrets/bssctl/env) into the process
# environment of the component only, so no secret is ever in the container's config that
# `docker inspect` shows. Then execs the component's command line.
set -eu
# Directories the component expects (data, sockets, pid files), private to its user. The data
# volume is mounted one level up, owned by the image's user.
for d in ${BSSCTL_MKDIR:-}; do
  mkdir -p -m 0700 "$d"
done
if [ -n "${BSSCTL_ENV_FILE:-}" ] && [ -r "$BSSCTL_ENV_FILE" ]; then
  set -a
  # shellcheck disable=SC1090
  . "$BSSCTL_ENV_FILE"
  set +a
fi
if [ -d /run/secrets/bssctl/env ]; then
  for f in /run/secrets/bssctl/env/*; do
    [ -r "$f" ] || continue
    name=$(basename "$f")
    value=$(cat "$f")
    export "$name=$value"
  done
fi
unset BSSCTL_ENV_FILE BSSCTL_MKDIR
exec "$@"
