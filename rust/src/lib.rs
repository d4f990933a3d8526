//! Python binding of the tidegate core (`tidegate._core`): the only file that knows about
//! Python. Pure-Rust work runs with the GIL released; core errors become Python exceptions here.

pub mod admission;
pub mod batch;
pub mod buffer;
pub mod device_key;
pub mod encode;
pub mod envelope;
pub mod errors;
pub mod fields;
pub mod handoff;
pub mod ids;
pub mod json;
pub mod latest;
pub mod lineproto;
pub mod lp_files;
pub mod parse;
pub mod schema;
pub mod shelly;
pub mod timestamp;
pub mod wakeup;
pub mod wal;
pub mod words;

use std::sync::Arc;

use pyo3::create_exception;
use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};

use crate::errors::{Reason, ShellyReason, UsageError};
use crate::schema::FieldType;

create_exception!(
    tidegate._core,
    BodyError,
    PyValueError,
    "The whole request body is unusable; nothing in it was processed."
);

create_exception!(
    tidegate._core,
    WalFull,
    pyo3::exceptions::PyException,
    "The write-ahead log is at its byte cap; nothing of the append was stored."
);

create_exception!(
    tidegate._core,
    WalUnavailable,
    pyo3::exceptions::PyOSError,
    "The write-ahead log could not write; nothing of the append was stored."
);

/// `err` with its message also as `.detail`.
fn with_detail(py: Python<'_>, err: PyErr, detail: String) -> PyErr {
    match err.value(py).setattr("detail", detail) {
        Ok(()) => err,
        Err(setattr_failed) => setattr_failed,
    }
}

fn body_error(py: Python<'_>, e: &errors::BodyError) -> PyErr {
    let detail = e.to_string();
    with_detail(py, BodyError::new_err(detail.clone()), detail)
}

fn wal_error(py: Python<'_>, e: &wal::WalError) -> PyErr {
    let detail = e.to_string();
    let err = match e {
        wal::WalError::Full { .. } => WalFull::new_err(detail.clone()),
        wal::WalError::Io(_) | wal::WalError::Failed(_) => WalUnavailable::new_err(detail.clone()),
        wal::WalError::Usage(u) => return usage_error(u),
    };
    with_detail(py, err, detail)
}

fn usage_error(e: &UsageError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// A dict of `items`, in their order.
fn dict_of<'py, K, V>(
    py: Python<'py>,
    items: impl IntoIterator<Item = (K, V)>,
) -> PyResult<Bound<'py, PyDict>>
where
    K: IntoPyObject<'py>,
    V: IntoPyObject<'py>,
{
    let out = PyDict::new(py);
    for (k, v) in items {
        out.set_item(k, v)?;
    }
    Ok(out)
}

/// A count or size argument: a Python int may be negative, the core's counts may not. The
/// message is ours (docs/core-rules.md), not the conversion's.
fn count(name: &str, n: i64) -> PyResult<usize> {
    usize::try_from(n).map_err(|_| PyValueError::new_err(format!("{name} must not be negative")))
}

/// `count` for the core's 32-bit settings (bursts, lookups per second).
fn count32(name: &str, n: i64) -> PyResult<u32> {
    u32::try_from(count(name, n)?)
        .map_err(|_| PyValueError::new_err(format!("{name} must be at most {}", u32::MAX)))
}

/// Parsed, validated and line-protocol-encoded messages of one request, held in Rust.
#[pyclass(name = "Batch", module = "tidegate._core")]
struct PyBatch {
    inner: batch::Batch,
    admission: admission::Progress,
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
    fn tenant_lines<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Vec<(&str, Bound<'py, PyBytes>, usize)>> {
        self.inner
            .tenant_groups()
            .iter()
            .map(|g| Ok((g.tenant, bytes_of(py, g.runs())?, g.count())))
            .collect()
    }

