//! Golden vectors: tests/vectors/envelope-v1.json must open forever.
//!
//! The file was generated once by `generate_vectors` below (ignored, and refusing to
//! overwrite). Never regenerate it to make a test pass: a change here means ciphertexts
//! already in etcd would stop opening.

use std::path::PathBuf;

use kmsplug_core::{peek, Error, Keyring, Mode, Policy, RootKey};
use serde_json::{json, Value};

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/envelope-v1.json")
}

fn load() -> Vec<Value> {
    let text = std::fs::read_to_string(vectors_path()).expect("golden vectors are checked in");
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["format_version"], 1);
    doc["vectors"].as_array().unwrap().clone()
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn array<const N: usize>(v: &Value) -> [u8; N] {
    bytes(v).try_into().unwrap()
}

#[test]
fn every_vector_opens_and_reseals_identically() {
    let vectors = load();
    assert!(vectors.len() >= 5);
    for v in &vectors {
        let name = v["name"].as_str().unwrap();
        let plaintext = bytes(&v["plaintext"]);
        let ciphertext = bytes(&v["ciphertext"]);
        let key_id = v["key_id"].as_str().unwrap();
        let (mode, embedded, wrapped) = peek(&ciphertext).unwrap();
        assert_eq!(embedded, key_id, "{name}");
        match v["mode"].as_u64().unwrap() {
            1 => {
                assert_eq!(mode, Mode::Hierarchy, "{name}");
                assert_eq!(wrapped, bytes(&v["wrapped_kek"]), "{name}");
                let kek: [u8; 32] = array(&v["local_kek"]);
                let nonce: [u8; 12] = array(&v["nonce"]);
                let mut ring = Keyring::new(Policy::default()).unwrap();
                assert!(matches!(
                    ring.open(&ciphertext, None),
                    Err(Error::KekNotCached)
                ));
                if v["root_key"].is_null() {
                    // A remote provider's KEK: loaded as a remote unwrap would load it.
                    ring.cache_kek(key_id, wrapped, &kek).unwrap();
                    assert_eq!(ring.open(&ciphertext, Some(key_id)).unwrap(), plaintext);
                    ring.install_current(key_id, wrapped, &kek).unwrap();
                } else {
                    let root = RootKey::from_bytes(&array(&v["root_key"])).unwrap();
                    assert_eq!(root.key_id(), key_id, "{name}");
                    ring.unwrap_local(&root, &ciphertext).unwrap();
                    assert_eq!(ring.open(&ciphertext, Some(key_id)).unwrap(), plaintext);
                    ring.install_local_with_nonce(&root, &kek, array(&v["wrap_nonce"]))
                        .unwrap();
                }
                let resealed = ring.seal_with_nonce(&plaintext, nonce).unwrap();
                assert_eq!(hex::encode(resealed), hex::encode(&ciphertext), "{name}");
            }
            2 => {
                assert_eq!(mode, Mode::Direct, "{name}");
                let root = RootKey::from_bytes(&array(&v["root_key"])).unwrap();
                assert_eq!(root.key_id(), key_id, "{name}");
                assert_eq!(root.open_direct(&ciphertext).unwrap(), plaintext);
                let resealed = root
                    .seal_direct_with_fixed_nonce(&plaintext, array(&v["nonce"]))
                    .unwrap();
                assert_eq!(hex::encode(resealed), hex::encode(&ciphertext), "{name}");
            }
            other => panic!("{name}: unknown mode {other}"),
        }
    }
}

#[test]
fn every_vector_rejects_tampering() {
    for v in load() {
        let ciphertext = bytes(&v["ciphertext"]);
        let mut ring = Keyring::new(Policy::default()).unwrap();
        if v["mode"] == 1 && !v["root_key"].is_null() {
            let root = RootKey::from_bytes(&array(&v["root_key"])).unwrap();
            ring.unwrap_local(&root, &ciphertext).unwrap();
        }
        let mut bad = ciphertext.clone();
        *bad.last_mut().unwrap() ^= 0x80;
        assert!(ring.open(&bad, None).is_err());
        if v["mode"] == 2 {
            let root = RootKey::from_bytes(&array(&v["root_key"])).unwrap();
            assert!(matches!(
                root.open_direct(&bad),
                Err(Error::InvalidCiphertext)
            ));
        }
    }
}

