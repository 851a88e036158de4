//! AES-256-GCM through aws-lc-rs, with random 96-bit nonces from the OS.
//!
//! A sealed blob here is always `nonce (12) || ciphertext || tag (16)`.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// AES-GCM nonce length.
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// AES-256 key length.
pub const KEY_LEN: usize = 32;

/// 32 secret bytes that are wiped when dropped.
pub type SecretKey = Zeroizing<[u8; KEY_LEN]>;

/// An AES-256-GCM key. Only aws-lc's context holds the key (and its schedule); aws-lc
/// cleanses that memory when the context is freed on drop.
pub(crate) struct AeadKey(LessSafeKey);

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKey(..)")
    }
}

impl AeadKey {
    pub(crate) fn new(key: &[u8; KEY_LEN]) -> Result<Self> {
        let unbound = UnboundKey::new(&AES_256_GCM, key)
            .map_err(|_| Error::Internal("AES-256-GCM key setup failed"))?;
        Ok(Self(LessSafeKey::new(unbound)))
    }

    /// Append `nonce || AES-GCM(plaintext) || tag` to `out`, which should have the
    /// capacity for it (so no reallocation leaves plaintext copies behind).
    pub(crate) fn seal_append(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        out.reserve_exact(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[start..],
            )
            .map_err(|_| Error::Internal("AES-256-GCM seal failed"));
        match tag {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                Ok(())
            }
            Err(err) => {
                zeroize::Zeroize::zeroize(&mut out[start..]);
                out.truncate(start - NONCE_LEN);
                Err(err)
            }
        }
    }

    /// Open `nonce || ciphertext || tag`. Any failure is [`Error::InvalidCiphertext`].
    pub(crate) fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(Error::InvalidCiphertext);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| Error::InvalidCiphertext)?;
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let len = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| Error::InvalidCiphertext)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// Open a blob that must hold a 32-byte key.
    pub(crate) fn open_key(&self, sealed: &[u8], aad: &[u8]) -> Result<SecretKey> {
        let plain = self.open(sealed, aad)?;
        let mut key = Zeroizing::new([0_u8; KEY_LEN]);
        if plain.len() != KEY_LEN {
            return Err(Error::InvalidCiphertext);
        }
        key.copy_from_slice(&plain);
        Ok(key)
    }
}

/// Fill `buf` from the OS CSPRNG.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|_| Error::Internal("the OS random source failed"))
}

/// A fresh random nonce.
pub(crate) fn random_nonce() -> Result<[u8; NONCE_LEN]> {
    let mut nonce = [0_u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    Ok(nonce)
}

/// A fresh random 256-bit key (from the OS CSPRNG), wiped on drop.
pub fn random_key() -> Result<SecretKey> {
    let mut key = Zeroizing::new([0_u8; KEY_LEN]);
    fill_random(key.as_mut())?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let key = AeadKey::new(&[3; KEY_LEN]).unwrap();
        let mut out = b"hdr".to_vec();
        key.seal_append([1; NONCE_LEN], b"aad", b"secret", &mut out)
            .unwrap();
        assert_eq!(out.len(), 3 + NONCE_LEN + 6 + TAG_LEN);
        assert_eq!(&*key.open(&out[3..], b"aad").unwrap(), b"secret");
        assert!(key.open(&out[3..], b"aaD").is_err());
        for i in 3..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 1;
            assert!(matches!(
                key.open(&bad[3..], b"aad"),
                Err(Error::InvalidCiphertext)
            ));
        }
        assert!(key.open(&out[3..out.len() - 1], b"aad").is_err());
        assert!(key.open(&[0; 27], b"").is_err());
        assert!(matches!(
            key.open_key(&out[3..], b"aad"),
            Err(Error::InvalidCiphertext)
        ));
    }

    #[test]
    fn random_values_differ() {
        assert_ne!(random_nonce().unwrap(), random_nonce().unwrap());
        assert_ne!(*random_key().unwrap(), *random_key().unwrap());
    }
}
