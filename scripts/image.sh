#!/usr/bin/env bash
# Builds vipd's container image offline, from this workspace's release
# binaries, with Debian's umoci and skopeo: no base image, no registry.
#
#   scripts/image.sh            -> target/image/vipd-<version>-<arch>.tar (an OCI archive)
#
# The image holds vipd, vipctl and gobgpd (BGP mode), the shared libraries
# they need, and nothing else; it is tagged as the generated manifests name
# it (ghcr.io/vipd/vipd:v<version>). Import it with
#   ctr -n k8s.io images import target/image/vipd-<version>-amd64.tar
# or copy it to K3s' /var/lib/rancher/k3s/agent/images/.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

for tool in umoci skopeo; do
  command -v "$tool" >/dev/null || { echo "image: $tool is missing (scripts/setup.sh installs it)" >&2; exit 2; }
done

version=$(cargo metadata --no-deps --format-version 1 \
  | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="vipd"))')
case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) echo "image: unsupported arch $(uname -m)" >&2; exit 2 ;; esac
name="ghcr.io/vipd/vipd:v${version}"
# gobgpd v4 (BFD), built from the Go module proxy at the version bgp/gobgp/go.mod pins.
gobgpd=${GOBGPD:-$("$root/scripts/gobgp.sh" build)/gobgpd}
[ -x "$gobgpd" ] || { echo "image: no gobgpd binary (set GOBGPD=/path/to/gobgpd)" >&2; exit 2; }

cargo build --release --quiet --bin vipd --bin vipctl

out="$root/target/image"
work="$out/work-$arch"
rm -rf "$work"
mkdir -p "$work/rootfs/usr/local/bin" "$work/rootfs/tmp" "$work/rootfs/run/vipd" "$work/rootfs/etc"
chmod 1777 "$work/rootfs/tmp"
chmod 0700 "$work/rootfs/run/vipd"

# The binaries, without their debug information.
for b in vipd vipctl; do
  objcopy --strip-debug --strip-unneeded "target/release/$b" "$work/rootfs/usr/local/bin/$b"
done
install -m 0755 "$gobgpd" "$work/rootfs/usr/local/bin/gobgpd"
ln -s vipctl "$work/rootfs/usr/local/bin/kubectl-vipd"

# The shared libraries the Rust binaries need (gobgpd is static), at the
# paths the dynamic loader looks for them.
for lib in $(ldd target/release/vipd target/release/vipctl | awk '/=> \// {print $3} /^\t\/lib/ {print $1}' | sort -u); do
  mkdir -p "$work/rootfs$(dirname "$lib")"
  cp -L "$lib" "$work/rootfs$lib"
done
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\n' > "$work/rootfs/etc/passwd"
printf 'root:x:0:\n' > "$work/rootfs/etc/group"

# An empty image, the rootfs as its one layer, then the configuration.
layout="$work/oci"
umoci init --layout "$layout"
umoci new --image "$layout:build"
umoci unpack --image "$layout:build" "$work/bundle" >/dev/null
rm -rf "$work/bundle/rootfs"
mv "$work/rootfs" "$work/bundle/rootfs"
umoci repack --refresh-bundle --image "$layout:build" "$work/bundle"
umoci config --image "$layout:build" \
  --os linux --architecture "$arch" \
  --config.entrypoint /usr/local/bin/vipd --config.cmd manager \
  --config.env PATH=/usr/local/bin:/usr/bin:/bin \
  --config.label "org.opencontainers.image.title=vipd" \
  --config.label "org.opencontainers.image.version=${version}" \
  --config.label "org.opencontainers.image.source=https://github.com/vipd/vipd" \
  --history.created_by "scripts/image.sh"
umoci gc --layout "$layout"

tar_path="$out/vipd-${version}-${arch}.tar"
rm -f "$tar_path"
skopeo copy --quiet "oci:$layout:build" "oci-archive:$tar_path:$name"
rm -rf "$work"
size=$(stat -c %s "$tar_path")
echo "image: $name -> $tar_path ($((size / 1024 / 1024)) MiB, layers gzip-compressed)"
