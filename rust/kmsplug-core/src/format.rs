//! Wire format v1 of kmsplug ciphertexts (the authoritative description is FORMAT.md).
//!
//! ```text
//! offset  size   field
//! 0       2      magic 0xC9 0x6B
//! 2       1      format version 0x01
//! 3       1      mode: 0x01 hierarchy, 0x02 direct
//! 4       1      K = `key_id` length, 1..=255
//! 5       K      `key_id`, UTF-8
//! 5+K     2      W = wrapped length, big-endian, 1..=1024
//! 7+K     W      wrapped (mode 1: wrapped local KEK; mode 2: the provider's wrapped DEK)
//! -- mode 1 only:
//! 7+K+W   12     nonce
//!         P+16   AES-256-GCM(local KEK, nonce, aad = all bytes before the nonce, DEK)
//! ```
//!
//! Parsing never panics and never allocates; every failure is
//! [`Error::InvalidCiphertext`].

use crate::aead::{NONCE_LEN, TAG_LEN};
use crate::error::{Error, Result};
use crate::limits::{MAX_KEY_ID, V1_MAX_CIPHERTEXT};

/// The first two bytes of every kmsplug ciphertext. The first is >= 0x80, so a kmsplug
/// ciphertext is never ASCII: never base64 text (ack-kms-plugin), never `'1'`
/// (aws-encryption-provider), never `vault:`.
pub const MAGIC: [u8; 2] = [0xC9, 0x6B];
/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Largest plaintext (DEK or seed) sealed. kube-apiserver sends 32 bytes.
pub const MAX_PLAINTEXT: usize = 512;
/// Longest `key_id` an envelope carries (one length byte).
pub const MAX_ENVELOPE_KEY_ID: usize = 255;
/// Longest wrapped part an envelope carries.
pub const MAX_WRAPPED: usize = 1024;

/// Bytes before the `key_id`: magic, version, mode, K.
const FIXED_PREFIX: usize = 5;
/// Smallest mode-1 body: nonce, one byte of ciphertext, tag.
const MIN_BODY: usize = NONCE_LEN + 1 + TAG_LEN;
/// Largest mode-1 body: nonce, [`MAX_PLAINTEXT`] bytes of ciphertext, tag.
const MAX_BODY: usize = NONCE_LEN + MAX_PLAINTEXT + TAG_LEN;

/// The largest envelope this format can express.
pub const MAX_ENVELOPE: usize = FIXED_PREFIX + MAX_ENVELOPE_KEY_ID + 2 + MAX_WRAPPED + MAX_BODY;

// Every envelope fits a KMS v1 ciphertext, and every key_id a KMS v2 key_id.
const _: () = assert!(MAX_ENVELOPE <= V1_MAX_CIPHERTEXT);
const _: () = assert!(MAX_ENVELOPE_KEY_ID <= MAX_KEY_ID);

/// How the DEK in an envelope is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Mode {
    /// The DEK is sealed by a local KEK; the envelope carries the wrapped local KEK.
    Hierarchy = 1,
    /// The DEK is wrapped by the provider itself; the envelope carries that output.
    Direct = 2,
}

impl Mode {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Hierarchy),
            2 => Some(Self::Direct),
            _ => None,
        }
    }
}

/// A parsed envelope: borrowed views into the ciphertext.
#[derive(Clone, Copy, Debug)]
pub struct Envelope<'a> {
    /// How the DEK is protected.
    pub mode: Mode,
    /// The provider key that wrapped the local KEK (mode 1) or the DEK (mode 2).
    pub key_id: &'a str,
    /// The wrapped local KEK (mode 1) or the provider's wrapped DEK (mode 2).
    pub wrapped: &'a [u8],
    /// Magic up to and including W: the associated data of a local direct-mode seal.
    pub prefix: &'a [u8],
    /// Magic up to and including `wrapped`: the associated data of a mode-1 seal, and the
    /// identity of the local KEK in the keyring.
    pub header: &'a [u8],
    /// Mode 1: nonce followed by AES-GCM ciphertext and tag. Mode 2: empty.
    pub body: &'a [u8],
}

