"""The rules a KMS plugin is checked against, each with where it comes from.

Written from kube-apiserver's code and the Kubernetes KMS documentation, not from any
plugin's behaviour. A *required* rule is one the apiserver enforces, one the documented
plugin contract states as a must, or one whose breach loses or corrupts data (a wrong
plaintext, a hang, a dropped connection). An *informative* entry reports a figure or a
property that no rule demands (latency guidance, randomized encryption).

Source shorthands (paths in k8s.io/apiserver unless said otherwise):
  kmsv2/envelope.go   pkg/storage/value/encrypt/envelope/kmsv2/envelope.go
  kmsv2/grpc          pkg/storage/value/encrypt/envelope/kmsv2/grpc_service.go
  v1/envelope.go      pkg/storage/value/encrypt/envelope/envelope.go
  v1/grpc             pkg/storage/value/encrypt/envelope/grpc_service.go
  config.go           pkg/server/options/encryptionconfig/config.go
  defaults.go         pkg/apis/apiserver/v1/defaults.go (timeout 3s)
  docs                kubernetes.io/docs/tasks/administer-cluster/kms-provider
                      ("Developing a KMS plugin gRPC server")
  api.proto           k8s.io/kms apis/v1beta1 and apis/v2 api.proto
"""

from __future__ import annotations

from dataclasses import dataclass

#: The apiserver's default per-call deadline (EncryptionConfiguration `timeout`).
APISERVER_TIMEOUT = 3.0
#: --max-requests-inflight (400) + --max-mutating-requests-inflight (200): the apiserver's
#: default total concurrency, which API Priority and Fairness also takes as its server-wide
#: limit. Each request in flight makes at most one KMS call at a time (the storage
#: transformer is called synchronously inside the request), so this is how many calls one
#: apiserver can have outstanding after a restart, when every read misses its DEK cache.
APISERVER_READS_IN_FLIGHT = 400
APISERVER_WRITES_IN_FLIGHT = 200
DEFAULT_BURST = APISERVER_READS_IN_FLIGHT + APISERVER_WRITES_IN_FLIGHT

V2_MAX_KEY_ID = 1024
V2_MAX_CIPHERTEXT = 1024
V2_MAX_ANNOTATIONS = 32 * 1024
V1_MAX_CIPHER = 65535


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    title: str
    rule: str
    source: str
    required: bool = True


def _rules(*rules: Rule) -> dict[str, Rule]:
    table = {r.id: r for r in rules}
    assert len(table) == len(rules), "duplicate rule id"
    return table


_TAMPER = (
    "Decrypt of altered input returns an error or, at worst, the original plaintext; a "
    "different plaintext becomes the DEK or seed the apiserver caches and uses"
)
_TAMPER_SRC = "api.proto (Decrypt is the inverse of Encrypt); docs (Decryption)"
_BAD = (
    "the plugin answers within the deadline with a gRPC status, or with a correct result; "
    "it never hangs, drops the connection or stops answering"
)
_BAD_SRC = (
    "v1/grpc and kmsv2/grpc: every call carries the `timeout` deadline and the apiserver "
    "keeps one connection per provider"
)

