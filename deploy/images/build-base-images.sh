#!/usr/bin/env bash
# Builds, on a machine that reaches no container registry, local stand-ins for the
# images the Dockerfile and deploy/compose.yaml name, under the same names, from a
# minimal Debian made with debootstrap (Debian's package mirror is all it needs):
#
#   rust:1.95-slim-bookworm              the build stage: Debian + gcc + this
#                                        machine's Rust toolchain (rustc 1.95)
#   gcr.io/distroless/cc-debian12:nonroot the runtime stage: glibc, libgcc, a
#                                        nonroot user (65532), no shell
#   prom/prometheus:v2.53.2, prom/alertmanager:v0.27.0, prom/node-exporter:v1.8.2,
#   nginx:1.27                           Debian's packages of each, same entrypoints
#
# With a registry none of this is needed: `docker build -t anomalyd .` pulls the
# real images. Idempotent: an image that exists is kept (FORCE=1 rebuilds).
set -euo pipefail
work=${WORK:-/var/tmp/anomalyd-base-images}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$work"

have() { [[ -z "${FORCE:-}" ]] && docker image inspect "$1" >/dev/null 2>&1; }

rootfs=$work/rootfs
if [[ ! -x $rootfs/bin/sh ]]; then
  command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  rm -rf "$rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log"
fi

# A copy of the base rootfs with packages installed in a chroot.
with_packages() { # dir packages...
  local dir=$1; shift
  rm -rf "$dir"; cp -a "$rootfs" "$dir"
  cp /etc/resolv.conf "$dir/etc/resolv.conf"
  chroot "$dir" /bin/sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $* >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*"
}

import() { # dir name changes...
  local dir=$1 name=$2; shift 2
  local args=()
  for c in "$@"; do args+=(--change "$c"); done
  tar -C "$dir" -c . | docker import "${args[@]}" - "$name" >/dev/null
  echo "built $name"
}

name=rust:1.95-slim-bookworm
if ! have $name; then
  dir=$work/rust
  with_packages "$dir" gcc libc6-dev ca-certificates
  toolchain=$(rustc --print sysroot)
  mkdir -p "$dir/usr/local/rust" "$dir/usr/local/cargo/bin"
  # The toolchain without its HTML docs (half its size).
  tar -C "$toolchain" --exclude=./share/doc -c . | tar -C "$dir/usr/local/rust" -x
  for b in cargo rustc rustdoc; do ln -sf "/usr/local/rust/bin/$b" "$dir/usr/local/cargo/bin/$b"; done
  # Trust what this machine trusts (a proxy's CA, where crates.io is reached
  # through one), so the build stage fetches crates like the host does.
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
  import "$dir" $name 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    'ENV CARGO_HOME=/usr/local/cargo' 'WORKDIR /'
fi

name=gcr.io/distroless/cc-debian12:nonroot
if ! have $name; then
  dir=$work/distroless
  rm -rf "$dir"; mkdir -p "$dir"/{etc,tmp,home/nonroot,lib/x86_64-linux-gnu,lib64,usr/lib}
  chmod 1777 "$dir/tmp"
  for lib in libc.so.6 libm.so.6 libgcc_s.so.1 libpthread.so.0 libdl.so.2 librt.so.1; do
    cp -L "$rootfs/lib/x86_64-linux-gnu/$lib" "$dir/lib/x86_64-linux-gnu/" 2>/dev/null || true
  done
  cp -L "$rootfs/lib64/ld-linux-x86-64.so.2" "$dir/lib64/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$dir/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$dir/etc/group"
  chown 65532:65532 "$dir/home/nonroot"
  import "$dir" $name 'USER 65532' 'WORKDIR /home/nonroot'
fi

peer() { # name package data-dir binary args...
  local name=$1 pkg=$2 data=$3 bin=$4; shift 4
  have "$name" && return
  local dir=$work/$pkg
  with_packages "$dir" "$pkg"
  # The data directory the official image has, writable by its user (a named
  # volume mounted there copies the ownership).
  mkdir -p "$dir$data" && chown 65534:65534 "$dir$data"
  local entry; entry=$(printf '"%s",' "$bin" "$@"); entry=${entry%,}
  import "$dir" "$name" "ENTRYPOINT [$entry]" 'USER nobody'
}
peer prom/prometheus:v2.53.2 prometheus /prometheus /usr/bin/prometheus
peer prom/alertmanager:v0.27.0 prometheus-alertmanager /alertmanager /usr/bin/prometheus-alertmanager
peer prom/node-exporter:v1.8.2 prometheus-node-exporter /var/empty /usr/bin/prometheus-node-exporter
# For deploy/compose-sharded.yaml (its nginx.conf keeps pid, logs and temp files
# where nobody may write).
peer nginx:1.27 nginx /var/lib/nginx /usr/sbin/nginx -g "daemon off;"
