#!/usr/bin/env bash
# Installs schemathesis (from PyPI, pinned) into a virtual environment outside the repository
# (default: ~/.cache/nanofaas/schemathesis-VERSION) for the API contract test
# (tests/contract.rs), once, with every package pinned by tests/contract/requirements.txt.
# Needs python3 with the venv module (Debian: python3-venv).
#
# Usage: scripts/schemathesis.sh        # prints the path of the `st` command
set -euo pipefail

requirements="$(cd "$(dirname "$0")/.." && pwd)/tests/contract/requirements.txt"
# The environment is named by what it holds: a change of a pin makes a new one.
digest="$(sha256sum "$requirements" | cut -c1-12)"
venv="${NANOFAAS_SCHEMATHESIS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nanofaas/schemathesis-$digest}"
if [ -x "$venv/bin/st" ] && [ -e "$venv/.installed" ]; then
  echo "$venv/bin/st"
  exit 0
fi
# Tests that start at once install it once.
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if [ -x "$venv/bin/st" ] && [ -e "$venv/.installed" ]; then
  echo "$venv/bin/st"
  exit 0
fi
if ! python3 -m venv --help >/dev/null 2>&1; then
  sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  export DEBIAN_FRONTEND=noninteractive
  sudo_ apt-get update -qq >&2
  sudo_ apt-get install -y -qq python3-venv >&2
fi
# A virtual environment cannot be moved (its scripts name its path): build it in place, and mark
# it complete last.
rm -rf "$venv"
python3 -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check --requirement "$requirements" >&2
touch "$venv/.installed"
echo "$venv/bin/st"
