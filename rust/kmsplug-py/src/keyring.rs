//! `Keyring`: the local-KEK hierarchy behind a mutex.

use std::time::Duration;

use kmsplug_core::Policy;
use parking_lot::Mutex;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::{PyByteArray, PyByteArrayMethods, PyBytes, PyDict, PyList};
use zeroize::{Zeroize, Zeroizing};

use crate::errors::{Error, Result};
use crate::root::PyRootKey;

/// Batches larger than this are processed with the interpreter detached, so other Python
/// threads run meanwhile. Smaller ones finish faster than a detach/reattach round trip.
const DETACH_ABOVE: usize = 64;

/// The local-KEK keyring. Thread-safe: every call takes one short lock.
#[pyclass(frozen, module = "kmsplug._kmsplug", name = "Keyring")]
#[derive(Debug)]
pub struct PyKeyring {
    inner: Mutex<kmsplug_core::Keyring>,
}

fn seconds(name: &'static str, secs: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| PyValueError::new_err(format!("{name} must be a finite number > 0")).into())
}

/// Copy a KEK out of a `bytearray` into wiped memory, then zero the `bytearray`.
#[allow(unsafe_code)]
fn take_kek(kek: &Bound<'_, PyByteArray>) -> Zeroizing<Vec<u8>> {
    // SAFETY: we are attached to the interpreter and run no Python code (nothing that
    // could resize or free the bytearray) while the slice is alive; the module is built
    // for the GIL-holding abi3 interpreter, where no other thread touches it meanwhile.
    let bytes = unsafe { kek.as_bytes_mut() };
    let copy = Zeroizing::new(bytes.to_vec());
    bytes.zeroize();
    copy
}

fn bytes_list<'py>(py: Python<'py>, items: &[Vec<u8>]) -> Result<Bound<'py, PyList>> {
    Ok(PyList::new(
        py,
        items.iter().map(|item| PyBytes::new(py, item)),
    )?)
}

