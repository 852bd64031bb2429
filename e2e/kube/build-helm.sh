#!/usr/bin/env bash
# Builds the `helm` that the chart tests (e2e/kube/test_chart.py) run, from the Go module proxy
# (`go install helm.sh/helm/v4/cmd/helm@<version>`), with the machine's Go, into a cache directory keyed by the
# version. A cached binary is only checked, so the test fixture can call this every time.
#
#   e2e/kube/build-helm.sh              build if missing; print the binary's path on stdout (last line)
#   e2e/kube/build-helm.sh --print-path print the binary's path only (no build, no Go needed)
#
# Environment:
#   XDS_SERVER_HELM_CACHE  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/xds-server/helm). The binary goes to
#                          <root>/<version>/helm; the Go build and module caches live beside it.
#   GOPROXY                as usual for Go.
set -euo pipefail

HELM_VERSION=v4.3.2
package="helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
cache_root="${XDS_SERVER_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xds-server/helm}"
bin_dir="$cache_root/$HELM_VERSION"
binary="$bin_dir/helm"

if [[ "${1:-}" == "--print-path" ]]; then
  echo "$binary"
  exit 0
fi
if [[ -x "$binary" ]]; then
  echo "$binary"
  exit 0
fi

mkdir -p "$bin_dir"
# Two test runs starting at once: the second waits for the first, then finds the binary.
exec 9>"$cache_root/.build.lock"
flock 9
if [[ -x "$binary" ]]; then
  echo "$binary"
  exit 0
fi

# The Go tarball's usual place, for shells (and test runs) whose PATH lacks it.
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
  PATH="/usr/local/go/bin:$PATH"
fi
if ! command -v go >/dev/null 2>&1; then
  echo "build-helm.sh: 'go' is not on PATH; it is needed to build helm $HELM_VERSION" >&2
  exit 1
fi
export GOTOOLCHAIN=local # an older Go stops with a clear error instead of trying to download a toolchain
export CGO_ENABLED=0     # a static binary, as helm releases it
export GOCACHE="$cache_root/go-build"
export GOMODCACHE="$cache_root/go-mod"
export GOFLAGS="-trimpath -modcacherw -buildvcs=false"

staging="$(mktemp -d "$bin_dir/.gobin.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
start="$(date +%s)"
echo "build-helm.sh: go install $package (cold: a few minutes on 2 cores, downloads included) ..." >&2
# helm stamps its version with -X like its own Makefile does; without it `helm version` says v4.x-dev.
GOBIN="$staging" nice -n 10 go install \
  -ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" "$package"
# Installed beside, then renamed: an interrupted build never leaves a binary that looks complete.
mv -f "$staging/helm" "$binary"
end="$(date +%s)"
echo "build-helm.sh: built helm $HELM_VERSION in $((end - start)) s" >&2
echo "helm $((end - start))s $(go version | awk '{ print $3 }')" >>"$bin_dir/build-times.txt"
"$binary" version >&2
echo "$binary"
