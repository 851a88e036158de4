"""A real kube-apiserver + etcd test bed on loopback (see bed.py)."""
