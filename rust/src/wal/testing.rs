//! What the tests of the log share: a temp directory, a log over fresh buffers, and waiting
//! for outcomes as an event loop would.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use super::record::{scan_segment, Format};
use super::segment::segment_id;
use super::{lock, Outcome, SyncMode, Wal, WalConfig, WalError};
use crate::buffer::TenantBuffers;

/// A fresh directory under the system temp dir, removed when dropped.
pub(super) struct TestDir(pub(super) PathBuf);

impl TestDir {
    pub(super) fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("tidegate-wal-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        TestDir(path)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(super) fn config(dir: &Path, max_bytes: u64, segment_bytes: u64) -> WalConfig {
    WalConfig {
        dir: dir.to_path_buf(),
        sync: SyncMode::Always,
        max_bytes,
        segment_bytes,
    }
}

/// `config` of a 1 MiB log in interval mode.
pub(super) fn interval_config(dir: &Path, every: Duration) -> WalConfig {
    WalConfig {
        sync: SyncMode::Interval(every),
        ..config(dir, 1 << 20, 1 << 20)
    }
}

pub(super) fn open(cfg: &WalConfig) -> Wal {
    let buffers = Arc::new(TenantBuffers::new(500, 1 << 20, 1 << 30, 1 << 30));
    Wal::open(cfg.clone(), buffers).expect("the log opens")
}

/// Every buffered line per tenant, left in place (drained and put back).
pub(super) fn contents(wal: &Wal) -> BTreeMap<String, Vec<String>> {
    let buffers = wal.buffers();
    let mut out = BTreeMap::new();
    for tenant in buffers.tenants() {
        let (body, _) = buffers
            .drain(&tenant, usize::MAX)
            .expect("nothing in flight")
            .expect("listed tenants hold lines");
        buffers.put_back(&tenant).expect("just drained");
        let lines = String::from_utf8(body).expect("test lines are text");
        out.insert(tenant, lines.lines().map(str::to_owned).collect());
    }
    out
}

pub(super) fn deliver(wal: &Wal, tenant: &str) {
    let buffers = wal.buffers();
    while let Some((_, n)) = buffers
        .drain(tenant, usize::MAX)
        .expect("nothing in flight")
    {
        buffers.settle(tenant, n).expect("in flight");
    }
}

pub(super) fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .expect("dir exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        // Not the spare segments made ahead (fresh or recycled: no records of their own).
        .filter(|p| holds_records(p))
        .collect();
    found.sort();
    found
}

fn holds_records(path: &Path) -> bool {
    let id = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(segment_id);
    let data = fs::read(path).expect("reads");
    let format = id.and_then(|id| Format::of(&data, id));
    format.is_some_and(|format| !scan_segment(&data, format).records.is_empty())
}

/// The next `n` outcomes `completed` reports, waiting for them as an event loop would (the
/// writer notifies `done` after every group, as it writes the wakeup byte).
pub(super) fn completions(wal: &Wal, n: usize) -> Vec<(u64, Outcome)> {
    let mut out = Vec::new();
    while out.len() < n {
        {
            let mut state = lock(&wal.shared.state);
            while state.completed.is_empty() {
                state = wal.shared.done.wait(state).expect("not poisoned");
            }
        }
        out.extend(wal.completed());
    }
    assert_eq!(out.len(), n, "more outcomes than submitted appends");
    out
}

/// The outcome of the submitted append `ticket` (tests that submit from one thread).
pub(super) fn outcome(wal: &Wal, ticket: u64) -> Outcome {
    let mut done = completions(wal, 1);
    let (got, outcome) = done.pop().expect("one outcome");
    assert_eq!(got, ticket);
    outcome
}

/// Submits the lines and waits for them to be logged and stored: false when they do not
/// fit the buffers.
pub(super) fn append_lines(
    wal: &Wal,
    tenant: &str,
    lines: &[u8],
    count: usize,
) -> Result<bool, WalError> {
    match wal.submit_lines(tenant, lines, count)? {
        Some(ticket) => outcome(wal, ticket).map(|_| true),
        None => Ok(false),
    }
}

/// Appends and returns the mark the lines got (tests append from one thread).
pub(super) fn mark_of(
    wal: &Wal,
    tenant: &str,
    lines: &[u8],
    count: usize,
) -> Result<u64, WalError> {
    assert!(
        append_lines(wal, tenant, lines, count)?,
        "the lines fit the buffers"
    );
    Ok(wal.buffers().last_mark())
}

pub(super) fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Points the log's current segment at /dev/null: writes succeed, fdatasync fails (EINVAL)
/// as on a disk error, without root or a broken device. Hold the returned lock until the
/// failure: it keeps the checkpoint from dropping the handle as unlinked meanwhile.
pub(super) fn sync_will_fail(wal: &Wal) -> MutexGuard<'_, u64> {
    let checkpointing = lock(&wal.shared.checkpointed);
    let null = OpenOptions::new().write(true).open("/dev/null");
    let mut files = lock(&wal.shared.files);
    assert!(files.current.is_some(), "a segment is being written");
    files.current = Some(null.expect("/dev/null opens"));
    checkpointing
}

pub(super) const SYNC_FAILED: &str = "fdatasync: Invalid argument (os error 22)";