V2 = _rules(
    Rule(
        "v2.status.version",
        "Status.version is v2 (v2beta1 accepted, flagged as old)",
        "1.29+ accept 'v2' or 'v2beta1', 1.27/1.28 only 'v2beta1'; any other value fails "
        "the health check",
        "config.go isKMSv2ProviderHealthyAndMaybeRotateDEK; kmsv2/envelope.go",
    ),
    Rule(
        "v2.status.healthz",
        "Status.healthz is exactly 'ok'",
        "any other value makes the provider unhealthy; writes stop 3 min later",
        "config.go isKMSv2ProviderHealthyAndMaybeRotateDEK",
    ),
    Rule(
        "v2.status.key_id",
        "Status.key_id non-empty, at most 1024 bytes",
        "an empty or longer key_id is invalid: provider unhealthy, "
        "invalid_key_id_from_status_total counts it",
        "kmsv2/envelope.go ValidateKeyID",
    ),
    Rule(
        "v2.status.stable",
        "Status version and key_id stable across calls",
        "1.29+: the version must not change while the apiserver runs; the key_id must be "
        "stable and must not flip-flop (each change makes a new seed and marks data stale)",
        "config.go (version pinned at first Status); docs (Understanding key_id)",
    ),
    Rule(
        "v2.status.latency",
        "Status p99 within the apiserver's per-call timeout",
        "a Status slower than `timeout` (default 3 s) is a failed health check: "
        "/readyz/kms-providers fails and writes stop after 3 min without a good Status",
        "kmsv2/grpc (deadline per call); defaults.go; config.go (3 min write TTL)",
    ),
    Rule(
        "v2.encrypt.key_id",
        "Encrypt.key_id equals Status.key_id",
        "otherwise the new seed is thrown away and the provider is unhealthy",
        "config.go rotateDEKOnKeyIDChange; docs (Understanding key_id)",
    ),
    Rule(
        "v2.encrypt.ciphertext",
        "Encrypt.ciphertext non-empty, at most 1024 bytes",
        "a longer or empty ciphertext is refused, so the write fails",
        "kmsv2/envelope.go validateEncryptedDEKSource",
    ),
    Rule(
        "v2.encrypt.annotation_keys",
        "annotation keys are fully qualified domain names",
        "lowercase RFC 1123, at least two labels, labels <= 63, name <= 253 "
        "(one trailing dot ignored); any other key fails the write",
        "kmsv2/envelope.go validateAnnotations; apimachinery IsFullyQualifiedDomainName",
    ),
    Rule(
        "v2.encrypt.annotations_size",
        "annotations at most 32 KiB in total",
        "sum of len(key)+len(value) over all entries must be <= 32768",
        "kmsv2/envelope.go validateAnnotations",
    ),
    Rule(
        "v2.encrypt.distinct",
        "distinct plaintexts give distinct (ciphertext, key_id, annotations)",
        "the apiserver caches seeds by that tuple; a repeat maps two seeds to one entry",
        "docs (Encryption: 'must guarantee'); kmsv2/envelope.go cache key",
    ),
    Rule(
        "v2.roundtrip",
        "Decrypt with the stored key_id and annotations returns the exact 32-byte seed",
        "the result is used as the HKDF seed or AES key; anything else makes data unreadable",
        "api.proto; kmsv2/envelope.go TransformFromStorage",
    ),
    Rule(
        "v2.decrypt.unknown_key_id",
        "Decrypt refuses a key_id the plugin never issued",
        "plugins must verify the key_id is one they understand and not decrypt otherwise; "
        "checked with foreign key_ids (a derived `<key_id>_001` and an unrelated one), the "
        "kind the apiserver can send (it refuses empty stored key_ids before any Decrypt)",
        "docs (Decryption: 'must verify that the key_id is one that they understand'); "
        "kmsv2/envelope.go doDecode -> ValidateEncryptedObject",
    ),
    Rule("v2.tamper.flipped", "flipped ciphertext bits: no wrong plaintext", _TAMPER, _TAMPER_SRC),
    Rule("v2.tamper.truncated", "truncated ciphertexts: no wrong plaintext", _TAMPER, _TAMPER_SRC),
    Rule("v2.tamper.extended", "extended ciphertexts: no wrong plaintext", _TAMPER, _TAMPER_SRC),
    Rule("v2.tamper.random", "random ciphertexts: no wrong plaintext", _TAMPER, _TAMPER_SRC),
    Rule(
        "v2.tamper.annotations",
        "altered, dropped or added annotations: no wrong plaintext",
        _TAMPER,
        _TAMPER_SRC + "; annotations are stored in plaintext in etcd",
    ),
    Rule("v2.tamper.key_id", "another key_id: no wrong plaintext", _TAMPER, _TAMPER_SRC),
    Rule(
        "v2.status.after_refusals",
        "Status still healthy after refused Decrypts",
        "the apiserver decrypts whatever etcd holds, corrupted objects included; a plugin "
        "that turns unhealthy when it refuses one fails /readyz for every resource it "
        "protects, and writes stop 3 min later",
        "kmsv2/envelope.go TransformFromStorage (Decrypt per stored object); config.go "
        "(health check, 3 min write TTL)",
    ),
    Rule("v2.bad.empty_plaintext", "Encrypt of an empty plaintext: clean answer", _BAD, _BAD_SRC),
    Rule("v2.bad.oversized_plaintext", "Encrypt of 1 MiB: clean answer", _BAD, _BAD_SRC),
    Rule(
        "v2.bad.empty_ciphertext",
        "Decrypt of an empty ciphertext: a gRPC error",
        "nothing was encrypted to an empty ciphertext, so only an error is right; " + _BAD,
        _BAD_SRC,
    ),
    Rule(
        "v2.bad.undecodable",
        "requests that are not valid protobuf: a gRPC error",
        "bytes no protobuf parser accepts get an error status; " + _BAD,
        _BAD_SRC,
    ),
    Rule(
        "v2.burst",
        "a burst of the apiserver's in-flight limit: zero failures",
        "after a restart every read can miss the seed cache at once; each of the "
        "--max-requests-inflight + --max-mutating-requests-inflight (400+200) requests "
        "makes one Decrypt; each must answer correctly within the timeout",
        "apiserver flags defaults; kmsv2/envelope.go (Decrypt per cache miss); kmsv2/grpc",
    ),
    Rule(
        "v2.burst.second_connection",
        "a second connection keeps answering Status during the burst",
        "the health check (and any second provider on the socket) must not starve behind "
        "a burst; a Status past the timeout fails /readyz",
        "config.go kmsv2 health probe; kmsv2/grpc",
    ),
    Rule(
        "v2.authority",
        "answers when :authority is the socket path",
        "apiservers before 1.32 send the socket path as :authority; plugins must accept it",
        "kubernetes/kubernetes#126929 and PR #126930 (kmsv2 sends localhost since 1.32)",
    ),
    Rule(
        "v2.status.after_bad_input",
        "Status after the bad-input checks",
        "the apiserver never sends such input, so this is no rule; a plugin that turns "
        "unhealthy here can be made unhealthy by anything else on its socket",
        "informative",
        required=False,
    ),
    Rule(
        "v2.encrypt.randomized",
        "the same plaintext twice gives different ciphertexts",
        "not an apiserver rule (seeds never repeat); reported as a property",
        "informative",
        required=False,
    ),
    Rule(
        "v2.encrypt.latency",
        "Encrypt latency",
        "guidance: under 100 ms",
        "docs (Encryption)",
        required=False,
    ),
    Rule(
        "v2.decrypt.latency",
        "Decrypt latency",
        "guidance: under 10 ms (thousands on start-up to fill the watch cache)",
        "docs (Decryption)",
        required=False,
    ),
    Rule(
        "v2.burst.throughput",
        "burst throughput",
        "how fast the burst completed",
        "informative",
        required=False,
    ),
)

