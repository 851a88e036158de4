//! kmsplug-core: the pure-Rust heart of kmsplug, a Kubernetes KMS plugin.
//!
//! It owns everything that touches key material: the versioned envelope wire format
//! ([`format`], FORMAT.md), AES-256-GCM, the local root key ([`RootKey`]) and the
//! local-KEK hierarchy with its usage budget and bounded, expiring KEK cache
//! ([`Keyring`]). It knows nothing about Python or gRPC; `kmsplug-py` exposes it as
//! `kmsplug._kmsplug`.
//!
//! # Why aws-lc-rs
//!
//! AES-256-GCM and HMAC-SHA256 come from [aws-lc-rs](https://docs.rs/aws-lc-rs):
//! - it is maintained by AWS and wraps AWS-LC, a BoringSSL-derived C library with
//!   assembly AES-GCM on every server CPU;
//! - AWS-LC has FIPS 140-3 validated builds (aws-lc-rs's `fips` feature), which a KMS
//!   plugin may one day be asked for;
//! - tag checks are constant-time, and a failed open reveals nothing but "failed";
//! - the key and its schedule live in an `EVP_AEAD_CTX` allocated by AWS-LC, and
//!   `OPENSSL_free` cleanses every AWS-LC allocation before releasing it, so dropping a
//!   key wipes it.
//!
//! Our own copies of key bytes (read from a key file, generated, or handed over by a
//! remote provider) live only in [`zeroize::Zeroizing`] buffers, wiped on drop as soon
//! as the aws-lc key is built. Nonces and keys come from the OS CSPRNG via `getrandom`.
//!
//! # Errors
//!
//! One enum, [`Error`]. Every parse and authentication failure is the same detail-free
//! [`Error::InvalidCiphertext`]; no message ever carries key, plaintext or ciphertext
//! bytes.
#![forbid(unsafe_code)]

mod aead;
mod error;
pub mod format;
mod keyring;
mod limits;
mod root;

pub use aead::random_key;
pub use error::{Error, Result};
pub use format::{frame_direct, peek, Mode, FORMAT_VERSION, MAX_PLAINTEXT};
pub use keyring::{Keyring, Policy, Stats, MAX_SEALS_LIMIT};
pub use limits::{
    is_fqdn, MAX_ANNOTATIONS_BYTES, MAX_KEY_ID, V1_MAX_CIPHERTEXT, V2_MAX_CIPHERTEXT,
};
pub use root::RootKey;
