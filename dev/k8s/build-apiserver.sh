#!/usr/bin/env bash
# Builds the project's custom-resource API server (dev/k8s/apiserver/main.go: k8s.io/apiextensions-apiserver
# with etcd storage, loopback TLS, anonymous + AlwaysAllow) from Debian sid's Go source packages.
#
# Nothing is installed into the system: sid's package lists live in a private apt state directory, the .debs
# are fetched with `apt-get download` and unpacked (dpkg -x) into a GOPATH under the cache, and Go itself comes
# from sid's golang-1.27-go unpacked the same way. The binary is cached by version:
#   $HOME/.cache/bssctl/k8s/bssctl-apiextensions-<pkgversion>-<hash of main.go>
# Usage: build-apiserver.sh [OUT_LINK]   (prints the binary's path)
set -euo pipefail

CACHE="${BSSCTL_CACHE:-$HOME/.cache/bssctl}/k8s"
PKG=golang-k8s-apiextensions-apiserver-dev
GOPKG=golang-1.27-go
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MAIN="$HERE/apiserver/main.go"
say() { printf 'k8s-apiserver: %s\n' "$*" >&2; }

mkdir -p "$CACHE"
APT="$CACHE/apt"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
echo "deb http://deb.debian.org/debian sid main" > "$APT/sources.list"
touch "$APT/status"
O=(-o "Dir::Etc::SourceList=$APT/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
   -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o "Dir::State::status=$APT/status"
   -o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")

main_hash=$(sha256sum "$MAIN" | cut -c1-12)
# A built binary for any sid version is reused unless BSSCTL_K8S_REBUILD=1: the lists are refreshed only to build.
existing=$(ls -1 "$CACHE"/bssctl-apiextensions-*-"$main_hash" 2>/dev/null | sort -V | tail -n1 || true)
if [ -n "$existing" ] && [ -x "$existing" ] && [ "${BSSCTL_K8S_REBUILD:-0}" != 1 ]; then
  echo "$existing"; exit 0
fi

say "refreshing Debian sid package lists (private apt state in $APT; the system's sources are untouched)"
apt-get "${O[@]}" update -qq
ver=$(apt-cache "${O[@]}" show "$PKG" | awk '/^Version:/{print $2; exit}')
[ -n "$ver" ] || { say "package $PKG not found in sid"; exit 1; }
OUT="$CACHE/bssctl-apiextensions-$ver-$main_hash"
if [ -x "$OUT" ]; then echo "$OUT"; exit 0; fi

say "building apiextensions-apiserver $ver from Debian sid's Go packages (cold: about 10 minutes on 2 cores)"
deps=$(apt-cache "${O[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
         --no-replaces --no-enhances "$PKG" | grep -v '^ ' | grep -E '^golang-.*-dev$' | sort -u)
goversion=$(apt-cache "${O[@]}" show "$GOPKG" | awk '/^Version:/{print $2; exit}')
DEBS="$CACHE/debs"; mkdir -p "$DEBS"
( cd "$DEBS" && apt-get "${O[@]}" download -qq $deps "$GOPKG" "${GOPKG%-go}-src" )
ROOT="$CACHE/root-$ver"
rm -rf "$ROOT"; mkdir -p "$ROOT"
for d in "$DEBS"/*.deb; do dpkg -x "$d" "$ROOT"; done
GOROOT=$(ls -d "$ROOT"/usr/lib/go-1.* | head -n1)
[ -x "$GOROOT/bin/go" ] || { say "go not found in $GOPKG $goversion"; exit 1; }

# GOPATH mode over Debian's /usr/share/gocode tree, with the project's main as one more package.
GP="$ROOT/gopath"; mkdir -p "$GP/src/bssctl.io"
ln -sfn "$ROOT/usr/share/gocode/src"/* "$GP/src/" 2>/dev/null || true
rm -rf "$GP/src/bssctl.io/apiserver"; mkdir -p "$GP/src/bssctl.io/apiserver"
cp "$MAIN" "$GP/src/bssctl.io/apiserver/main.go"
tmp="$OUT.tmp.$$"
( cd "$GP/src/bssctl.io/apiserver" &&
  GOROOT="$GOROOT" GOPATH="$GP" GO111MODULE=off CGO_ENABLED=0 GOCACHE="$CACHE/gocache" \
  GOTOOLCHAIN=local "$GOROOT/bin/go" build -o "$tmp" -ldflags "-s -w" . )
mv "$tmp" "$OUT"
rm -rf "$ROOT"
say "built $OUT"
echo "$OUT"
