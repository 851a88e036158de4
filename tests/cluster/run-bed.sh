#!/usr/bin/env bash
# Developer entry: a real etcd + kube-apiserver on 127.0.0.1 with the given
# EncryptionConfiguration, until Ctrl-C. Installs etcd and builds the pinned
# kube-apiserver first when they are missing (both cached). Prints the kubeconfig path.
#   tests/cluster/run-bed.sh --config encryption.yaml [--feature-gate KMSv1=true]
#                            [--automatic-reload] [--keep] [-- extra kube-apiserver flags]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
[[ -x $python ]] || python=python3
"$here/install-etcd.sh" >/dev/null
KMSPLUG_KUBE_APISERVER=${KMSPLUG_KUBE_APISERVER:-$("$here/build-apiserver.sh")}
export KMSPLUG_KUBE_APISERVER
exec "$python" "$here/bed.py" "$@"
