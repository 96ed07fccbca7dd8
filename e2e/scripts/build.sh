#!/usr/bin/env bash
# Build the harness binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok, kwokctl, helm) from the Go module proxy into
# $MULTIVPC_CACHE, one directory per component and version. A component whose
# binaries already exist is skipped, so a warm run takes seconds.
# Build times are appended to $MULTIVPC_CACHE/build-times.log.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v go >/dev/null || die "go is required (Go >= 1.24)"
export CGO_ENABLED=0
# Keep the 2-core / 24 GiB machine from thrashing: two compile jobs at once.
GO_P="${MULTIVPC_GO_PARALLEL:-2}"
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
mkdir -p "$MULTIVPC_CACHE"
TIMES="$MULTIVPC_CACHE/build-times.log"

have_all() { local d=$1; shift; for b in "$@"; do [ -x "$d/$b" ] || return 1; done; }

timed() { # timed NAME CMD...
  local name=$1; shift; local t0; t0=$(date +%s)
  log "building $name"
  "$@"
  local dt=$(( $(date +%s) - t0 ))
  log "built $name in ${dt}s"
  echo "$(date -u +%FT%TZ) $name ${dt}s go=$(go env GOVERSION) p=$GO_P" >>"$TIMES"
}

build_kubernetes() {
  local v=${K8S_VERSION#v} src="$MULTIVPC_CACHE/src/kubernetes-$K8S_VERSION"
  local minor; minor=$(echo "$v" | cut -d. -f2)
  local stage="v0.${v#1.}"
  mkdir -p "$src" "$K8S_BIN.tmp"
  # The k8s.io/kubernetes go.mod requires its staging modules at v0.0.0 with
  # local replaces; a wrapper module pins each one to its published v0.X.Y.
  local modfile
  modfile=$(cd "$src" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$modfile" ] || die "cannot download k8s.io/kubernetes@$K8S_VERSION go.mod"
  local gover godebug
  gover=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$modfile")
  godebug=$(sed -n 's/^godebug \(.*\)$/\1/p' "$modfile")
  {
    echo "module multivpc.local/e2e/kubernetes-build"
    echo
    echo "go $gover"
    [ -n "$godebug" ] && echo "godebug $godebug"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\t\1 => \1 '"$stage"'#p' "$modfile"
    echo ")"
  } >"$src/go.mod"
  : >"$src/go.sum"
  local pkg="k8s.io/component-base/version" cpkg="k8s.io/client-go/pkg/version"
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ld="-s -w"
  for p in $pkg $cpkg; do
    ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=$date -X $p.gitCommit=module-proxy-$K8S_VERSION"
  done
  (cd "$src" && go build -mod=mod -p "$GO_P" -trimpath -ldflags "$ld" -o "$K8S_BIN.tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl)
  rm -rf "$K8S_BIN"; mv "$K8S_BIN.tmp" "$K8S_BIN"
}

build_etcd() {
  local src="$MULTIVPC_CACHE/src/etcd-$ETCD_VERSION"
  mkdir -p "$src" "$ETCD_BIN.tmp"
  # server/v3 is package main but its go.mod has relative replaces: build it
  # as a dependency of a wrapper module (its version is compiled in).
  printf 'module multivpc.local/e2e/etcd-build\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >"$src/go.mod"
  : >"$src/go.sum"
  (cd "$src" && go build -mod=mod -p "$GO_P" -trimpath -ldflags "-s -w" -o "$ETCD_BIN.tmp/etcd" go.etcd.io/etcd/server/v3)
  rm -rf "$ETCD_BIN"; mv "$ETCD_BIN.tmp" "$ETCD_BIN"
}

build_kwok() {
  mkdir -p "$KWOK_BIN.tmp"
  local c=sigs.k8s.io/kwok/pkg/consts
  GOBIN="$KWOK_BIN.tmp" go install -p "$GO_P" -trimpath \
    -ldflags "-s -w -X $c.Version=${KWOK_VERSION#v} -X $c.KubeVersion=${K8S_VERSION#v}" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION"
  rm -rf "$KWOK_BIN"; mv "$KWOK_BIN.tmp" "$KWOK_BIN"
}

build_helm() {
  mkdir -p "$HELM_BIN.tmp"
  GOBIN="$HELM_BIN.tmp" go install -p "$GO_P" -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  rm -rf "$HELM_BIN"; mv "$HELM_BIN.tmp" "$HELM_BIN"
}

# CoreDNS with the plugins the DNS leg's Corefiles use (those of Kube-OVN's documented vpc-dns
# Corefile but `kubernetes`, the block dns-forwarder adds, and what stands in for the cluster
# DNS and Lighthouse): a main of our own that links them, as CoreDNS's own main links all.
build_coredns() {
  local src="$MULTIVPC_CACHE/src/coredns-$COREDNS_VERSION" p imports=""
  mkdir -p "$src" "$COREDNS_BIN.tmp"
  for p in bind cache errors file forward health hosts loadbalance log loop metrics ready reload template; do
    imports="$imports	_ \"github.com/coredns/coredns/plugin/$p\"
"
  done
  printf 'package main\n\nimport (\n\t"github.com/coredns/coredns/coremain"\n\t_ "github.com/coredns/coredns/core/dnsserver"\n%s)\n\nfunc main() { coremain.Run() }\n' "$imports" >"$src/main.go"
  printf 'module multivpc.local/e2e/coredns-build\n\ngo 1.24\n\nrequire github.com/coredns/coredns %s\n' "$COREDNS_VERSION" >"$src/go.mod"
  : >"$src/go.sum"
  (cd "$src" && go build -mod=mod -p "$GO_P" -trimpath -ldflags "-s -w" -o "$COREDNS_BIN.tmp/coredns" .)
  rm -rf "$COREDNS_BIN"; mv "$COREDNS_BIN.tmp" "$COREDNS_BIN"
}

only="${1:-all}"
want() { [ "$only" = all ] || [ "$only" = "$1" ]; }
want etcd && { have_all "$ETCD_BIN" etcd || timed "etcd-$ETCD_VERSION" build_etcd; }
want kwok && { have_all "$KWOK_BIN" kwok kwokctl || timed "kwok-$KWOK_VERSION" build_kwok; }
want helm && { have_all "$HELM_BIN" helm || timed "helm-$HELM_VERSION" build_helm; }
want coredns && { have_all "$COREDNS_BIN" coredns || timed "coredns-$COREDNS_VERSION" build_coredns; }
want kubernetes && { have_all "$K8S_BIN" kube-apiserver kube-controller-manager kube-scheduler kubectl || timed "kubernetes-$K8S_VERSION" build_kubernetes; }
log "binaries ready in $MULTIVPC_CACHE"