V1 = _rules(
    Rule(
        "v1.version",
        "Version answers v1beta1",
        "before the first call on a connection the apiserver calls Version and refuses "
        "any answer but 'v1beta1'",
        "v1/grpc (version-check interceptor)",
    ),
    Rule(
        "v1.probe",
        "the health probe: Encrypt('ping') then Decrypt round-trips",
        "/healthz/kms-provider-N encrypts 'ping' and decrypts the result; both must succeed",
        "config.go kmsPluginProbe.check",
    ),
    Rule(
        "v1.cipher",
        "cipher non-empty, at most 65535 bytes",
        "the encrypted DEK is stored behind a 2-byte length; longer fails the write "
        "(older apiservers truncated it: data loss)",
        "v1/envelope.go TransformToStorage (uint16 length prefix)",
    ),
    Rule(
        "v1.distinct",
        "distinct plaintexts give distinct ciphers",
        "the DEK cache is keyed by the encrypted DEK; a repeated cipher maps two DEKs to "
        "one entry and one object reads with the wrong DEK",
        "v1/envelope.go (cache keyed by encrypted DEK)",
    ),
    Rule(
        "v1.roundtrip",
        "Decrypt returns the exact 32-byte DEK",
        "the result is the object's AES key",
        "api.proto; v1/envelope.go TransformFromStorage",
    ),
    Rule("v1.tamper.flipped", "flipped cipher bits: no wrong plaintext", _TAMPER, _TAMPER_SRC),
    Rule("v1.tamper.truncated", "truncated ciphers: no wrong plaintext", _TAMPER, _TAMPER_SRC),
    Rule("v1.tamper.extended", "extended ciphers: no wrong plaintext", _TAMPER, _TAMPER_SRC),
    Rule("v1.tamper.random", "random ciphers: no wrong plaintext", _TAMPER, _TAMPER_SRC),
    Rule("v1.bad.empty_plaintext", "Encrypt of an empty plaintext: clean answer", _BAD, _BAD_SRC),
    Rule("v1.bad.oversized_plaintext", "Encrypt of 1 MiB: clean answer", _BAD, _BAD_SRC),
    Rule(
        "v1.bad.empty_ciphertext",
        "Decrypt of an empty cipher: a gRPC error",
        "nothing was encrypted to an empty cipher, so only an error is right; " + _BAD,
        _BAD_SRC,
    ),
    Rule(
        "v1.bad.undecodable",
        "requests that are not valid protobuf: a gRPC error",
        "bytes no protobuf parser accepts get an error status; " + _BAD,
        _BAD_SRC,
    ),
    Rule(
        "v1.burst",
        "a burst of the apiserver's in-flight limit: zero failures",
        "after a restart reads miss the DEK cache (one Decrypt each, up to 400 in flight) "
        "while writes Encrypt a fresh DEK each (up to 200); all must answer correctly "
        "within the timeout",
        "apiserver flags defaults; v1/envelope.go; v1/grpc",
    ),
    Rule(
        "v1.burst.second_connection",
        "a second connection keeps passing the health probe during the burst",
        "the probe (Encrypt+Decrypt of 'ping') must not starve behind a burst",
        "config.go kmsPluginProbe; v1/grpc",
    ),
    Rule(
        "v1.authority",
        "answers when :authority is the socket path",
        "the v1 client in every apiserver version lets grpc-go pick the authority, which "
        "can be the socket path; plugins must accept it",
        "kubernetes/kubernetes#126929",
    ),
    Rule(
        "v1.encrypt.randomized",
        "the same plaintext twice gives different ciphers",
        "not an apiserver rule (DEKs never repeat); reported as a property",
        "informative",
        required=False,
    ),
    Rule(
        "v1.encrypt.latency",
        "Encrypt latency",
        "every v1 write waits for one Encrypt",
        "v1/envelope.go",
        required=False,
    ),
    Rule(
        "v1.decrypt.latency",
        "Decrypt latency",
        "every DEK-cache miss waits for one Decrypt",
        "v1/envelope.go",
        required=False,
    ),
    Rule(
        "v1.burst.throughput",
        "burst throughput",
        "how fast the burst completed",
        "informative",
        required=False,
    ),
)

ALL: dict[str, Rule] = {**V2, **V1}
