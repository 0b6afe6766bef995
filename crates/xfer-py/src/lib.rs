//! The native half of the Python package `xfer` (`xfer._native`): PyO3 bindings over the
//! Rust crates, so a notebook or a Ray worker runs the very code the CLI runs.
//!
//! * [`model::Model`]: a backbone folder on ONNX Runtime; `embed` (uint8 NHWC arrays or
//!   image paths decoded by xfer-data's batch loader), `preprocess`;
//! * [`store::Store`]: a store directory; `info`, `missing`, `write` (one keyed part,
//!   [`xfer_store::write_keyed_part`]), the live rows for the Python readers;
//! * [`data`]: `content_hash`, `hash_files`, `assign_splits`, `list_dataset`,
//!   `read_manifest`, `ort_library`.
//!
//! Compute runs with the GIL released ([`compute`]); every error (and any panic) becomes an
//! `xfer.XferError` carrying xfer's message, which names the file concerned.

// PyO3's macros expand to unsafe FFI code.
#![allow(unsafe_code)]

mod data;
mod model;
mod store;

use std::panic::{AssertUnwindSafe, catch_unwind};

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    xfer,
    XferError,
    PyException,
    "An error of xfer (a model, an image, the store); the message says which file and what to do."
);

/// The Python exception for an xfer error: its message with its causes.
pub(crate) fn to_py<E: std::error::Error>(err: E) -> PyErr {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    XferError::new_err(text)
}

/// Runs `f` with the GIL released; a panic becomes an `XferError` instead of crossing into
/// Python.
pub(crate) fn compute<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce() -> PyResult<T> + Send,
{
    py.detach(|| {
        catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            Err(XferError::new_err(format!(
                "internal error in xfer (please report it): {message}"
            )))
        })
    })
}

/// The module `xfer._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("XferError", m.py().get_type::<XferError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEMO_SPLITS", xfer_data::DEMO_SPLITS)?;
    m.add("DEFAULT_SEED", xfer_data::DEFAULT_SEED)?;
    m.add_class::<model::Model>()?;
    m.add_class::<store::Store>()?;
    data::register(m)
}