    /// Accepted items of these tenants become `reason` with `detail` (their publish failed);
    /// only once.
    fn withdraw(&mut self, tenants: Vec<String>, reason: &str, detail: &str) -> PyResult<usize> {
        let reason = Reason::from_code(reason).map_err(|e| usage_error(&e))?;
        self.inner
            .withdraw(&tenants, reason, detail)
            .map_err(|e| usage_error(&e))
    }

    /// `(index, detail)` of the rejected items that have a detail, in item order.
    fn details(&self) -> Vec<(usize, &str)> {
        self.inner.details().collect()
    }

    /// `(reason, tenant, device, detail)` of each rejected item, in item order.
    fn rejections(&self) -> Vec<(&'static str, &str, Option<&str>, &str)> {
        self.inner
            .rejections()
            .into_iter()
            .map(|(r, tenant, device, detail)| (r.code(), tenant, device, detail))
            .collect()
    }

    /// Per tenant of the valid items: `(tenant, accepted, refused after validation)`.
    fn tenant_counts(&self) -> Vec<(&str, usize, usize)> {
        self.inner.tenant_counts()
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

    /// Per item, its 1-based line number in a line-protocol body (empty for JSON bodies).
    fn line_numbers(&self) -> Vec<u32> {
        self.inner.line_numbers().to_vec()
    }

    /// Seconds until the next token of the batch's slowest rate-limited device (0.0: none).
    #[getter]
    fn retry_after(&self) -> f64 {
        self.admission.retry_after()
    }
}

fn new_batch(inner: batch::Batch) -> PyBatch {
    PyBatch {
        inner,
        admission: admission::Progress::default(),
    }
}

/// A registry row as `Admission.install` takes it.
type RecordRow = (
    String,
    String,
    String,
    Vec<u8>,
    Option<f64>,
    Option<i64>,
    String,
);

/// The auth cache, token buckets and lookup budgets of one gateway process.
#[pyclass(name = "Admission", module = "tidegate._core")]
struct PyAdmission {
    inner: admission::Admission,
}

#[pymethods]
impl PyAdmission {
    #[new]
    #[pyo3(signature = (
        ttl_s = 60.0,
        negative_ttl_s = 5.0,
        max_entries = 100_000,
        max_negative_entries = 10_000,
        default_rps = 10.0,
        default_burst = 100,
        lookups_per_s = 100,
    ))]
    fn new(
        ttl_s: f64,
        negative_ttl_s: f64,
        max_entries: i64,
        max_negative_entries: i64,
        default_rps: f64,
        default_burst: i64,
        lookups_per_s: i64,
    ) -> PyResult<Self> {
        let settings = admission::Settings {
            ttl_s,
            negative_ttl_s,
            max_entries: count("max_entries", max_entries)?,
            max_negative_entries: count("max_negative_entries", max_negative_entries)?,
            default_rps,
            default_burst: count32("default_burst", default_burst)?,
            lookups_per_s: count32("lookups_per_s", lookups_per_s)?,
        };
        admission::Admission::new(settings)
            .map(|inner| PyAdmission { inner })
            .map_err(|e| usage_error(&e))
    }

    /// Decide the batch from the cache and resolve it (returns []), or return the keys to
    /// look up. Runs without the GIL.
    fn admit(
        &mut self,
        py: Python<'_>,
        batch: &Bound<'_, PyBatch>,
        now: f64,
    ) -> PyResult<Vec<admission::Key>> {
        let mut batch = batch.try_borrow_mut()?;
        let PyBatch { inner, admission } = &mut *batch;
        let this = &mut self.inner;
        py.detach(|| this.admit(inner, admission, now))
            .map_err(|e| usage_error(&e))
    }

    /// Cache the registry rows found for `keys`; keys without a row are cached as unknown.
    fn install(
        &mut self,
        keys: Vec<admission::Key>,
        records: Vec<RecordRow>,
        now: f64,
    ) -> PyResult<()> {
        let records = records
            .into_iter()
            .map(|(tenant, device, site, hash, rps, burst, status)| {
                let burst = burst.map(|b| count32("burst", b)).transpose()?;
                let record = admission::Record::new(site, &hash, rps, burst, status == "active")
                    .map_err(|e| usage_error(&e))?;
                Ok((tenant, device, record))
            })
            .collect::<PyResult<Vec<_>>>()?;
        self.inner.install(&keys, records, now);
        Ok(())
    }

    /// Forget one device: its next request looks it up.
    fn invalidate(&mut self, tenant: &str, device: &str) {
        self.inner.invalidate(tenant, device);
    }

    /// Forget every device.
    fn invalidate_all(&mut self) {
        self.inner.invalidate_all();
    }

    /// Enforce `share` (0 < share <= 1) of every device's rps and burst from now on.
    fn set_share(&mut self, share: f64) -> PyResult<()> {
        self.inner.set_share(share).map_err(|e| usage_error(&e))
    }

    /// `(rps, burst)` that applies to a device: its record's, else the defaults.
    fn limits(&mut self, tenant: &str, device: &str) -> (f64, u32) {
        self.inner.limits(tenant, device)
    }

    /// Counters and table sizes by name.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (name, value) in self.inner.stats() {
            out.set_item(name, value)?;
        }
        Ok(out)
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
        .map(new_batch)
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
        .map(new_batch)
        .map_err(|e| body_error(py, &e))
}

