#!/usr/bin/env bash
# NATS with JetStream, for the cluster tests and demo.
#
#   scripts/nats.sh install          install nats-server (Debian's package) when missing
#   scripts/nats.sh path             print the nats-server binary's path
#   scripts/nats.sh start PORT DIR   run nats-server with JetStream on 127.0.0.1:PORT,
#                                    storing streams in DIR (in the foreground)
set -euo pipefail

find_server() {
  if [ -n "${NATS_SERVER:-}" ]; then echo "$NATS_SERVER"; return 0; fi
  # Debian puts it in /usr/sbin, which is not on every user's PATH.
  for p in "$(command -v nats-server 2>/dev/null || true)" /usr/sbin/nats-server /usr/bin/nats-server; do
    if [ -n "$p" ] && [ -x "$p" ]; then echo "$p"; return 0; fi
  done
  return 1
}

install_server() {
  if find_server >/dev/null; then return 0; fi
  # Tests start in parallel: one installs, the others wait for it and then
  # find the binary, instead of racing for apt's lock.
  exec 9>"${TMPDIR:-/tmp}/arcana-nats-install.lock"
  flock 9
  if find_server >/dev/null; then return 0; fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then
      sudo=sudo
    else
      echo "nats-server is missing, and installing it needs root (or sudo)" >&2
      exit 1
    fi
  fi
  $sudo apt-get -o DPkg::Lock::Timeout=300 update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=300 install -y nats-server
}

case "${1:-}" in
  install)
    install_server
    find_server
    ;;
  path)
    find_server || { echo "nats-server is not installed: run scripts/nats.sh install" >&2; exit 1; }
    ;;
  start)
    port="${2:?usage: scripts/nats.sh start PORT DIR}"
    dir="${3:?usage: scripts/nats.sh start PORT DIR}"
    install_server
    mkdir -p "$dir"
    exec "$(find_server)" -a 127.0.0.1 -p "$port" -js -sd "$dir"
    ;;
  *)
    echo "usage: scripts/nats.sh install | path | start PORT DIR" >&2
    exit 2
    ;;
esac
