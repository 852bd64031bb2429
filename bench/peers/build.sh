#!/usr/bin/env bash
# Builds the peer programs bench/side_by_side.py runs beside ours, once: a cached binary is never rebuilt.
#
#   bench/peers/build.sh [aigw] [bbr]          (both when no name is given)
#
# - aigw: Envoy AI Gateway v1.1.0's ext_proc, from the source tarball at $AIGW_TARBALL (default
#   ../shared/peers/ai-gateway-v1.1.0-src.tar.gz relative to the repository; the module is not on the Go proxy).
# - bbr: the Gateway API Inference Extension's Body-Based Router v1.0.2, from the Go module proxy.
#
# Binaries go to $PEERS_CACHE (default ~/.cache/xds-server/peers), keyed by version. One line per peer on stdout:
# "<name>: cached <path>", "<name>: built <path> in <N> s" or "<name>: skipped: <reason>" (exit 0); a failed build
# prints "<name>: failed: ..." and exits 1.
set -euo pipefail

AIGW_VERSION=v1.1.0
BBR_VERSION=v1.0.2
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

names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(aigw bbr)
for name in "${names[@]}"; do
    case "$name" in
        aigw) build_aigw ;;
        bbr) build_bbr ;;
        *) echo "unknown peer: $name (aigw, bbr)" >&2; exit 2 ;;
    esac
done
exit $status