/// Parse an InfluxDB line-protocol body for `tenant_id`: one item per line that is neither
/// blank nor a comment. `device` = `(device_id, site_id, provision_token)` of a device writing
/// with its own credential; `sites` = the tenant's active devices and their sites, for a
/// tenant-key writer. Exactly one of the two. Runs without the GIL.
#[pyfunction]
#[pyo3(signature = (
    body, tenant_id, receive_ns, precision = "ns", max_payload_bytes = 8192, device = None,
    sites = None
))]
#[allow(clippy::too_many_arguments)]
fn parse_lines(
    py: Python<'_>,
    body: &[u8],
    tenant_id: &str,
    receive_ns: i64,
    precision: &str,
    max_payload_bytes: i64,
    device: Option<(String, String, String)>,
    sites: Option<std::collections::HashMap<String, String>>,
) -> PyResult<PyBatch> {
    let max_line = count("max_payload_bytes", max_payload_bytes)?;
    let writer = match (&device, &sites) {
        (Some((device, site, token)), None) => lineproto::Writer::Device {
            device,
            site,
            token,
        },
        (None, Some(sites)) => lineproto::Writer::TenantKey { sites },
        _ => {
            return Err(PyValueError::new_err(
                "give exactly one of device and sites",
            ))
        }
    };
    lineproto::check_writer(tenant_id, &writer).map_err(|e| usage_error(&e))?;
    let precision = lineproto::Precision::from_name(precision).map_err(|e| body_error(py, &e))?;
    py.detach(|| lineproto::parse_lines(body, tenant_id, receive_ns, precision, max_line, &writer))
        .map(new_batch)
        .map_err(|e| body_error(py, &e))
}

/// The distinct `device_id` tags of a line-protocol body's lines that a tenant key could write,
/// in order of first appearance: the devices to look up before `parse_lines`.
#[pyfunction]
#[pyo3(signature = (body, max_payload_bytes = 8192))]
fn line_devices(py: Python<'_>, body: &[u8], max_payload_bytes: i64) -> PyResult<Vec<String>> {
    let max_line = count("max_payload_bytes", max_payload_bytes)?;
    py.detach(|| lineproto::line_devices(body, max_line))
        .map_err(|e| body_error(py, &e))
}

