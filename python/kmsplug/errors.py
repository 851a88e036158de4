"""The exceptions kmsplug raises.

They are defined here, in Python, and the Rust extension raises these very classes, so
the hierarchy is plain Python and type checkers see it without stubs. No message ever
carries key material, plaintext or ciphertext bytes: messages name what was wrong, not
the value.
"""

from __future__ import annotations


class KmsplugError(Exception):
    """Base class of every error kmsplug raises on purpose."""


class InvalidCiphertext(KmsplugError):
    """The ciphertext is not one we can open: not ours, truncated, tampered or random.

    Deliberately detail-free: which check failed is of use to an attacker only.
    """


class UnknownKeyId(KmsplugError):
    """The key_id names no KEK this plugin can use."""


class KekNotCached(KmsplugError):
    """The local KEK that sealed a ciphertext is not unwrapped yet.

    An internal signal from the core to the envelope layer, which unwraps the KEK
    through its provider and retries; it never reaches a caller.
    """


class PlaintextTooLarge(KmsplugError):
    """The plaintext is larger than the plugin seals (DEKs are 32 bytes)."""


class NeedsRotation(KmsplugError):
    """There is no usable local KEK: none yet, or its budget or age is spent."""


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
