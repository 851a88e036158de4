"""The workloads `kmsplug bench` can drive, with what each one models.

Kept apart from the engine (which imports grpc) so the CLI can list them cheaply.
"""

from __future__ import annotations

WORKLOADS: dict[str, str] = {
    "v1-write": "one v1 Encrypt per Secret write (a fresh DEK each time)",
    "v1-read": "reads of --stored Secrets through an apiserver-style LRU DEK cache of "
    "--cache-size entries: only misses reach the plugin as Decrypt",
    "v1-cold": "a v1 apiserver restart with an empty DEK cache: one v1 Decrypt per stored "
    "Secret, each exactly once (the run ends when all --stored are read)",
    "v1-burst": "bursts of --concurrency simultaneous v1 Encrypts, --burst-interval apart",
    "v2-write": "writes sealed locally under a DEK seed; the plugin sees a Status every "
    "--status-interval and an Encrypt only when the key_id changes",
    "v2-cold": "a v2 apiserver restart: one v2 Decrypt per distinct stored DEK seed",
    "v2-status": "Status polling, as health probes do",
    "mixed": "--read-ratio reads (v1-read), the rest writes (v1-write)",
}
