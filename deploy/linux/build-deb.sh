#!/usr/bin/env bash
# Builds the chainsync Debian package: both binaries, their systemd units, the service account,
# the data folder /var/lib/chainsync, and the example configurations.
#
#   deploy/linux/build-deb.sh                  # release build, writes target/debian/chainsync_<version>_<arch>.deb
#   BIN_DIR=target/debug OUT_DIR=/tmp/deb COMPRESSION=none deploy/linux/build-deb.sh --no-build
#
# Needs dpkg-deb (Debian and Ubuntu have it). The units are not enabled by the package: a store
# must be set up first (`store-agent init`), then `systemctl enable --now chainsync-store-agent`.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

build=1
for arg in "$@"; do
    case "$arg" in
        --no-build) build=0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done
BIN_DIR="${BIN_DIR:-target/release}"
OUT_DIR="${OUT_DIR:-target/debian}"
command -v dpkg-deb >/dev/null || { echo "dpkg-deb is needed (apt-get install dpkg)" >&2; exit 1; }
if [ "$build" = 1 ]; then
    cargo build --release --locked -p store-agent -p hq-server
fi
for bin in store-agent hq-server; do
    [ -x "$BIN_DIR/$bin" ] || { echo "$BIN_DIR/$bin is missing (build it, or drop --no-build)" >&2; exit 1; }
done

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
arch="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
pkg="$stage/chainsync"

install -D -m 0755 "$BIN_DIR/store-agent" "$pkg/usr/bin/store-agent"
install -D -m 0755 "$BIN_DIR/hq-server" "$pkg/usr/bin/hq-server"
for unit in deploy/linux/*.service; do
    install -D -m 0644 "$unit" "$pkg/lib/systemd/system/$(basename "$unit")"
done
install -D -m 0644 deploy/agent.toml "$pkg/usr/share/doc/chainsync/examples/agent.toml"
install -D -m 0644 deploy/hq.toml "$pkg/usr/share/doc/chainsync/examples/hq.toml"
install -D -m 0644 deploy/README.md "$pkg/usr/share/doc/chainsync/README.deploy.md"
mkdir -p "$pkg/DEBIAN"
size_kb="$(du -sk "$pkg" | cut -f1)"

cat > "$pkg/DEBIAN/control" <<CONTROL
Package: chainsync
Version: $version
Architecture: $arch
Maintainer: chainsync developers <dev@chainsync.invalid>
Installed-Size: $size_kb
Depends: adduser
Section: net
Priority: optional
Description: retail chain sync: HQ server and store agent
 hq-server runs at a chain's headquarters; store-agent runs at every store and
 replicates members, stock, prices, promotions and sales with HQ over QUIC as
 signed, hash-chained change sets. Includes systemd units (Type=notify with a
 watchdog) and the service account chainsync.
CONTROL

cat > "$pkg/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd chainsync >/dev/null; then
        adduser --system --group --home /var/lib/chainsync --no-create-home chainsync
    fi
    install -d -m 0750 -o chainsync -g chainsync /var/lib/chainsync
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
    echo "chainsync installed. A store: store-agent init --provision FILE --data /var/lib/chainsync/store,"
    echo "  chown -R chainsync:chainsync /var/lib/chainsync/store, systemctl enable --now chainsync-store-agent"
    echo "HQ: hq-server init --data /var/lib/chainsync/hq, then the same for chainsync-hq."
fi
exit 0
POSTINST

cat > "$pkg/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    for unit in chainsync-store-agent chainsync-hq; do
        systemctl disable --now "$unit" >/dev/null 2>&1 || true
    done
fi
exit 0
PRERM

cat > "$pkg/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
# The data folder (keys, databases) is kept even on purge: it is the store's books.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
exit 0
POSTRM
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm" "$pkg/DEBIAN/postrm"

mkdir -p "$OUT_DIR"
out="$OUT_DIR/chainsync_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"${COMPRESSION:-xz}" --build "$pkg" "$out" >/dev/null
echo "$out"
