#!/usr/bin/env bash
# Make sure `etcd` (and `etcdctl`) are on PATH for tests/cluster: installs Debian's
# etcd-server and etcd-client when etcd is missing. The tests run their own etcd on free
# loopback ports, so the package's service (etcd on 2379/2380) must not be left running or
# enabled: on a machine without systemd nothing starts it; with systemd it is stopped and
# disabled right after the install.
set -euo pipefail

if ! command -v etcd >/dev/null; then
  echo "install-etcd.sh: installing Debian etcd-server and etcd-client" >&2
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d exit 101 forbids invoke-rc.d to start services during this install.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    own_policy=1
  fi
  trap '[[ $own_policy == 1 ]] && rm -f "$policy"' EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends etcd-server etcd-client >/dev/null
  if [[ -d /run/systemd/system ]]; then
    systemctl disable --now etcd.service >/dev/null 2>&1 || true
  fi
fi
etcd --version | head -1 >&2
command -v etcd
