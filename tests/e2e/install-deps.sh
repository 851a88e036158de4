#!/usr/bin/env bash
# Install what the end-to-end tests need on a fresh Debian machine: etcd (Debian's
# etcd-server; no service is started, the tests run their own).
set -euo pipefail
need=()
command -v etcd >/dev/null || need+=(etcd-server etcd-client)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
etcd --version | sed -n 1p   # sed reads everything: head would SIGPIPE etcd under pipefail
