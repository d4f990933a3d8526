//! Python binding of the tidegate core (`tidegate._core`): the only file that knows about
//! Python. Pure-Rust work runs with the GIL released; core errors become Python exceptions here.

pub mod batch;
pub mod buffer;
pub mod encode;
pub mod envelope;
pub mod errors;
pub mod ids;
pub mod json;
pub mod latest;
pub mod parse;
pub mod scan;
pub mod shelly;
pub mod timestamp;

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

/// A count or size argument: a Python int may be negative, the core's counts may not. The
/// message is ours (docs/core-rules.md), not the conversion's.
fn count(name: &str, n: i64) -> PyResult<usize> {
    usize::try_from(n).map_err(|_| PyValueError::new_err(format!("{name} must not be negative")))
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

    /// Per device with items rejected for `reason`: `(tenant, device, count)`.
    fn refusals(&self, reason: &str) -> PyResult<Vec<(&str, &str, usize)>> {
        let reason = Reason::from_code(reason).map_err(|e| usage_error(&e))?;
        Ok(self.inner.refusals(reason))
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
    max_payload_bytes: i64,
) -> PyResult<PyBatch> {
    let max_payload = count("max_payload_bytes", max_payload_bytes)?;
    py.detach(|| parse::parse_batch(body, receive_ns, max_payload))
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
    max_payload_bytes: i64,
) -> PyResult<PyBatch> {
    let max_payload = count("max_payload_bytes", max_payload_bytes)?;
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
    py.detach(|| parse::parse_single(body, &id, receive_ns, max_payload))
        .map(|inner| PyBatch { inner })
        .map_err(|e| body_error(py, &e))
}

/// Per-tenant line-protocol buffers under one global byte cap. Thread-safe.
#[pyclass(name = "TenantBuffers", module = "tidegate._core", frozen)]
struct PyTenantBuffers {
    inner: buffer::TenantBuffers,
}

#[pymethods]
impl PyTenantBuffers {
    #[new]
    #[pyo3(signature = (batch_size = 500, flush_bytes = 1_048_576, max_bytes = 67_108_864))]
    fn new(batch_size: i64, flush_bytes: i64, max_bytes: i64) -> PyResult<Self> {
        let inner = buffer::TenantBuffers::new(
            count("batch_size", batch_size)?,
            count("flush_bytes", flush_bytes)?,
            count("max_bytes", max_bytes)?,
        );
        Ok(PyTenantBuffers { inner })
    }

    /// Append the batch's accepted lines; returns the tenants now at a flush threshold.
    fn append(&self, py: Python<'_>, batch: &Bound<'_, PyBatch>) -> PyResult<Vec<String>> {
        let mut batch = batch.try_borrow_mut()?;
        let batch = &mut batch.inner;
        py.detach(|| self.inner.append(batch))
            .map_err(|e| usage_error(&e))
    }

    /// Append already-encoded newline-terminated lines for one tenant, all or nothing.
    fn append_lines(
        &self,
        py: Python<'_>,
        tenant: &str,
        lines: &[u8],
        line_count: i64,
    ) -> PyResult<bool> {
        let line_count = count("line_count", line_count)?;
        py.detach(|| self.inner.append_lines(tenant, lines, line_count))
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
        max_lines: i64,
    ) -> PyResult<Option<(Bound<'py, PyBytes>, usize)>> {
        let max_lines = count("max_lines", max_lines)?;
        let drained = py
            .detach(|| self.inner.drain(tenant, max_lines))
            .map_err(|e| usage_error(&e))?;
        Ok(drained.map(|(body, n)| (PyBytes::new(py, &body), n)))
    }

    /// A drained body of `nbytes` is finished with (written, or dead-lettered).
    fn settle(&self, py: Python<'_>, nbytes: i64) -> PyResult<()> {
        let nbytes = count("nbytes", nbytes)?;
        py.detach(|| self.inner.settle(nbytes))
            .map_err(|e| usage_error(&e))
    }

    /// Return a drained body whose write failed; it is the tenant's next `drain`.
    fn put_back(&self, py: Python<'_>, tenant: &str, body: &[u8], line_count: i64) -> PyResult<()> {
        let line_count = count("line_count", line_count)?;
        py.detach(|| self.inner.put_back(tenant, body.to_vec(), line_count))
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

    /// All bytes counted against the cap: buffered, put back and in flight.
    #[getter]
    fn total_bytes(&self, py: Python<'_>) -> usize {
        py.detach(|| self.inner.total_bytes())
    }

    #[getter]
    fn max_bytes(&self) -> usize {
        self.inner.max_bytes()
    }
}

/// Per device, its last accepted message (`telemetry_latest`). Thread-safe.
#[pyclass(name = "Latest", module = "tidegate._core", frozen)]
struct PyLatest {
    inner: latest::Latest,
}

type SnapshotTuple = (String, i64, i64, String, i64);

fn snapshot_tuple(s: latest::Snapshot) -> SnapshotTuple {
    (s.msg_type, s.ts_ns, s.seq, s.metrics_json, s.received_ns)
}

#[pymethods]
impl PyLatest {
    #[new]
    fn new() -> Self {
        PyLatest {
            inner: latest::Latest::new(),
        }
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        py.detach(|| self.inner.len())
    }

    /// Keep each device's last accepted item of an appended batch.
    fn record(&self, py: Python<'_>, batch: &Bound<'_, PyBatch>) -> PyResult<()> {
        let batch = batch.try_borrow()?;
        let batch = &batch.inner;
        py.detach(|| self.inner.record(batch));
        Ok(())
    }

    /// Per device of `devices`, `(msg_type, ts_ns, seq, metrics_json, received_ns)` or None.
    fn get(
        &self,
        py: Python<'_>,
        tenant: &str,
        devices: Vec<String>,
    ) -> Vec<Option<SnapshotTuple>> {
        let devices: Vec<&str> = devices.iter().map(String::as_str).collect();
        py.detach(|| self.inner.get(tenant, &devices))
            .into_iter()
            .map(|s| s.map(snapshot_tuple))
            .collect()
    }

    /// Devices changed since the last call, as `(tenant, device, msg_type, ts_ns, seq,
    /// metrics_json, received_ns)` sorted by key; marks them clean.
    #[allow(clippy::type_complexity)]
    fn take_dirty(&self, py: Python<'_>) -> Vec<(String, String, String, i64, i64, String, i64)> {
        py.detach(|| self.inner.take_dirty())
            .into_iter()
            .map(|(t, d, s)| {
                (
                    t,
                    d,
                    s.msg_type,
                    s.ts_ns,
                    s.seq,
                    s.metrics_json,
                    s.received_ns,
                )
            })
            .collect()
    }

    /// Mark `(tenant, device)` keys dirty again (their rows were not stored).
    fn mark_dirty(&self, py: Python<'_>, keys: Vec<(String, String)>) {
        let keys: Vec<(&str, &str)> = keys.iter().map(|(t, d)| (t.as_str(), d.as_str())).collect();
        py.detach(|| self.inner.mark_dirty(&keys));
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

    /// Number of readings.
    fn __len__(&self) -> usize {
        self.inner.len()
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

    /// All seven columns at once, each built once.
    #[allow(clippy::type_complexity)]
    fn columns(
        &self,
    ) -> (
        Vec<&str>,
        Vec<usize>,
        Vec<f64>,
        Vec<Option<f64>>,
        Vec<Option<f64>>,
        Vec<i64>,
        Vec<&str>,
    ) {
        (
            self.device_id(),
            self.channel(),
            self.power(),
            self.voltage(),
            self.current(),
            self.timestamp(),
            self.idempotency_key(),
        )
    }

    /// Line protocol (measurement `power`) of the readings at `rows`, and its line count.
    fn encode<'py>(
        &self,
        py: Python<'py>,
        rows: Vec<i64>,
    ) -> PyResult<(Bound<'py, PyBytes>, usize)> {
        let (body, n) = self.inner.encode(&rows).map_err(row_error)?;
        Ok((PyBytes::new(py, &body), n))
    }

    /// The length of `encode(rows)`'s bytes, without building them.
    fn encoded_size(&self, rows: Vec<i64>) -> PyResult<usize> {
        self.inner.encoded_size(&rows).map_err(row_error)
    }
}

fn row_error(row: i64) -> PyErr {
    PyIndexError::new_err(format!("row {row} out of range"))
}

const _: () = assert!(shelly::MAX_SHELLY_MESSAGES == 1000);
const _: () = assert!(parse::DEFAULT_MAX_PAYLOAD_BYTES == 8192);

/// Whether `s` is a valid tenant id. A str holding a lone surrogate never is.
#[pyfunction]
fn valid_tenant(s: &Bound<'_, PyString>) -> bool {
    s.to_str().is_ok_and(ids::valid_tenant)
}

/// Whether `s` is a valid id (device, site, token). A str holding a lone surrogate never is.
#[pyfunction]
fn valid_id(s: &Bound<'_, PyString>) -> bool {
    s.to_str().is_ok_and(ids::valid_id)
}

/// The sentence explaining a validation reason code to a client.
#[pyfunction]
fn reason_detail(reason: &str) -> PyResult<&'static str> {
    Reason::detail_of(reason).map_err(|e| usage_error(&e))
}

/// Parse and validate a Shelly batch. Runs without the GIL.
#[pyfunction]
// A literal default, so that `__text_signature__` shows it; kept equal by the assert below.
#[pyo3(signature = (body, now_s, max_messages = 1000))]
fn parse_shelly(
    py: Python<'_>,
    body: &[u8],
    now_s: i64,
    max_messages: i64,
) -> PyResult<PyShellyBatch> {
    let max_messages = count("max_messages", max_messages)?;
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
    m.add("MAX_ID_BYTES", ids::MAX_ID_BYTES)?;
    m.add("MAX_TENANT_CHARS", ids::MAX_TENANT_CHARS)?;
    m.add("TENANT_PATTERN", ids::TENANT_PATTERN)?;
    m.add("MAX_METRICS", parse::MAX_METRICS)?;
    m.add(
        "DEFAULT_MAX_PAYLOAD_BYTES",
        parse::DEFAULT_MAX_PAYLOAD_BYTES,
    )?;
    m.add("MSG_TYPES", PyTuple::new(m.py(), parse::MSG_TYPES)?)?;
    let body_error = m.py().get_type::<BodyError>();
    // Declared on the class too, as the stub does; each raised instance sets its own.
    body_error.setattr("detail", "")?;
    m.add("BodyError", body_error)?;
    m.add_class::<PyBatch>()?;
    m.add_class::<PyTenantBuffers>()?;
    m.add_class::<PyShellyBatch>()?;
    m.add_class::<PyLatest>()?;
    m.add_function(wrap_pyfunction!(parse_batch, m)?)?;
    m.add_function(wrap_pyfunction!(parse_single, m)?)?;
    m.add_function(wrap_pyfunction!(parse_shelly, m)?)?;
    m.add_function(wrap_pyfunction!(valid_tenant, m)?)?;
    m.add_function(wrap_pyfunction!(valid_id, m)?)?;
    m.add_function(wrap_pyfunction!(reason_detail, m)?)?;
    Ok(())
}
