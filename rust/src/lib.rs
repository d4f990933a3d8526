//! Python binding of the tidegate core (`tidegate._core`): the only file that knows about
//! Python. Pure-Rust work runs with the GIL released; core errors become Python exceptions here.

pub mod batch;
pub mod buffer;
pub mod encode;
pub mod errors;
pub mod json;
pub mod parse;
pub mod scan;
pub mod shelly;
pub mod timestamp;
pub mod wal;

use std::sync::Arc;

use pyo3::create_exception;
use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};

use crate::errors::{Reason, UsageError};

create_exception!(
    tidegate._core,
    BodyError,
    PyValueError,
    "The whole request body is unusable; nothing in it was processed."
);

fn body_error(py: Python<'_>, e: &errors::BodyError) -> PyErr {
    let detail = e.to_string();
    let err = BodyError::new_err(detail.clone());
    match err.value(py).setattr("detail", detail) {
        Ok(()) => err,
        Err(setattr_failed) => setattr_failed,
    }
}

fn usage_error(e: &UsageError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Parsed, validated and line-protocol-encoded messages of one request, held in Rust.
#[pyclass(name = "Batch", module = "tidegate._core")]
struct PyBatch {
    inner: batch::Batch,
}

#[pymethods]
impl PyBatch {
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// Distinct `(tenant_id, device_id, site_id, provision_token, count)` of the valid items.
    fn groups(&self) -> Vec<batch::GroupKey<'_>> {
        self.inner.groups().collect()
    }

    /// Apply one `(allowed, reason)` per group of `groups()`.
    fn resolve(&mut self, verdicts: Vec<(i64, Option<String>)>) -> PyResult<()> {
        self.inner.resolve(&verdicts).map_err(|e| usage_error(&e))
    }

    /// Per item, its reason code or None when accepted.
    fn reasons(&self) -> Vec<Option<&'static str>> {
        self.inner.reasons().map(|r| r.map(Reason::code)).collect()
    }

    /// Rejected items per reason code, codes in a fixed order, zero counts omitted.
    fn reason_counts(&self) -> Vec<(&'static str, usize)> {
        self.inner
            .reason_counts()
            .into_iter()
            .map(|(r, n)| (r.code(), n))
            .collect()
    }

    /// Accepted items' line protocol per tenant as `(tenant, lines, line_count)`.
    fn tenant_lines<'py>(&self, py: Python<'py>) -> Vec<(&str, Bound<'py, PyBytes>, usize)> {
        self.inner
            .tenant_lines()
            .into_iter()
            .map(|(tenant, lines, n)| (tenant, PyBytes::new(py, &lines), n))
            .collect()
    }

    /// `(accepted, rejected, body)` of the batch endpoint's JSON response.
    fn response_json<'py>(&self, py: Python<'py>) -> (usize, usize, Bound<'py, PyBytes>) {
        let (accepted, rejected, body) = self.inner.response_json();
        (accepted, rejected, PyBytes::new(py, &body))
    }
}

/// Parse a `{"messages": [...]}` body of 1 to 100 messages. Runs without the GIL.
#[pyfunction]
#[pyo3(signature = (body, receive_ns, max_payload_bytes = 8192))]
fn parse_batch(
    py: Python<'_>,
    body: &[u8],
    receive_ns: i64,
    max_payload_bytes: usize,
) -> PyResult<PyBatch> {
    py.detach(|| parse::parse_batch(body, receive_ns, max_payload_bytes))
        .map(|inner| PyBatch { inner })
        .map_err(|e| body_error(py, &e))
}

/// Parse the single-message form; identity from the URL and header. A one-item Batch.
#[pyfunction]
#[pyo3(signature = (
    body, tenant_id, device_id, msg_type, provision_token, receive_ns, max_payload_bytes = 8192
))]
#[allow(clippy::too_many_arguments)]
fn parse_single(
    py: Python<'_>,
    body: &[u8],
    tenant_id: &Bound<'_, PyString>,
    device_id: &Bound<'_, PyString>,
    msg_type: &Bound<'_, PyString>,
    provision_token: &Bound<'_, PyString>,
    receive_ns: i64,
    max_payload_bytes: usize,
) -> PyResult<PyBatch> {
    // A str holding a lone surrogate has no UTF-8 form: it is a string, never a valid id.
    let tenant = tenant_id.to_str().ok();
    let device = device_id.to_str().ok();
    let msg_type = msg_type.to_str().ok();
    let token = provision_token.to_str().ok();
    let id = parse::UrlIdentity {
        tenant,
        device,
        msg_type,
        token,
    };
    py.detach(|| parse::parse_single(body, &id, receive_ns, max_payload_bytes))
        .map(|inner| PyBatch { inner })
        .map_err(|e| body_error(py, &e))
}

