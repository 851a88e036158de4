//! The local-KEK hierarchy: one current local KEK seals DEKs; retired and remote-loaded
//! KEKs wait in a bounded, expiring cache to open what they sealed.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;
use zeroize::Zeroizing;

use crate::aead::{self, AeadKey, KEY_LEN};
use crate::error::{Error, Result};
use crate::format::{self, Mode};
use crate::root::RootKey;

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
    /// Default soft seal budget: 2^22.
    pub const DEFAULT_ROTATE_AFTER_SEALS: u64 = 1 << 22;
    /// Default hard seal budget: 2^24 (collision odds of random nonces below 2^-48).
    pub const DEFAULT_MAX_SEALS: u64 = 1 << 24;
    /// Default soft age limit: 7 days.
    pub const DEFAULT_MAX_AGE_SECS: u32 = 7 * 24 * 3600;
    /// Default number of cached non-current KEKs.
    pub const DEFAULT_CACHE_SIZE: usize = 4096;
    /// Default life of a cached KEK: 24 hours.
    pub const DEFAULT_CACHE_TTL_SECS: u32 = 24 * 3600;
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            rotate_after_seals: Self::DEFAULT_ROTATE_AFTER_SEALS,
            max_seals: Self::DEFAULT_MAX_SEALS,
            max_age: Duration::from_secs(u64::from(Self::DEFAULT_MAX_AGE_SECS)),
            cache_size: Self::DEFAULT_CACHE_SIZE,
            cache_ttl: Duration::from_secs(u64::from(Self::DEFAULT_CACHE_TTL_SECS)),
        }
    }
}

impl Policy {
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

/// Counters and state for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Seals made with the current local KEK.
    pub seals: u64,
    /// Unwrapped KEKs in the cache (the current one not counted).
    pub cache_len: usize,
    /// Opens that found their KEK (current or cached).
    pub cache_hits: u64,
    /// Opens that did not ([`Error::KekNotCached`]), expired entries included.
    pub cache_misses: u64,
    /// How many times a KEK became current.
    pub rotations: u64,
    /// The `key_id` stamped on what `seal` makes now.
    pub current_key_id: Option<String>,
    /// Age of the current local KEK.
    pub current_age: Option<Duration>,
}

struct Current {
    key_id: String,
    /// Magic up to and including the wrapped KEK: the AAD of every seal, and the KEK's
    /// identity when opening.
    header: Vec<u8>,
    key: AeadKey,
    seals: u64,
    created: Instant,
}

struct Cached {
    key: AeadKey,
    inserted: Instant,
}

