//! The local root key: the embedded default KEK, read from a 32-byte key file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::hmac;
use zeroize::Zeroizing;

use crate::aead::{self, AeadKey, SecretKey, KEY_LEN, NONCE_LEN, TAG_LEN};
use crate::error::{Error, Result};
use crate::format::{self, Mode};
use crate::keyring::{Policy, MAX_SEALS_LIMIT};

/// Prefix of every local `key_id`.
pub const LOCAL_KEY_ID_PREFIX: &str = "local-";
/// HMAC message from which the `key_id` is derived.
const KEY_ID_LABEL: &[u8] = b"kmsplug local key id v1";
/// Associated-data prefix when the root key wraps a local KEK.
const WRAP_LABEL: &[u8] = b"kmsplug local-kek v1|";
/// Length of a local KEK wrapped by the root key.
pub const WRAPPED_KEK_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;

/// A 256-bit root key read from a key file. It wraps local KEKs (hierarchy mode) and
/// seals DEKs itself (direct mode).
///
/// The file's bytes pass through a [`Zeroizing`] buffer only: once the AES key and the
/// `key_id` are derived, aws-lc's context is the only copy, and it is cleansed on drop.
///
/// Every seal under the root key (a DEK in direct mode, a local KEK in hierarchy mode)
/// takes a random 96-bit nonce, so they are counted against a budget, as a local KEK's
/// are ([`Policy::max_seals`], 2^24 by default). Past it, sealing fails with
/// [`Error::SealBudgetSpent`]; opening goes on. The count covers this process only: the
/// key file holds no counter (it may be read-only, or copied to several nodes).
pub struct RootKey {
    key: AeadKey,
    key_id: String,
    seals: AtomicU64,
    max_seals: AtomicU64,
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl RootKey {
    /// A root key from raw bytes (tests and tools; servers use [`RootKey::from_file`]).
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Result<Self> {
        let hmac_key = hmac::Key::new(hmac::HMAC_SHA256, bytes);
        let tag = hmac::sign(&hmac_key, KEY_ID_LABEL);
        let mut key_id = String::with_capacity(LOCAL_KEY_ID_PREFIX.len() + 32);
        key_id.push_str(LOCAL_KEY_ID_PREFIX);
        for byte in &tag.as_ref()[..16] {
            key_id.push(char::from(HEX[usize::from(byte >> 4)]));
            key_id.push(char::from(HEX[usize::from(byte & 0x0F)]));
        }
        Ok(Self {
            key: AeadKey::new(bytes)?,
            key_id,
            seals: AtomicU64::new(0),
            max_seals: AtomicU64::new(Policy::DEFAULT.max_seals),
        })
    }

    /// Read a key file: exactly 32 raw bytes, a regular file (not a symbolic link, FIFO or
    /// device), owned by the user kmsplug runs as or by root, not accessible to group or
    /// others (mode & 0o077 == 0). The checks apply to the file opened (fstat of its
    /// descriptor), so nothing can be swapped in between check and read. Errors name the
    /// path and the fault, never the bytes.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut file = open_no_follow(path)?;
        let meta = file
            .metadata()
            .map_err(|e| Error::key_file(path, format!("cannot stat: {e}")))?;
        if !meta.is_file() {
            return Err(Error::key_file(path, "is not a regular file"));
        }
        let owner = meta.uid();
        let user = rustix::process::geteuid().as_raw();
        if owner != user && owner != 0 {
            return Err(Error::key_file(
                path,
                format!(
                    "is owned by uid {owner}, neither kmsplug's user (uid {user}) nor root: \
                     that user could have chosen the key; chown it"
                ),
            ));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(Error::key_file(
                path,
                format!("mode {mode:04o} lets group or others access it; chmod 600 it"),
            ));
        }
        if meta.len() != KEY_LEN as u64 {
            return Err(Error::key_file(
                path,
                format!(
                    "must hold exactly {KEY_LEN} raw bytes, holds {}",
                    meta.len()
                ),
            ));
        }
        let mut bytes: SecretKey = Zeroizing::new([0; KEY_LEN]);
        file.read_exact(bytes.as_mut())
            .map_err(|e| Error::key_file(path, format!("cannot read: {e}")))?;
        let mut extra = [0_u8; 1];
        match file.read(&mut extra) {
            Ok(0) => {}
            Ok(_) => {
                return Err(Error::key_file(path, "grew while being read"));
            }
            Err(e) => return Err(Error::key_file(path, format!("cannot read: {e}"))),
        }
        Self::from_bytes(&bytes)
    }

