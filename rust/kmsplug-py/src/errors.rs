//! The one place where core errors become Python exceptions.
//!
//! The exception classes are defined in Python (`kmsplug/errors.py`) and imported here, so
//! their hierarchy and docstrings are plain Python.

use kmsplug_core::Error;
use pyo3::exceptions::PyRuntimeError;
use pyo3::PyErr;

pyo3::import_exception!(kmsplug.errors, InvalidCiphertext);
pyo3::import_exception!(kmsplug.errors, UnknownKeyId);
pyo3::import_exception!(kmsplug.errors, KekNotCached);
pyo3::import_exception!(kmsplug.errors, PlaintextTooLarge);
pyo3::import_exception!(kmsplug.errors, NeedsRotation);
pyo3::import_exception!(kmsplug.errors, KeyFileError);
pyo3::import_exception!(kmsplug.errors, InvalidInput);

/// Map a core error to its Python exception. Messages come from the core's `Display`,
/// which never includes key, plaintext or ciphertext bytes.
pub fn to_py(err: Error) -> PyErr {
    let msg = err.to_string();
    match err {
        Error::InvalidCiphertext => InvalidCiphertext::new_err(msg),
        Error::UnknownKeyId(_) => UnknownKeyId::new_err(msg),
        Error::KekNotCached => KekNotCached::new_err(msg),
        Error::PlaintextTooLarge => PlaintextTooLarge::new_err(msg),
        Error::NeedsRotation(_) => NeedsRotation::new_err(msg),
        Error::KeyFile { .. } => KeyFileError::new_err(msg),
        Error::InvalidInput(_) => InvalidInput::new_err(msg),
        Error::Internal(_) => PyRuntimeError::new_err(msg),
    }
}