/// The local-KEK keyring. Not synchronised: the binding wraps it in a mutex.
pub struct Keyring {
    policy: Policy,
    current: Option<Current>,
    /// Keyed by the envelope header (`magic..wrapped`), which names `key_id` and wrapped KEK
    /// unambiguously and can be looked up straight from a ciphertext slice.
    cache: LruCache<Box<[u8]>, Cached>,
    hits: u64,
    misses: u64,
    rotations: u64,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("policy", &self.policy)
            .field("current_key_id", &self.current_key_id())
            .field("cache_len", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// An empty keyring: [`Keyring::seal`] fails with [`Error::NeedsRotation`] until a KEK
    /// is made current.
    pub fn new(policy: Policy) -> Result<Self> {
        policy.validate()?;
        let capacity =
            NonZeroUsize::new(policy.cache_size).ok_or(Error::InvalidInput("cache_size"))?;
        Ok(Self {
            policy,
            current: None,
            cache: LruCache::new(capacity),
            hits: 0,
            misses: 0,
            rotations: 0,
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Replace the policy (a reload): budgets and ages apply from the next seal; a
    /// smaller cache evicts (and so wipes) its least recently used KEKs at once.
    pub fn set_policy(&mut self, policy: Policy) -> Result<()> {
        policy.validate()?;
        let capacity =
            NonZeroUsize::new(policy.cache_size).ok_or(Error::InvalidInput("cache_size"))?;
        self.cache.resize(capacity);
        self.policy = policy;
        Ok(())
    }

    /// The `key_id` stamped on what [`Keyring::seal`] makes now.
    pub fn current_key_id(&self) -> Option<&str> {
        self.current.as_ref().map(|c| c.key_id.as_str())
    }

    /// Make a fresh random local KEK, wrapped by `root`, current. The previous current
    /// KEK moves into the cache, so what it sealed keeps opening.
    pub fn rotate_local(&mut self, root: &RootKey) -> Result<()> {
        let kek = aead::random_key()?;
        let wrapped = root.wrap_kek(&kek)?;
        self.install(root.key_id(), &wrapped, &kek, Instant::now())
    }

    /// Make a KEK that a remote provider wrapped current (`kek` must be 32 bytes).
    pub fn install_current(&mut self, key_id: &str, wrapped: &[u8], kek: &[u8]) -> Result<()> {
        let kek = to_key(kek)?;
        self.install(key_id, wrapped, &kek, Instant::now())
    }

    fn install(
        &mut self,
        key_id: &str,
        wrapped: &[u8],
        kek: &[u8; KEY_LEN],
        now: Instant,
    ) -> Result<()> {
        let header = format::hierarchy_header(key_id, wrapped)?;
        let key = AeadKey::new(kek)?;
        let new = Current {
            key_id: key_id.to_owned(),
            header,
            key,
            seals: 0,
            created: now,
        };
        if let Some(old) = self.current.replace(new) {
            self.cache.put(
                old.header.into_boxed_slice(),
                Cached {
                    key: old.key,
                    inserted: now,
                },
            );
        }
        self.rotations += 1;
        Ok(())
    }

    /// Add a KEK that a remote provider unwrapped to the cache (`kek` must be 32 bytes).
    pub fn cache_kek(&mut self, key_id: &str, wrapped: &[u8], kek: &[u8]) -> Result<()> {
        let kek = to_key(kek)?;
        let header = format::hierarchy_header(key_id, wrapped)?;
        self.insert_cached(header, &kek, Instant::now())
    }

    fn insert_cached(&mut self, header: Vec<u8>, kek: &[u8; KEY_LEN], now: Instant) -> Result<()> {
        let key = AeadKey::new(kek)?;
        self.cache
            .put(header.into_boxed_slice(), Cached { key, inserted: now });
        Ok(())
    }

    /// For a ciphertext whose KEK is not cached and that the local root key wrapped:
    /// unwrap its KEK with `root` and cache it. [`Error::UnknownKeyId`] if another key
    /// wrapped it; [`Error::InvalidCiphertext`] if it is malformed or does not unwrap.
    pub fn unwrap_local(&mut self, root: &RootKey, ct: &[u8]) -> Result<()> {
        let env = format::parse(ct)?;
        if env.mode != Mode::Hierarchy {
            return Err(Error::InvalidCiphertext);
        }
        if env.key_id != root.key_id() {
            return Err(Error::UnknownKeyId(
                "the ciphertext was not wrapped by this root key",
            ));
        }
        let kek = root.unwrap_kek(env.wrapped)?;
        self.insert_cached(env.header.to_vec(), &kek, Instant::now())
    }

    /// Whether the current KEK should be replaced: none yet, soft budget or age reached.
    pub fn needs_rotation(&self) -> bool {
        self.needs_rotation_at(Instant::now())
    }

    fn needs_rotation_at(&self, now: Instant) -> bool {
        self.current.as_ref().is_none_or(|c| {
            c.seals >= self.policy.rotate_after_seals
                || now.saturating_duration_since(c.created) >= self.policy.max_age
        })
    }

    /// The current KEK if it may seal `count` more DEKs at `now`.
    fn sealer(&mut self, count: u64, now: Instant) -> Result<&mut Current> {
        let policy = self.policy;
        let current = self
            .current
            .as_mut()
            .ok_or(Error::NeedsRotation("no local KEK yet"))?;
        if current.seals.saturating_add(count) > policy.max_seals {
            return Err(Error::NeedsRotation("the local KEK's seal budget is spent"));
        }
        if now.saturating_duration_since(current.created) >= policy.max_age.saturating_mul(2) {
            return Err(Error::NeedsRotation(
                "the local KEK is past twice its max age",
            ));
        }
        Ok(current)
    }

    /// Seal a DEK under the current local KEK (a mode-1 envelope).
    pub fn seal(&mut self, dek: &[u8]) -> Result<Vec<u8>> {
        format::check_plaintext(dek)?;
        let current = self.sealer(1, Instant::now())?;
        current.seal(dek, aead::random_nonce()?)
    }

    /// Seal many DEKs: every input is checked and the budget is checked once for all of
    /// them before anything is sealed, so either all are sealed or none.
    pub fn seal_batch<T: AsRef<[u8]>>(&mut self, deks: &[T]) -> Result<Vec<Vec<u8>>> {
        for dek in deks {
            format::check_plaintext(dek.as_ref())?;
        }
        let count = u64::try_from(deks.len()).unwrap_or(u64::MAX);
        let current = self.sealer(count, Instant::now())?;
        deks.iter()
            .map(|dek| current.seal(dek.as_ref(), aead::random_nonce()?))
            .collect()
    }

    /// Open a mode-1 envelope. `expected_key_id` (KMS v2 passes one) must match the
    /// `key_id` inside. [`Error::KekNotCached`] asks the caller to load the KEK and retry.
    pub fn open(&mut self, ct: &[u8], expected_key_id: Option<&str>) -> Result<Vec<u8>> {
        self.open_at(ct, expected_key_id, Instant::now())
    }

    fn open_at(
        &mut self,
        ct: &[u8],
        expected_key_id: Option<&str>,
        now: Instant,
    ) -> Result<Vec<u8>> {
        let env = format::parse(ct)?;
        if env.mode != Mode::Hierarchy {
            return Err(Error::InvalidCiphertext);
        }
        if expected_key_id.is_some_and(|k| k != env.key_id) {
            return Err(Error::UnknownKeyId("key_id does not match the ciphertext"));
        }
        let key = match self.current.as_ref() {
            Some(current) if current.header == env.header => &current.key,
            _ => {
                let ttl = self.policy.cache_ttl;
                let live = self
                    .cache
                    .get(env.header)
                    .map(|c| now.saturating_duration_since(c.inserted) < ttl);
                match live {
                    Some(true) => {}
                    Some(false) => {
                        self.cache.pop(env.header);
                        self.misses += 1;
                        return Err(Error::KekNotCached);
                    }
                    None => {
                        self.misses += 1;
                        return Err(Error::KekNotCached);
                    }
                }
                &self.cache.peek(env.header).ok_or(Error::KekNotCached)?.key
            }
        };
        let mut plain = key.open(env.body, env.header)?;
        self.hits += 1;
        Ok(std::mem::take(&mut *plain))
    }

    /// Open many envelopes; each item gets its own result.
    pub fn open_batch(&mut self, items: &[(&[u8], Option<&str>)]) -> Vec<Result<Vec<u8>>> {
        let now = Instant::now();
        items
            .iter()
            .map(|&(ct, key_id)| self.open_at(ct, key_id, now))
            .collect()
    }

    /// Counters for metrics.
    pub fn stats(&self) -> Stats {
        let now = Instant::now();
        Stats {
            seals: self.current.as_ref().map_or(0, |c| c.seals),
            cache_len: self.cache.len(),
            cache_hits: self.hits,
            cache_misses: self.misses,
            rotations: self.rotations,
            current_key_id: self.current.as_ref().map(|c| c.key_id.clone()),
            current_age: self
                .current
                .as_ref()
                .map(|c| now.saturating_duration_since(c.created)),
        }
    }
}

impl Current {
    fn seal(&mut self, dek: &[u8], nonce: [u8; aead::NONCE_LEN]) -> Result<Vec<u8>> {
        // Count first: a nonce drawn is a nonce spent, even if sealing then fails.
        self.seals += 1;
        let mut out =
            Vec::with_capacity(self.header.len() + aead::NONCE_LEN + dek.len() + aead::TAG_LEN);
        out.extend_from_slice(&self.header);
        self.key.seal_append(nonce, &self.header, dek, &mut out)?;
        Ok(out)
    }
}

fn to_key(kek: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let mut key = Zeroizing::new([0_u8; KEY_LEN]);
    if kek.len() != KEY_LEN {
        return Err(Error::InvalidInput("kek must be exactly 32 bytes"));
    }
    key.copy_from_slice(kek);
    Ok(key)
}

/// Deterministic paths for golden vectors. Nonce reuse under AES-GCM is catastrophic:
/// this exists only in test builds and with the `test-vectors` feature.
#[cfg(any(test, feature = "test-vectors"))]
impl Keyring {
    /// Make `kek`, wrapped by `root` with `wrap_nonce`, current.
    #[doc(hidden)]
    pub fn install_local_with_nonce(
        &mut self,
        root: &RootKey,
        kek: &[u8; KEY_LEN],
        wrap_nonce: [u8; aead::NONCE_LEN],
    ) -> Result<()> {
        let wrapped = root.wrap_kek_with_nonce(kek, wrap_nonce)?;
        self.install(root.key_id(), &wrapped, kek, Instant::now())
    }

    /// [`Keyring::seal`] with a caller-chosen nonce.
    #[doc(hidden)]
    pub fn seal_with_nonce(&mut self, dek: &[u8], nonce: [u8; aead::NONCE_LEN]) -> Result<Vec<u8>> {
        format::check_plaintext(dek)?;
        self.sealer(1, Instant::now())?.seal(dek, nonce)
    }
}

#[cfg(any(test, feature = "test-vectors"))]
impl RootKey {
    /// [`RootKey::seal_direct`] with a caller-chosen nonce.
    #[doc(hidden)]
    pub fn seal_direct_with_fixed_nonce(
        &self,
        dek: &[u8],
        nonce: [u8; aead::NONCE_LEN],
    ) -> Result<Vec<u8>> {
        self.seal_direct_with_nonce(dek, nonce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn root(byte: u8) -> RootKey {
        RootKey::from_bytes(&[byte; 32]).unwrap()
    }

    fn small(rotate_after_seals: u64, max_seals: u64, cache_size: usize) -> Keyring {
        Keyring::new(Policy {
            rotate_after_seals,
            max_seals,
            cache_size,
            ..Policy::default()
        })
        .unwrap()
    }

    #[test]
    fn empty_keyring_refuses_to_seal() {
        let mut ring = Keyring::new(Policy::default()).unwrap();
        assert!(ring.needs_rotation());
        assert!(ring.current_key_id().is_none());
        assert!(matches!(ring.seal(b"dek"), Err(Error::NeedsRotation(_))));
    }

    #[test]
    fn seal_open_round_trip() {
        let root = root(1);
        let mut ring = Keyring::new(Policy::default()).unwrap();
        ring.rotate_local(&root).unwrap();
        assert_eq!(ring.current_key_id(), Some(root.key_id()));
        assert!(!ring.needs_rotation());
        let ct = ring.seal(&[0xAB; 32]).unwrap();
        assert_eq!(ct.len(), 165);
        assert_eq!(ring.open(&ct, None).unwrap(), [0xAB; 32]);
        assert_eq!(ring.open(&ct, Some(root.key_id())).unwrap(), [0xAB; 32]);
        assert!(matches!(
            ring.open(&ct, Some("other")),
            Err(Error::UnknownKeyId(_))
        ));
        let (mode, key_id, wrapped) = format::peek(&ct).unwrap();
        assert_eq!(
            (mode, key_id, wrapped.len()),
            (Mode::Hierarchy, root.key_id(), 60)
        );
        assert_ne!(ring.seal(&[0xAB; 32]).unwrap(), ct, "nonces must differ");
        assert!(matches!(ring.seal(&[]), Err(Error::InvalidInput(_))));
        assert!(matches!(
            ring.seal(&[0; 513]),
            Err(Error::PlaintextTooLarge)
        ));
        // A direct-mode envelope is not the keyring's to open.
        let direct = root.seal_direct(b"dek").unwrap();
        assert!(matches!(
            ring.open(&direct, None),
            Err(Error::InvalidCiphertext)
        ));
        assert!(matches!(
            ring.unwrap_local(&root, &direct),
            Err(Error::InvalidCiphertext)
        ));
    }

    #[test]
    fn budget_soft_then_hard() {
        let root = root(2);
        let mut ring = small(2, 3, 8);
        ring.rotate_local(&root).unwrap();
        ring.seal(b"1").unwrap();
        assert!(!ring.needs_rotation());
        ring.seal(b"2").unwrap();
        assert!(ring.needs_rotation());
        ring.seal(b"3").unwrap();
        assert!(matches!(ring.seal(b"4"), Err(Error::NeedsRotation(_))));
        assert_eq!(ring.stats().seals, 3);
        ring.rotate_local(&root).unwrap();
        assert!(!ring.needs_rotation());
        // A batch is all or nothing.
        assert!(matches!(
            ring.seal_batch(&[b"a", b"b", b"c", b"d"]),
            Err(Error::NeedsRotation(_))
        ));
        assert_eq!(ring.stats().seals, 0);
        assert!(matches!(
            ring.seal_batch(&[&b"a"[..], &[]]),
            Err(Error::InvalidInput(_))
        ));
        let cts = ring.seal_batch(&[b"a", b"b", b"c"]).unwrap();
        assert_eq!(cts.len(), 3);
        assert_eq!(ring.stats().seals, 3);
        assert_eq!(ring.stats().rotations, 2);
    }

    #[test]
    fn age_soft_then_hard_at_twice() {
        let mut ring = Keyring::new(Policy {
            max_age: Duration::from_secs(100),
            ..Policy::default()
        })
        .unwrap();
        ring.rotate_local(&root(3)).unwrap();
        let born = ring.current.as_ref().unwrap().created;
        assert!(!ring.needs_rotation_at(born + Duration::from_secs(99)));
        assert!(ring.needs_rotation_at(born + Duration::from_secs(100)));
        assert!(ring.sealer(1, born + Duration::from_secs(199)).is_ok());
        assert!(matches!(
            ring.sealer(1, born + Duration::from_secs(200)),
            Err(Error::NeedsRotation(_))
        ));
    }

    #[test]
    fn old_ciphertexts_open_after_rotation_and_eviction() {
        let root = root(4);
        let mut ring = small(1 << 20, 1 << 21, 2);
        let mut sealed = Vec::new();
        for i in 0..4_u8 {
            ring.rotate_local(&root).unwrap();
            sealed.push(ring.seal(&[i; 32]).unwrap());
        }
        // Current plus the two most recent retired KEKs are unwrapped; the first is evicted.
        assert_eq!(ring.stats().cache_len, 2);
        assert!(matches!(
            ring.open(&sealed[0], None),
            Err(Error::KekNotCached)
        ));
        for (i, ct) in sealed.iter().enumerate().skip(1) {
            assert_eq!(ring.open(ct, None).unwrap(), [u8::try_from(i).unwrap(); 32]);
        }
        // The root unwraps the evicted KEK again.
        ring.unwrap_local(&root, &sealed[0]).unwrap();
        assert_eq!(ring.open(&sealed[0], None).unwrap(), [0; 32]);
        // Another root does not own it.
        assert!(matches!(
            ring.unwrap_local(&self::root(5), &sealed[0]),
            Err(Error::UnknownKeyId(_))
        ));
        let stats = ring.stats();
        assert_eq!(
            (stats.cache_hits, stats.cache_misses, stats.rotations),
            (4, 1, 4)
        );
    }

    #[test]
    fn cache_ttl_expires_on_get() {
        let root = root(6);
        let mut ring = Keyring::new(Policy {
            cache_ttl: Duration::from_secs(10),
            ..Policy::default()
        })
        .unwrap();
        ring.rotate_local(&root).unwrap();
        let ct = ring.seal(b"old").unwrap();
        ring.rotate_local(&root).unwrap();
        let now = Instant::now();
        assert_eq!(ring.open_at(&ct, None, now).unwrap(), b"old");
        let later = now + Duration::from_secs(11);
        assert!(matches!(
            ring.open_at(&ct, None, later),
            Err(Error::KekNotCached)
        ));
        assert_eq!(ring.stats().cache_len, 0, "expired entries are dropped");
        // The current KEK never expires through the cache TTL.
        let fresh = ring.seal(b"new").unwrap();
        assert_eq!(ring.open_at(&fresh, None, later).unwrap(), b"new");
    }

    #[test]
    fn remote_provider_paths() {
        let mut ring = Keyring::new(Policy::default()).unwrap();
        let kek = [7_u8; 32];
        ring.install_current("arn:aws:kms:key/1", b"opaque-wrapped-kek", &kek)
            .unwrap();
        let ct = ring.seal(b"dek").unwrap();
        let mut other = Keyring::new(Policy::default()).unwrap();
        assert!(matches!(other.open(&ct, None), Err(Error::KekNotCached)));
        other
            .cache_kek("arn:aws:kms:key/1", b"opaque-wrapped-kek", &kek)
            .unwrap();
        assert_eq!(other.open(&ct, Some("arn:aws:kms:key/1")).unwrap(), b"dek");
        // A wrong KEK under the right name fails authentication.
        let mut wrong = Keyring::new(Policy::default()).unwrap();
        wrong
            .cache_kek("arn:aws:kms:key/1", b"opaque-wrapped-kek", &[8; 32])
            .unwrap();
        assert!(matches!(
            wrong.open(&ct, None),
            Err(Error::InvalidCiphertext)
        ));

        for (key_id, wrapped, kek) in [
            ("", &b"w"[..], &[0_u8; 32][..]),
            (&*"k".repeat(256), b"w", &[0; 32]),
            ("k", b"", &[0; 32]),
            ("k", &[0; 1025], &[0; 32]),
            ("k", b"w", &[0; 31]),
            ("k", b"w", &[0; 33]),
        ] {
            assert!(matches!(
                ring.install_current(key_id, wrapped, kek),
                Err(Error::InvalidInput(_))
            ));
            assert!(matches!(
                ring.cache_kek(key_id, wrapped, kek),
                Err(Error::InvalidInput(_))
            ));
        }
        assert!(ring
            .install_current(&"k".repeat(255), &[0; 1024], &[0; 32])
            .is_ok());
    }

    #[test]
    fn open_batch_reports_per_item() {
        let root = root(9);
        let mut ring = Keyring::new(Policy::default()).unwrap();
        ring.rotate_local(&root).unwrap();
        let good = ring.seal(b"good").unwrap();
        let mut tampered = good.clone();
        *tampered.last_mut().unwrap() ^= 1;
        let results = ring.open_batch(&[
            (&good, None),
            (&tampered, None),
            (b"junk", None),
            (&good, Some("nope")),
            (&good, Some(root.key_id())),
        ]);
        assert_eq!(results[0].as_deref().unwrap(), b"good");
        assert!(matches!(results[1], Err(Error::InvalidCiphertext)));
        assert!(matches!(results[2], Err(Error::InvalidCiphertext)));
        assert!(matches!(results[3], Err(Error::UnknownKeyId(_))));
        assert_eq!(results[4].as_deref().unwrap(), b"good");
    }

    #[test]
    fn policy_validation() {
        let bad = [
            Policy {
                rotate_after_seals: 0,
                ..Policy::default()
            },
            Policy {
                rotate_after_seals: 10,
                max_seals: 9,
                ..Policy::default()
            },
            Policy {
                max_seals: MAX_SEALS_LIMIT + 1,
                ..Policy::default()
            },
            Policy {
                max_age: Duration::ZERO,
                ..Policy::default()
            },
            Policy {
                cache_size: 0,
                ..Policy::default()
            },
            Policy {
                cache_ttl: Duration::ZERO,
                ..Policy::default()
            },
        ];
        for policy in bad {
            assert!(
                matches!(Keyring::new(policy), Err(Error::InvalidInput(_))),
                "{policy:?}"
            );
        }
    }

    #[test]
    fn debug_shows_no_key_material() {
        let mut ring = Keyring::new(Policy::default()).unwrap();
        ring.install_current("kid", b"w", &[0x5A; 32]).unwrap();
        let shown = format!("{ring:?}");
        assert!(
            shown.contains("kid") && !shown.contains("90") && !shown.contains("5a"),
            "{shown}"
        );
    }

    fn ring_with(root: &RootKey) -> Keyring {
        let mut ring = Keyring::new(Policy::default()).unwrap();
        ring.rotate_local(root).unwrap();
        ring
    }

    #[test]
    fn set_policy_applies_budget_and_shrinks_cache() {
        let root = RootKey::from_bytes(&[3; 32]).unwrap();
        let mut ring = Keyring::new(Policy::default()).unwrap();
        for _ in 0..3 {
            ring.rotate_local(&root).unwrap();
        }
        assert_eq!(ring.stats().cache_len, 2);
        let tight = Policy {
            rotate_after_seals: 1,
            max_seals: 2,
            cache_size: 1,
            ..Policy::default()
        };
        ring.set_policy(tight).unwrap();
        assert_eq!(ring.stats().cache_len, 1);
        ring.seal(b"dek").unwrap();
        assert!(ring.needs_rotation());
        ring.seal(b"dek").unwrap();
        assert!(matches!(ring.seal(b"dek"), Err(Error::NeedsRotation(_))));
        let bad = Policy {
            cache_size: 0,
            ..Policy::default()
        };
        assert!(ring.set_policy(bad).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn round_trip(dek in proptest::collection::vec(any::<u8>(), 1..=512)) {
            let root = root(10);
            let mut ring = ring_with(&root);
            let ct = ring.seal(&dek).unwrap();
            prop_assert_eq!(ring.open(&ct, None).unwrap(), dek.clone());
            let mut fresh = Keyring::new(Policy::default()).unwrap();
            prop_assert!(matches!(fresh.open(&ct, None), Err(Error::KekNotCached)));
            fresh.unwrap_local(&root, &ct).unwrap();
            prop_assert_eq!(fresh.open(&ct, None).unwrap(), dek);
        }

        #[test]
        fn any_bit_flip_fails(dek in proptest::collection::vec(any::<u8>(), 1..=64), bit in any::<prop::sample::Index>()) {
            let root = root(11);
            let mut ring = ring_with(&root);
            let ct = ring.seal(&dek).unwrap();
            let header_len = format::parse(&ct).unwrap().header.len();
            let at = bit.index(ct.len() * 8);
            let mut bad = ct.clone();
            bad[at / 8] ^= 1 << (at % 8);
            let opened = ring.open(&bad, None);
            if at / 8 >= header_len {
                prop_assert!(matches!(opened, Err(Error::InvalidCiphertext)));
            } else {
                // A changed header names another (uncached) KEK, or no longer parses.
                prop_assert!(matches!(
                    opened,
                    Err(Error::InvalidCiphertext | Error::KekNotCached | Error::UnknownKeyId(_))
                ));
                // Even with the root key at hand it never opens.
                let unwrapped = ring.unwrap_local(&root, &bad);
                prop_assert!(matches!(
                    unwrapped,
                    Err(Error::InvalidCiphertext | Error::UnknownKeyId(_))
                ), "{:?}", unwrapped);
                prop_assert!(ring.open(&bad, None).is_err());
            }
        }

        #[test]
        fn truncation_fails(dek in proptest::collection::vec(any::<u8>(), 1..=64), cut in any::<prop::sample::Index>()) {
            let mut ring = ring_with(&root(12));
            let ct = ring.seal(&dek).unwrap();
            let cut = cut.index(ct.len());
            prop_assert!(matches!(ring.open(&ct[..cut], None), Err(Error::InvalidCiphertext)));
            let mut longer = ct.clone();
            longer.push(0);
            prop_assert!(matches!(ring.open(&longer, None), Err(Error::InvalidCiphertext)));
        }

        #[test]
        fn random_bytes_never_open(bytes in proptest::collection::vec(any::<u8>(), 0..700), magic in any::<bool>()) {
            let root = root(13);
            let mut ring = ring_with(&root);
            let mut bytes = bytes;
            if magic && bytes.len() >= 4 {
                bytes[..4].copy_from_slice(&[0xC9, 0x6B, 1, 1]);
            }
            prop_assert!(ring.open(&bytes, None).is_err());
            prop_assert!(ring.unwrap_local(&root, &bytes).is_err());
            prop_assert!(ring.open(&bytes, None).is_err());
            prop_assert!(root.open_direct(&bytes).is_err());
        }
    }
}