/// Writes tests/vectors/envelope-v1.json. Run once, by hand:
/// `cargo test -p kmsplug-core --test vectors -- --ignored generate_vectors`.
/// It refuses to overwrite an existing file.
#[test]
#[ignore = "generates the golden vectors; they were generated once and must never change"]
fn generate_vectors() {
    let path = vectors_path();
    assert!(
        !path.exists(),
        "{} exists: golden vectors are never regenerated",
        path.display()
    );
    let seq = |start: u8, len: u8| -> Vec<u8> { (0..len).map(|i| start.wrapping_add(i)).collect() };
    let root_bytes: [u8; 32] = seq(0x00, 32).try_into().unwrap();
    let kek: [u8; 32] = seq(0x40, 32).try_into().unwrap();
    let wrap_nonce: [u8; 12] = seq(0xA0, 12).try_into().unwrap();
    let root = RootKey::from_bytes(&root_bytes).unwrap();
    let mut ring = Keyring::new(Policy::default()).unwrap();
    ring.install_local_with_nonce(&root, &kek, wrap_nonce)
        .unwrap();
    let mut vectors = Vec::new();

    let dek32 = seq(0x80, 32);
    let dek512: Vec<u8> = (0..512_u32)
        .map(|i| u8::try_from((i * 7 + 3) % 251).unwrap())
        .collect();
    let hierarchy_cases: [(&str, Vec<u8>, u8); 4] = [
        ("hierarchy-local-dek32", dek32.clone(), 0xB0),
        ("hierarchy-local-ping", b"ping".to_vec(), 0xC0),
        ("hierarchy-local-1byte", vec![0x00], 0xD0),
        ("hierarchy-local-512bytes", dek512, 0xE0),
    ];
    for (name, plaintext, nonce_start) in hierarchy_cases {
        let nonce: [u8; 12] = seq(nonce_start, 12).try_into().unwrap();
        let ct = ring.seal_with_nonce(&plaintext, nonce).unwrap();
        let (_, key_id, wrapped) = peek(&ct).unwrap();
        vectors.push(json!({
            "name": name,
            "mode": 1,
            "root_key": hex::encode(root_bytes),
            "key_id": key_id,
            "local_kek": hex::encode(kek),
            "wrap_nonce": hex::encode(wrap_nonce),
            "wrapped_kek": hex::encode(wrapped),
            "nonce": hex::encode(nonce),
            "plaintext": hex::encode(&plaintext),
            "ciphertext": hex::encode(&ct),
        }));
    }

    // A remote provider's KEK: key_id and wrapped bytes are the provider's, opaque to us.
    let remote_key_id =
        "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let remote_wrapped = seq(0x10, 184);
    let remote_kek: [u8; 32] = seq(0x60, 32).try_into().unwrap();
    let mut remote = Keyring::new(Policy::default()).unwrap();
    remote
        .install_current(remote_key_id, &remote_wrapped, &remote_kek)
        .unwrap();
    let nonce: [u8; 12] = seq(0xF0, 12).try_into().unwrap();
    let ct = remote.seal_with_nonce(&dek32, nonce).unwrap();
    vectors.push(json!({
        "name": "hierarchy-remote-dek32",
        "mode": 1,
        "root_key": null,
        "key_id": remote_key_id,
        "local_kek": hex::encode(remote_kek),
        "wrap_nonce": null,
        "wrapped_kek": hex::encode(&remote_wrapped),
        "nonce": hex::encode(nonce),
        "plaintext": hex::encode(&dek32),
        "ciphertext": hex::encode(&ct),
    }));

    for (name, plaintext, nonce_start) in [
        ("direct-local-dek32", dek32.clone(), 0x30_u8),
        ("direct-local-ping", b"ping".to_vec(), 0x50),
    ] {
        let nonce: [u8; 12] = seq(nonce_start, 12).try_into().unwrap();
        let ct = root
            .seal_direct_with_fixed_nonce(&plaintext, nonce)
            .unwrap();
        vectors.push(json!({
            "name": name,
            "mode": 2,
            "root_key": hex::encode(root_bytes),
            "key_id": root.key_id(),
            "local_kek": null,
            "wrap_nonce": null,
            "wrapped_kek": null,
            "nonce": hex::encode(nonce),
            "plaintext": hex::encode(&plaintext),
            "ciphertext": hex::encode(&ct),
        }));
    }

    let doc = json!({
        "description": "kmsplug envelope format v1 golden vectors. Generated once; NEVER regenerate or edit: old releases' ciphertexts must keep opening. See README.md beside this file and rust/kmsplug-core/FORMAT.md.",
        "format_version": 1,
        "vectors": vectors,
    });
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
}
