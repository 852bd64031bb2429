#!/usr/bin/env bash
# Builds the upstream conformance suites that conformance/run.py runs against our GatewayClass, and the echo server
# their backends run, from the Go module proxy with the machine's Go toolchain, into a cache directory keyed by
# version. A cached binary is never rebuilt, so run.py (and CI) can call this every time.
#
#   conformance/build.sh                 build what is missing; print "<name> <path>" per binary on stdout
#   conformance/build.sh NAME...         only those: gateway-api, echo-basic, inference-extension
#   conformance/build.sh --print-paths   print the paths only (no build, no Go needed; they may not exist yet)
#
# Binaries (versions read from the pinned gomod/*/go.mod, so they are written down in exactly one place):
#   gateway-api          <cache>/<gateway-api version>/gateway-api-conformance.test    `go test -c` of gomod/gateway-api
#   echo-basic           <cache>/<gateway-api version>/echo-basic   sigs.k8s.io/gateway-api/conformance/echo-basic
#   inference-extension  <cache>/<inference extension version>/inference-extension-conformance.test
#                                                                    `go test -c` of gomod/inference-extension
#   coredns              <cache>/coredns-<version>/coredns   github.com/coredns/coredns, the version the Gateway API
#                                                            suite's base manifests run (every Gateway profile
#                                                            needs its pod Ready; only UDPRoute tests query it)
# (today <cache>/v1.6.1/ and <cache>/v1.0.2/; testing/localnode/images.py finds echo-basic there).
#
# Environment:
#   XDS_SERVER_CONFORMANCE_CACHE  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/xds-server/conformance). The Go
#                                 build and module caches live beside the binaries, so a version bump reuses what
#                                 did not change, and `rm -rf` of the root removes everything.
#   GOPROXY                       as usual for Go. go.sum is committed and complete: no checksum database lookup.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
gomod="$here/gomod"

gateway_api_version="$(awk '$1 == "sigs.k8s.io/gateway-api/conformance" { print $2 }' "$gomod/gateway-api/go.mod")"
inference_version="$(awk '$1 == "sigs.k8s.io/gateway-api-inference-extension" { print $2 }' "$gomod/inference-extension/go.mod")"
if [[ -z "$gateway_api_version" || -z "$inference_version" ]]; then
  echo "build.sh: cannot read the pinned versions from $gomod/*/go.mod" >&2
  exit 1
fi

coredns_version=v1.12.2 # sigs.k8s.io/gateway-api/conformance/base/manifests.yaml's image tag
cache_root="${XDS_SERVER_CONFORMANCE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xds-server/conformance}"
gateway_api_dir="$cache_root/$gateway_api_version"
inference_dir="$cache_root/$inference_version"

# name -> binary path, module directory, what to build there, and how.
path_of() {
  case "$1" in
    gateway-api) echo "$gateway_api_dir/gateway-api-conformance.test" ;;
    echo-basic) echo "$gateway_api_dir/echo-basic" ;;
    inference-extension) echo "$inference_dir/inference-extension-conformance.test" ;;
    coredns) echo "$cache_root/coredns-$coredns_version/coredns" ;;
    *) return 1 ;;
  esac
}

all=(gateway-api echo-basic inference-extension coredns)
names=()
print_only=false
for arg in "$@"; do
  case "$arg" in
    --print-paths) print_only=true ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    gateway-api | echo-basic | inference-extension | coredns) names+=("$arg") ;;
    *) echo "build.sh: unknown argument: $arg (gateway-api, echo-basic, inference-extension, coredns, --print-paths)" >&2; exit 2 ;;
  esac
done
[[ ${#names[@]} -gt 0 ]] || names=("${all[@]}")

print_paths() {
  local name
  for name in "${names[@]}"; do echo "$name $(path_of "$name")"; done
}

if $print_only; then
  print_paths
  exit 0
fi

missing() {
  local name
  for name in "${names[@]}"; do [[ -x "$(path_of "$name")" ]] || return 0; done
  return 1
}

if ! missing; then
  print_paths
  exit 0
fi

mkdir -p "$gateway_api_dir" "$inference_dir" "$cache_root/coredns-$coredns_version"
# Two runs starting at once must not build the same thing twice in parallel: the second waits for the first, then
# finds the binaries.
exec 9>"$cache_root/.build.lock"
flock 9

# The Go tarball's usual place, for shells whose PATH lacks it.
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
  PATH="/usr/local/go/bin:$PATH"
fi
if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: 'go' is not on PATH; Go >= 1.26 is needed (sigs.k8s.io/gateway-api/conformance $gateway_api_version declares go 1.26.0)" >&2
  exit 1
fi
# With GOTOOLCHAIN=local an older Go stops with a clear error instead of trying to download a newer toolchain.
export GOTOOLCHAIN=local
export CGO_ENABLED=0 # static binaries; no C compiler needed
export GOCACHE="$cache_root/go-build"
export GOMODCACHE="$cache_root/go-mod"
# -modcacherw: the module cache stays deletable with a plain `rm -rf`. -mod=readonly: go.sum is committed and
# complete, so no checksum database lookup is needed.
export GOFLAGS="-trimpath -modcacherw -mod=readonly -buildvcs=false"

log() { echo "build.sh: $*" >&2; }

# Build into a temporary name and rename, so an interrupted build never leaves a binary that looks complete.
build() {
  local name="$1" binary tmp start module_dir
  binary="$(path_of "$name")"
  [[ -x "$binary" ]] && return 0
  tmp="$(dirname "$binary")/.$(basename "$binary").tmp"
  start=$SECONDS
  case "$name" in
    gateway-api)
      module_dir="$gomod/gateway-api"
      log "building $name: go test -c of sigs.k8s.io/gateway-api/conformance $gateway_api_version (cold: a few minutes on 2 cores) ..."
      (cd "$module_dir" && nice -n 10 go test -c -ldflags="-s -w" -o "$tmp" .)
      ;;
    echo-basic)
      module_dir="$gomod/gateway-api"
      log "building $name from sigs.k8s.io/gateway-api/conformance/echo-basic $gateway_api_version ..."
      (cd "$module_dir" && nice -n 10 go build -ldflags="-s -w" -o "$tmp" sigs.k8s.io/gateway-api/conformance/echo-basic)
      ;;
    inference-extension)
      module_dir="$gomod/inference-extension"
      log "building $name: go test -c of sigs.k8s.io/gateway-api-inference-extension/conformance $inference_version ..."
      (cd "$module_dir" && nice -n 10 go test -c -ldflags="-s -w" -o "$tmp" .)
      ;;
    coredns)
      log "building $name: go install github.com/coredns/coredns@$coredns_version ..."
      local staging
      staging="$(mktemp -d "$(dirname "$binary")/.gobin.XXXXXX")"
      # Outside any module: -mod=readonly does not apply, and go install verifies against the module's own go.sum.
      GOFLAGS="-trimpath -modcacherw -buildvcs=false" GOBIN="$staging" nice -n 10 \
        go install -ldflags="-s -w" "github.com/coredns/coredns@$coredns_version"
      mv -f "$staging/coredns" "$tmp"
      rm -rf "$staging"
      ;;
  esac
  mv -f "$tmp" "$binary"
  log "built $name in $((SECONDS - start)) s: $binary"
  echo "$name $((SECONDS - start))s $(go version | awk '{ print $3 }') $(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$(dirname "$binary")/build-times.txt"
}

for name in "${names[@]}"; do build "$name"; done
print_paths
