//! The one place where core errors become Python exceptions.
//!
//! The exception classes are defined in Python (`kmsplug/errors.py`) and imported here, so
//! their hierarchy, docstrings and default messages are plain Python. [`Error`] carries a
//! core error or a Python one; `?` turns either into it, and the binding turns it into the
//! exception, so no call site spells out a conversion.

use pyo3::exceptions::PyRuntimeError;
use pyo3::PyErr;

pyo3::import_exception!(kmsplug.errors, InvalidCiphertext);
pyo3::import_exception!(kmsplug.errors, UnknownKeyId);
pyo3::import_exception!(kmsplug.errors, KekNotCached);
pyo3::import_exception!(kmsplug.errors, PlaintextTooLarge);
pyo3::import_exception!(kmsplug.errors, NeedsRotation);
pyo3::import_exception!(kmsplug.errors, SealBudgetSpent);
pyo3::import_exception!(kmsplug.errors, KeyFileError);
pyo3::import_exception!(kmsplug.errors, InvalidInput);

/// An error on its way to Python.
#[derive(Debug)]
pub enum Error {
    /// The core refused; mapped to the matching `kmsplug.errors` class.
    Core(kmsplug_core::Error),
    /// Already a Python exception (a bad argument type, a failed allocation).
    Python(PyErr),
}

/// What every binding function returns.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<kmsplug_core::Error> for Error {
    fn from(err: kmsplug_core::Error) -> Self {
        Self::Core(err)
    }
}

impl From<PyErr> for Error {
    fn from(err: PyErr) -> Self {
        Self::Python(err)
    }
}

impl From<Error> for PyErr {
    /// A failure that says nothing but what it is (a bad ciphertext, an uncached KEK) is
    /// raised bare, with the Python class's own message; the others carry the core's
    /// message, which names what was wrong and never includes key, plaintext or
    /// ciphertext bytes.
    fn from(err: Error) -> Self {
        use kmsplug_core::Error as Core;
        let err = match err {
            Error::Core(err) => err,
            Error::Python(err) => return err,
        };
        let message = err.to_string();
        match err {
            Core::InvalidCiphertext => InvalidCiphertext::new_err(()),
            Core::KekNotCached => KekNotCached::new_err(()),
            Core::UnknownKeyId(_) => UnknownKeyId::new_err(message),
            Core::PlaintextTooLarge => PlaintextTooLarge::new_err(message),
            Core::NeedsRotation(_) => NeedsRotation::new_err(message),
            Core::SealBudgetSpent(_) => SealBudgetSpent::new_err(message),
            Core::KeyFile { .. } => KeyFileError::new_err(message),
            Core::InvalidInput(_) => InvalidInput::new_err(message),
            Core::Internal(_) => PyRuntimeError::new_err(message),
        }
    }
}
