#!/usr/bin/env bash
# kube-deps.sh [--foreground]: prepare the real Kubernetes components the tests run
# (tether.testing.kube): Debian's etcd (etcd-server, installed with apt where missing), Debian's
# kubectl 1.20 (extracted from kubernetes-client, which would clash with another kubectl on
# PATH) and kube-apiserver + kube-controller-manager 1.20.2, built from Debian's source package
# by scripts/build-kube-apiserver.sh (Debian ships no server binaries). Then, for a node that
# runs pods (root only): the kubelet, built from the same source right after the servers (with
# their Go cache), Debian's containerd (with its ctr and runc shim) and runc unpacked from their
# packages (not installed), and two images made by scripts/kube-node-images.py from Debian's
# busybox-static. All but etcd go to a cache outside the clone, one directory per version:
#
#   ${TETHER_KUBE_CACHE:-/var/cache/tether/kube}   (not root: ~/.cache/tether/kube)
#     v1.20.2/         kube-apiserver, kube-controller-manager, kubectl; only ever renamed in
#                      whole, so it is complete or absent
#     v1.20.2.status   "ok", "failed: REASON", or "preparing since ..." while it runs
#     v1.20.2-node/    kubelet, containerd, containerd-shim-runc-v2, ctr, runc, images/*.tar,
#                      VERSIONS (the Debian packages'); complete or absent, like v1.20.2/
#     v1.20.2-node.status  the same for the node's part: it may fail (not root, a package
#                      missing) while the server's is "ok"; then only the node's tests skip
#     v1.20.2.log      what the last preparation printed (both parts)
#     v1.20.2.lock     held (flock) while a preparation runs: one at a time
#
# Nothing is done again that the cache already has. The build takes 9 to 13 minutes on a fresh
# 2-core machine (the kubelet's 1.5 to 2.5 more, the node's packages and images seconds), so it
# must not delay the tests: this returns at once and the work goes on in the background, in a
# session of its own (tox neither waits for it nor stops it), niced, its output in the log; the
# tests that need Kubernetes run last and wait for the status, and are skipped with its reason
# when it is "failed: ...". --foreground does the work here and now instead (for a machine image
# or to watch it); the exit status is 0 either way, the status files say what happened. The
# harness in kernel/tether/testing/kube.py and kube_node.py reads this layout: change them all.
set -Eeuo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version=v1.20.2
debian_version=1.20.5+really1.20.2-1.1+deb12u1
if [[ -n ${TETHER_KUBE_CACHE:-} ]]; then
  cache=$TETHER_KUBE_CACHE
elif [[ $(id -u) -eq 0 ]]; then
  cache=/var/cache/tether/kube
else
  cache=$HOME/.cache/tether/kube
fi
final=$cache/$version
status=$cache/$version.status
node_final=$cache/$version-node
node_status=$cache/$version-node.status
log=$cache/$version.log
lock=$cache/$version.lock
work=$cache/$version.work

has_etcd() { command -v etcd >/dev/null 2>&1 || [[ -x /usr/bin/etcd ]]; }

# a binary of the cache (or about to be) that runs and reports the version we build
is_current() {
  local binary=$1 said
  [[ -x $binary ]] || return 1
  if [[ $(basename "$binary") == kubectl ]]; then
    said=$("$binary" version --client --short 2>/dev/null) || return 1
    [[ $said == "Client Version: $version" ]]
  else
    said=$("$binary" --version 2>/dev/null) || return 1
    [[ $said == "Kubernetes $version" ]]
  fi
}

ready() {
  [[ $(cat "$status" 2>/dev/null) == ok ]] && has_etcd &&
    [[ -x $final/kube-apiserver && -x $final/kube-controller-manager && -x $final/kubectl ]]
}

node_binaries=(kubelet containerd containerd-shim-runc-v2 ctr runc)
node_ready() {
  local binary
  [[ $(cat "$node_status" 2>/dev/null) == ok ]] || return 1
  for binary in "${node_binaries[@]}"; do
    [[ -x $node_final/$binary ]] || return 1
  done
  [[ -f $node_final/images/busybox.tar && -f $node_final/images/pause.tar ]]
}

