#!/usr/bin/env bash
# The main job (README): installs what is missing, builds bssctl and the backend, then
#   bssctl apply topology.yaml     (local runtime; extra arguments are passed on)
# Afterwards: target/release/bssctl status topology.yaml | logs ... | destroy topology.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
bash dev/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -q -p controller -p backend
exec target/release/bssctl apply topology.yaml "$@"
