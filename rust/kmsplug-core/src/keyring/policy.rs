//! The rotation policy of local KEKs and its defaults (the one place they are written:
//! the binding exports them to Python, whose settings and flags read them from there).

use std::time::Duration;

use crate::error::{Error, Result};

/// Seals per local KEK that random 96-bit nonces allow at most: NIST SP 800-38D caps
/// random-nonce GCM at 2^32 invocations per key.
pub const MAX_SEALS_LIMIT: u64 = 1 << 32;

/// When a local KEK is retired, and how many retired KEKs stay unwrapped.
///
/// Budget: past `rotate_after_seals` seals or `max_age`, [`Keyring::needs_rotation`] says
/// so and the caller rotates in the background while the KEK still seals. Sealing is
/// refused ([`Error::NeedsRotation`]) at `max_seals` seals, or at **twice** `max_age`:
/// age is a hygiene limit, not a cryptographic one, so a KMS outage that delays a
/// rotation gets a grace period of one more `max_age` before writes stop; the seal count
/// is the cryptographic limit and is enforced exactly.
///
/// [`Keyring::needs_rotation`]: crate::Keyring::needs_rotation
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Soft seal budget of a local KEK.
    pub rotate_after_seals: u64,
    /// Hard seal budget of a local KEK (at most [`MAX_SEALS_LIMIT`]).
    pub max_seals: u64,
    /// Soft age limit of a local KEK; sealing stops at twice this age.
    pub max_age: Duration,
    /// How many non-current KEKs stay unwrapped (least recently used ones go first).
    pub cache_size: usize,
    /// How long a cached KEK stays usable after it entered the cache (not refreshed on
    /// use, so a revoked remote key stops opening within this time).
    pub cache_ttl: Duration,
}

impl Policy {
    /// The defaults.
    pub const DEFAULT: Self = Self {
        rotate_after_seals: 1 << 22,
        // Collision odds of random nonces below 2^-48.
        max_seals: 1 << 24,
        max_age: Duration::from_secs(7 * 24 * 3600),
        cache_size: 4096,
        cache_ttl: Duration::from_secs(24 * 3600),
    };

    /// Check that the numbers make sense together.
    pub fn validate(&self) -> Result<()> {
        if self.rotate_after_seals == 0 {
            return Err(Error::InvalidInput("rotate_after_seals must be >= 1"));
        }
        if self.max_seals < self.rotate_after_seals {
            return Err(Error::InvalidInput(
                "max_seals must be >= rotate_after_seals",
            ));
        }
        if self.max_seals > MAX_SEALS_LIMIT {
            return Err(Error::InvalidInput("max_seals must be <= 2**32"));
        }
        if self.max_age.is_zero() {
            return Err(Error::InvalidInput("max_age must be > 0"));
        }
        if self.cache_size == 0 {
            return Err(Error::InvalidInput("cache_size must be >= 1"));
        }
        if self.cache_ttl.is_zero() {
            return Err(Error::InvalidInput("cache_ttl must be > 0"));
        }
        Ok(())
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::DEFAULT
    }
}
