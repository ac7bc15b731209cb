#!/usr/bin/env bash
# Build the local container image for the podman runtime, if it is missing: a rootfs of Debian's
# busybox-static (/bin/busybox plus one symlink per applet) imported with `podman import`.
# No registry is needed. Idempotent; pass --force to rebuild.
#   usage: scripts/build-busybox-image.sh [--force] [IMAGE]
set -euo pipefail

force=0
if [[ "${1:-}" == "--force" ]]; then force=1; shift; fi
image="${1:-${BOILERHOUSE_IMAGE:-localhost/boilerhouse-busybox:latest}}"
podman="${PODMAN:-podman}"
busybox="${BUSYBOX:-/bin/busybox}"

command -v "$podman" >/dev/null || { echo "podman is not installed (apt-get install podman runc)" >&2; exit 2; }
if [[ $force == 0 ]] && "$podman" image exists "$image"; then
    echo "$image already present"
    exit 0
fi
[[ -x "$busybox" ]] || { echo "$busybox not found (apt-get install busybox-static)" >&2; exit 2; }
"$busybox" --list >/dev/null 2>&1 || { echo "$busybox does not run" >&2; exit 2; }
version="$("$busybox" 2>&1 | head -1 || true)"

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,data,tmp,proc,sys,dev,etc,root}
chmod 1777 "$rootfs/tmp"
cp "$busybox" "$rootfs/bin/busybox"
for applet in $("$busybox" --list); do
    [[ "$applet" == busybox ]] || ln -sf busybox "$rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"

tar -C "$rootfs" -cf - . | "$podman" import --quiet \
    --change 'CMD ["/bin/sh"]' --change 'WORKDIR /data' --change 'ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin' \
    --message "boilerhouse busybox-static rootfs (${version:0:60})" - "$image" >/dev/null
echo "built $image"
