//! Key bytes never outlive their use in memory the Rust side frees.
//!
//! A counting global allocator scans every block as it is freed for the test KEKs'
//! bytes. The keyring installs, uses, rotates and evicts KEKs (cache of 1 entry), then
//! everything is dropped: no freed block may still hold a KEK. The AES key schedules live
//! in aws-lc's own (C) allocations, which aws-lc cleanses on free; this test covers every
//! copy kmsplug-core itself makes.

// A test-only global allocator must be unsafe; the library itself forbids unsafe code.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use kmsplug_core::{Keyring, Policy};

static WATCHING: AtomicBool = AtomicBool::new(false);
static LEAKED: AtomicUsize = AtomicUsize::new(0);

// Distinctive 32-byte patterns: no other data in this test contains them.
const KEKS: [[u8; 32]; 3] = [[0xA5; 32], [0x5A; 32], [0xC3; 32]];

struct Scanning;

// SAFETY: forwards to the system allocator; only reads the block before freeing it.
unsafe impl GlobalAlloc for Scanning {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if WATCHING.load(Ordering::Relaxed) && layout.size() >= 32 {
            // SAFETY: the block is still ours and `layout.size()` bytes long.
            let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            if KEKS.iter().any(|kek| block.windows(32).any(|w| w == kek)) {
                LEAKED.fetch_add(1, Ordering::Relaxed);
            }
        }
        // SAFETY: `ptr` came from `alloc` above with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Scanning = Scanning;

#[test]
fn keks_are_wiped_on_rotation_eviction_and_drop() {
    WATCHING.store(true, Ordering::Relaxed);
    // Control: a KEK copy freed without wiping is seen, so the scan can fail.
    drop(std::hint::black_box(KEKS[0].to_vec()));
    assert_eq!(
        LEAKED.swap(0, Ordering::Relaxed),
        1,
        "the scanner missed a plain copy"
    );
    {
        let policy = Policy {
            cache_size: 1, // the second retired KEK evicts the first
            cache_ttl: Duration::from_secs(60),
            ..Policy::default()
        };
        let mut keyring = Keyring::new(policy).expect("keyring");
        let mut sealed = Vec::new();
        for (i, kek) in (1_u8..).zip(KEKS.iter()) {
            // a heap copy, as the binding makes of a bytearray from Python
            let given: Vec<u8> = kek.to_vec();
            let wrapped = [i; 60];
            keyring
                .install_current("remote-key", &wrapped, &given)
                .expect("install");
            drop(zeroize_vec(given)); // the caller's own copy: wiped by the caller
            sealed.push(
                keyring
                    .seal(b"a 32-byte data encryption key!!!")
                    .expect("seal"),
            );
        }
        for ciphertext in &sealed[1..] {
            keyring.open(ciphertext, Some("remote-key")).expect("open");
        }
        // the first KEK was evicted: its ciphertext no longer opens
        assert!(keyring.open(&sealed[0], Some("remote-key")).is_err());
        keyring
            .cache_kek("remote-key", &[9; 60], &KEKS[0])
            .expect("cache");
    }
    WATCHING.store(false, Ordering::Relaxed);
    assert_eq!(
        LEAKED.load(Ordering::Relaxed),
        0,
        "a freed block still held a KEK"
    );
}

fn zeroize_vec(mut v: Vec<u8>) -> Vec<u8> {
    zeroize::Zeroize::zeroize(&mut v);
    v
}