/// One `bytes` of `parts` (a drained body's pieces, a tenant's lines), copied once:
/// `PyBytes::new` wants them in one slice (a second copy of every byte), `PyBytes::new_with`
/// zeroes the object first.
fn bytes_of<'py, 'a>(
    py: Python<'py>,
    parts: impl Iterator<Item = &'a [u8]> + Clone,
) -> PyResult<Bound<'py, PyBytes>> {
    // The length the copies below fill, from the parts themselves.
    let total = parts.clone().map(<[u8]>::len).sum::<usize>();
    let len = pyo3::ffi::Py_ssize_t::try_from(total)
        .map_err(|_| PyValueError::new_err("too many bytes for one bytes object"))?;
    let mut room = total;
    // SAFETY: with a NULL source, `PyBytes_FromStringAndSize` returns a new bytes object of
    // `len` uninitialised bytes, which CPython lets its creator fill before sharing it; the
    // parts are copied within the object's buffer back to back, and fill it exactly (checked:
    // the iterator is read twice).
    unsafe {
        let ptr = pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), len);
        let bytes = Bound::from_owned_ptr_or_err(py, ptr)?.cast_into_unchecked::<PyBytes>();
        let mut at = pyo3::ffi::PyBytes_AsString(ptr).cast::<u8>();
        for part in parts {
            room = room
                .checked_sub(part.len())
                .expect("the parts are as long as summed");
            std::ptr::copy_nonoverlapping(part.as_ptr(), at, part.len());
            at = at.add(part.len());
        }
        assert_eq!(room, 0, "the parts fill the bytes object");
        Ok(bytes)
    }
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
        batch_size: i64,
        flush_bytes: i64,
        max_bytes: i64,
        tenant_max_bytes: Option<i64>,
    ) -> PyResult<Self> {
        let batch_size = count("batch_size", batch_size)?;
        let flush_bytes = count("flush_bytes", flush_bytes)?;
        let max_bytes = count("max_bytes", max_bytes)?;
        let tenant_max_bytes = match tenant_max_bytes {
            Some(n) => count("tenant_max_bytes", n)?,
            None => max_bytes,
        };
        let inner =
            buffer::TenantBuffers::new(batch_size, flush_bytes, max_bytes, tenant_max_bytes);
        Ok(PyTenantBuffers {
            inner: Arc::new(inner),
        })
    }

    /// Append the batch's accepted lines under `mark`; returns the tenants now at a threshold.
    #[pyo3(signature = (batch, mark = 0))]
    fn append(
        &self,
        py: Python<'_>,
        batch: &Bound<'_, PyBatch>,
        mark: i64,
    ) -> PyResult<Vec<String>> {
        let mark = count("mark", mark)? as u64;
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
        line_count: i64,
        mark: i64,
    ) -> PyResult<bool> {
        let line_count = count("line_count", line_count)?;
        let mark = count("mark", mark)? as u64;
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
        max_lines: i64,
    ) -> PyResult<Option<(Bound<'py, PyBytes>, usize)>> {
        let max_lines = count("max_lines", max_lines)?;
        let drained = py
            .detach(|| self.inner.drain_shared(tenant, max_lines))
            .map_err(|e| usage_error(&e))?;
        drained
            .map(|(body, n)| Ok((bytes_of(py, body.parts())?, n)))
            .transpose()
    }

    /// The oldest `line_count` lines of the tenant's body in flight are finished with.
    fn settle(&self, py: Python<'_>, tenant: &str, line_count: i64) -> PyResult<()> {
        let line_count = count("line_count", line_count)?;
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
        dict_of(py, py.detach(|| self.inner.depth()))
    }

    /// Per tenant, bytes counted against `tenant_max_bytes`, tenants by name.
    fn tenant_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        dict_of(py, py.detach(|| self.inner.tenant_bytes()))
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

/// The write-ahead log of the buffers' appends (see `wal.rs`).
#[pyclass(name = "Wal", module = "tidegate._core", frozen)]
struct PyWal {
    inner: wal::Wal,
}

