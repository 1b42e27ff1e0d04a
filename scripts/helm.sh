#!/usr/bin/env bash
# Helm for the chart's tests (charts/vipd), built from the Go module proxy:
#
#   scripts/helm.sh build     build helm unless current; print its path
#
# The version is pinned in tests/helm/go.mod. Cached in target/helm, keyed
# by a hash of the module files.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src="$root/tests/helm"
out="${VIPD_HELM_DIR:-$root/target/helm}"

build() {
  local hash
  hash=$(cat "$src/go.mod" "$src/go.sum" "$src"/*.go "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)
  if [ -x "$out/helm" ] && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$hash" ]; then
    return 0
  fi
  # shellcheck source=scripts/ensure-go.sh
  . "$root/scripts/ensure-go.sh"
  ensure_go
  mkdir -p "$out"
  echo "helm: building helm from the Go module proxy (first time takes minutes)" >&2
  local t0=$SECONDS
  (cd "$src" && go mod download && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/helm" helm.sh/helm/v3/cmd/helm)
  echo "$hash" > "$out/.stamp"
  echo "helm: built in $((SECONDS - t0)) s" >&2
}

cmd="${1:-}"; shift || true
case "$cmd" in
  build) build; echo "$out/helm" ;;
  *) echo "usage: $0 build" >&2; exit 2 ;;
esac
