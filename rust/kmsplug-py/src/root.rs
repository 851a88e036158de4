//! `RootKey`: the local key file, used only from Rust.

use std::path::PathBuf;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyBytes;
use zeroize::Zeroizing;

use crate::errors::Result;

/// The local root key (a 32-byte key file). Its bytes never reach Python.
#[pyclass(frozen, module = "kmsplug._kmsplug", name = "RootKey")]
#[derive(Debug)]
pub struct PyRootKey {
    pub(crate) inner: kmsplug_core::RootKey,
}

#[pymethods]
impl PyRootKey {
    /// Read a key file: 32 raw bytes, mode 0600 or stricter.
    #[staticmethod]
    fn from_file(path: PathBuf) -> Result<Self> {
        let inner = kmsplug_core::RootKey::from_file(path)?;
        Ok(Self { inner })
    }

    /// Create a key file (32 random bytes, mode 0600); fails if it exists.
    #[staticmethod]
    fn create_file(path: PathBuf) -> Result<Self> {
        let inner = kmsplug_core::RootKey::create_file(path)?;
        Ok(Self { inner })
    }

    /// `"local-"` + 32 hex digits derived from the key.
    #[getter]
    fn key_id(&self) -> &str {
        self.inner.key_id()
    }

    /// Seals made under this key by this process (direct-mode DEKs, local KEKs, probes).
    #[getter]
    fn seals(&self) -> u64 {
        self.inner.seals()
    }

    /// The seal budget: past it, sealing raises `SealBudgetSpent`; opening goes on.
    #[getter]
    fn max_seals(&self) -> u64 {
        self.inner.max_seals()
    }

    /// Set the seal budget (1..=2**32).
    fn set_max_seals(&self, max_seals: u64) -> Result<()> {
        Ok(self.inner.set_max_seals(max_seals)?)
    }

    /// Seal a DEK directly under the root key (a mode-2 envelope).
    fn seal_direct<'py>(
        &self,
        py: Python<'py>,
        plaintext: PyBackedBytes,
    ) -> Result<Bound<'py, PyBytes>> {
        let ct = self.inner.seal_direct(&plaintext)?;
        Ok(PyBytes::new(py, &ct))
    }

    /// Open what `seal_direct` made.
    fn open_direct<'py>(
        &self,
        py: Python<'py>,
        ciphertext: PyBackedBytes,
    ) -> Result<Bound<'py, PyBytes>> {
        let plain = Zeroizing::new(self.inner.open_direct(&ciphertext)?);
        Ok(PyBytes::new(py, &plain))
    }

    fn __repr__(&self) -> String {
        format!("RootKey(key_id={:?})", self.inner.key_id())
    }

    #[allow(clippy::unused_self)] // a Python method needs its receiver
    fn __reduce__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err(
            "RootKey holds key material and cannot be pickled",
        ))
    }
}