impl PyWal {
    /// `append` (or `submit`) of the batch without the GIL; a log error as its exception.
    fn with_batch<T: Send>(
        &self,
        py: Python<'_>,
        batch: &Bound<'_, PyBatch>,
        append: impl FnOnce(&wal::Wal, &mut batch::Batch) -> Result<T, wal::WalError> + Send,
    ) -> PyResult<T> {
        let mut batch = batch.try_borrow_mut()?;
        let batch = &mut batch.inner;
        py.detach(|| append(&self.inner, batch))
            .map_err(|e| wal_error(py, &e))
    }

    /// `with_batch` for one tenant's encoded lines.
    fn with_lines<T: Send>(
        &self,
        py: Python<'_>,
        tenant: &str,
        lines: &[u8],
        line_count: i64,
        append: impl FnOnce(&wal::Wal, &str, &[u8], usize) -> Result<T, wal::WalError> + Send,
    ) -> PyResult<T> {
        let line_count = count("line_count", line_count)?;
        py.detach(|| append(&self.inner, tenant, lines, line_count))
            .map_err(|e| wal_error(py, &e))
    }
}

#[pymethods]
impl PyWal {
    /// Open (create) the log in `directory` and replay it into `buffers`. Runs without the GIL.
    #[new]
    #[pyo3(signature = (
        buffers, directory, sync = "always", sync_interval_ms = 100,
        max_bytes = 1_073_741_824, segment_bytes = 16_777_216
    ))]
    fn new(
        py: Python<'_>,
        buffers: &Bound<'_, PyTenantBuffers>,
        directory: std::path::PathBuf,
        sync: &str,
        sync_interval_ms: i64,
        max_bytes: i64,
        segment_bytes: i64,
    ) -> PyResult<Self> {
        let sync_interval_ms = count("sync_interval_ms", sync_interval_ms)? as u64;
        let max_bytes = count("max_bytes", max_bytes)? as u64;
        let segment_bytes = count("segment_bytes", segment_bytes)? as u64;
        let sync = match sync {
            "always" => wal::SyncMode::Always,
            "interval" if sync_interval_ms > 0 => {
                wal::SyncMode::Interval(std::time::Duration::from_millis(sync_interval_ms))
            }
            "interval" => return Err(PyValueError::new_err("sync_interval_ms must be at least 1")),
            other => {
                return Err(PyValueError::new_err(format!(
                    "sync must be \"always\" or \"interval\", not {other:?}"
                )))
            }
        };
        let cfg = wal::WalConfig {
            dir: directory,
            sync,
            max_bytes,
            segment_bytes,
        };
        let buffers = Arc::clone(&buffers.get().inner);
        py.detach(|| wal::Wal::open(cfg, buffers))
            .map(|inner| PyWal { inner })
            .map_err(|e| wal_error(py, &e))
    }

    /// Queue the batch's accepted lines to be logged, then buffered: a ticket (0: nothing to
    /// log) whose outcome `completed` reports.
    fn submit(&self, py: Python<'_>, batch: &Bound<'_, PyBatch>) -> PyResult<u64> {
        self.with_batch(py, batch, wal::Wal::submit)
    }

    /// `submit` for one tenant's encoded lines, all or nothing: None when they do not fit.
    fn submit_lines(
        &self,
        py: Python<'_>,
        tenant: &str,
        lines: &[u8],
        line_count: i64,
    ) -> PyResult<Option<u64>> {
        self.with_lines(py, tenant, lines, line_count, wal::Wal::submit_lines)
    }

    /// Sync "interval" only: log and buffer the batch's accepted lines at once (GIL
    /// released); the tenants now at a flush threshold.
    fn append(&self, py: Python<'_>, batch: &Bound<'_, PyBatch>) -> PyResult<Vec<String>> {
        self.with_batch(py, batch, wal::Wal::append)
    }

    /// `append` for one tenant's encoded lines, all or nothing: None when they do not fit.
    fn append_lines(
        &self,
        py: Python<'_>,
        tenant: &str,
        lines: &[u8],
        line_count: i64,
    ) -> PyResult<Option<Vec<String>>> {
        self.with_lines(py, tenant, lines, line_count, wal::Wal::append_lines)
    }

    /// Outcomes of submitted appends since the last call: `(ticket, ready tenants, error)`.
    #[allow(clippy::type_complexity)]
    fn completed(&self, py: Python<'_>) -> Vec<(u64, Vec<String>, Option<Py<PyAny>>)> {
        py.detach(|| self.inner.completed())
            .into_iter()
            .map(|(ticket, outcome)| match outcome {
                Ok(ready) => (ticket, ready, None),
                Err(e) => (
                    ticket,
                    Vec::new(),
                    Some(wal_error(py, &e).into_value(py).into_any()),
                ),
            })
            .collect()
    }

    /// The descriptor to watch (readable) for `completed` outcomes.
    fn wakeup_fd(&self) -> i32 {
        self.inner.wakeup_fd()
    }

    /// Write the checkpoint and delete delivered segments now (also done every second).
    fn checkpoint(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.checkpoint())
            .map_err(|e| wal_error(py, &e))
    }

    /// Counters of the running log.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = py.detach(|| self.inner.stats());
        dict_of(py, stats.counters())
    }

    /// What start-up found: counters, and one line per problem.
    fn replay<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyDict>, Vec<String>)> {
        let replay = self.inner.replay_stats();
        Ok((dict_of(py, replay.counters())?, replay.problems.clone()))
    }

    /// Why the log refuses appends until restart (a failed fsync), or None.
    #[getter]
    fn failed(&self) -> Option<String> {
        self.inner.failed()
    }

    /// Refuse further appends; a last fsync and checkpoint. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.close())
            .map_err(|e| wal_error(py, &e))
    }
}

