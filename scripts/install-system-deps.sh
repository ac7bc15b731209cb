#!/usr/bin/env bash
# Installs the real components the tests and the stack use (Debian packages), only those missing.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v prometheus   >/dev/null || need+=(prometheus)
command -v promtool     >/dev/null || need+=(prometheus)
command -v rclone       >/dev/null || need+=(rclone)
command -v podman       >/dev/null || need+=(podman)
command -v runc         >/dev/null || [ -x /usr/sbin/runc ] || need+=(runc)
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need+=(busybox-static)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing: ${need[*]} - run as root or: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
echo "installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
