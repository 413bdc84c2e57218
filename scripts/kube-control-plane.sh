#!/usr/bin/env bash
# Installs what the Kubernetes end-to-end tests need and builds kube-apiserver and
# kube-controller-manager 1.20.2 from Debian's source package, once. The binaries are cached
# outside the repository (default: ~/.cache/nanofaas/kube-v1.20.2) so later runs start in seconds.
#
# Usage: scripts/kube-control-plane.sh        # prints the directory holding the binaries
set -euo pipefail

cache="${NANOFAAS_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nanofaas/kube-v1.20.2}"
if [ -x "$cache/kube-apiserver" ] && [ -x "$cache/kube-controller-manager" ]; then
  echo "$cache"
  exit 0
fi

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

export DEBIAN_FRONTEND=noninteractive
# Source packages come from wherever this machine's binary packages come from: each configured
# `deb` source again as `deb-src` (same URIs, suites, components and keys).
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -rqs '^deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  lines="$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | sed 's/^deb /deb-src /' || true)"
  if [ -n "$lines" ]; then
    printf '%s\n' "$lines" | sudo_ tee /etc/apt/sources.list.d/nanofaas-src.list >/dev/null
  fi
  stanzas=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    stanzas="$stanzas$(sed 's/^Types:.*/Types: deb-src/' "$f")"$'\n\n'
  done
  if [ -n "$stanzas" ]; then
    printf '%s' "$stanzas" | sudo_ tee /etc/apt/sources.list.d/nanofaas-src.sources >/dev/null
  fi
fi
sudo_ apt-get update -qq >&2
sudo_ apt-get install -y -qq etcd-server golang-1.19-go rsync golang-github-modern-go-reflect2-dev openssl util-linux >&2

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get source --download-only kubernetes >&2
orig="$(ls kubernetes_*.orig.tar.* | head -n 1)"
mkdir src
tar -xf "$orig" -C src --strip-components=1
cd src

# The vendored reflect2 1.0.1 breaks JSON decoding under Go >= 1.18 (the apiserver panics on the
# second request that decodes a map); Debian's 1.0.2 sources are a drop-in replacement.
r2="$(dpkg -L golang-github-modern-go-reflect2-dev | grep '/reflect2/reflect2.go$' | xargs dirname)"
find vendor/github.com/modern-go/reflect2 -maxdepth 1 \( -name '*.go' -o -name '*.s' \) -delete
cp "$r2"/*.go vendor/github.com/modern-go/reflect2/
find "$r2" -maxdepth 1 -name '*.s' -exec cp {} vendor/github.com/modern-go/reflect2/ \;

export PATH="/usr/lib/go-1.19/bin:$PATH" GOPROXY=off CGO_ENABLED=0 GOFLAGS=
make WHAT=cmd/kube-apiserver KUBE_GIT_VERSION=v1.20.2 >&2
make WHAT=cmd/kube-controller-manager KUBE_GIT_VERSION=v1.20.2 >&2

mkdir -p "$cache"
cp _output/bin/kube-apiserver _output/bin/kube-controller-manager "$cache/"
echo "$cache"