/// Each tenant's field types per measurement; rejects conflicting items. Thread-safe.
#[pyclass(name = "FieldTypes", module = "tidegate._core", frozen)]
struct PyFieldTypes {
    inner: fields::FieldTypes,
}

#[pymethods]
impl PyFieldTypes {
    #[new]
    #[pyo3(signature = (max_per_tenant = 10_000))]
    fn new(max_per_tenant: i64) -> PyResult<Self> {
        let max = count("max_per_tenant", max_per_tenant)?;
        Ok(PyFieldTypes {
            inner: fields::FieldTypes::new(max),
        })
    }

    /// Reject the batch's items whose field types conflict; remember the others' types.
    fn admit(&self, py: Python<'_>, batch: &Bound<'_, PyBatch>) -> PyResult<()> {
        let mut batch = batch.try_borrow_mut()?;
        let batch = &mut batch.inner;
        py.detach(|| self.inner.admit(batch))
            .map_err(|e| usage_error(&e))
    }

    /// The distinct fields of the batch's accepted items their tenant does not know yet:
    /// `(tenant, measurement, field, type)`, request order. Runs without the GIL.
    fn unknown(
        &self,
        py: Python<'_>,
        batch: &Bound<'_, PyBatch>,
    ) -> PyResult<Vec<(String, String, String, &'static str)>> {
        let batch = batch.try_borrow()?;
        let batch = &batch.inner;
        let found = py.detach(|| self.inner.unknown(batch));
        Ok(found
            .into_iter()
            .map(|(t, m, f, ty)| (t, m, f, ty.name()))
            .collect())
    }

    /// Set a field's type as InfluxDB reports it; False when it is not remembered.
    fn learn(
        &self,
        tenant: &str,
        measurement: &str,
        field: &str,
        field_type: &str,
    ) -> PyResult<bool> {
        let ty = FieldType::from_name(field_type).map_err(|e| usage_error(&e))?;
        Ok(self.inner.learn(tenant, measurement, field, ty))
    }

