//! The one error type of the core.
//!
//! Messages name what was wrong, never a value: no key bytes, no plaintext, no
//! ciphertext. Everything that fails to parse or to authenticate is the same
//! detail-free [`Error::InvalidCiphertext`].

use std::path::PathBuf;

/// Why a core operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed, truncated, tampered, foreign or random bytes. Deliberately detail-free.
    #[error("invalid ciphertext")]
    InvalidCiphertext,

    /// The ciphertext names a `key_id` other than the one expected or held.
    #[error("{0}")]
    UnknownKeyId(&'static str),

    /// The local KEK that sealed the ciphertext is neither current nor cached.
    #[error("the local KEK of this ciphertext is not cached")]
    KekNotCached,

    /// The plaintext is longer than [`crate::format::MAX_PLAINTEXT`].
    #[error("plaintext is larger than {max} bytes", max = crate::format::MAX_PLAINTEXT)]
    PlaintextTooLarge,

    /// No local KEK to seal with, or its hard budget or age is spent.
    #[error("the local KEK needs rotation: {0}")]
    NeedsRotation(&'static str),

    /// The root key sealed as many times as its budget allows in this process: random
    /// 96-bit nonces under one key must stay far below 2^32 seals. Opening goes on.
    #[error(
        "the root key's seal budget is spent ({0} seals in this process): use hierarchy mode \
         or a new key file (the old one as a decrypt key file)"
    )]
    SealBudgetSpent(u64),

    /// A key file is missing, unreadable, of the wrong size or too widely readable.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file, as given.
        path: PathBuf,
        /// What was wrong with it (never its content).
        reason: String,
    },

    /// A caller passed an argument out of range; the message names the argument.
    #[error("invalid argument: {0}")]
    InvalidInput(&'static str),

    /// The OS random source or the AEAD failed where it cannot fail in practice.
    #[error("internal cryptographic failure: {0}")]
    Internal(&'static str),
}

/// Result alias of the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn key_file(path: &std::path::Path, reason: impl Into<String>) -> Self {
        Self::KeyFile {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}
