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

mod policy;
#[cfg(test)]
mod tests;

pub use policy::{Policy, MAX_SEALS_LIMIT};

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
