#!/usr/bin/env bash
# The real Kubernetes API server used by vipd's tests, demo and benchmarks.
#
#   scripts/harness.sh build          build kube-harness and kubectl unless current; print the bin dir
#   scripts/harness.sh start ARGS     build if needed, then `kube-harness start ARGS`
#   scripts/harness.sh stop --dir D   stop that server and remove its data
#
# kube-harness is built from tests/apiserver (k8s.io/kubernetes v1.36.3 and its
# pinned etcd). The build is cached in target/harness, keyed by a hash of the
# sources: a second start does not rebuild.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src="$root/tests/apiserver"
out="${VIPD_HARNESS_DIR:-$root/target/harness}"

build() {
  local hash
  hash=$(cat "$src/go.mod" "$src/go.sum" "$src"/*.go | sha256sum | cut -d' ' -f1)
  if [ -x "$out/kube-harness" ] && [ -x "$out/kubectl" ] && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$hash" ]; then
    return 0
  fi
  # shellcheck source=scripts/ensure-go.sh
  . "$root/scripts/ensure-go.sh"
  ensure_go
  mkdir -p "$out"
  echo "harness: building kube-apiserver harness and kubectl (first time takes minutes)" >&2
  local t0=$SECONDS
  (cd "$src" && go mod download && go build -o "$out/kube-harness.new" . \
     && go build -o "$out/kubectl.new" k8s.io/kubernetes/cmd/kubectl)
  mv "$out/kube-harness.new" "$out/kube-harness"
  mv "$out/kubectl.new" "$out/kubectl"
  echo "$hash" > "$out/.stamp"
  echo "harness: built in $((SECONDS - t0)) s" >&2
}

cmd="${1:-}"; shift || true
case "$cmd" in
  build) build; echo "$out" ;;
  start) build; exec "$out/kube-harness" start "$@" ;;
  stop) exec "$out/kube-harness" stop "$@" ;;
  *) echo "usage: $0 build|start|stop [args]" >&2; exit 2 ;;
esac
