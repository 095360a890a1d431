#!/usr/bin/env bash
# Provides a real Kubernetes control plane on this machine: kube-apiserver + kube-controller-manager
# (v1.34.4 by default) and the etcd they are released with, built with Go from the Go module proxy.
#
# Each piece is built from a small module of this repository, tests/cluster/build/<piece>-<version>/
# (go.mod, go.sum, tools.go: no vendored code). The Kubernetes module requires k8s.io/kubernetes
# and replaces each k8s.io staging module with its matching v0.<minor>.<patch> release, since
# k8s.io/kubernetes points them at ./staging and v0.0.0, which no proxy serves. The version
# information is set by -ldflags, so the API server reports its real version.
#
# tests/cluster/build/kube-<version>/etcd-version names the etcd build module that goes with it.
# The binaries are cached in $CONNECTOR_OPERATOR_CACHE (default ~/.cache/connector-operator) under
# kube-<version>/bin and etcd-<version>/bin; a second run only checks that they are there.
#
# Prints the directory holding kube-apiserver and kube-controller-manager on its last line.
# Options: --rebuild          build again even if the cache is filled
#          --version vX.Y.Z   the Kubernetes version (default $CONNECTOR_OPERATOR_KUBE_VERSION, else
#                             v1.34.4); tests/cluster/build/kube-<version> must exist
set -euo pipefail

# The whole script is one function, read by bash before it runs: editing the file meanwhile is safe.
main() {

local here rebuild=false
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KUBE_VERSION=${CONNECTOR_OPERATOR_KUBE_VERSION:-v1.34.4}
while (($#)); do
  case $1 in
    --rebuild) rebuild=true ;;
    --version) KUBE_VERSION=$2; shift ;;
    *) printf '[provision] unknown option %s\n' "$1" >&2; exit 2 ;;
  esac
  shift
done
log() { printf '[provision] %s\n' "$*" >&2; }
source "$here/lib.sh"

[[ -d $here/build/kube-$KUBE_VERSION ]] || {
  log "no build module for Kubernetes $KUBE_VERSION; there are: $(cd "$here/build" && ls -d kube-* | tr '\n' ' ')"
  exit 2
}
local ETCD_VERSION
ETCD_VERSION=$(<"$here/build/kube-$KUBE_VERSION/etcd-version")
[[ -d $here/build/etcd-$ETCD_VERSION ]] || { log "no build module for etcd $ETCD_VERSION"; exit 2; }

CACHE_ROOT=${CONNECTOR_OPERATOR_CACHE:-${HOME:-/root}/.cache/connector-operator}
KUBE_BIN=$CACHE_ROOT/kube-$KUBE_VERSION/bin
ETCD_BIN=$CACHE_ROOT/etcd-$ETCD_VERSION/bin

# One provisioning at a time per cache (parallel test binaries may all ask for it).
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/provision.lock"
flock 9

# Runtime needs: openssl (service-account keys), curl (readiness probes in scripts).
ensure_packages openssl curl ca-certificates

kube_cached() { [[ -x $KUBE_BIN/kube-apiserver && -x $KUBE_BIN/kube-controller-manager ]]; }
etcd_cached() { [[ -x $ETCD_BIN/etcd ]]; }
if ! $rebuild && kube_cached && etcd_cached; then
  log "cached control plane: $KUBE_BIN, $ETCD_BIN"
  echo "$KUBE_BIN"
  exit 0
fi

# Go from the machine (Debian's golang-go is too old for these modules). Never let go fetch
# another toolchain: the modules say which Go they need, and a too-old one fails here, clearly.
local go_cmd
go_cmd=$(command -v go || true)
[[ -n $go_cmd ]] || { [[ -x /usr/local/go/bin/go ]] && go_cmd=/usr/local/go/bin/go; } || true
[[ -n $go_cmd ]] || { log "Go 1.26 or newer is needed to build the control plane; none found"; exit 1; }
export GOTOOLCHAIN=local GOFLAGS="-buildvcs=false -mod=readonly" CGO_ENABLED=0
# The build cache (about 3 GB a version) is scratch, removed at exit; the module cache stays.
# (`scratch` is global, not local: the EXIT trap runs after main has returned.)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/kube-build.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export GOCACHE=$scratch/go-build
log "building with $("$go_cmd" version)"

# build <name> <module dir> <output dir> <output file name or ""> <ldflags> <package>...: builds
# into <output dir>.tmp, then renames it into place, so a cache directory is complete or absent.
build() {
  local name=$1 module=$2 out=$3 file=$4 ldflags=$5 started
  shift 5
  started=$(date +%s)
  log "building $name (Go downloads the modules it lacks first)"
  rm -rf "$out.tmp"
  mkdir -p "$out.tmp"
  (cd "$module" && "$go_cmd" build -trimpath -ldflags "$ldflags" -o "$out.tmp/$file" "$@")
  rm -rf "$out"
  mv "$out.tmp" "$out"
  log "built $name in $(($(date +%s) - started)) s; cached in $out"
}

if $rebuild || ! etcd_cached; then
  build "etcd $ETCD_VERSION" "$here/build/etcd-$ETCD_VERSION" "$ETCD_BIN" etcd "-s -w" go.etcd.io/etcd/server/v3
fi

if $rebuild || ! kube_cached; then
  local minor ldflags="-s -w" pkg
  minor=$(cut -d. -f2 <<<"${KUBE_VERSION#v}")
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  build "kube-apiserver and kube-controller-manager $KUBE_VERSION" "$here/build/kube-$KUBE_VERSION" \
    "$KUBE_BIN" "" "$ldflags" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
  local reported
  reported=$("$KUBE_BIN/kube-apiserver" --version)
  [[ $reported == "Kubernetes $KUBE_VERSION" ]] || { log "the build reports '$reported'"; exit 1; }
fi

echo "$KUBE_BIN"
}

main "$@"
