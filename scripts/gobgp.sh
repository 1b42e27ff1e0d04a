#!/usr/bin/env bash
# GoBGP for vipd's BGP mode, built from the Go module proxy:
#
#   scripts/gobgp.sh build     build gobgpd and gobgp unless current; print the bin dir
#   scripts/gobgp.sh protos    print the directory of the module's .proto files
#
# The version is pinned once, in bgp/gobgp/go.mod (GoBGP v4: BFD in its
# gRPC API; Debian's gobgpd 3.10 has none). bgp/build.rs generates vipd's
# gRPC client from the protos of that same module version; scripts/image.sh
# puts this gobgpd into the image. Cached in target/gobgp, keyed by a hash
# of the module files.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src="$root/bgp/gobgp"
out="${VIPD_GOBGP_DIR:-$root/target/gobgp}"

build() {
  local hash
  hash=$(cat "$src/go.mod" "$src/go.sum" "$src"/*.go "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)
  if [ -x "$out/bin/gobgpd" ] && [ -x "$out/bin/gobgp" ] && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$hash" ]; then
    return 0
  fi
  # shellcheck source=scripts/ensure-go.sh
  . "$root/scripts/ensure-go.sh"
  ensure_go
  mkdir -p "$out/bin"
  echo "gobgp: building gobgpd and gobgp $(version) from the Go module proxy" >&2
  local t0=$SECONDS
  # Static, so the image needs no libc for it.
  (cd "$src" && go mod download && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/bin/" \
     github.com/osrg/gobgp/v4/cmd/gobgpd github.com/osrg/gobgp/v4/cmd/gobgp)
  echo "$hash" > "$out/.stamp"
  echo "gobgp: built in $((SECONDS - t0)) s" >&2
}

version() {
  awk '$1 == "require" && $2 == "github.com/osrg/gobgp/v4" { print $3 }' "$src/go.mod"
}

protos() {
  # shellcheck source=scripts/ensure-go.sh
  . "$root/scripts/ensure-go.sh"
  ensure_go
  local dir
  dir=$(cd "$src" && go mod download -json github.com/osrg/gobgp/v4 | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  echo "$dir/proto"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  build) build; echo "$out/bin" ;;
  protos) protos ;;
  version) version ;;
  *) echo "usage: $0 build|protos|version" >&2; exit 2 ;;
esac