/// Parse an envelope, checking every structural rule of format v1.
pub fn parse(ct: &[u8]) -> Result<Envelope<'_>> {
    let bad = || Error::InvalidCiphertext;
    let fixed = ct.get(..FIXED_PREFIX).ok_or_else(bad)?;
    if fixed[..2] != MAGIC || fixed[2] != FORMAT_VERSION {
        return Err(bad());
    }
    let mode = Mode::from_byte(fixed[3]).ok_or_else(bad)?;
    let k = usize::from(fixed[4]);
    if k == 0 {
        return Err(bad());
    }
    let key_id_end = FIXED_PREFIX + k;
    let key_id = ct.get(FIXED_PREFIX..key_id_end).ok_or_else(bad)?;
    let key_id = std::str::from_utf8(key_id).map_err(|_| bad())?;
    let prefix_end = key_id_end + 2;
    let w = ct.get(key_id_end..prefix_end).ok_or_else(bad)?;
    let w = usize::from(u16::from_be_bytes([w[0], w[1]]));
    if w == 0 || w > MAX_WRAPPED {
        return Err(bad());
    }
    let header_end = prefix_end + w;
    let wrapped = ct.get(prefix_end..header_end).ok_or_else(bad)?;
    let body = &ct[header_end..];
    let body_ok = match mode {
        Mode::Hierarchy => (MIN_BODY..=MAX_BODY).contains(&body.len()),
        Mode::Direct => body.is_empty(),
    };
    if !body_ok {
        return Err(bad());
    }
    Ok(Envelope {
        mode,
        key_id,
        wrapped,
        prefix: &ct[..prefix_end],
        header: &ct[..header_end],
        body,
    })
}

/// The header (magic up to and including W) of an envelope whose wrapped part will be
/// `wrapped_len` bytes, with capacity for `extra` more bytes.
pub(crate) fn prefix(
    mode: Mode,
    key_id: &str,
    wrapped_len: usize,
    extra: usize,
) -> Result<Vec<u8>> {
    check_key_id(key_id)?;
    if wrapped_len == 0 || wrapped_len > MAX_WRAPPED {
        return Err(Error::InvalidInput("wrapped must be 1..=1024 bytes"));
    }
    let k = u8::try_from(key_id.len()).map_err(|_| Error::InvalidInput("key_id too long"))?;
    let w = u16::try_from(wrapped_len).map_err(|_| Error::InvalidInput("wrapped too long"))?;
    let mut out = Vec::with_capacity(FIXED_PREFIX + key_id.len() + 2 + wrapped_len + extra);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(mode as u8);
    out.push(k);
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(&w.to_be_bytes());
    Ok(out)
}

/// A mode-2 envelope around what a remote provider's wrap returned (its opaque blob):
/// kmsplug's own direct mode, so the `key_id` is read and checked as in every kmsplug
/// ciphertext. The provider authenticates its blob; binding the `key_id` into it, where
/// the KMS allows, is the provider's part (FORMAT.md, "Mode 2: direct").
pub fn frame_direct(key_id: &str, wrapped: &[u8]) -> Result<Vec<u8>> {
    let mut out = prefix(Mode::Direct, key_id, wrapped.len(), 0)?;
    out.extend_from_slice(wrapped);
    Ok(out)
}

/// The full mode-1 header (magic up to and including the wrapped local KEK), with
/// capacity for a sealed body of the largest plaintext.
pub(crate) fn hierarchy_header(key_id: &str, wrapped: &[u8]) -> Result<Vec<u8>> {
    let mut out = prefix(Mode::Hierarchy, key_id, wrapped.len(), MAX_BODY)?;
    out.extend_from_slice(wrapped);
    Ok(out)
}

/// A `key_id` fits an envelope: 1..=255 bytes.
pub(crate) fn check_key_id(key_id: &str) -> Result<()> {
    if key_id.is_empty() || key_id.len() > MAX_ENVELOPE_KEY_ID {
        return Err(Error::InvalidInput("key_id must be 1..=255 bytes"));
    }
    Ok(())
}

/// A plaintext can be sealed: 1..=[`MAX_PLAINTEXT`] bytes.
pub(crate) fn check_plaintext(plaintext: &[u8]) -> Result<()> {
    if plaintext.is_empty() {
        return Err(Error::InvalidInput("plaintext is empty"));
    }
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(Error::PlaintextTooLarge);
    }
    Ok(())
}