/// Per-tenant line-protocol buffers under a global and a per-tenant byte cap. Thread-safe.
#[pyclass(name = "TenantBuffers", module = "tidegate._core", frozen)]
struct PyTenantBuffers {
    inner: Arc<buffer::TenantBuffers>,
}

#[pymethods]
impl PyTenantBuffers {
    #[new]
    #[pyo3(signature = (
        batch_size = 500, flush_bytes = 1_048_576, max_bytes = 67_108_864, tenant_max_bytes = None
    ))]
    fn new(
        batch_size: usize,
        flush_bytes: usize,
        max_bytes: usize,
        tenant_max_bytes: Option<usize>,
    ) -> Self {
        let tenant_max_bytes = tenant_max_bytes.unwrap_or(max_bytes);
        PyTenantBuffers {
            inner: Arc::new(buffer::TenantBuffers::new(
                batch_size,
                flush_bytes,
                max_bytes,
                tenant_max_bytes,
            )),
        }
    }

    /// Append the batch's accepted lines under `mark`; returns the tenants now at a threshold.
    #[pyo3(signature = (batch, mark = 0))]
    fn append(
        &self,
        py: Python<'_>,
        batch: &Bound<'_, PyBatch>,
        mark: u64,
    ) -> PyResult<Vec<String>> {
        let mut batch = batch.try_borrow_mut()?;
        let batch = &mut batch.inner;
        py.detach(|| self.inner.append(batch, mark))
            .map_err(|e| usage_error(&e))
    }

    /// Append already-encoded newline-terminated lines for one tenant, all or nothing.
    #[pyo3(signature = (tenant, lines, line_count, mark = 0))]
    fn append_lines(
        &self,
        py: Python<'_>,
        tenant: &str,
        lines: &[u8],
        line_count: usize,
        mark: u64,
    ) -> PyResult<bool> {
        py.detach(|| {
            self.inner
                .append_lines(tenant, lines, line_count, mark, false)
        })
        .map_err(|e| usage_error(&e))
    }

    /// Tenants at or over a flush threshold, or with a put-back body waiting.
    fn ready(&self, py: Python<'_>) -> Vec<String> {
        py.detach(|| self.inner.ready())
    }

    /// Tenants with anything buffered or put back.
    fn tenants(&self, py: Python<'_>) -> Vec<String> {
        py.detach(|| self.inner.tenants())
    }

    /// Take the tenant's oldest data as one write body; it stays counted until settled.
    #[pyo3(signature = (tenant, max_lines = 5000))]
    fn drain<'py>(
        &self,
        py: Python<'py>,
        tenant: &str,
        max_lines: usize,
    ) -> PyResult<Option<(Bound<'py, PyBytes>, usize)>> {
        let drained = py
            .detach(|| self.inner.drain(tenant, max_lines))
            .map_err(|e| usage_error(&e))?;
        Ok(drained.map(|(body, n)| (PyBytes::new(py, &body), n)))
    }

    /// The oldest `line_count` lines of the tenant's body in flight are finished with.
    fn settle(&self, py: Python<'_>, tenant: &str, line_count: usize) -> PyResult<()> {
        py.detach(|| self.inner.settle(tenant, line_count))
            .map_err(|e| usage_error(&e))
    }

    /// Return the unsettled rest of the tenant's body in flight; it is the tenant's next `drain`.
    fn put_back(&self, py: Python<'_>, tenant: &str) -> PyResult<()> {
        py.detach(|| self.inner.put_back(tenant))
            .map_err(|e| usage_error(&e))
    }

    /// Per tenant, `(lines, bytes)` buffered or put back (not in flight).
    fn depth<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let depth = py.detach(|| self.inner.depth());
        let out = PyDict::new(py);
        for (tenant, d) in depth {
            out.set_item(tenant, d)?;
        }
        Ok(out)
    }

    /// Per tenant, bytes counted against `tenant_max_bytes`, tenants by name.
    fn tenant_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let used = py.detach(|| self.inner.tenant_bytes());
        let out = PyDict::new(py);
        for (tenant, n) in used {
            out.set_item(tenant, n)?;
        }
        Ok(out)
    }

    /// Marks delivered since the previous call, ascending.
    fn take_delivered(&self, py: Python<'_>) -> Vec<u64> {
        py.detach(|| self.inner.take_delivered())
    }

    /// The largest N such that every mark up to N is delivered (0 when none).
    #[getter]
    fn delivered_through(&self, py: Python<'_>) -> u64 {
        py.detach(|| self.inner.delivered_through())
    }

    /// All bytes counted against the cap: buffered, put back and in flight.
    #[getter]
    fn total_bytes(&self, py: Python<'_>) -> usize {
        py.detach(|| self.inner.total_bytes())
    }

    #[getter]
    fn max_bytes(&self) -> usize {
        self.inner.max_bytes()
    }

    #[getter]
    fn tenant_max_bytes(&self) -> usize {
        self.inner.tenant_max_bytes()
    }
}