# apt-get with lists of its own in $work: the machine's sources plus their deb-src twins, so
# that neither the machine's apt configuration nor its package lists change (and no root is
# needed to fetch)
private_apt() {
  apt-get -q -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$work/apt/sources" \
    -o Dir::State::Lists="$work/apt/lists" -o Dir::Cache="$work/apt/cache" \
    -o Acquire::Retries=3 "$@"
}

# The Kubernetes source package, extracted in $work/src (once: kept until the preparation is done)
fetch_source() {
  step="fetching Debian's kubernetes source package ($debian_version)"
  echo "$(date -u +%T) $step"
  if [[ ! -d $work/src ]]; then
    (cd "$work" && private_apt source --download-only "kubernetes=$debian_version")
    rm -rf "$work/src.new"
    # apt-get checked the files against the signed Sources index; dpkg-source only warns
    # that it has no key for the .dsc's own signature
    dpkg-source -x "$work/kubernetes_$debian_version.dsc" "$work/src.new" >/dev/null
    mv "$work/src.new" "$work/src"
  fi
}

# The node's part, run in a subshell: a failure ends it alone, and its status file says which
# step failed. Needs the package lists (and, to build the kubelet, the source) in $work.
prepare_node() {
  step="starting the node's part"
  trap 'step="$step (interrupted)"; exit 1' TERM INT HUP
  trap '[[ $(cat "$node_status" 2>/dev/null) == ok ]] || {
          echo "failed: $step (see $log)" >"$node_status"
          rm -rf "${node_staging:-}"
        }' EXIT
  echo "$(date -u +%T) preparing the node's components in $node_final"
  node_staging=$(mktemp -d "$cache/$version-node.new.XXXXXX")
  chmod 755 "$node_staging"
  if is_current "$node_final/kubelet"; then
    ln "$node_final/kubelet" "$node_staging/kubelet" 2>/dev/null ||
      cp -p "$node_final/kubelet" "$node_staging/"
  else
    fetch_source
    step="building the kubelet (go build)"
    echo "$(date -u +%T) $step"
    bash "$here/build-kube-apiserver.sh" "$work/src" "$node_staging" "$work" kubelet || {
      rm -rf "$work/src"
      exit 1
    }
    step="the built kubelet does not report $version"
    is_current "$node_staging/kubelet"
  fi
  # Debian's own, unpacked and not installed: nothing of the machine's changes, and another
  # containerd there (Docker's) is left alone
  step="fetching Debian's containerd, runc and busybox-static"
  echo "$(date -u +%T) $step"
  rm -rf "$work/node-debs" "$work/node-root"
  mkdir -p "$work/node-debs" "$work/node-root"
  (cd "$work/node-debs" && private_apt download containerd runc busybox-static)
  : >"$node_staging/VERSIONS"
  for deb in "$work"/node-debs/*.deb; do
    dpkg-deb -x "$deb" "$work/node-root"
    echo "$(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version)" >>"$node_staging/VERSIONS"
  done
  cat "$node_staging/VERSIONS"
  step="containerd's or runc's package lacks a binary the node runs"
  for binary in containerd containerd-shim-runc-v2 ctr; do
    cp -p "$work/node-root/usr/bin/$binary" "$node_staging/"
  done
  cp -p "$work/node-root/usr/sbin/runc" "$node_staging/"
  # runc links libseccomp2, which Debian machines have; say so here rather than at a test
  step="Debian's runc or containerd does not run here (a library missing?)"
  "$node_staging/runc" --version
  "$node_staging/containerd" --version
  step="building the node's images from busybox-static (scripts/kube-node-images.py)"
  echo "$(date -u +%T) $step"
  python3 "$here/kube-node-images.py" "$work/node-root/bin/busybox" "$node_staging/images" \
    "$(dpkg --print-architecture | sed 's/^armhf$/arm/; s/^i386$/386/; s/^ppc64el$/ppc64le/')"
  step="installing the node's components in $node_final"
  if [[ -e $node_final ]]; then
    mv "$node_final" "$cache/$version-node.old.$$"
  fi
  mv "$node_staging" "$node_final"
  rm -rf "$cache/$version-node.old.$$"
  echo ok >"$node_status"
  echo "$(date -u +%T) ready: $node_final"
}

# The preparation, in a process of its own that holds the lock (descriptor 9). Any command that
# fails ends it, and the status file then says which step failed. The server's part comes
# first, and its status says "ok" as soon as it is: the node's part (the kubelet build) goes on
# while the server's tests run.
prepare() {
  step="starting"
  trap 'step="$step (interrupted)"; exit 1' TERM INT HUP
  trap '[[ $(cat "$status" 2>/dev/null) == ok ]] || {
          echo "failed: $step (see $log)" >"$status"
          rm -rf "${staging:-}"
        }
        [[ $(cat "$node_status" 2>/dev/null) == preparing* ]] &&
          echo "failed: the servers'\'' part failed first: $step (see $log)" >"$node_status"
        true' EXIT
  echo "$(date -u +%T) preparing the Kubernetes $version test components in $cache"
  # what a run that was stopped half-way left (the lock is ours: no other run is in there)
  rm -rf "$cache/$version".new.* "$cache/$version".old.* "$cache/$version"-node.new.* \
    "$cache/$version"-node.old.*
  staging=$(mktemp -d "$cache/$version.new.XXXXXX")
  chmod 755 "$staging"
  # keep what the cache already has (a run stopped after one binary, an older kube-deps)
  for binary in kube-apiserver kube-controller-manager kubectl; do
    if is_current "$final/$binary"; then
      ln "$final/$binary" "$staging/$binary" 2>/dev/null || cp -p "$final/$binary" "$staging/"
    fi
  done
  build=no
  need=()
  [[ -x $staging/kube-apiserver && -x $staging/kube-controller-manager ]] || build=yes
  has_etcd || need+=(etcd-server)
  if [[ $build == yes ]]; then
    command -v go >/dev/null 2>&1 || need+=(golang-go)
    command -v dpkg-source >/dev/null 2>&1 || need+=(dpkg-dev)
  fi
  if [[ ${#need[@]} -gt 0 ]]; then
    step="missing ${need[*]}: install them, or run scripts/kube-deps.sh as root"
    [[ $(id -u) -eq 0 ]] || exit 1
    step="missing ${need[*]}, and no apt-get to install them"
    command -v apt-get >/dev/null 2>&1 || exit 1
    step="installing ${need[*]} with apt-get"
    echo "$(date -u +%T) $step"
    bash "$here/apt-install.sh" "${need[@]}"
  fi
  node=yes
  node_ready && node=no
  if [[ $node == yes && $(id -u) -ne 0 ]]; then
    # the kubelet and containerd run as root only: no use building them for this user
    echo "failed: not root: a node (kubelet, containerd) runs only as root" >"$node_status"
    node=no
  fi
  if [[ $build == yes || ! -x $staging/kubectl || $node == yes ]]; then
    step="no apt-get to fetch Debian's kubernetes packages with"
    command -v apt-get >/dev/null 2>&1 || exit 1
    step="fetching Debian's package lists (with deb-src) into $work/apt"
    echo "$(date -u +%T) $step"
    mkdir -p "$work/apt/sources" "$work/apt/lists/partial" "$work/apt/cache/archives/partial"
    rm -f "$work/apt/sources/"*
    # as they are where the machine already has deb-src entries, else each with its twin
    twins=yes
    grep -qsE '^(deb-src |Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
      /etc/apt/sources.list.d/*.sources && twins=no
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources; do
      [[ -e $file ]] || continue
      if [[ $twins == no ]]; then
        cp "$file" "$work/apt/sources/$(basename "$file")"
      elif [[ $file == *.sources ]]; then
        sed 's/^Types: deb$/Types: deb deb-src/' "$file" >"$work/apt/sources/$(basename "$file")"
      else
        sed -n 's/^deb \(.*\)$/deb \1\ndeb-src \1/p' "$file" >"$work/apt/sources/$(basename "$file")"
      fi
    done
    # a source without deb-src (a third party's) fails its part; the fetches below say if what
    # we need is missing
    private_apt update || echo "$(date -u +%T) some package lists failed; going on"
  fi
  if [[ ! -x $staging/kubectl ]]; then
    step="fetching Debian's kubectl (kubernetes-client=$debian_version)"
    echo "$(date -u +%T) $step"
    rm -rf "$work/kubectl" "$work"/kubernetes-client_*.deb
    (cd "$work" && private_apt download "kubernetes-client=$debian_version")
    dpkg-deb -x "$work"/kubernetes-client_*.deb "$work/kubectl"
    cp "$work/kubectl/usr/bin/kubectl" "$staging/kubectl"
    step="Debian's kubectl does not report $version"
    is_current "$staging/kubectl"
  fi
  if [[ $build == yes ]]; then
    fetch_source
    step="building kube-apiserver and kube-controller-manager (go build)"
    echo "$(date -u +%T) $step"
    # a tree that a failed build may have left half-generated is extracted again next time
    bash "$here/build-kube-apiserver.sh" "$work/src" "$staging" "$work" || {
      rm -rf "$work/src"
      exit 1
    }
    step="the built kube-apiserver or kube-controller-manager does not report $version"
    is_current "$staging/kube-apiserver"
    is_current "$staging/kube-controller-manager"
  fi
  if ready; then
    # only the node's part was missing: the servers' directory stays as the tests see it
    rm -rf "$staging"
  else
    step="installing the components in $final"
    if [[ -e $final ]]; then
      mv "$final" "$cache/$version.old.$$"
    fi
    mv "$staging" "$final"
    rm -rf "$cache/$version.old.$$"
    echo ok >"$status"
    echo "$(date -u +%T) ready: $final"
  fi
  if [[ $node == yes ]]; then
    # its own subshell: a failure there leaves the servers' "ok" as it is
    set +e
    (
      set -e
      prepare_node
    )
    set -e
  fi
  # the Go cache and the source stay for another try when the node's part failed
  [[ $(cat "$node_status" 2>/dev/null) == failed:* && $node == yes ]] || rm -rf "$work"
}

if ready && { node_ready || [[ $(cat "$node_status" 2>/dev/null) == "failed: not root"* ]]; }; then
  echo "Kubernetes $version test components: ready in $final"
  exit 0
fi
if [[ ${1:-} == --worker ]]; then
  # started below, holding the lock on descriptor 9
  prepare
  exit 0
fi
if ! mkdir -p "$cache" 2>/dev/null || ! command -v flock >/dev/null 2>&1; then
  echo "Kubernetes test components: cannot prepare them in $cache (not writable, or no" \
    "flock); the Kubernetes tests will be skipped" >&2
  exit 0
fi
exec 9>>"$lock"
if ! flock -n 9; then
  echo "Kubernetes test components: another run is preparing them (log: $log)"
  exit 0
fi
ready || echo "preparing since $(date -u +%FT%TZ)" >"$status"
node_ready || echo "preparing since $(date -u +%FT%TZ)" >"$node_status"
: >"$log"
if [[ ${1:-} == --foreground ]]; then
  "$BASH" "$0" --worker </dev/null >>"$log" 2>&1 || true
  echo "Kubernetes $version test components: $(cat "$status"); the node's: $(cat "$node_status")"
  exit 0
fi
# a session of its own, no terminal and none of tox's pipes: tox returns at once, and the
# preparation outlives it; the lock on descriptor 9 goes with it
if command -v setsid >/dev/null 2>&1; then
  setsid -f "$BASH" "$0" --worker </dev/null >>"$log" 2>&1
else
  nohup "$BASH" "$0" --worker </dev/null >>"$log" 2>&1 &
  disown
fi
echo "Kubernetes $version test components: preparing in the background (log: $log)"