/// Parse only what routing needs: mode, `key_id` and wrapped part. Validates the whole
/// structure, so a `peek` that succeeds means the bytes are a well-formed envelope.
pub fn peek(ct: &[u8]) -> Result<(Mode, &str, &[u8])> {
    let env = parse(ct)?;
    Ok((env.mode, env.key_id, env.wrapped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(mode: Mode, key_id: &str, wrapped: &[u8], body: &[u8]) -> Vec<u8> {
        let mut out = prefix(mode, key_id, wrapped.len(), 0).unwrap();
        out.extend_from_slice(wrapped);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn frames_a_remote_blob_as_mode_2() {
        // Pinned bytes: a framed direct-mode envelope is stored in etcd like any other.
        let framed = frame_direct("aws:k", b"1blob").unwrap();
        assert_eq!(
            framed,
            [
                0xC9, 0x6B, 0x01, 0x02, 5, b'a', b'w', b's', b':', b'k', 0, 5, b'1', b'b', b'l',
                b'o', b'b'
            ]
        );
        assert_eq!(
            peek(&framed).unwrap(),
            (Mode::Direct, "aws:k", &b"1blob"[..])
        );
        assert!(frame_direct("", b"x").is_err());
        assert!(frame_direct("k", b"").is_err());
        assert!(frame_direct("k", &[0; 1025]).is_err());
    }

    #[test]
    fn parses_both_modes() {
        let ct = sample(Mode::Hierarchy, "kid", &[7; 60], &[1; 29]);
        let env = parse(&ct).unwrap();
        assert_eq!(env.mode, Mode::Hierarchy);
        assert_eq!(env.key_id, "kid");
        assert_eq!(env.wrapped, &[7; 60]);
        assert_eq!(env.prefix.len(), 5 + 3 + 2);
        assert_eq!(env.header.len(), 5 + 3 + 2 + 60);
        assert_eq!(env.body.len(), 29);

        let ct = sample(Mode::Direct, "k\u{e9}y", &[9; 1024], &[]);
        let (mode, key_id, wrapped) = peek(&ct).unwrap();
        assert_eq!(
            (mode, key_id, wrapped.len()),
            (Mode::Direct, "k\u{e9}y", 1024)
        );
    }

    #[test]
    fn rejects_each_structural_fault() {
        let good = sample(Mode::Hierarchy, "kid", &[7; 60], &[1; 44]);
        assert!(parse(&good).is_ok());
        let mut cases: Vec<Vec<u8>> = vec![Vec::new(), good[..1].to_vec(), good[..4].to_vec()];
        for (index, value) in [
            (0, 0x31),
            (1, 0x00),
            (2, 0x00),
            (2, 0x02),
            (3, 0x00),
            (3, 0x03),
        ] {
            let mut ct = good.clone();
            ct[index] = value;
            cases.push(ct);
        }
        // K = 0
        let mut ct = sample(Mode::Direct, "x", &[1], &[]);
        ct[4] = 0;
        cases.push(ct);
        // key_id not UTF-8
        let mut ct = good.clone();
        ct[5] = 0xFF;
        cases.push(ct);
        // W = 0 and W > 1024
        for w in [0_u16, 1025, 0xFFFF] {
            let mut ct = good.clone();
            ct[8..10].copy_from_slice(&w.to_be_bytes());
            cases.push(ct);
        }
        // truncated anywhere, including inside the body (body must be >= 29)
        for cut in [5, 8, 9, 10, 69, 70, 70 + 28] {
            cases.push(good[..cut].to_vec());
        }
        // body too long for the largest plaintext
        cases.push(sample(
            Mode::Hierarchy,
            "kid",
            &[7; 60],
            &[0; 12 + 513 + 16],
        ));
        // trailing bytes after a direct envelope
        cases.push(sample(Mode::Direct, "kid", &[7; 60], &[0]));
        // legacy formats
        cases.push(b"1AQIDAHh".to_vec());
        cases.push(b"vault:v1:abc".to_vec());
        cases.push(b"AQIDAHhQ0xyz==".to_vec());
        for ct in cases {
            assert!(
                matches!(parse(&ct), Err(Error::InvalidCiphertext)),
                "{ct:02x?}"
            );
        }
    }

    #[test]
    fn body_bounds() {
        for (len, ok) in [(28, false), (29, true), (540, true), (541, false)] {
            let ct = sample(Mode::Hierarchy, "kid", &[7; 60], &vec![0; len]);
            assert_eq!(parse(&ct).is_ok(), ok, "body {len}");
        }
    }

    #[test]
    fn builder_refuses_out_of_range() {
        assert!(prefix(Mode::Direct, "", 1, 0).is_err());
        assert!(prefix(Mode::Direct, &"a".repeat(256), 1, 0).is_err());
        assert!(prefix(Mode::Direct, &"a".repeat(255), 1, 0).is_ok());
        assert!(prefix(Mode::Direct, "a", 0, 0).is_err());
        assert!(prefix(Mode::Direct, "a", 1025, 0).is_err());
        assert!(check_plaintext(&[]).is_err());
        assert!(matches!(
            check_plaintext(&[0; 513]),
            Err(Error::PlaintextTooLarge)
        ));
        assert!(check_plaintext(&[0; 512]).is_ok());
    }

    #[test]
    fn local_envelope_fits_v2() {
        // The local provider: 38-byte key_id, 60-byte wrapped KEK, 32-byte DEK.
        let local = FIXED_PREFIX + 38 + 2 + 60 + NONCE_LEN + 32 + TAG_LEN;
        assert_eq!(local, 165);
        assert!(local <= crate::limits::V2_MAX_CIPHERTEXT);
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn parse_never_panics_after_magic(
            mode in 0_u8..4, k in any::<u8>(), rest in proptest::collection::vec(any::<u8>(), 0..1200)
        ) {
            let mut bytes = vec![0xC9, 0x6B, 1, mode, k];
            bytes.extend(rest);
            if let Ok(env) = parse(&bytes) {
                prop_assert_eq!(env.header.len() + env.body.len(), bytes.len());
            }
        }
    }
}