/// Readings extracted from a Shelly body, columnar, deduplicated on the idempotency key.
#[pyclass(name = "ShellyBatch", module = "tidegate._core", frozen)]
struct PyShellyBatch {
    inner: shelly::ShellyBatch,
}

#[pymethods]
impl PyShellyBatch {
    #[getter]
    fn total_messages(&self) -> usize {
        self.inner.total_messages
    }

    #[getter]
    fn devices(&self) -> usize {
        self.inner.devices
    }

    #[getter]
    fn duplicates_in_batch(&self) -> usize {
        self.inner.duplicates_in_batch
    }

    #[getter]
    fn errors(&self) -> Vec<(usize, &'static str)> {
        self.inner
            .errors
            .iter()
            .map(|&(i, r)| (i, r.code()))
            .collect()
    }

    #[getter]
    fn device_id(&self) -> Vec<&str> {
        self.inner.device_id.iter().map(String::as_str).collect()
    }

    #[getter]
    fn channel(&self) -> Vec<usize> {
        // Not Vec<u8>: PyO3 turns that into bytes, and this is a list of ints.
        self.inner.channel.iter().map(|&c| usize::from(c)).collect()
    }

    #[getter]
    fn power(&self) -> Vec<f64> {
        self.inner.power.clone()
    }

    #[getter]
    fn voltage(&self) -> Vec<Option<f64>> {
        self.inner.voltage.clone()
    }

    #[getter]
    fn current(&self) -> Vec<Option<f64>> {
        self.inner.current.clone()
    }

    #[getter]
    fn timestamp(&self) -> Vec<i64> {
        self.inner.timestamp.clone()
    }

    #[getter]
    fn idempotency_key(&self) -> Vec<&str> {
        self.inner
            .idempotency_key
            .iter()
            .map(String::as_str)
            .collect()
    }

    /// Line protocol (measurement `power`) of the readings at `rows`, and its line count.
    fn encode<'py>(
        &self,
        py: Python<'py>,
        rows: Vec<usize>,
    ) -> PyResult<(Bound<'py, PyBytes>, usize)> {
        let (body, n) = self
            .inner
            .encode(&rows)
            .map_err(|row| PyIndexError::new_err(format!("row {row} out of range")))?;
        Ok((PyBytes::new(py, &body), n))
    }
}

const _: () = assert!(shelly::MAX_SHELLY_MESSAGES == 1000);

/// Parse and validate a Shelly batch. Runs without the GIL.
#[pyfunction]
// A literal default, so that `__text_signature__` shows it; kept equal by the assert below.
#[pyo3(signature = (body, now_s, max_messages = 1000))]
fn parse_shelly(
    py: Python<'_>,
    body: &[u8],
    now_s: i64,
    max_messages: usize,
) -> PyResult<PyShellyBatch> {
    py.detach(|| shelly::parse_shelly(body, now_s, max_messages))
        .map(|inner| PyShellyBatch { inner })
        .map_err(|e| body_error(py, &e))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    for reason in Reason::ALL {
        m.add(reason.code(), reason.code())?;
    }
    let codes = Reason::ALL.map(Reason::code);
    m.add("REASONS", PyTuple::new(m.py(), codes)?)?;
    m.add("MAX_BATCH_MESSAGES", parse::MAX_BATCH_MESSAGES)?;
    m.add("MAX_SHELLY_MESSAGES", shelly::MAX_SHELLY_MESSAGES)?;
    let body_error = m.py().get_type::<BodyError>();
    // Declared on the class too, as the stub does; each raised instance sets its own.
    body_error.setattr("detail", "")?;
    m.add("BodyError", body_error)?;
    m.add_class::<PyBatch>()?;
    m.add_class::<PyTenantBuffers>()?;
    m.add_class::<PyShellyBatch>()?;
    m.add_function(wrap_pyfunction!(parse_batch, m)?)?;
    m.add_function(wrap_pyfunction!(parse_single, m)?)?;
    m.add_function(wrap_pyfunction!(parse_shelly, m)?)?;
    Ok(())
}
