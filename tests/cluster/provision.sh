#!/usr/bin/env bash
# Provides a real Kubernetes control plane on this machine: etcd from Debian, and kube-apiserver +
# kube-controller-manager v1.20.2 built from Debian bookworm's `kubernetes` source package.
#
# The binaries are cached in $CONNECTOR_OPERATOR_CACHE (default ~/.cache/connector-operator); a
# second run only checks that they are there. The system's apt sources are never edited: the source
# package is fetched through a private apt configuration.
#
# Prints the directory holding kube-apiserver and kube-controller-manager on its last line.
# Options: --rebuild   build again even if the cache is filled.
set -euo pipefail

# The whole script is one function, read by bash before it runs: editing the file meanwhile is safe.
main() {

KUBE_VERSION=v1.20.2
DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1
CACHE_ROOT=${CONNECTOR_OPERATOR_CACHE:-${HOME:-/root}/.cache/connector-operator}
BIN_DIR=$CACHE_ROOT/kube-$KUBE_VERSION/bin
rebuild=false
[[ ${1:-} == --rebuild ]] && rebuild=true || true

log() { printf '[provision] %s\n' "$*" >&2; }
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# One provisioning at a time per cache (parallel test binaries may all ask for it).
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/provision.lock"
flock 9

# Runtime needs: etcd, openssl (service-account keys), curl (readiness probes in scripts).
ensure_packages etcd-server openssl curl ca-certificates

if ! $rebuild && [[ -x $BIN_DIR/kube-apiserver && -x $BIN_DIR/kube-controller-manager ]]; then
  log "cached control plane in $BIN_DIR"
  echo "$BIN_DIR"
  exit 0
fi

ensure_packages golang-go rsync make gcc
started=$(date +%s)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/kube-build.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# A private apt configuration with a deb-src entry for bookworm; the system sources stay untouched.
uris=$(awk '/^URIs:/ && !/security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[[ -n $uris ]] || uris=$(awk '$1=="deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[[ -n $uris ]] || { log "cannot find the Debian mirror in the system's apt sources"; exit 1; }
mkdir -p "$scratch/apt/sources" "$scratch/apt/lists/partial" "$scratch/src"
cat >"$scratch/apt/sources/bookworm-src.sources" <<SRC
Types: deb deb-src
URIs: $uris
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
apt_opts=(-o "APT::Sandbox::User=root" -o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$scratch/apt/sources"
  -o "Dir::State::Lists=$scratch/apt/lists" -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=")
log "fetching the kubernetes $DEB_VERSION source package"
apt-get "${apt_opts[@]}" update -qq >&2
(cd "$scratch/src" && apt-get "${apt_opts[@]}" source --download-only "kubernetes=$DEB_VERSION" >&2 &&
  apt-get "${apt_opts[@]}" download golang-github-modern-go-reflect2-dev >&2)

orig=$(ls "$scratch"/src/kubernetes_*.orig.tar.gz | head -n 1)
mkdir -p "$scratch/tree"
tar -xzf "$orig" -C "$scratch/tree" --strip-components=1

# v1.20.2 vendors modern-go/reflect2 1.0.1, which breaks on Go >= 1.18; take Debian's 1.0.2.
dpkg -x "$scratch"/src/golang-github-modern-go-reflect2-dev_*.deb "$scratch/reflect2"
rm -rf "$scratch/tree/vendor/github.com/modern-go/reflect2"
cp -r "$scratch/reflect2/usr/share/gocode/src/github.com/modern-go/reflect2" \
  "$scratch/tree/vendor/github.com/modern-go/reflect2"
rm -f "$scratch/tree/vendor/github.com/modern-go/reflect2/go.mod"

log "building kube-apiserver and kube-controller-manager (about 5 minutes on 2 cores)"
mkdir -p "$scratch/home"
(cd "$scratch/tree" && HOME=$scratch/home GOFLAGS= make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >&2)

mkdir -p "$BIN_DIR.tmp"
cp "$scratch/tree/_output/bin/kube-apiserver" "$scratch/tree/_output/bin/kube-controller-manager" "$BIN_DIR.tmp/"
rm -rf "$BIN_DIR"
mv "$BIN_DIR.tmp" "$BIN_DIR"
log "built in $(($(date +%s) - started)) s; cached in $BIN_DIR"
echo "$BIN_DIR"
}

main "$@"
