"""Cluster tools: inspect what etcd stores (verify) and rewrite it (migrate)."""
