#!/usr/bin/env bash
# Builds the etcd, kube-apiserver, kube-controller-manager and kube-scheduler that the cluster tests (e2e/kube) run, from the Go module proxy, with the
# machine's Go toolchain, into a cache directory keyed by their versions. When both binaries are already there
# it only checks them and exits, so CI and `python -m pytest` can call it every time.
#
#   e2e/kube/build-binaries.sh              build if missing; print the binary directory on stdout
#   e2e/kube/build-binaries.sh --print-dir  print the binary directory only (no build, no Go needed)
#
# Environment:
#   XDS_SERVER_KUBE_CACHE  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/xds-server/kube). Binaries go to
#                          <root>/<k8s-version>-<etcd-version>/; the Go build and module caches live beside them
#                          so a rebuild after a version bump reuses what did not change.
#   GOPROXY                as usual for Go (the default proxy is what CI uses).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
gomod="$here/gomod"

# The versions are read from the pinned go.mod files so they are written down in exactly one place.
k8s_version="$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$gomod/kube-apiserver/go.mod")"
etcd_version="$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2 }' "$gomod/etcd/go.mod")"
if [[ -z "$k8s_version" || -z "$etcd_version" ]]; then
  echo "build-binaries.sh: cannot read the pinned versions from $gomod/*/go.mod" >&2
  exit 1
fi

cache_root="${XDS_SERVER_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xds-server/kube}"
bin_dir="$cache_root/$k8s_version-$etcd_version"

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "$bin_dir"
  exit 0
fi

have_binaries() {
  local name
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler; do
    [[ -x "$bin_dir/$name" ]] || return 1
  done
}

if have_binaries; then
  echo "$bin_dir"
  exit 0
fi

mkdir -p "$bin_dir"
# Two test runs (or pytest-xdist workers) starting at once must not build the same thing twice in parallel:
# the second waits for the first, then finds the binaries.
exec 9>"$cache_root/.build.lock"
flock 9
if have_binaries; then
  echo "$bin_dir"
  exit 0
fi

# The Go tarball's usual place, for shells whose PATH lacks it.
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
  PATH="/usr/local/go/bin:$PATH"
fi
if ! command -v go >/dev/null 2>&1; then
  echo "build-binaries.sh: 'go' is not on PATH; Go >= 1.26 is needed to build kube-apiserver $k8s_version" >&2
  exit 1
fi
# Kubernetes 1.36 declares `go 1.26.0`; with GOTOOLCHAIN=local an older Go stops with a clear error instead of
# trying to download a newer toolchain (only the module proxy is reachable, and only for modules).
export GOTOOLCHAIN=local
export CGO_ENABLED=0 # static binaries, as Kubernetes and etcd release them; no C compiler needed
export GOCACHE="$cache_root/go-build"
export GOMODCACHE="$cache_root/go-mod"
# -modcacherw: the module cache stays deletable with a plain `rm -rf`. -mod=readonly: go.sum is committed and
# complete, so no checksum database lookup is needed (it is not reachable from CI).
export GOFLAGS="-trimpath -modcacherw -mod=readonly -buildvcs=false"

log() { echo "build-binaries.sh: $*" >&2; }

# Build into a temporary name and rename, so an interrupted build never leaves a binary that looks complete.
build() {
  local name="$1" module_dir="$2" package="$3" ldflags="$4"
  local start end
  start="$(date +%s)"
  log "building $name from $package (cold: up to several minutes on 2 cores) ..."
  (cd "$module_dir" && nice -n 10 go build -ldflags="$ldflags" -o "$bin_dir/.$name.tmp" "$package")
  mv -f "$bin_dir/.$name.tmp" "$bin_dir/$name"
  end="$(date +%s)"
  log "built $name in $((end - start)) s"
  echo "$name $((end - start))s $(go version | awk '{ print $3 }')" >>"$bin_dir/build-times.txt"
}

minor="${k8s_version#v1.}"
minor="${minor%%.*}"
# What Kubernetes' own build stamps (hack/lib/version.sh), so /version reports the real release instead of
# v0.0.0-master.
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean"
done

[[ -x "$bin_dir/etcd" ]] || build etcd "$gomod/etcd" go.etcd.io/etcd/server/v3 "-s -w"
# The three Kubernetes binaries come from one pinned module (gomod/kube-apiserver), so they share the build cache:
# the second and third take well under a minute after the first.
for name in kube-apiserver kube-controller-manager kube-scheduler; do
  [[ -x "$bin_dir/$name" ]] || build "$name" "$gomod/kube-apiserver" "k8s.io/kubernetes/cmd/$name" "$k8s_ldflags"
done

"$bin_dir/etcd" --version >&2
"$bin_dir/kube-apiserver" --version >&2
"$bin_dir/kube-controller-manager" --version >&2
"$bin_dir/kube-scheduler" --version >&2
echo "$bin_dir"
