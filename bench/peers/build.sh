#!/usr/bin/env bash
# Builds the peer programs bench/side_by_side.py runs beside ours, once: a cached binary is never rebuilt.
#
#   bench/peers/build.sh [aigw] [bbr] [epp] [eg]    (all when no name is given)
#
# - aigw: Envoy AI Gateway v1.1.0's ext_proc, from the source tarball at $AIGW_TARBALL (default
#   ../shared/peers/ai-gateway-v1.1.0-src.tar.gz relative to the repository; the module is not on the Go proxy).
# - bbr: the Gateway API Inference Extension's Body-Based Router v1.0.2, from the Go module proxy.
# - epp: the same project's Endpoint Picker v1.0.2 (cmd/epp), from the Go module proxy. e2e/kube/test_real_epp.py
#   runs it against the test API server; its fixture runs this script (at once when the binary is cached).
# - eg: Envoy Gateway v1.9.1's control plane (cmd/envoy-gateway), from the Go module proxy. bench/envoy_gateway.py
#   runs it standalone (File provider, Host infrastructure) beside bench/propagation.py.
#
# Binaries go to $PEERS_CACHE (default ~/.cache/xds-server/peers), keyed by version. One line per peer on stdout:
# "<name>: cached <path>", "<name>: built <path> in <N> s" or "<name>: skipped: <reason>" (exit 0); a failed build
# prints "<name>: failed: ..." and exits 1.
set -euo pipefail

AIGW_VERSION=v1.1.0
BBR_VERSION=v1.0.2
EPP_VERSION=v1.0.2
EG_VERSION="${EG_VERSION:-v1.9.1}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${PEERS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xds-server/peers}"
tarball="${AIGW_TARBALL:-$repo/../shared/peers/ai-gateway-$AIGW_VERSION-src.tar.gz}"
export CGO_ENABLED=0
status=0

build_aigw() {
    local binary="$cache/aigw-extproc-$AIGW_VERSION"
    if [[ -x "$binary" ]]; then echo "aigw: cached $binary"; return; fi
    if [[ ! -f "$tarball" ]]; then echo "aigw: skipped: source tarball not found at $tarball (set AIGW_TARBALL)"; return; fi
    if ! command -v go >/dev/null; then echo "aigw: skipped: go not found"; return; fi
    local work start
    work="$(mktemp -d)"
    start=$SECONDS
    mkdir -p "$cache"
    if tar xzf "$tarball" -C "$work" \
        && (cd "$work/ai-gateway-$AIGW_VERSION" && go build -trimpath -o "$binary.tmp" ./cmd/extproc) >&2; then
        mv "$binary.tmp" "$binary"
        echo "aigw: built $binary in $((SECONDS - start)) s"
    else
        echo "aigw: failed: go build ./cmd/extproc (see stderr)"
        status=1
    fi
    rm -rf "$work" "$binary.tmp"
}

build_bbr() {
    local directory="$cache/bbr-$BBR_VERSION"
    if [[ -x "$directory/bbr" ]]; then echo "bbr: cached $directory/bbr"; return; fi
    if ! command -v go >/dev/null; then echo "bbr: skipped: go not found"; return; fi
    local start=$SECONDS
    mkdir -p "$directory"
    if GOBIN="$directory" go install "sigs.k8s.io/gateway-api-inference-extension/cmd/bbr@$BBR_VERSION" >&2; then
        echo "bbr: built $directory/bbr in $((SECONDS - start)) s"
    else
        echo "bbr: failed: go install sigs.k8s.io/gateway-api-inference-extension/cmd/bbr@$BBR_VERSION (see stderr)"
        status=1
    fi
}

build_epp() {
    local directory="$cache/epp-$EPP_VERSION"
    local package="sigs.k8s.io/gateway-api-inference-extension/cmd/epp@$EPP_VERSION"
    if [[ -x "$directory/epp" ]]; then echo "epp: cached $directory/epp"; return; fi
    # The Go tarball's usual place, for shells (and test runs) whose PATH lacks it, as e2e/kube/build-binaries.sh.
    if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then PATH="/usr/local/go/bin:$PATH"; fi
    if ! command -v go >/dev/null; then echo "epp: skipped: go not found"; return; fi
    mkdir -p "$directory"
    # Two test runs (or xdist workers) starting at once: the second waits for the first, then finds the binary.
    exec 8>"$directory/.build.lock"
    flock 8
    if [[ -x "$directory/epp" ]]; then echo "epp: cached $directory/epp"; exec 8>&-; return; fi
    local start=$SECONDS staging
    staging="$(mktemp -d "$directory/.gobin.XXXXXX")"
    echo "epp: go install $package (cold: a few minutes on 2 cores, downloads included) ..." >&2
    # Installed beside, then renamed: an interrupted build never leaves a binary that looks complete.
    if GOBIN="$staging" go install "$package" >&2 && mv "$staging/epp" "$directory/epp"; then
        echo "epp: built $directory/epp in $((SECONDS - start)) s"
    else
        echo "epp: failed: go install $package (see stderr)"
        status=1
    fi
    rm -rf "$staging"
    exec 8>&-
}

build_eg() {
    local directory="$cache/envoy-gateway-$EG_VERSION"
    local package="github.com/envoyproxy/gateway/cmd/envoy-gateway@$EG_VERSION"
    if [[ -x "$directory/envoy-gateway" ]]; then echo "eg: cached $directory/envoy-gateway"; return; fi
    if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then PATH="/usr/local/go/bin:$PATH"; fi
    if ! command -v go >/dev/null; then echo "eg: skipped: go not found"; return; fi
    mkdir -p "$directory"
    local start=$SECONDS staging
    staging="$(mktemp -d "$directory/.gobin.XXXXXX")"
    echo "eg: go install $package (cold: several minutes on 2 cores, downloads included) ..." >&2
    # Installed beside, then renamed: an interrupted build never leaves a binary that looks complete.
    if GOBIN="$staging" go install "$package" >&2 && mv "$staging/envoy-gateway" "$directory/envoy-gateway"; then
        echo "eg: built $directory/envoy-gateway in $((SECONDS - start)) s"
    else
        echo "eg: failed: go install $package (see stderr)"
        status=1
    fi
    rm -rf "$staging"
}

names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(aigw bbr epp eg)
for name in "${names[@]}"; do
    case "$name" in
        aigw) build_aigw ;;
        bbr) build_bbr ;;
        epp) build_epp ;;
        eg) build_eg ;;
        *) echo "unknown peer: $name (aigw, bbr, epp, eg)" >&2; exit 2 ;;
    esac
done
exit $status
