#!/usr/bin/env bash
# The parts of a real Kubernetes node that vipd's pod tests run in the lab:
#
#   scripts/nodes.sh build     build what is missing or stale; print the bin dir
#
# - containerd, containerd-shim-runc-v2 and ctr, built from the Go module
#   proxy at the version tests/nodes/go.mod pins (Kubernetes 1.36's kubelet
#   needs containerd 2; Debian 12 ships 1.6). runc is Debian's.
# - kubelet, kube-proxy (iptables mode, as K3s runs it), kube-controller-manager
#   and kube-scheduler, built from the same
#   k8s.io/kubernetes module as the API server harness (tests/apiserver).
# - the sandbox ("pause") image, from tests/nodes/pause.c: a static binary in
#   a one-layer OCI archive made with umoci, imported into each node's
#   containerd, so no registry is ever asked.
#
# Cached in target/nodes, keyed by a hash of the sources.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out="${VIPD_NODES_DIR:-$root/target/nodes}"
# The name the lab's containerd pins as its sandbox image.
pause_name="vipd.dev/lab/pause:1"

build() {
  local hash
  hash=$(cat "$root/tests/nodes/go.mod" "$root/tests/nodes/go.sum" "$root/tests/nodes"/*.go \
    "$root/tests/nodes/pause.c" "$root/tests/apiserver/go.mod" "$root/tests/apiserver/go.sum" \
    "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$out/.stamp" 2>/dev/null)" = "$hash" ]; then
    return 0
  fi
  # shellcheck source=scripts/ensure-go.sh
  . "$root/scripts/ensure-go.sh"
  ensure_go
  for tool in umoci skopeo runc gcc iptables-restore; do
    command -v "$tool" >/dev/null || { echo "nodes: $tool is missing (scripts/setup.sh installs it)" >&2; exit 2; }
  done
  mkdir -p "$out/bin"
  echo "nodes: building containerd, kubelet, kube-proxy, kube-controller-manager, kube-scheduler (first time takes minutes)" >&2
  local t0=$SECONDS
  (cd "$root/tests/nodes" && go mod download && CGO_ENABLED=1 go build -trimpath -tags "no_btrfs no_devmapper" -o "$out/bin/" \
     github.com/containerd/containerd/v2/cmd/containerd \
     github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
     github.com/containerd/containerd/v2/cmd/ctr)
  (cd "$root/tests/apiserver" && go mod download && go build -trimpath -o "$out/bin/" \
     k8s.io/kubernetes/cmd/kubelet \
     k8s.io/kubernetes/cmd/kube-proxy \
     k8s.io/kubernetes/cmd/kube-controller-manager \
     k8s.io/kubernetes/cmd/kube-scheduler)
  pause_image
  echo "$hash" > "$out/.stamp"
  echo "nodes: built in $((SECONDS - t0)) s" >&2
}

pause_image() {
  local work="$out/pause-work"
  rm -rf "$work"
  mkdir -p "$work"
  gcc -O2 -static -s -o "$work/pause" "$root/tests/nodes/pause.c"
  umoci init --layout "$work/oci"
  umoci new --image "$work/oci:pause"
  umoci unpack --image "$work/oci:pause" "$work/bundle" >/dev/null
  install -m 0755 "$work/pause" "$work/bundle/rootfs/pause"
  umoci repack --image "$work/oci:pause" "$work/bundle"
  umoci config --image "$work/oci:pause" --os linux --architecture "$(go env GOARCH)" \
    --config.entrypoint /pause --history.created_by "scripts/nodes.sh"
  umoci gc --layout "$work/oci"
  rm -f "$out/pause.tar"
  skopeo copy --quiet "oci:$work/oci:pause" "oci-archive:$out/pause.tar:$pause_name"
  rm -rf "$work"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  build) build; echo "$out" ;;
  *) echo "usage: $0 build" >&2; exit 2 ;;
esac
