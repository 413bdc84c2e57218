#!/usr/bin/env bash
# Installs what the PostgreSQL store tests need: Debian's PostgreSQL server binaries (the tests
# start throwaway clusters of their own on loopback; see tests/support/src/postgres.rs) and
# `setpriv`, with which they run the server as the unprivileged `postgres` user when the tests
# run as root (PostgreSQL refuses to run as root).
#
# Usage: scripts/postgres.sh        # prints the directory holding the server binaries
set -euo pipefail

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

bin="$(find_bin)"
if [ -z "$bin" ] || [ ! -x "$bin/postgres" ] || ! command -v setpriv >/dev/null; then
  sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  export DEBIAN_FRONTEND=noninteractive
  sudo_ apt-get update -qq >&2
  sudo_ apt-get install -y -qq postgresql util-linux >&2
  bin="$(find_bin)"
fi
echo "$bin"
