#!/usr/bin/env bash
# build-kube-apiserver.sh SOURCE_DIR OUT_DIR WORK_DIR [COMPONENT...]: build kube-apiserver and
# kube-controller-manager v1.20.2 (or the COMPONENTs named, e.g. kubelet) from Debian bookworm's
# `kubernetes` source package, extracted in SOURCE_DIR (scripts/kube-deps.sh fetches and extracts
# it), into OUT_DIR, with Debian's Go (golang-go 1.19) and nothing downloaded. Debian ships only
# kubectl as a binary of that source.
#
# Adapted from the recipe the team tested on the CI machine kind (build-kube-apiserver.sh in
# /work/shared/k8s/): the same generated file, build flags and version stamp; here it fetches
# nothing and installs nothing (kube-deps.sh does), keeps its GOPATH, Go cache and temporary
# files in WORK_DIR, and stays out of the tests' way: `go build -p 1` (one package at a time),
# niced to 19 and idle I/O, so that on a 2-core machine it uses what the tests leave.
# About 9.5 minutes of CPU (9 min of wall time with both cores free, 12.5 niced beside other
# work), 1.4 GB of memory at the link, 1.6 GB in WORK_DIR. The kubelet, built after them with the
# same WORK_DIR (its Go cache), adds 70 s of CPU (1.5 to 2.5 min of wall time niced); alone, with
# a cold Go cache, it takes 7.5 minutes of CPU.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 SOURCE_DIR OUT_DIR WORK_DIR [COMPONENT...]" >&2
  exit 2
fi
src=$(realpath "$1")
out=$(realpath -m "$2")
work=$(realpath -m "$3")
shift 3
components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=(kube-apiserver kube-controller-manager)
version=v1.20.2
commit=faecb196815e248d3ecfb03c680a4507229c2a56
command -v go >/dev/null 2>&1 || { echo "Go is not installed (Debian: golang-go)" >&2; exit 1; }
mkdir -p "$out" "$work/gopath/src/k8s.io" "$work/tmp"
# Kubernetes 1.20 builds in GOPATH mode: vendor/k8s.io/* are symlinks into staging/
ln -sfn "$src" "$work/gopath/src/k8s.io/kubernetes"
export GOPATH="$work/gopath" GOCACHE="$work/gocache" GOTMPDIR="$work/tmp"
export GO111MODULE=off GOPROXY=off GOFLAGS= CGO_ENABLED=0
quiet=(nice -n 19)
command -v ionice >/dev/null 2>&1 && quiet+=(ionice -c 3)
cd "$work/gopath/src/k8s.io/kubernetes"

# The one generated file the Debian tarball lacks: pkg/generated/openapi/zz_generated.openapi.go,
# made by the vendored openapi-gen from every package that asks for it (+k8s:openapi-gen=); the
# servers serve it, the kubelet does not need it
needs_openapi=no
for component in "${components[@]}"; do
  [[ $component == kubelet ]] || needs_openapi=yes
done
if [[ $needs_openapi == yes && ! -f pkg/generated/openapi/zz_generated.openapi.go ]]; then
  echo "generating pkg/generated/openapi"
  "${quiet[@]}" go build -p 1 -o "$work/openapi-gen" \
    k8s.io/kubernetes/vendor/k8s.io/kube-openapi/cmd/openapi-gen
  dirs=$(find -H . \( -not \( \( -path ./_\* -o -path ./.\* -o -path ./vendor \) -prune \) \) \
      -type f -name '*.go' |
    sed 's|^./staging/src|vendor|; s|/[^/]*$||; s|^./||' | LC_ALL=C sort -u |
    grep -v -E '^vendor/k8s.io/(code-generator|sample-apiserver)(/|$)')
  inputs=$(for d in $dirs; do
      r=$d
      case $d in vendor/*) r=staging/src/${d#vendor/} ;; esac
      for f in "$r"/*.go; do
        if grep -q '^// *+k8s:' "$f" && grep -q '+k8s:openapi-gen=' "$f"; then
          echo "k8s.io/kubernetes/$d"
          break
        fi
      done
    done | LC_ALL=C sort -u | paste -sd,)
  "${quiet[@]}" "$work/openapi-gen" --logtostderr -i "$inputs" \
    -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
    -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$work/openapi-violations.report"
fi

# The version `kube-apiserver --version` and /version report, as upstream's build stamps it
ldflags="-s -w"
for kv in gitVersion=$version gitMajor=1 gitMinor=20 gitTreeState=clean gitCommit=$commit \
    buildDate=2021-01-13T00:00:00Z; do
  ldflags+=" -X k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version.$kv"
  ldflags+=" -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.$kv"
done
for component in "${components[@]}"; do
  echo "building $component $version"
  "${quiet[@]}" go build -p 1 -ldflags "$ldflags" -o "$out/$component" \
    "k8s.io/kubernetes/cmd/$component"
  "$out/$component" --version
done
