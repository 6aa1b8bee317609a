#!/usr/bin/env bash
# Runs the whole test suite. First installs, as root with apt-get, whatever the system
# tests need and the machine lacks: PostgreSQL, Redis, iptables, iproute2 (ip, ss),
# util-linux (unshare), procps (kill), Node.js and HAProxy.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
[ -x /usr/bin/kill ] || [ -x /bin/kill ] || missing+=(procps)
command -v node >/dev/null 2>&1 || command -v nodejs >/dev/null 2>&1 || missing+=(nodejs)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "NOT ROOT: cannot install ${missing[*]}; the tests that need them will say SKIPPED" >&2
  fi
fi

cargo test --workspace --all-features "$@"