    /// The remembered type of a field, or None.
    fn get(&self, tenant: &str, measurement: &str, field: &str) -> Option<&'static str> {
        self.inner
            .get(tenant, measurement, field)
            .map(FieldType::name)
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    #[getter]
    fn untracked(&self) -> u64 {
        self.inner.untracked()
    }

    #[getter]
    fn max_per_tenant(&self) -> usize {
        self.inner.max_per_tenant()
    }
}

const _: () = assert!(fields::DEFAULT_MAX_FIELDS_PER_TENANT == 10_000);

/// Panics with `message`: how tests see what a bug in the core does to a request. Only in a
/// build with the `test-panic` feature (`make build`), never in the release wheel.
#[cfg(feature = "test-panic")]
#[pyfunction]
fn _test_panic(message: &str) {
    panic!("{message}");
}

/// `e` as Python raises an OS error on `path`: `OSError(errno, strerror, path)`, which is the
/// errno's own subclass (FileNotFoundError, NotADirectoryError, ...).
fn os_error(py: Python<'_>, e: &std::io::Error, path: &std::path::Path) -> PyErr {
    let Some(errno) = e.raw_os_error() else {
        return pyo3::exceptions::PyOSError::new_err(e.to_string());
    };
    let strerror = py
        .import("os")
        .and_then(|os| os.call_method1("strerror", (errno,)))
        .and_then(|s| s.extract::<String>())
        .unwrap_or_else(|_| e.to_string());
    let filename = path.to_string_lossy().into_owned();
    pyo3::exceptions::PyOSError::new_err((errno, strerror, filename))
}

/// Append `data` under its exclusive lock to the line-protocol file at `path` (creating it and
/// its directories); OSError when it cannot. Runs without the GIL.
#[pyfunction]
fn append_file(py: Python<'_>, path: std::path::PathBuf, data: &[u8]) -> PyResult<()> {
    py.detach(|| lp_files::append(&path, data))
        .map_err(|e| os_error(py, &e, &path))
}

/// A body for `FileAppender`, with who waits for it.
struct AppendJob {
    waiter: Py<PyAny>,
    path: std::path::PathBuf,
    data: PyBackedBytes,
}

/// An appended job: its waiter, its body (released back on the loop's thread) and the outcome.
type Appended = (
    Py<PyAny>,
    PyBackedBytes,
    std::path::PathBuf,
    std::io::Result<()>,
);

fn append_job(job: AppendJob) -> Appended {
    let outcome = lp_files::append(&job.path, &job.data);
    (job.waiter, job.data, job.path, outcome)
}

/// `append_file` on a thread of its own, which never takes the GIL: `submit` queues a body
/// with its waiter; the descriptor `wakeup_fd()` turns readable when appends are done, and
/// `completed()` returns each waiter with None or the OSError its append raised (as `Wal`).
#[pyclass(name = "FileAppender", module = "tidegate._core", frozen)]
struct PyFileAppender {
    inner: std::sync::Mutex<Option<handoff::Handoff<AppendJob, Appended>>>,
}

impl PyFileAppender {
    fn with<T>(&self, f: impl FnOnce(&handoff::Handoff<AppendJob, Appended>) -> T) -> PyResult<T> {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match inner.as_ref() {
            Some(handoff) => Ok(f(handoff)),
            None => Err(PyValueError::new_err("the FileAppender is closed")),
        }
    }
}

#[pymethods]
impl PyFileAppender {
    #[new]
    fn new() -> PyResult<Self> {
        let handoff = handoff::Handoff::start("tidegate-lp-files", append_job)?;
        Ok(Self {
            inner: std::sync::Mutex::new(Some(handoff)),
        })
    }

    /// The descriptor to watch (readable) for `completed` outcomes.
    fn wakeup_fd(&self) -> PyResult<i32> {
        self.with(handoff::Handoff::fd)
    }

