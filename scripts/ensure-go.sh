#!/usr/bin/env bash
# Sourced by the other scripts: puts a Go >= 1.26 on PATH.
# Uses the machine's Go when it is new enough; otherwise downloads the
# official toolchain from the Go module proxy (golang.org/toolchain), which
# needs no Debian package and no other download site.
ensure_go() {
  local want="1.26.8"
  if command -v go >/dev/null 2>&1; then
    local have
    have=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
    if [ -n "$have" ] && [ "$(printf '%s\n%s\n' "1.26" "$have" | sort -V | head -1)" = "1.26" ]; then
      return 0
    fi
  fi
  local dir="${XDG_CACHE_HOME:-$HOME/.cache}/vipd/go$want"
  if [ ! -x "$dir/bin/go" ]; then
    local arch
    case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) echo "unsupported arch $(uname -m)" >&2; return 1 ;; esac
    local proxy="${GOPROXY:-https://proxy.golang.org}"; proxy="${proxy%%,*}"
    echo "ensure-go: fetching go$want from $proxy" >&2
    mkdir -p "$dir.tmp"
    curl -fsSL "$proxy/golang.org/toolchain/@v/v0.0.1-go$want.linux-$arch.zip" -o "$dir.tmp/go.zip"
    (cd "$dir.tmp" && python3 -c 'import zipfile,sys; zipfile.ZipFile("go.zip").extractall(".")')
    rm -rf "$dir" && mv "$dir.tmp/golang.org/toolchain@v0.0.1-go$want.linux-$arch" "$dir" && rm -rf "$dir.tmp"
    chmod +x "$dir"/bin/* "$dir"/pkg/tool/*/* 2>/dev/null || true
  fi
  export PATH="$dir/bin:$PATH"
}
