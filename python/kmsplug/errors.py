"""The exceptions kmsplug raises.

They are defined here, in Python, and the Rust extension raises these very classes, so
the hierarchy is plain Python and type checkers see it without stubs. Each class owns its
message: raised bare (`raise InvalidCiphertext`) it says what it means, and a message is
given only to add a fact (which setting, which file). No message ever carries key
material, plaintext or ciphertext bytes: messages name what was wrong, not the value.
"""

from __future__ import annotations


class KmsplugError(Exception):
    """Base class of every error kmsplug raises on purpose."""

    #: What the error says when raised without a message.
    message = ""

    def __init__(self, *args: object) -> None:
        super().__init__(*(args or ((self.message,) if self.message else ())))


class InvalidCiphertext(KmsplugError):
    """The ciphertext is not one we can open: not ours, truncated, tampered or random.

    Deliberately detail-free: which check failed is of use to an attacker only.
    """

    message = "invalid ciphertext"


class InvalidRequest(KmsplugError):
    """The request breaks the wire contract: undecodable protobuf, an empty plaintext, an
    unsupported v1 version, a v2 Decrypt without key_id.

    The message is a fixed phrase chosen by kmsplug (never a value from the request), so
    it is safe to send back to the caller.
    """


class ShuttingDown(KmsplugError):
    """The plugin received SIGTERM: calls that arrive now are refused so the caller retries
    (kube-apiserver reaches the replacement on the same socket path)."""


class InvalidInput(KmsplugError, ValueError):
    """The core refused an argument out of range (an empty plaintext, a policy value).

    Also a ValueError, as the core raised before this class existed.
    """


class UnknownKeyId(KmsplugError):
    """The key_id names no KEK this plugin can use."""

    message = "unknown key_id"


class KekNotCached(KmsplugError):
    """The local KEK that sealed a ciphertext is not unwrapped yet.

    An internal signal from the core to the sealer, which unwraps the KEK through its
    provider and retries; it never reaches a caller.
    """

    message = "the local KEK of this ciphertext is not cached"


class PlaintextTooLarge(KmsplugError):
    """The plaintext is larger than the plugin seals (DEKs are 32 bytes)."""

    message = "plaintext is too large"


class NeedsRotation(KmsplugError):
    """There is no usable local KEK: none yet, or its budget or age is spent."""

    message = "no usable local KEK"


class SealBudgetSpent(NeedsRotation):
    """The local root key sealed as many DEKs (direct mode) or local KEKs as its budget
    allows in this process (`--kek-max-seals`: random 96-bit nonces). Opening goes on."""

    message = "the root key's seal budget is spent"


class KeyFileError(KmsplugError):
    """A key file is missing, unreadable, of the wrong size or too widely readable."""


class ProviderUnavailable(KmsplugError):
    """The remote KMS that holds the KEK did not answer in time or refused."""


class ConfigError(KmsplugError):
    """A setting is invalid; the message names the setting."""


class MissingExtra(ConfigError):
    """A part of kmsplug was asked for whose pip extra is not installed; the message
    names the pip command that installs it."""


class ProviderThrottled(ProviderUnavailable):
    """The remote KMS refused for quota (Alibaba Rejected.Throttling, AWS ThrottlingException)."""


class ProviderTransient(ProviderUnavailable):
    """A failure worth retrying: a timeout, a reset connection, a 5xx."""


class ProviderRefused(KmsplugError):
    """The remote KMS refused for good: permission denied, key disabled or missing.

    Retrying does not help; the message says what an operator must change.
    """


class KeyRevoked(ProviderRefused):
    """The KMS says the write key is disabled or pending deletion: an operator revoked it.

    kmsplug then seals no new DEK under it (no new data comes to depend on a key about to
    be deleted) and keeps opening what it holds KEKs for. An unreachable KMS is not this:
    that is ProviderUnavailable, and both reads and writes go on.
    """