    /// Create a new key file (mode 0600, 32 random bytes, fsynced) and return its key.
    /// Fails if the path exists.
    pub fn create_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::key_file(path, format!("cannot create: {e}")))?;
        let written = (|| {
            let bytes = aead::random_key()?;
            file.write_all(bytes.as_ref())
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::key_file(path, format!("cannot write: {e}")))?;
            Self::from_bytes(&bytes)
        })();
        match written {
            Ok(key) => {
                // Make the new directory entry durable too; best effort, as some file
                // systems refuse fsync on directories.
                if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    if let Ok(dir) = File::open(dir) {
                        let _ = dir.sync_all();
                    }
                }
                Ok(key)
            }
            Err(err) => {
                drop(file);
                let _ = std::fs::remove_file(path);
                Err(err)
            }
        }
    }

    /// `"local-"` followed by 32 hex digits derived from the key: public, and different
    /// for every key file.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Seals made under this key by this process (DEKs in direct mode, local KEKs).
    pub fn seals(&self) -> u64 {
        self.seals.load(Ordering::Relaxed)
    }

    /// The seal budget: past it, sealing fails and opening goes on.
    pub fn max_seals(&self) -> u64 {
        self.max_seals.load(Ordering::Relaxed)
    }

    /// Set the seal budget (1..=2^32; a reload may lower or raise it).
    pub fn set_max_seals(&self, max_seals: u64) -> Result<()> {
        if max_seals == 0 || max_seals > MAX_SEALS_LIMIT {
            return Err(Error::InvalidInput("max_seals must be 1..=2**32"));
        }
        self.max_seals.store(max_seals, Ordering::Relaxed);
        Ok(())
    }

    /// Take one seal from the budget, or fail if it is spent.
    fn count_seal(&self) -> Result<()> {
        let max = self.max_seals();
        self.seals
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .map(drop)
            .map_err(|_| Error::SealBudgetSpent(max))
    }

    fn wrap_aad(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(WRAP_LABEL.len() + self.key_id.len());
        aad.extend_from_slice(WRAP_LABEL);
        aad.extend_from_slice(self.key_id.as_bytes());
        aad
    }

    /// Wrap a local KEK: `nonce || AES-GCM(root, nonce, aad, kek)` where aad is
    /// `"kmsplug local-kek v1|" + key_id`.
    pub(crate) fn wrap_kek(&self, kek: &[u8; KEY_LEN]) -> Result<Vec<u8>> {
        self.count_seal()?;
        self.wrap_kek_with_nonce(kek, aead::random_nonce()?)
    }

    pub(crate) fn wrap_kek_with_nonce(
        &self,
        kek: &[u8; KEY_LEN],
        nonce: [u8; NONCE_LEN],
    ) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(WRAPPED_KEK_LEN);
        self.key
            .seal_append(nonce, &self.wrap_aad(), kek, &mut out)?;
        Ok(out)
    }

    /// Invert [`RootKey::wrap_kek`]; any failure is [`Error::InvalidCiphertext`].
    pub(crate) fn unwrap_kek(&self, wrapped: &[u8]) -> Result<SecretKey> {
        if wrapped.len() != WRAPPED_KEK_LEN {
            return Err(Error::InvalidCiphertext);
        }
        self.key.open_key(wrapped, &self.wrap_aad())
    }

    /// Seal a DEK directly under the root key: a mode-2 envelope whose wrapped part is
    /// `nonce || AES-GCM(root, nonce, aad = header up to and including W, dek)`.
    pub fn seal_direct(&self, dek: &[u8]) -> Result<Vec<u8>> {
        format::check_plaintext(dek)?;
        self.count_seal()?;
        self.seal_direct_with_nonce(dek, aead::random_nonce()?)
    }

    pub(crate) fn seal_direct_with_nonce(
        &self,
        dek: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Result<Vec<u8>> {
        format::check_plaintext(dek)?;
        let wrapped_len = NONCE_LEN + dek.len() + TAG_LEN;
        let mut out = format::prefix(Mode::Direct, &self.key_id, wrapped_len, wrapped_len)?;
        let aad_len = out.len();
        let aad = out.clone();
        self.key
            .seal_append(nonce, &aad[..aad_len], dek, &mut out)?;
        Ok(out)
    }

    /// Open what [`RootKey::seal_direct`] made. A mode-1 or malformed input is
    /// [`Error::InvalidCiphertext`]; another key's envelope is [`Error::UnknownKeyId`].
    pub fn open_direct(&self, ct: &[u8]) -> Result<Vec<u8>> {
        let env = format::parse(ct)?;
        if env.mode != Mode::Direct || env.wrapped.len() < NONCE_LEN + 1 + TAG_LEN {
            return Err(Error::InvalidCiphertext);
        }
        if env.key_id != self.key_id {
            return Err(Error::UnknownKeyId("the ciphertext names another key"));
        }
        let mut plain = self.key.open(env.wrapped, env.prefix)?;
        Ok(std::mem::take(&mut *plain))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Open a key file for reading without following a symbolic link, and without blocking:
/// a FIFO or a device in its place must not hang start-up (the caller then refuses
/// anything but a regular file).
fn open_no_follow(path: &Path) -> Result<File> {
    use rustix::fs::{Mode as Permissions, OFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    match rustix::fs::open(path, flags | OFlags::NOCTTY, Permissions::empty()) {
        Ok(fd) => Ok(File::from(fd)),
        Err(rustix::io::Errno::LOOP) => Err(Error::key_file(
            path,
            "is a symbolic link: give the path of the key file itself (in a Kubernetes \
             Secret volume: DIR/..data/NAME)",
        )),
        Err(errno) => Err(Error::key_file(
            path,
            format!("cannot open: {}", std::io::Error::from(errno)),
        )),
    }
}

/// Deterministic sealing for golden vectors. Nonce reuse under AES-GCM is catastrophic:
/// this exists only in test builds and with the `test-vectors` feature.
#[cfg(any(test, feature = "test-vectors"))]
impl RootKey {
    /// [`RootKey::seal_direct`] with a caller-chosen nonce.
    #[doc(hidden)]
    pub fn seal_direct_with_fixed_nonce(
        &self,
        dek: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Result<Vec<u8>> {
        self.seal_direct_with_nonce(dek, nonce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmpdir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "kmsplug-core-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn key_id_is_derived_and_distinct() {
        let a = RootKey::from_bytes(&[1; 32]).unwrap();
        let b = RootKey::from_bytes(&[2; 32]).unwrap();
        assert_eq!(a.key_id().len(), 38);
        assert!(a.key_id().starts_with("local-"));
        assert_ne!(a.key_id(), b.key_id());
        assert_eq!(a.key_id(), RootKey::from_bytes(&[1; 32]).unwrap().key_id());
        assert!(!format!("{a:?}").contains("0101"));
    }

    #[test]
    fn create_then_read() {
        let dir = tmpdir("create");
        let path = dir.join("root.key");
        let created = RootKey::create_file(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        let read = RootKey::from_file(&path).unwrap();
        assert_eq!(created.key_id(), read.key_id());
        let err = RootKey::create_file(&path).unwrap_err();
        assert!(matches!(err, Error::KeyFile { .. }), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_bad_files() {
        let dir = tmpdir("refuse");
        let open = dir.join("open.key");
        std::fs::write(&open, [7_u8; 32]).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = RootKey::from_file(&open).unwrap_err().to_string();
        assert!(err.contains("open.key") && err.contains("0644"), "{err}");
        assert!(!err.contains("0707"), "{err}");

        for (name, len) in [("short.key", 31), ("long.key", 33), ("empty.key", 0)] {
            let path = dir.join(name);
            std::fs::write(&path, vec![7_u8; len]).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let err = RootKey::from_file(&path).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains("exactly 32"), "{err}");
        }
        let err = RootKey::from_file(dir.join("missing.key")).unwrap_err();
        assert!(matches!(err, Error::KeyFile { .. }));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = RootKey::from_file(&dir).unwrap_err().to_string();
        assert!(err.contains("regular file"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_fifos_symlinks_and_other_users_files_without_blocking() {
        let dir = tmpdir("types");
        let good = dir.join("good.key");
        RootKey::create_file(&good).unwrap();

        // A FIFO with no writer: a blocking open would wait forever.
        let fifo = dir.join("fifo.key");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let started = std::time::Instant::now();
        let err = RootKey::from_file(&fifo).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));

        let link = dir.join("link.key");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        let err = RootKey::from_file(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");

        let user = rustix::process::geteuid().as_raw();
        if user == 0 {
            // Only root can give a file away; as another user the check cannot be set up.
            let theirs = dir.join("theirs.key");
            std::fs::copy(&good, &theirs).unwrap();
            std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let err = RootKey::from_file(&theirs).unwrap_err().to_string();
            assert!(err.contains("owned by uid 65534"), "{err}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn seal_budget_counts_direct_seals_and_wrapped_keks_and_spares_opening() {
        let root = RootKey::from_bytes(&[3; 32]).unwrap();
        assert_eq!(root.max_seals(), Policy::DEFAULT.max_seals);
        root.set_max_seals(3).unwrap();
        let first = root.seal_direct(b"dek").unwrap();
        let _kek = root.wrap_kek(&[1; 32]).unwrap();
        assert!(matches!(root.seal_direct(&[]), Err(Error::InvalidInput(_))));
        assert_eq!(root.seals(), 2); // a refused plaintext costs nothing
        root.seal_direct(b"dek").unwrap();
        assert!(matches!(
            root.seal_direct(b"dek"),
            Err(Error::SealBudgetSpent(3))
        ));
        assert!(matches!(
            root.wrap_kek(&[1; 32]),
            Err(Error::SealBudgetSpent(3))
        ));
        assert_eq!(root.seals(), 3);
        assert_eq!(root.open_direct(&first).unwrap(), b"dek");
        root.set_max_seals(4).unwrap(); // a reload can raise it
        root.seal_direct(b"dek").unwrap();
        assert!(root.set_max_seals(0).is_err());
        assert!(root.set_max_seals(MAX_SEALS_LIMIT + 1).is_err());
    }

    #[test]
    fn wrap_and_direct_round_trip() {
        let root = RootKey::from_bytes(&[9; 32]).unwrap();
        let other = RootKey::from_bytes(&[8; 32]).unwrap();
        let wrapped = root.wrap_kek(&[5; 32]).unwrap();
        assert_eq!(wrapped.len(), WRAPPED_KEK_LEN);
        assert_eq!(*root.unwrap_kek(&wrapped).unwrap(), [5; 32]);
        assert!(other.unwrap_kek(&wrapped).is_err());

        let ct = root.seal_direct(b"dek").unwrap();
        assert_eq!(format::peek(&ct).unwrap().0, Mode::Direct);
        assert_eq!(root.open_direct(&ct).unwrap(), b"dek");
        assert!(matches!(
            other.open_direct(&ct),
            Err(Error::UnknownKeyId(_))
        ));
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 0x40;
            assert!(root.open_direct(&bad).is_err());
        }
        assert!(matches!(root.seal_direct(&[]), Err(Error::InvalidInput(_))));
        assert!(matches!(
            root.seal_direct(&[0; 513]),
            Err(Error::PlaintextTooLarge)
        ));
    }
}