#[pymethods]
impl PyKeyring {
    #[new]
    #[pyo3(signature = (
        *,
        rotate_after_seals = Policy::DEFAULT.rotate_after_seals,
        max_seals = Policy::DEFAULT.max_seals,
        max_age_seconds = Policy::DEFAULT.max_age.as_secs_f64(),
        cache_size = Policy::DEFAULT.cache_size,
        cache_ttl_seconds = Policy::DEFAULT.cache_ttl.as_secs_f64(),
    ))]
    fn new(
        rotate_after_seals: u64,
        max_seals: u64,
        max_age_seconds: f64,
        cache_size: usize,
        cache_ttl_seconds: f64,
    ) -> Result<Self> {
        let policy = policy(
            rotate_after_seals,
            max_seals,
            max_age_seconds,
            cache_size,
            cache_ttl_seconds,
        )?;
        let inner = kmsplug_core::Keyring::new(policy)?;
        Ok(Self {
            inner: Mutex::new(inner),
        })
    }

    /// Replace the rotation policy and cache limits (a reload); same arguments as new.
    #[pyo3(signature = (
        *,
        rotate_after_seals,
        max_seals,
        max_age_seconds,
        cache_size,
        cache_ttl_seconds,
    ))]
    fn set_policy(
        &self,
        rotate_after_seals: u64,
        max_seals: u64,
        max_age_seconds: f64,
        cache_size: usize,
        cache_ttl_seconds: f64,
    ) -> Result<()> {
        let policy = policy(
            rotate_after_seals,
            max_seals,
            max_age_seconds,
            cache_size,
            cache_ttl_seconds,
        )?;
        Ok(self.inner.lock().set_policy(policy)?)
    }

    /// Make a new random local KEK, wrapped by `root`, current.
    fn rotate_local(&self, root: PyRef<'_, PyRootKey>) -> Result<()> {
        Ok(self.inner.lock().rotate_local(&root.inner)?)
    }

    /// Make a remote-wrapped KEK current; zeroes `kek` after copying it.
    fn install_current(
        &self,
        key_id: &str,
        wrapped: PyBackedBytes,
        kek: &Bound<'_, PyByteArray>,
    ) -> Result<()> {
        let kek = take_kek(kek);
        Ok(self.inner.lock().install_current(key_id, &wrapped, &kek)?)
    }

    /// Cache a remote-unwrapped KEK; zeroes `kek` after copying it.
    fn cache_kek(
        &self,
        key_id: &str,
        wrapped: PyBackedBytes,
        kek: &Bound<'_, PyByteArray>,
    ) -> Result<()> {
        let kek = take_kek(kek);
        Ok(self.inner.lock().cache_kek(key_id, &wrapped, &kek)?)
    }

    /// Seal a DEK under the current local KEK.
    fn seal<'py>(&self, py: Python<'py>, plaintext: PyBackedBytes) -> Result<Bound<'py, PyBytes>> {
        let ct = self.inner.lock().seal(&plaintext)?;
        Ok(PyBytes::new(py, &ct))
    }

    /// Open a hierarchy-mode ciphertext.
    #[pyo3(signature = (ciphertext, expected_key_id = None))]
    fn open<'py>(
        &self,
        py: Python<'py>,
        ciphertext: PyBackedBytes,
        expected_key_id: Option<&str>,
    ) -> Result<Bound<'py, PyBytes>> {
        let plain = Zeroizing::new(self.inner.lock().open(&ciphertext, expected_key_id)?);
        Ok(PyBytes::new(py, &plain))
    }

    /// Unwrap, with the root key, the local KEK a ciphertext names, and cache it.
    fn unwrap_local(&self, root: PyRef<'_, PyRootKey>, ciphertext: PyBackedBytes) -> Result<()> {
        Ok(self.inner.lock().unwrap_local(&root.inner, &ciphertext)?)
    }

    /// Whether the current KEK should be replaced soon (or there is none).
    fn needs_rotation(&self) -> bool {
        self.inner.lock().needs_rotation()
    }

    /// The `key_id` stamped on what `seal` makes now, or None before the first KEK.
    #[getter]
    fn current_key_id(&self) -> Option<String> {
        self.inner.lock().current_key_id().map(str::to_owned)
    }

    /// Counters for metrics.
    fn stats<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyDict>> {
        let stats = self.inner.lock().stats();
        let dict = PyDict::new(py);
        dict.set_item("seals", stats.seals)?;
        dict.set_item("cache_len", stats.cache_len)?;
        dict.set_item("cache_hits", stats.cache_hits)?;
        dict.set_item("cache_misses", stats.cache_misses)?;
        dict.set_item("rotations", stats.rotations)?;
        dict.set_item(
            "current_age_seconds",
            stats.current_age.map_or(0, |age| age.as_secs()),
        )?;
        Ok(dict)
    }

    /// Seal many DEKs under one lock and one budget check: all or none.
    fn seal_batch<'py>(
        &self,
        py: Python<'py>,
        plaintexts: Vec<PyBackedBytes>,
    ) -> Result<Bound<'py, PyList>> {
        let run = || self.inner.lock().seal_batch(&plaintexts);
        let sealed = if plaintexts.len() > DETACH_ABOVE {
            py.detach(run)
        } else {
            run()
        }?;
        bytes_list(py, &sealed)
    }

    /// Open many ciphertexts under one lock; a failed item yields its exception instance.
    #[pyo3(signature = (ciphertexts, expected_key_ids = None))]
    fn open_batch<'py>(
        &self,
        py: Python<'py>,
        ciphertexts: Vec<PyBackedBytes>,
        expected_key_ids: Option<Vec<Option<PyBackedStr>>>,
    ) -> Result<Bound<'py, PyList>> {
        if let Some(ids) = &expected_key_ids {
            if ids.len() != ciphertexts.len() {
                return Err(PyValueError::new_err(
                    "expected_key_ids must be as long as ciphertexts",
                )
                .into());
            }
        }
        let items: Vec<(&[u8], Option<&str>)> = ciphertexts
            .iter()
            .enumerate()
            .map(|(i, ct)| {
                let id = expected_key_ids.as_ref().and_then(|ids| ids[i].as_deref());
                (&**ct, id)
            })
            .collect();
        let run = || self.inner.lock().open_batch(&items);
        let results: Vec<Result<Vec<u8>, kmsplug_core::Error>> = if items.len() > DETACH_ABOVE {
            py.detach(run)
        } else {
            run()
        };
        let out = PyList::empty(py);
        for result in results {
            match result {
                Ok(plain) => {
                    let plain = Zeroizing::new(plain);
                    out.append(PyBytes::new(py, &plain))?;
                }
                Err(err) => out.append(PyErr::from(Error::from(err)).into_value(py))?,
            }
        }
        Ok(out)
    }

    #[allow(clippy::unused_self)] // a Python method needs its receiver
    fn __reduce__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err(
            "Keyring holds key material and cannot be pickled",
        ))
    }
}

fn policy(
    rotate_after_seals: u64,
    max_seals: u64,
    max_age_seconds: f64,
    cache_size: usize,
    cache_ttl_seconds: f64,
) -> Result<Policy> {
    Ok(Policy {
        rotate_after_seals,
        max_seals,
        max_age: seconds("max_age_seconds", max_age_seconds)?,
        cache_size,
        cache_ttl: seconds("cache_ttl_seconds", cache_ttl_seconds)?,
    })
}