    fn submit(
        &self,
        waiter: Py<PyAny>,
        path: std::path::PathBuf,
        data: PyBackedBytes,
    ) -> PyResult<()> {
        let job = AppendJob { waiter, path, data };
        self.with(|handoff| handoff.submit(job))
    }

    /// Outcomes of submitted appends since the last call: `(waiter, None or the OSError)`.
    #[allow(clippy::type_complexity)]
    fn completed(&self, py: Python<'_>) -> PyResult<Vec<(Py<PyAny>, Option<Py<PyAny>>)>> {
        let appended = self.with(handoff::Handoff::take_done)?;
        Ok(appended
            .into_iter()
            .map(|(waiter, _data, path, outcome)| {
                let error = outcome
                    .err()
                    .map(|e| os_error(py, &e, &path).into_value(py).into_any());
                (waiter, error)
            })
            .collect())
    }

    fn close(&self, py: Python<'_>) {
        let handoff = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        // The thread may be inside an append: wait for it without holding the GIL.
        py.detach(|| drop(handoff));
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
    let shelly_codes = ShellyReason::ALL.map(ShellyReason::code);
    m.add("SHELLY_REASONS", PyTuple::new(m.py(), shelly_codes)?)?;
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
    m.add(
        "DEFAULT_MAX_FIELDS_PER_TENANT",
        fields::DEFAULT_MAX_FIELDS_PER_TENANT,
    )?;
    m.add("MSG_TYPES", PyTuple::new(m.py(), schema::MSG_TYPES)?)?;
    m.add("MAX_LP_TAGS", lineproto::MAX_LP_TAGS)?;
    m.add("MAX_LP_FIELDS", lineproto::MAX_LP_FIELDS)?;
    m.add("MAX_LP_LINES", lineproto::MAX_LP_LINES)?;
    let body_error = m.py().get_type::<BodyError>();
    // Declared on the class too, as the stub does; each raised instance sets its own.
    body_error.setattr("detail", "")?;
    m.add("BodyError", body_error)?;
    for (name, class) in [
        ("WalFull", m.py().get_type::<WalFull>()),
        ("WalUnavailable", m.py().get_type::<WalUnavailable>()),
    ] {
        class.setattr("detail", "")?;
        m.add(name, class)?;
    }
    m.add_class::<PyBatch>()?;
    m.add_class::<PyAdmission>()?;
    m.add_class::<PyTenantBuffers>()?;
    m.add_class::<PyShellyBatch>()?;
    m.add_class::<PyWal>()?;
    m.add_class::<PyFieldTypes>()?;
    // What a panic in the core raises (a BaseException): the shell catches it by this name.
    m.add(
        "PanicException",
        m.py().get_type::<pyo3::panic::PanicException>(),
    )?;
    // The shell logs a panic once, with its message; the default hook would also print it to
    // stderr, outside the JSON log. This library's own hook: other extensions keep theirs.
    std::panic::set_hook(Box::new(|_| {}));
    // setattr, not add_function: that would list it in `__all__`, with the API.
    #[cfg(feature = "test-panic")]
    m.setattr("_test_panic", wrap_pyfunction!(_test_panic, m)?)?;
    m.add_class::<PyLatest>()?;
    m.add_class::<PyFileAppender>()?;
    m.add_function(wrap_pyfunction!(append_file, m)?)?;
    m.add_function(wrap_pyfunction!(parse_batch, m)?)?;
    m.add_function(wrap_pyfunction!(parse_single, m)?)?;
    m.add_function(wrap_pyfunction!(parse_shelly, m)?)?;
    m.add_function(wrap_pyfunction!(parse_lines, m)?)?;
    m.add_function(wrap_pyfunction!(line_devices, m)?)?;
    m.add_function(wrap_pyfunction!(valid_tenant, m)?)?;
    m.add_function(wrap_pyfunction!(valid_id, m)?)?;
    m.add_function(wrap_pyfunction!(reason_detail, m)?)?;
    Ok(())
}
