#!/usr/bin/env bash
# Print the path of a containers.conf for podman/buildah on this machine, for
# CONTAINERS_CONF. podman sets a container's nofile and nproc limits to 1048576 by
# default, which fails where root lacks CAP_SYS_RESOURCE (sandboxes, some CI runners):
# "error setting rlimit type 7: operation not permitted". This file asks for the hard
# limits the caller already has instead (nproc capped at kernel.pid_max, as podman
# itself caps the limit its container monitor inherits), which always succeeds.
set -euo pipefail
hard() { local v; v=$(ulimit -H "$1"); [ "$v" = unlimited ] && v=-1; echo "$v"; }
nofile=$(hard -n)
nproc=$(hard -u)
pid_max=$(cat /proc/sys/kernel/pid_max)
if [ "$nproc" = -1 ] || [ "$nproc" -gt "$pid_max" ]; then nproc=$pid_max; fi
dir=${KMSPLUG_CACHE:-$HOME/.cache/kmsplug}/podman
conf=$dir/containers-nofile$nofile-nproc$nproc.conf
if [ ! -s "$conf" ]; then
  mkdir -p "$dir"
  cat > "$conf.tmp.$$" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
CONF
  mv "$conf.tmp.$$" "$conf"
fi
echo "$conf"
