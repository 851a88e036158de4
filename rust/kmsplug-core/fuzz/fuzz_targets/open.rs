//! Any bytes through the open path, local KEK and direct mode, with a fixed root key.
//! This root key only ever seals DEK (here and in the runs that grew the corpus), so the
//! only allowed outcomes are an error or exactly DEK: anything else is a forgery.
#![no_main]

use std::sync::{Mutex, OnceLock};

use kmsplug_core::{Keyring, Policy, RootKey};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    root: RootKey,
    keyring: Mutex<Keyring>,
}

const DEK: &[u8] = b"0123456789abcdef0123456789abcdef";

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = RootKey::from_bytes(&[7u8; 32]).expect("root key");
        let mut keyring = Keyring::new(Policy::default()).expect("keyring");
        keyring.rotate_local(&root).expect("rotate");
        Fixture {
            root,
            keyring: Mutex::new(keyring),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut keyring = f.keyring.lock().expect("lock");
    for expected in [None, Some(f.root.key_id())] {
        let opened = keyring.open(data, expected).or_else(|_| {
            keyring.unwrap_local(&f.root, data)?;
            keyring.open(data, expected)
        });
        if let Ok(plaintext) = opened {
            assert_eq!(plaintext, DEK, "opened something this key never sealed");
        }
    }
    if let Ok(plaintext) = f.root.open_direct(data) {
        assert_eq!(plaintext, DEK, "opened something this key never sealed");
    }
});
