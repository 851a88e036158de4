//! Tests of the keyring (a child module: they reach its private state and clock).

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
