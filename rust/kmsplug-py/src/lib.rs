//! `kmsplug._kmsplug`: the Python face of kmsplug-core.
//!
//! This crate only converts types and errors; all logic lives in `kmsplug-core`. Key
//! material never crosses into Python: there are no getters for it, no reprs that show
//! it, and the classes that hold it refuse to be pickled.
#![deny(unsafe_code)]
// PyO3 hands arguments over by value (it extracts owned values from Python objects).
#![allow(clippy::needless_pass_by_value)]

mod errors;
mod keyring;
mod root;

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};

/// Parse a ciphertext's header for routing: `(mode, key_id, wrapped)`.
#[pyfunction]
fn peek(
    py: Python<'_>,
    ciphertext: pyo3::pybacked::PyBackedBytes,
) -> errors::Result<(u8, String, Bound<'_, PyBytes>)> {
    let (mode, key_id, wrapped) = kmsplug_core::peek(&ciphertext)?;
    Ok((mode as u8, key_id.to_owned(), PyBytes::new(py, wrapped)))
}

/// A mode-2 envelope around a remote provider's wrapped DEK (kmsplug's direct mode).
#[pyfunction]
fn frame_direct<'py>(
    py: Python<'py>,
    key_id: &str,
    wrapped: pyo3::pybacked::PyBackedBytes,
) -> errors::Result<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(
        py,
        &kmsplug_core::frame_direct(key_id, &wrapped)?,
    ))
}

/// A new random 256-bit key as a `bytearray`, so Python can wipe its one copy (no
/// immutable `bytes` of it is ever made). The Rust buffer is zeroed on drop.
#[pyfunction]
fn random_key(py: Python<'_>) -> errors::Result<Bound<'_, PyByteArray>> {
    let key = kmsplug_core::random_key()?;
    Ok(PyByteArray::new(py, key.as_ref()))
}

/// Whether `name` passes Kubernetes' `IsFullyQualifiedDomainName` (annotation keys).
#[pyfunction]
fn is_fqdn(name: &str) -> bool {
    kmsplug_core::is_fqdn(name)
}

#[pymodule(gil_used = false)]
mod _kmsplug {
    use kmsplug_core::Policy;
    use pyo3::prelude::*;

    #[pymodule_export]
    use super::frame_direct;
    #[pymodule_export]
    use super::is_fqdn;
    #[pymodule_export]
    use super::keyring::PyKeyring;
    #[pymodule_export]
    use super::peek;
    #[pymodule_export]
    use super::random_key;
    #[pymodule_export]
    use super::root::PyRootKey;

    #[pymodule_export]
    const V2_MAX_CIPHERTEXT: usize = kmsplug_core::V2_MAX_CIPHERTEXT;
    #[pymodule_export]
    const V1_MAX_CIPHERTEXT: usize = kmsplug_core::V1_MAX_CIPHERTEXT;
    #[pymodule_export]
    const MAX_KEY_ID: usize = kmsplug_core::MAX_KEY_ID;
    #[pymodule_export]
    const MAX_ANNOTATIONS_BYTES: usize = kmsplug_core::MAX_ANNOTATIONS_BYTES;
    #[pymodule_export]
    const MAX_PLAINTEXT: usize = kmsplug_core::MAX_PLAINTEXT;
    #[pymodule_export]
    const FORMAT_VERSION: u8 = kmsplug_core::FORMAT_VERSION;
    #[pymodule_export]
    const MODE_HIERARCHY: u8 = kmsplug_core::Mode::Hierarchy as u8;
    #[pymodule_export]
    const MODE_DIRECT: u8 = kmsplug_core::Mode::Direct as u8;

    // The rotation policy's defaults and bounds: Python's settings and flags read these.
    #[pymodule_export]
    const DEFAULT_ROTATE_AFTER_SEALS: u64 = Policy::DEFAULT.rotate_after_seals;
    #[pymodule_export]
    const DEFAULT_MAX_SEALS: u64 = Policy::DEFAULT.max_seals;
    #[pymodule_export]
    const DEFAULT_MAX_AGE_SECONDS: f64 = Policy::DEFAULT.max_age.as_secs_f64();
    #[pymodule_export]
    const DEFAULT_CACHE_SIZE: usize = Policy::DEFAULT.cache_size;
    #[pymodule_export]
    const DEFAULT_CACHE_TTL_SECONDS: f64 = Policy::DEFAULT.cache_ttl.as_secs_f64();
    #[pymodule_export]
    const MAX_SEALS_LIMIT: u64 = kmsplug_core::MAX_SEALS_LIMIT;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add(
            "build_profile",
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        )?;
        Ok(())
    }
}
