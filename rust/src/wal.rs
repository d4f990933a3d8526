//! Write-ahead log: a request's accepted lines are on disk before its 202.
//!
//! Segments `NNNNNNNNNNNNNNNNNNNN.wal` in one directory, each an 8-byte header then records:
//!
//! ```text
//! magic u32 | len u32 | crc32c u32 (of len and body) | body: mark u64, tenant_len u16, tenant,
//! line_count u32, lines
//! ```
//! (little-endian). An append (`submit`) only queues its records; one writer thread writes
//! everything queued while its previous write ran in one `write` and (sync `Always`) one
//! `fdatasync`, stores the lines and reports every append it covered through `completed` and
//! one byte on the wakeup socket (group commit, no sleep, no thread waiting per append).
//!
//! Each record carries the delivery mark its lines hold in the buffers. A segment is deleted
//! once none of its marks is open in the buffers (all its lines written or dead-lettered), after
//! the checkpoint file (the buffers' delivered-through, fsynced and renamed into place) is
//! written; a restart replays only records above the checkpoint. Past half the cap, the open
//! records of the oldest held segment are copied forward and it is deleted, so one tenant whose
//! database is down holds only its own records, not everyone's segments. Replay puts every record above the checkpoint back into the
//! buffers with its mark. A torn tail of the newest segment is truncated; a bad record
//! elsewhere is skipped and counted, found again by its magic; a segment with a bad header is
//! renamed `.broken`. A failed `fdatasync` is never retried: the log fails every waiter and
//! refuses appends until restart.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::batch::Batch;
use crate::buffer::{Reservation, TenantBuffers, TenantLines};
use crate::errors::UsageError;

const SEGMENT_MAGIC: &[u8; 8] = b"TGWAL01\n";
const RECORD_MAGIC: [u8; 4] = *b"TGr1";
const RECORD_HEADER: usize = 12;
/// mark + tenant length + line count.
const BODY_FIXED: usize = 8 + 2 + 4;
const CHECKPOINT: &str = "checkpoint";
/// How often the delivered-through checkpoint is written (when it moved).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// When an append completes: after its records are fsynced, or after `write` (fsynced by a
/// background thread every interval: survives a process crash, not a power cut).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    Always,
    Interval(Duration),
}

#[derive(Debug, Clone)]
pub struct WalConfig {
    pub dir: PathBuf,
    pub sync: SyncMode,
    /// Cap on the bytes of all segments; an append beyond it is refused.
    pub max_bytes: u64,
    /// A segment is closed and a new one started once it holds this many bytes.
    pub segment_bytes: u64,
}

/// Why an append failed. After `Full` and `Io` the log is usable; after `Failed` it is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalError {
    Full { max_bytes: u64 },
    Io(String),
    Failed(String),
    Usage(UsageError),
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full { max_bytes } => {
                write!(f, "write-ahead log is at its cap of {max_bytes} bytes")
            }
            Self::Io(e) => write!(f, "write-ahead log write failed: {e}"),
            Self::Failed(e) => write!(f, "write-ahead log failed (restart needed): {e}"),
            Self::Usage(e) => e.fmt(f),
        }
    }
}

impl From<UsageError> for WalError {
    fn from(e: UsageError) -> Self {
        WalError::Usage(e)
    }
}

fn describe(context: &str, path: &Path, e: &io::Error) -> String {
    format!("{context} {}: {e}", path.display())
}

/// What start-up found in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub segments: usize,
    pub records: usize,
    pub lines: usize,
    /// Records at or below the checkpoint: delivered before the restart, not replayed.
    pub skipped_delivered: usize,
    pub corrupt_records: usize,
    pub truncated_bytes: u64,
    pub quarantined_files: usize,
    /// One line per problem found, for the log.
    pub problems: Vec<String>,
}

impl ReplayStats {
    /// The counters by name.
    pub fn counters(&self) -> [(&'static str, u64); 7] {
        [
            ("segments", self.segments as u64),
            ("records", self.records as u64),
            ("lines", self.lines as u64),
            ("skipped_delivered", self.skipped_delivered as u64),
            ("corrupt_records", self.corrupt_records as u64),
            ("truncated_bytes", self.truncated_bytes),
            ("quarantined_files", self.quarantined_files as u64),
        ]
    }
}

/// Counters of a running log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalStats {
    pub bytes: u64,
    pub segments: usize,
    pub fsyncs: u64,
    /// Records whose write was covered by an fsync (in `Interval` mode, by the periodic one).
    pub synced_records: u64,
    pub appended_records: u64,
    pub groups: u64,
    pub checkpoints: u64,
    pub deleted_segments: u64,
    /// Open records re-logged to free an old segment.
    pub compacted_records: u64,
    pub failed: Option<String>,
}

impl WalStats {
    /// The counters by name (not `failed`).
    pub fn counters(&self) -> [(&'static str, u64); 9] {
        [
            ("bytes", self.bytes),
            ("segments", self.segments as u64),
            ("fsyncs", self.fsyncs),
            ("synced_records", self.synced_records),
            ("appended_records", self.appended_records),
            ("groups", self.groups),
            ("checkpoints", self.checkpoints),
            ("deleted_segments", self.deleted_segments),
            ("compacted_records", self.compacted_records),
        ]
    }
}

/// One record read back from a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub mark: u64,
    pub tenant: String,
    pub lines: Vec<u8>,
    pub line_count: usize,
}

/// Appends one record to `out`; `tenant` is at most `u16::MAX` bytes (valid ids are short).
pub fn encode_record(out: &mut Vec<u8>, mark: u64, tenant: &str, lines: &[u8], line_count: usize) {
    let tenant = tenant.as_bytes();
    let len = (BODY_FIXED + tenant.len() + lines.len()) as u32;
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&mark.to_le_bytes());
    out.extend_from_slice(&(tenant.len() as u16).to_le_bytes());
    out.extend_from_slice(tenant);
    out.extend_from_slice(&(line_count as u32).to_le_bytes());
    out.extend_from_slice(lines);
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&out[start + 4..start + 8]),
        &out[start + 12..],
    );
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().expect("4 bytes"))
}

/// The record at the start of `data` and its encoded length, if it is whole and intact.
fn decode_record(data: &[u8]) -> Option<(Record, usize)> {
    if data.len() < RECORD_HEADER || data[..4] != RECORD_MAGIC {
        return None;
    }
    let len = le_u32(&data[4..8]) as usize;
    let end = RECORD_HEADER.checked_add(len)?;
    if len < BODY_FIXED || end > data.len() {
        return None;
    }
    let body = &data[RECORD_HEADER..end];
    if crc32c::crc32c_append(crc32c::crc32c(&data[4..8]), body) != le_u32(&data[8..12]) {
        return None;
    }
    let mark = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
    let tlen = u16::from_le_bytes(body[8..10].try_into().expect("2 bytes")) as usize;
    let rest = body.get(10 + tlen..)?;
    let tenant = std::str::from_utf8(&body[10..10 + tlen]).ok()?.to_owned();
    let line_count = le_u32(rest.get(..4)?) as usize;
    let lines = &rest[4..];
    // The CRC matched, so these hold unless a writer had a bug: then the record is corrupt.
    if line_count == 0
        || !lines.ends_with(b"\n")
        || memchr::memchr_iter(b'\n', lines).count() != line_count
    {
        return None;
    }
    let record = Record {
        mark,
        tenant,
        lines: lines.to_vec(),
        line_count,
    };
    Some((record, end))
}

/// A segment's records, the corrupt stretches skipped, and where its intact part ends.
#[derive(Debug, Default)]
struct Scan {
    records: Vec<Record>,
    /// Bad stretches followed by an intact record.
    corrupt: usize,
    /// Offset after the last intact record; bytes past it are a torn or bad tail.
    end: usize,
}

fn scan_segment(data: &[u8]) -> Scan {
    let mut scan = Scan::default();
    let mut pos = SEGMENT_MAGIC.len();
    scan.end = pos;
    while pos < data.len() {
        if let Some((record, n)) = decode_record(&data[pos..]) {
            scan.records.push(record);
            pos += n;
            scan.end = pos;
            continue;
        }
        // Find the next intact record: a false magic inside the data also needs a CRC match.
        let next = memchr::memmem::find_iter(&data[pos + 1..], &RECORD_MAGIC)
            .map(|at| pos + 1 + at)
            .find(|&at| decode_record(&data[at..]).is_some());
        match next {
            Some(at) => {
                scan.corrupt += 1;
                pos = at;
            }
            None => break,
        }
    }
    scan
}

fn segment_name(id: u64) -> String {
    format!("{id:020}.wal")
}

fn segment_id(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What the checkpoint file holds: every mark up to `delivered_through` is delivered, and no
/// mark above `last_mark` was given (so marks keep increasing across restarts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Checkpoint {
    delivered_through: u64,
    last_mark: u64,
}

fn read_checkpoint(dir: &Path) -> Result<Checkpoint, String> {
    let path = dir.join(CHECKPOINT);
    let data = match fs::read(&path) {
        Ok(data) => data,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Checkpoint::default()),
        Err(e) => return Err(describe("cannot read", &path, &e)),
    };
    if data.len() != 20 || crc32c::crc32c(&data[..16]) != le_u32(&data[16..]) {
        return Err(format!(
            "{} is damaged; replaying every record",
            path.display()
        ));
    }
    let word = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"));
    Ok(Checkpoint {
        delivered_through: word(0),
        last_mark: word(8),
    })
}

/// Writes the checkpoint durably: temp file, fsync, rename, fsync of the directory.
fn write_checkpoint(dir: &Path, checkpoint: Checkpoint) -> io::Result<()> {
    let tmp = dir.join("checkpoint.tmp");
    let mut data = checkpoint.delivered_through.to_le_bytes().to_vec();
    data.extend_from_slice(&checkpoint.last_mark.to_le_bytes());
    data.extend_from_slice(&crc32c::crc32c(&data).to_le_bytes());
    let mut f = File::create(&tmp)?;
    f.write_all(&data)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(CHECKPOINT))?;
    sync_dir(dir)
}

struct Segment {
    id: u64,
    bytes: u64,
    /// The marks of its records (`u64::MAX..=0` while it has none).
    marks: Marks,
}

/// The smallest and largest of some marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Marks {
    low: u64,
    high: u64,
}

impl Marks {
    const NONE: Marks = Marks {
        low: u64::MAX,
        high: 0,
    };

    fn add(&mut self, other: Marks) {
        self.low = self.low.min(other.low);
        self.high = self.high.max(other.high);
    }

    fn of(mark: u64) -> Marks {
        Marks {
            low: mark,
            high: mark,
        }
    }
}

impl Default for Marks {
    fn default() -> Self {
        Marks::NONE
    }
}

impl Segment {
    /// Bytes of its records: what counts against the cap (the header does not).
    fn records_bytes(&self) -> u64 {
        self.bytes - SEGMENT_MAGIC.len() as u64
    }
}

/// The files: only the leader writes, the maintenance thread syncs and deletes.
struct Files {
    dir: PathBuf,
    /// The segment being appended to, open for appending; always `segments.back()`.
    current: Option<File>,
    segments: VecDeque<Segment>,
    next_id: u64,
    /// The next segment, created ahead by the maintenance thread so that a rotation costs the
    /// writer no fsync.
    spare: Option<(u64, File)>,
    /// Interval mode: full segments written since the last fsync.
    closed_unsynced: Vec<File>,
    /// Records written since the last fsync (Interval mode).
    unsynced_records: u64,
}

/// Creates segment `id` with its header, durably (file and directory fsynced).
fn create_segment(dir: &Path, id: u64) -> io::Result<File> {
    let path = dir.join(segment_name(id));
    let mut f = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)?;
    let created = f
        .write_all(SEGMENT_MAGIC)
        .and_then(|()| f.sync_all())
        .and_then(|()| sync_dir(dir));
    if let Err(e) = created {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(f)
}

impl Files {
    /// Whether `file` is still segment `id` in the directory (not unlinked, the directory not
    /// replaced): records written to an unlinked file would be lost at the next restart.
    fn is_linked(&self, id: u64, file: &File) -> bool {
        use std::os::unix::fs::MetadataExt;
        let path = self.dir.join(segment_name(id));
        match (file.metadata(), fs::metadata(path)) {
            (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
            _ => false,
        }
    }

    /// Starts appending to a new segment: the spare if it is newer than every segment, else
    /// one created now.
    fn next_segment(&mut self) -> io::Result<()> {
        let newest = self.segments.back().map(|s| s.id);
        let (id, file) = match self.spare.take() {
            Some((id, file)) if newest.is_none_or(|n| id > n) && self.is_linked(id, &file) => {
                (id, file)
            }
            stale => {
                if let Some((id, _)) = stale {
                    let _ = fs::remove_file(self.dir.join(segment_name(id)));
                }
                let id = self.next_id;
                self.next_id += 1;
                (id, create_segment(&self.dir, id)?)
            }
        };
        self.current = Some(file);
        self.segments.push_back(Segment {
            id,
            bytes: SEGMENT_MAGIC.len() as u64,
            marks: Marks::NONE,
        });
        Ok(())
    }
}

/// What is done once a queued append's records are written: store its reserved lines, and
/// report to the completion list (`notify`: a submitted append) or to the waiting thread (a
/// compaction's copy).
struct Entry {
    ticket: u64,
    store: Option<(Reservation, Vec<TenantLines>)>,
    notify: bool,
}

/// A queued group: the records of every append waiting for the next write.
#[derive(Default)]
struct Queue {
    data: Vec<u8>,
    records: u64,
    marks: Marks,
    entries: Vec<Entry>,
}

/// An append's outcome: the tenants now at a flush threshold, or why it failed.
pub type Outcome = Result<Vec<String>, WalError>;

struct State {
    queue: Queue,
    next_ticket: u64,
    /// Outcomes of compaction copies the maintenance thread waits for.
    results: HashMap<u64, Outcome>,
    /// Outcomes of `submit`ted appends, until `completed` takes them.
    completed: Vec<(u64, Outcome)>,
    failed: Option<String>,
    /// Bytes of all segments plus the queue, against `max_bytes`.
    bytes: u64,
    stats: WalStats,
    closing: bool,
}

struct Shared {
    cfg: WalConfig,
    state: Mutex<State>,
    /// The writer thread waits here for a queued group.
    queued: Condvar,
    /// Notified after every group: the maintenance thread waits here for a compaction copy.
    done: Condvar,
    /// The maintenance thread, woken to stop or to create a spare segment.
    maintenance: Condvar,
    files: Mutex<Files>,
    buffers: Arc<TenantBuffers>,
    /// The delivered-through last written to the checkpoint file.
    checkpointed: Mutex<u64>,
    /// Written to (one byte) when `completed` has outcomes: an event loop polls the other end.
    wakeup: UnixStream,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks leaves them consistent (a panic mid-write of a group
    // fails the group via `finished`), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The log of one gateway: append under group commit, replay at open, delete once delivered.
pub struct Wal {
    shared: Arc<Shared>,
    replay: ReplayStats,
    /// The writer and the maintenance thread, until closed.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The end of the wakeup socket an event loop reads.
    wakeup: UnixStream,
}

impl Wal {
    /// Opens the log in `cfg.dir` (created if missing), replays every undelivered record into
    /// `buffers` (ignoring their caps: those lines were accepted under them) with its mark, and
    /// starts the maintenance thread (interval fsync, checkpoint, segment deletion).
    pub fn open(cfg: WalConfig, buffers: Arc<TenantBuffers>) -> Result<Wal, WalError> {
        fs::create_dir_all(&cfg.dir)
            .map_err(|e| WalError::Io(describe("cannot create", &cfg.dir, &e)))?;
        let mut replay = ReplayStats::default();
        let checkpoint = read_checkpoint(&cfg.dir).unwrap_or_else(|problem| {
            replay.problems.push(problem);
            Checkpoint::default()
        });
        let (segments, records, max_mark) =
            Self::read_segments(&cfg.dir, checkpoint.delivered_through, &mut replay)?;
        for record in &records {
            buffers.append_lines(
                &record.tenant,
                &record.lines,
                record.line_count,
                record.mark,
                true,
            )?;
            replay.records += 1;
            replay.lines += record.line_count;
        }
        buffers.raise_last_mark(max_mark.max(checkpoint.last_mark));
        let bytes = segments.iter().map(Segment::records_bytes).sum();
        let next_id = segments.back().map_or(1, |s| s.id + 1);
        let (wakeup, wakeup_writer) =
            UnixStream::pair().map_err(|e| WalError::Io(format!("cannot make a socket: {e}")))?;
        for end in [&wakeup, &wakeup_writer] {
            end.set_nonblocking(true)
                .map_err(|e| WalError::Io(format!("cannot make a socket non-blocking: {e}")))?;
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: Queue::default(),
                next_ticket: 1,
                results: HashMap::new(),
                completed: Vec::new(),
                failed: None,
                bytes,
                stats: WalStats::default(),
                closing: false,
            }),
            queued: Condvar::new(),
            done: Condvar::new(),
            maintenance: Condvar::new(),
            files: Mutex::new(Files {
                dir: cfg.dir.clone(),
                current: None,
                segments,
                next_id,
                spare: None,
                closed_unsynced: Vec::new(),
                unsynced_records: 0,
            }),
            buffers,
            checkpointed: Mutex::new(checkpoint.delivered_through),
            wakeup: wakeup_writer,
            cfg,
        });
        let mut threads = Vec::new();
        for (name, job) in [("tidegate-wal-writer", 0), ("tidegate-wal", 1)] {
            let worker = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || {
                    if job == 0 {
                        worker.write_groups()
                    } else {
                        worker.maintain()
                    }
                });
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    Self::join(&shared, threads);
                    return Err(WalError::Io(format!("cannot start {name}: {e}")));
                }
            }
        }
        Ok(Wal {
            shared,
            replay,
            threads: Mutex::new(threads),
            wakeup,
        })
    }

    /// Stops the threads (the writer after writing what is queued) and waits for them.
    fn join(shared: &Shared, threads: Vec<JoinHandle<()>>) {
        lock(&shared.state).closing = true;
        shared.queued.notify_all();
        shared.maintenance.notify_all();
        for handle in threads {
            let _ = handle.join();
        }
    }

    /// Reads every segment: the records above `checkpoint` sorted by mark (the order the
    /// buffers need), the segments kept, and the largest mark seen.
    fn read_segments(
        dir: &Path,
        checkpoint: u64,
        replay: &mut ReplayStats,
    ) -> Result<(VecDeque<Segment>, Vec<Record>, u64), WalError> {
        let listing =
            fs::read_dir(dir).map_err(|e| WalError::Io(describe("cannot list", dir, &e)))?;
        let mut ids: Vec<u64> = listing
            .filter_map(|entry| entry.ok()?.file_name().to_str().and_then(segment_id))
            .collect();
        ids.sort_unstable();
        let mut segments = VecDeque::new();
        let mut records = Vec::new();
        let mut max_mark = 0;
        let mut seen = std::collections::HashSet::new();
        // The segment written last: the newest one holding more than a header (a spare
        // segment created ahead may follow it, empty).
        let header = SEGMENT_MAGIC.len() as u64;
        let newest = ids
            .iter()
            .rev()
            .find(|&&id| fs::metadata(dir.join(segment_name(id))).is_ok_and(|m| m.len() > header))
            .or(ids.last())
            .copied();
        for id in ids {
            let path = dir.join(segment_name(id));
            let data = match fs::read(&path) {
                Ok(data) if data.starts_with(SEGMENT_MAGIC) => data,
                Ok(data) if Some(id) == newest && data.len() < SEGMENT_MAGIC.len() => {
                    // Torn before its header was whole: it holds nothing.
                    replay.truncated_bytes += data.len() as u64;
                    replay
                        .problems
                        .push(format!("{}: torn header, removed", path.display()));
                    fs::remove_file(&path)
                        .map_err(|e| WalError::Io(describe("cannot remove", &path, &e)))?;
                    continue;
                }
                outcome => {
                    let why = match outcome {
                        Ok(_) => "not a tidegate WAL segment".to_owned(),
                        Err(e) => e.to_string(),
                    };
                    let broken = path.with_extension("wal.broken");
                    fs::rename(&path, &broken)
                        .map_err(|e| WalError::Io(describe("cannot quarantine", &path, &e)))?;
                    replay.quarantined_files += 1;
                    replay.problems.push(format!(
                        "{}: {why}; quarantined as {}",
                        path.display(),
                        broken.display()
                    ));
                    continue;
                }
            };
            let scan = scan_segment(&data);
            replay.segments += 1;
            if scan.corrupt > 0 {
                replay.corrupt_records += scan.corrupt;
                replay.problems.push(format!(
                    "{}: {} corrupt record(s) skipped",
                    path.display(),
                    scan.corrupt
                ));
            }
            if scan.end < data.len() {
                let tail = (data.len() - scan.end) as u64;
                if Some(id) == newest {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.set_len(scan.end as u64).and_then(|()| f.sync_all()));
                    f.map_err(|e| WalError::Io(describe("cannot truncate", &path, &e)))?;
                    replay.truncated_bytes += tail;
                    replay.problems.push(format!(
                        "{}: torn tail of {tail} bytes truncated",
                        path.display()
                    ));
                } else {
                    replay.corrupt_records += 1;
                    replay.problems.push(format!(
                        "{}: {tail} unreadable bytes at the end skipped",
                        path.display()
                    ));
                }
            }
            let mut marks = Marks::NONE;
            for record in scan.records {
                marks.add(Marks::of(record.mark));
                // A record copied forward by compaction exists twice until its old segment
                // is deleted: one record per mark and tenant.
                if record.mark <= checkpoint {
                    replay.skipped_delivered += 1;
                } else if seen.insert((record.mark, record.tenant.clone())) {
                    records.push(record);
                }
            }
            max_mark = max_mark.max(marks.high);
            segments.push_back(Segment {
                id,
                bytes: scan.end as u64,
                marks,
            });
        }
        records.sort_by_key(|r| r.mark);
        Ok((segments, records, max_mark))
    }

    /// What start-up found.
    pub fn replay_stats(&self) -> &ReplayStats {
        &self.replay
    }

    pub fn buffers(&self) -> &Arc<TenantBuffers> {
        &self.shared.buffers
    }

    /// Takes room for the batch's accepted lines in the buffers (items that do not fit become
    /// `BUFFER_FULL` and are not logged) and queues their records for the writer. Returns the
    /// queued append with its ticket, or None when there is nothing to log.
    fn queue_batch(&self, batch: &mut Batch) -> Result<Option<u64>, WalError> {
        let reservation = self.shared.buffers.reserve(batch)?;
        if reservation.is_empty() {
            return Ok(None);
        }
        let lines: Vec<TenantLines> = batch
            .tenant_lines()
            .into_iter()
            .map(|(t, l, n)| (t.to_owned(), l, n))
            .collect();
        self.shared.queue(reservation, lines).map(Some)
    }

    /// `queue_batch` for one tenant's encoded lines, all or nothing: `Ok(None)` when they do
    /// not fit the buffers (nothing logged).
    fn queue_lines(
        &self,
        tenant: &str,
        lines: &[u8],
        line_count: usize,
    ) -> Result<Option<u64>, WalError> {
        if tenant.len() > u16::MAX as usize {
            return Err(UsageError::TenantTooLong { len: tenant.len() }.into());
        }
        let Some(reservation) = self
            .shared
            .buffers
            .reserve_lines(tenant, lines, line_count)?
        else {
            return Ok(None);
        };
        let lines = vec![(tenant.to_owned(), lines.to_vec(), line_count)];
        self.shared.queue(reservation, lines).map(Some)
    }

    /// Queues the batch's accepted lines for logging: room is taken in the buffers first
    /// (items that do not fit become `BUFFER_FULL` and are not logged). Returns a ticket (0:
    /// nothing to log, already done) whose outcome `completed` reports once the group is
    /// written (and fsynced, sync `Always`) and its lines stored; one byte on `wakeup_fd` says
    /// so. On an error nothing is stored and the room is given back; errors found before
    /// queueing (the cap, a failed log) are returned at once.
    pub fn submit(&self, batch: &mut Batch) -> Result<u64, WalError> {
        Ok(self.queue_batch(batch)?.unwrap_or(0))
    }

    /// `submit` for one tenant's encoded lines, all or nothing: None when they do not fit the
    /// buffers (nothing logged).
    pub fn submit_lines(
        &self,
        tenant: &str,
        lines: &[u8],
        line_count: usize,
    ) -> Result<Option<u64>, WalError> {
        self.queue_lines(tenant, lines, line_count)
    }

    /// Outcomes of submitted appends since the last call; drains the wakeup socket.
    pub fn completed(&self) -> Vec<(u64, Outcome)> {
        let mut buf = [0u8; 256];
        while matches!((&self.wakeup).read(&mut buf), Ok(n) if n > 0) {}
        std::mem::take(&mut lock(&self.shared.state).completed)
    }

    /// The descriptor an event loop watches for `completed` outcomes.
    pub fn wakeup_fd(&self) -> i32 {
        self.wakeup.as_raw_fd()
    }

    /// Writes the checkpoint and deletes delivered segments now (also done every second).
    pub fn checkpoint(&self) -> Result<(), WalError> {
        self.shared.checkpoint()
    }

    pub fn stats(&self) -> WalStats {
        let mut stats = lock(&self.shared.state).stats.clone();
        let files = lock(&self.shared.files);
        stats.segments = files.segments.len();
        stats.bytes = files.segments.iter().map(|s| s.bytes).sum();
        stats
    }

    /// Why the log refuses appends until restart, if it does.
    pub fn failed(&self) -> Option<String> {
        lock(&self.shared.state).failed.clone()
    }

    /// Refuses further appends, lets the writer finish what is queued, stops the threads;
    /// true the first time.
    fn stop(&self) -> bool {
        let threads = std::mem::take(&mut *lock(&self.threads));
        let first = !threads.is_empty();
        Self::join(&self.shared, threads);
        first
    }

    /// Refuses further appends; a last fsync (interval mode) and checkpoint. Idempotent.
    pub fn close(&self) -> Result<(), WalError> {
        if !self.stop() {
            return Ok(());
        }
        self.shared.drop_spare();
        self.shared.sync_interval()?;
        self.shared.checkpoint()
    }

    /// Stops without a last fsync or checkpoint (tests: a crash).
    #[cfg(test)]
    fn abandon(self) {
        self.stop();
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl Shared {
    /// Queues one submitted append's records for the writer; its ticket.
    fn queue(&self, reservation: Reservation, lines: Vec<TenantLines>) -> Result<u64, WalError> {
        let mut records = Vec::with_capacity(lines.iter().map(|l| l.1.len() + 64).sum());
        for (tenant, data, n) in &lines {
            encode_record(&mut records, reservation.mark, tenant, data, *n);
        }
        let marks = Marks::of(reservation.mark);
        let count = lines.len() as u64;
        self.enqueue(
            records,
            count,
            marks,
            Some((reservation, lines)),
            true,
            false,
        )
        .map_err(|(e, store)| {
            if let Some((reservation, _)) = store {
                self.buffers.cancel(reservation);
            }
            e
        })
    }

    /// Adds records to the queued group; `force` skips the cap (compaction frees more than it
    /// writes). On refusal, the error and what was to be stored are handed back.
    #[allow(clippy::type_complexity)]
    fn enqueue(
        &self,
        records: Vec<u8>,
        count: u64,
        marks: Marks,
        store: Option<(Reservation, Vec<TenantLines>)>,
        notify: bool,
        force: bool,
    ) -> Result<u64, (WalError, Option<(Reservation, Vec<TenantLines>)>)> {
        let mut state = lock(&self.state);
        let refused = if let Some(why) = &state.failed {
            Some(WalError::Failed(why.clone()))
        } else if state.closing {
            Some(WalError::Io("the write-ahead log is closed".to_owned()))
        } else if !force && state.bytes + records.len() as u64 > self.cfg.max_bytes {
            Some(WalError::Full {
                max_bytes: self.cfg.max_bytes,
            })
        } else {
            None
        };
        if let Some(error) = refused {
            return Err((error, store));
        }
        state.bytes += records.len() as u64;
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        let queue = &mut state.queue;
        if queue.data.is_empty() {
            queue.data = records;
        } else {
            queue.data.extend_from_slice(&records);
        }
        queue.records += count;
        queue.marks.add(marks);
        queue.entries.push(Entry {
            ticket,
            store,
            notify,
        });
        drop(state);
        self.queued.notify_one();
        Ok(ticket)
    }

    /// Waits for the outcome of the compaction copy with `ticket`.
    fn wait(&self, ticket: u64) -> Outcome {
        let mut state = lock(&self.state);
        loop {
            if let Some(outcome) = state.results.remove(&ticket) {
                return outcome;
            }
            state = self.done.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The writer thread: each group queued while the previous one was written goes out in
    /// one write (and, sync `Always`, one fdatasync); then its lines are stored and its
    /// appends told. Ends when closing and nothing is queued.
    fn write_groups(&self) {
        loop {
            let mut state = lock(&self.state);
            while state.queue.entries.is_empty() && !state.closing {
                state = self.queued.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if state.queue.entries.is_empty() {
                return;
            }
            let queue = std::mem::take(&mut state.queue);
            let failed = state.failed.clone();
            drop(state);
            let result = match failed {
                Some(why) => Err(WalError::Failed(why)),
                None => self.write_group(&queue),
            };
            // Stored before anyone is told: a 202 follows both the fsync and the buffering.
            let mut outcomes = Vec::with_capacity(queue.entries.len());
            for entry in queue.entries {
                let outcome = match (&result, entry.store) {
                    (Ok(_), Some((reservation, lines))) => {
                        Ok(self.buffers.commit(reservation, &lines))
                    }
                    (Ok(_), None) => Ok(Vec::new()),
                    (Err(e), store) => {
                        if let Some((reservation, _)) = store {
                            self.buffers.cancel(reservation);
                        }
                        Err(e.clone())
                    }
                };
                outcomes.push((entry.ticket, entry.notify, outcome));
            }
            let mut state = lock(&self.state);
            match &result {
                Ok(synced) => {
                    state.stats.groups += 1;
                    state.stats.appended_records += queue.records;
                    if *synced {
                        state.stats.fsyncs += 1;
                        state.stats.synced_records += queue.records;
                    }
                }
                Err(error) => {
                    state.bytes -= queue.data.len() as u64;
                    if let WalError::Failed(why) = error {
                        state.failed = Some(why.clone());
                        state.stats.failed = Some(why.clone());
                    }
                }
            }
            let mut notify = false;
            for (ticket, to_list, outcome) in outcomes {
                if to_list {
                    state.completed.push((ticket, outcome));
                    notify = true;
                } else {
                    state.results.insert(ticket, outcome);
                }
            }
            drop(state);
            self.done.notify_all();
            if notify {
                // A full socket already holds an unread wakeup: nothing is lost.
                let _ = (&self.wakeup).write(&[1]);
            }
        }
    }

    /// Writes one group at the end of the current segment (a new one when full or none);
    /// returns whether it was fsynced.
    fn write_group(&self, queue: &Queue) -> Result<bool, WalError> {
        let mut files = lock(&self.files);
        let full = files
            .segments
            .back()
            .is_none_or(|s| s.bytes >= self.cfg.segment_bytes);
        if files.current.is_none() || full {
            if let Some(old) = files.current.take() {
                // Sync Always: every group in it is already fsynced. Interval: the maintenance
                // thread fsyncs it with the next interval.
                if matches!(self.cfg.sync, SyncMode::Interval(_)) {
                    files.closed_unsynced.push(old);
                }
            }
            self.maintenance.notify_all(); // to create the next spare
            files.next_segment().map_err(|e| {
                WalError::Io(format!(
                    "cannot start a segment in {}: {e}",
                    self.cfg.dir.display()
                ))
            })?;
        }
        let files = &mut *files;
        let file = files.current.as_mut().expect("a segment was just opened");
        let before = files.segments.back().map_or(0, |s| s.bytes);
        if let Err(e) = file.write_all(&queue.data) {
            // Cut the partial group off so the next one starts on a record boundary.
            return match file.set_len(before) {
                Ok(()) => Err(WalError::Io(e.to_string())),
                Err(cut) => Err(WalError::Failed(format!(
                    "{e}; truncating after it failed: {cut}"
                ))),
            };
        }
        let synced = match self.cfg.sync {
            SyncMode::Always => {
                if let Err(e) = file.sync_data() {
                    // Never retried: a failed fsync may have dropped pages that a second one
                    // would report as written. The log fails until restart.
                    return Err(WalError::Failed(format!("fdatasync: {e}")));
                }
                true
            }
            SyncMode::Interval(_) => {
                files.unsynced_records += queue.records;
                false
            }
        };
        let segment = files
            .segments
            .back_mut()
            .expect("the current segment is listed");
        segment.bytes += queue.data.len() as u64;
        segment.marks.add(queue.marks);
        Ok(synced)
    }

    /// Interval mode: fsyncs what was written since the last fsync (full segments, then the
    /// current one, through a duplicate handle so that appends go on meanwhile).
    fn sync_interval(&self) -> Result<(), WalError> {
        let (files, records) = {
            let mut files = lock(&self.files);
            if files.unsynced_records == 0 {
                return Ok(());
            }
            let mut todo = std::mem::take(&mut files.closed_unsynced);
            if let Some(current) = &files.current {
                let dup = current.try_clone().map_err(|e| {
                    WalError::Io(format!("cannot duplicate the segment handle: {e}"))
                })?;
                todo.push(dup);
            }
            (todo, std::mem::take(&mut files.unsynced_records))
        };
        let result = files.iter().try_for_each(File::sync_data);
        let mut state = lock(&self.state);
        match result {
            Ok(()) => {
                state.stats.fsyncs += 1;
                state.stats.synced_records += records;
                Ok(())
            }
            Err(e) => {
                let why = format!("fdatasync: {e}");
                state.failed = Some(why.clone());
                state.stats.failed = Some(why.clone());
                Err(WalError::Failed(why))
            }
        }
    }

    /// Creates the spare segment if there is none (outside the files lock: the writer goes on).
    fn prepare_spare(&self) {
        let id = {
            let mut files = lock(&self.files);
            if files.spare.is_some() {
                return;
            }
            files.next_id += 1;
            files.next_id - 1
        };
        // On failure the writer creates its segment itself, and reports the error.
        if let Ok(file) = create_segment(&self.cfg.dir, id) {
            lock(&self.files).spare = Some((id, file));
        }
    }

    /// Deletes the unused spare segment (at close).
    fn drop_spare(&self) {
        if let Some((id, _)) = lock(&self.files).spare.take() {
            let _ = fs::remove_file(self.cfg.dir.join(segment_name(id)));
        }
    }

    /// Writes the delivered-through checkpoint if it moved; then deletes every segment none
    /// of whose marks is still open (the current one too: the next append starts a new one),
    /// and, past half the cap, copies the open records of the oldest segment still held
    /// forward and deletes it, so a tenant whose database is down holds only its own records.
    fn checkpoint(&self) -> Result<(), WalError> {
        if lock(&self.state).failed.is_some() {
            // Nothing is written to a failed log; replay after restart sorts it out.
            return Ok(());
        }
        // Held throughout: one checkpoint at a time (the thread's, or an explicit call).
        let mut checkpointed = lock(&self.checkpointed);
        {
            // A current segment that is no longer in the directory is left: the next append
            // starts a new one, or fails if the directory is gone.
            let mut files = lock(&self.files);
            let current = files
                .segments
                .back()
                .map(|s| s.id)
                .zip(files.current.as_ref());
            if current.is_some_and(|(id, file)| !files.is_linked(id, file)) {
                files.current = None;
            }
        }
        let through = self.buffers.delivered_through();
        if through > *checkpointed {
            let last_mark = self.buffers.last_mark();
            let checkpoint = Checkpoint {
                delivered_through: through,
                last_mark,
            };
            write_checkpoint(&self.cfg.dir, checkpoint)
                .map_err(|e| WalError::Io(format!("cannot write the checkpoint: {e}")))?;
            *checkpointed = through;
            lock(&self.state).stats.checkpoints += 1;
        }
        let over_half = lock(&self.state).bytes > self.cfg.max_bytes / 2;
        let (deleted, held) = {
            let mut files = lock(&self.files);
            let files = &mut *files;
            let writing_to = files
                .current
                .as_ref()
                .and(files.segments.back().map(|s| s.id));
            let mut deleted = Vec::new();
            let mut held = None;
            let buffers = &self.buffers;
            files.segments.retain(|segment| {
                if !buffers.any_open(segment.marks.low, segment.marks.high) {
                    deleted.push((segment.id, segment.records_bytes()));
                    return false;
                }
                if held.is_none() && over_half && Some(segment.id) != writing_to {
                    held = Some(segment.id);
                }
                true
            });
            if writing_to.is_some() && files.segments.back().map(|s| s.id) != writing_to {
                files.current = None;
                files.unsynced_records = 0;
            }
            (deleted, held)
        };
        for (id, _) in &deleted {
            self.delete(*id)?;
        }
        let freed: u64 = deleted.iter().map(|(_, n)| n).sum();
        {
            let mut state = lock(&self.state);
            state.bytes -= freed;
            state.stats.deleted_segments += deleted.len() as u64;
        }
        match held {
            Some(id) => self.copy_forward(id),
            None => Ok(()),
        }
    }

    fn delete(&self, id: u64) -> Result<(), WalError> {
        let path = self.cfg.dir.join(segment_name(id));
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(WalError::Io(describe("cannot delete", &path, &e))),
        }
    }

    /// Re-logs the segment's records whose marks are open (fsynced like any append), then
    /// deletes it.
    fn copy_forward(&self, id: u64) -> Result<(), WalError> {
        let path = self.cfg.dir.join(segment_name(id));
        let data = fs::read(&path).map_err(|e| WalError::Io(describe("cannot read", &path, &e)))?;
        let mut out = Vec::new();
        let mut count = 0;
        let mut marks = Marks::NONE;
        for r in scan_segment(&data).records {
            if self.buffers.any_open(r.mark, r.mark) {
                encode_record(&mut out, r.mark, &r.tenant, &r.lines, r.line_count);
                count += 1;
                marks.add(Marks::of(r.mark));
            }
        }
        if count > 0 {
            let ticket = self
                .enqueue(out, count, marks, None, false, true)
                .map_err(|(e, _)| e)?;
            self.wait(ticket)?;
        }
        let bytes = {
            let mut files = lock(&self.files);
            let at = files.segments.iter().position(|s| s.id == id);
            at.and_then(|at| files.segments.remove(at))
                .map_or(0, |s| s.records_bytes())
        };
        self.delete(id)?;
        let mut state = lock(&self.state);
        state.bytes -= bytes;
        state.stats.deleted_segments += 1;
        state.stats.compacted_records += count;
        Ok(())
    }

    /// The maintenance thread: the spare segment, interval fsyncs, the checkpoint every second.
    fn maintain(&self) {
        let sync_every = match self.cfg.sync {
            SyncMode::Always => None,
            SyncMode::Interval(every) => Some(every),
        };
        let mut next_sync = sync_every.map(|every| Instant::now() + every);
        let mut next_checkpoint = Instant::now() + CHECKPOINT_EVERY;
        let mut state = lock(&self.state);
        while !state.closing {
            let due = next_sync.map_or(next_checkpoint, |s| s.min(next_checkpoint));
            let wait = due.saturating_duration_since(Instant::now());
            let (next, _) = self
                .maintenance
                .wait_timeout(state, wait)
                .unwrap_or_else(|e| e.into_inner());
            if next.closing {
                return;
            }
            drop(next);
            self.prepare_spare();
            let now = Instant::now();
            // Errors are kept in `failed` (fsync) or retried on the next tick (checkpoint).
            if let (Some(at), Some(every)) = (next_sync, sync_every) {
                if now >= at {
                    let _ = self.sync_interval();
                    next_sync = Some(now + every);
                }
            }
            if now >= next_checkpoint {
                let _ = self.checkpoint();
                next_checkpoint = now + CHECKPOINT_EVERY;
            }
            state = lock(&self.state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A fresh directory under the system temp dir, removed when dropped.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new() -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("tidegate-wal-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            TestDir(path)
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn config(dir: &Path, max_bytes: u64, segment_bytes: u64) -> WalConfig {
        WalConfig {
            dir: dir.to_path_buf(),
            sync: SyncMode::Always,
            max_bytes,
            segment_bytes,
        }
    }

    /// `config` of a 1 MiB log in interval mode.
    fn interval_config(dir: &Path, every: Duration) -> WalConfig {
        WalConfig {
            sync: SyncMode::Interval(every),
            ..config(dir, 1 << 20, 1 << 20)
        }
    }

    fn open(cfg: &WalConfig) -> Wal {
        let buffers = Arc::new(TenantBuffers::new(500, 1 << 20, 1 << 30, 1 << 30));
        Wal::open(cfg.clone(), buffers).expect("the log opens")
    }

    /// Every buffered line per tenant, left in place (drained and put back).
    fn contents(wal: &Wal) -> BTreeMap<String, Vec<String>> {
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

    fn deliver(wal: &Wal, tenant: &str) {
        let buffers = wal.buffers();
        while let Some((_, n)) = buffers
            .drain(tenant, usize::MAX)
            .expect("nothing in flight")
        {
            buffers.settle(tenant, n).expect("in flight");
        }
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(dir)
            .expect("dir exists")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            // Not the spare segment created ahead (a header only).
            .filter(|p| fs::metadata(p).is_ok_and(|m| m.len() > SEGMENT_MAGIC.len() as u64))
            .collect();
        found.sort();
        found
    }

    /// The next `n` outcomes `completed` reports, waiting for them as an event loop would (the
    /// writer notifies `done` after every group, as it writes the wakeup byte).
    fn completions(wal: &Wal, n: usize) -> Vec<(u64, Outcome)> {
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
    fn outcome(wal: &Wal, ticket: u64) -> Outcome {
        let mut done = completions(wal, 1);
        let (got, outcome) = done.pop().expect("one outcome");
        assert_eq!(got, ticket);
        outcome
    }

    /// Submits the lines and waits for them to be logged and stored: false when they do not
    /// fit the buffers.
    fn append_lines(wal: &Wal, tenant: &str, lines: &[u8], count: usize) -> Result<bool, WalError> {
        match wal.submit_lines(tenant, lines, count)? {
            Some(ticket) => outcome(wal, ticket).map(|_| true),
            None => Ok(false),
        }
    }

    /// Appends and returns the mark the lines got (tests append from one thread).
    fn mark_of(wal: &Wal, tenant: &str, lines: &[u8], count: usize) -> Result<u64, WalError> {
        assert!(
            append_lines(wal, tenant, lines, count)?,
            "the lines fit the buffers"
        );
        Ok(wal.buffers().last_mark())
    }

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn records_come_back_after_a_crash_with_their_marks() {
        let dir = TestDir::new();
        let cfg = config(&dir.0, 1 << 20, 1 << 20);
        let wal = open(&cfg);
        assert_eq!(mark_of(&wal, "a", b"a1\na2\n", 2), Ok(1));
        assert_eq!(mark_of(&wal, "b", b"b1\n", 1), Ok(2));
        assert_eq!(mark_of(&wal, "a", b"a3\n", 1), Ok(3));
        let stats = wal.stats();
        assert_eq!(
            (stats.appended_records, stats.fsyncs, stats.segments),
            (3, 3, 1)
        );
        wal.abandon();

        let wal = open(&cfg);
        let replay = wal.replay_stats().clone();
        assert_eq!(
            (replay.records, replay.lines, replay.corrupt_records),
            (3, 4, 0)
        );
        let found = contents(&wal);
        assert_eq!(found["a"], lines(&["a1", "a2", "a3"]));
        assert_eq!(found["b"], lines(&["b1"]));
        assert_eq!(mark_of(&wal, "b", b"b2\n", 1), Ok(4));
        deliver(&wal, "a");
        assert_eq!(wal.buffers().take_delivered(), [1, 3]);
    }

    #[test]
    fn delivered_records_are_not_replayed_and_their_segments_go() {
        let dir = TestDir::new();
        let cfg = config(&dir.0, 1 << 20, 20);
        let wal = open(&cfg);
        for (tenant, line) in [("a", "a1\n"), ("b", "b1\n"), ("a", "a2\n")] {
            assert!(append_lines(&wal, tenant, line.as_bytes(), 1).is_ok());
        }
        assert_eq!(segments(&dir.0).len(), 3);
        deliver(&wal, "a");
        assert_eq!(wal.checkpoint(), Ok(()));
        // Marks 1 and 3 (a) are delivered, mark 2 (b) is not: only b's segment stays.
        assert_eq!(segments(&dir.0).len(), 1);
        wal.abandon();

        let wal = open(&cfg);
        let expected = BTreeMap::from([("b".to_owned(), lines(&["b1"]))]);
        assert_eq!(contents(&wal), expected);
        assert_eq!(wal.replay_stats().skipped_delivered, 0);
        deliver(&wal, "b");
        assert_eq!(wal.checkpoint(), Ok(()));
        assert_eq!(segments(&dir.0), Vec::<PathBuf>::new());
        assert_eq!(wal.stats().bytes, 0);
        drop(wal);
        let wal = open(&cfg);
        assert_eq!(wal.replay_stats().records, 0);
        assert_eq!(mark_of(&wal, "c", b"c1\n", 1), Ok(4));
    }

    #[test]
    fn an_undelivered_tenant_holds_only_its_own_records() {
        let dir = TestDir::new();
        let cfg = config(&dir.0, 1000, 200);
        let wal = open(&cfg);
        let mut stuck = Vec::new();
        for i in 0..60 {
            if i % 5 == 0 {
                stuck.push(format!("a{i}"));
                let line = format!("a{i}\n");
                assert!(matches!(
                    append_lines(&wal, "a", line.as_bytes(), 1),
                    Ok(true)
                ));
            }
            let line = format!("b{i}\n");
            assert!(matches!(
                append_lines(&wal, "b", line.as_bytes(), 1),
                Ok(true)
            ));
            deliver(&wal, "b");
            assert_eq!(wal.checkpoint(), Ok(()));
        }
        // Every segment held a record of a: past half the cap, a's records were copied
        // forward and the old segments went, so b never met the cap.
        let stats = wal.stats();
        assert!(stats.compacted_records > 0, "{stats:?}");
        assert!(stats.bytes <= 1000, "{stats:?}");
        assert_eq!(wal.buffers().delivered_through(), 0);
        wal.abandon();
        let wal = open(&cfg);
        let mut found = contents(&wal);
        assert_eq!(found.remove("a"), Some(stuck));
        // b's records in segments a still holds come back too (at least once: the
        // checkpoint cannot pass a's first mark); none from a deleted segment.
        let replayed_b = found.remove("b").unwrap_or_default();
        assert!(replayed_b.len() < 10, "{replayed_b:?}");
    }

    #[test]
    fn a_torn_tail_is_truncated_and_nothing_before_it_is_lost() {
        let dir = TestDir::new();
        let cfg = config(&dir.0, 1 << 20, 1 << 20);
        let wal = open(&cfg);
        assert!(append_lines(&wal, "a", b"a1\n", 1).is_ok());
        assert!(append_lines(&wal, "a", b"a2\n", 1).is_ok());
        wal.abandon();
        let mut torn = Vec::new();
        encode_record(&mut torn, 9, "a", b"never acked\n", 1);
        let path = segments(&dir.0).pop().expect("one segment");
        let whole = fs::metadata(&path).expect("exists").len();
        let mut f = OpenOptions::new().append(true).open(&path).expect("opens");
        f.write_all(&torn[..torn.len() - 3]).expect("writes");
        drop(f);

        let wal = open(&cfg);
        let replay = wal.replay_stats();
        assert_eq!((replay.records, replay.corrupt_records), (2, 0));
        assert_eq!(replay.truncated_bytes, torn.len() as u64 - 3);
        assert_eq!(fs::metadata(&path).expect("exists").len(), whole);
        assert_eq!(contents(&wal)["a"], lines(&["a1", "a2"]));
    }

    #[test]
    fn a_flipped_byte_skips_exactly_that_record() {
        let dir = TestDir::new();
        let cfg = config(&dir.0, 1 << 20, 1 << 20);
        let wal = open(&cfg);
        for line in ["a1\n", "a2\n", "a3\n"] {
            assert!(append_lines(&wal, "a", line.as_bytes(), 1).is_ok());
        }
        wal.abandon();
        let path = segments(&dir.0).pop().expect("one segment");
        let mut data = fs::read(&path).expect("reads");
        let mut one = Vec::new();
        encode_record(&mut one, 1, "a", b"a1\n", 1);
        // A byte of the second record's length field: the record cannot even be measured.
        data[SEGMENT_MAGIC.len() + one.len() + 5] ^= 0x40;
        fs::write(&path, &data).expect("writes");

        let wal = open(&cfg);
        let replay = wal.replay_stats();
        assert_eq!(
            (
                replay.records,
                replay.corrupt_records,
                replay.truncated_bytes
            ),
            (2, 1, 0)
        );
        assert_eq!(contents(&wal)["a"], lines(&["a1", "a3"]));
    }

    #[test]
    fn a_segment_with_a_bad_header_is_quarantined() {
        let dir = TestDir::new();
        let cfg = config(&dir.0, 1 << 20, 1 << 20);
        fs::create_dir_all(&dir.0).expect("creates");
        fs::write(dir.0.join(segment_name(1)), b"garbage that is no segment").expect("writes");
        let wal = open(&cfg);
        assert_eq!(wal.replay_stats().quarantined_files, 1);
        assert!(dir.0.join("00000000000000000001.wal.broken").exists());
        assert_eq!(mark_of(&wal, "a", b"x\n", 1), Ok(1));
    }

    #[test]
    fn at_the_cap_an_append_is_refused_and_its_room_given_back() {
        let dir = TestDir::new();
        let mut one = Vec::new();
        encode_record(&mut one, 1, "a", b"a1\n", 1);
        let cfg = config(&dir.0, one.len() as u64 * 2, 1 << 20);
        let wal = open(&cfg);
        assert!(append_lines(&wal, "a", b"a1\n", 1).is_ok());
        assert!(append_lines(&wal, "a", b"a2\n", 1).is_ok());
        assert_eq!(
            append_lines(&wal, "a", b"a3\n", 1),
            Err(WalError::Full {
                max_bytes: one.len() as u64 * 2
            })
        );
        assert_eq!(wal.buffers().total_bytes(), 6);
        assert_eq!(wal.buffers().take_delivered(), [3]);
        deliver(&wal, "a");
        assert_eq!(wal.checkpoint(), Ok(()));
        assert_eq!(mark_of(&wal, "a", b"a3\n", 1), Ok(4));
    }

    #[test]
    fn a_batch_is_logged_before_it_is_buffered() {
        let dir = TestDir::new();
        let cfg = config(&dir.0, 1 << 20, 1 << 20);
        let wal = open(&cfg);
        let mut batch = Batch::with_capacity(3, 64);
        for (tenant, line) in [("a", "a1\n"), ("b", "b1\n"), ("a", "a2\n")] {
            let id = crate::batch::Identity {
                tenant,
                device: "d",
                site: "s",
                token: "k",
            };
            batch.push_accepted(&id, |out| out.extend_from_slice(line.as_bytes()));
        }
        let ticket = wal.submit(&mut batch).expect("queued");
        assert_eq!(outcome(&wal, ticket), Ok(vec![]));
        assert_eq!(wal.stats().appended_records, 2);
        wal.abandon();
        let wal = open(&cfg);
        let expected = BTreeMap::from([
            ("a".to_owned(), lines(&["a1", "a2"])),
            ("b".to_owned(), lines(&["b1"])),
        ]);
        assert_eq!(contents(&wal), expected);
        deliver(&wal, "a");
        assert_eq!(wal.buffers().delivered_through(), 0);
        deliver(&wal, "b");
        assert_eq!(wal.buffers().take_delivered(), [1]);
    }

    #[test]
    fn a_missing_directory_fails_appends_until_it_is_back() {
        let dir = TestDir::new();
        let cfg = config(&dir.0, 1 << 20, 1 << 20);
        let wal = open(&cfg);
        fs::remove_dir_all(&dir.0).expect("removes");
        match append_lines(&wal, "a", b"a1\n", 1) {
            Err(WalError::Io(why)) => assert!(why.contains("cannot start a segment"), "{why}"),
            other => panic!("expected an I/O error, got {other:?}"),
        }
        assert_eq!(wal.buffers().total_bytes(), 0);
        assert_eq!(wal.failed(), None);
        fs::create_dir_all(&dir.0).expect("creates");
        assert_eq!(mark_of(&wal, "a", b"a1\n", 1), Ok(2));
    }

    /// Points the log's current segment at /dev/null: writes succeed, fdatasync fails (EINVAL)
    /// as on a disk error, without root or a broken device. Hold the returned lock until the
    /// failure: it keeps the checkpoint from dropping the handle as unlinked meanwhile.
    fn sync_will_fail(wal: &Wal) -> MutexGuard<'_, u64> {
        let checkpointing = lock(&wal.shared.checkpointed);
        let null = OpenOptions::new().write(true).open("/dev/null");
        let mut files = lock(&wal.shared.files);
        assert!(files.current.is_some(), "a segment is being written");
        files.current = Some(null.expect("/dev/null opens"));
        checkpointing
    }

    const SYNC_FAILED: &str = "fdatasync: Invalid argument (os error 22)";

    #[test]
    fn a_failed_fdatasync_fails_its_appends_and_refuses_every_later_one_until_restart() {
        let dir = TestDir::new();
        let cfg = config(&dir.0, 1 << 20, 1 << 20);
        let wal = open(&cfg);
        assert_eq!(mark_of(&wal, "a", b"a1\n", 1), Ok(1));
        let checkpointing = sync_will_fail(&wal);
        let failed = WalError::Failed(SYNC_FAILED.to_owned());
        let ticket = wal.submit_lines("a", b"a2\n", 1).expect("queued");
        assert_eq!(outcome(&wal, ticket.expect("fits")), Err(failed.clone()));
        drop(checkpointing);
        // Nothing of it is buffered, and its room is given back.
        assert_eq!(contents(&wal)["a"], lines(&["a1"]));
        assert_eq!(wal.buffers().total_bytes(), 3);
        assert_eq!(wal.submit_lines("b", b"b1\n", 1), Err(failed));
        assert_eq!(wal.failed().as_deref(), Some(SYNC_FAILED));
        let stats = wal.stats();
        assert_eq!(stats.failed.as_deref(), Some(SYNC_FAILED));
        assert_eq!((stats.fsyncs, stats.appended_records), (1, 1));
        wal.abandon();

        let wal = open(&cfg);
        assert_eq!(wal.failed(), None);
        assert_eq!(contents(&wal)["a"], lines(&["a1"]));
        // Mark 2 reached no disk and no buffer: the restarted log hands it out again.
        assert_eq!(mark_of(&wal, "b", b"b1\n", 1), Ok(2));
    }

    #[test]
    fn a_failed_interval_fdatasync_refuses_every_later_append() {
        let dir = TestDir::new();
        // The test runs the interval fsync itself.
        let wal = open(&interval_config(&dir.0, Duration::from_secs(3600)));
        assert_eq!(mark_of(&wal, "a", b"a1\n", 1), Ok(1));
        let checkpointing = sync_will_fail(&wal);
        // Acknowledged once written: the fsync comes later.
        assert_eq!(mark_of(&wal, "a", b"a2\n", 1), Ok(2));
        let failed = WalError::Failed(SYNC_FAILED.to_owned());
        assert_eq!(wal.shared.sync_interval(), Err(failed.clone()));
        drop(checkpointing);
        assert_eq!(wal.failed().as_deref(), Some(SYNC_FAILED));
        assert_eq!(wal.submit_lines("a", b"a3\n", 1), Err(failed));
        assert_eq!(wal.buffers().total_bytes(), 6);
        assert_eq!(wal.stats().fsyncs, 0);
    }

    #[test]
    fn concurrent_appends_share_fsyncs_and_all_come_back() {
        let dir = TestDir::new();
        let cfg = config(&dir.0, 1 << 30, 1 << 16);
        let wal = open(&cfg);
        let tickets: BTreeSet<u64> = std::thread::scope(|s| {
            let submitters: Vec<_> = (0..8)
                .map(|t| {
                    let wal = &wal;
                    s.spawn(move || {
                        (0..200)
                            .map(|i| {
                                let line = format!("t{t} {i}\n");
                                let ticket = wal.submit_lines("a", line.as_bytes(), 1);
                                ticket.expect("queued").expect("fits the buffers")
                            })
                            .collect::<Vec<u64>>()
                    })
                })
                .collect();
            let done = completions(&wal, 1600);
            assert!(done.iter().all(|(_, outcome)| outcome.is_ok()));
            let tickets = submitters
                .into_iter()
                .flat_map(|h| h.join().expect("submits"));
            assert_eq!(
                done.iter().map(|(t, _)| *t).collect::<BTreeSet<u64>>(),
                tickets.collect()
            );
            done.into_iter().map(|(t, _)| t).collect()
        });
        assert_eq!(tickets.len(), 1600);
        let stats = wal.stats();
        assert_eq!(stats.appended_records, 1600);
        assert!(stats.fsyncs <= stats.groups && stats.groups <= 1600);
        wal.abandon();
        let wal = open(&cfg);
        assert_eq!(wal.replay_stats().lines, 1600);
        let mut all = contents(&wal).remove("a").expect("tenant a");
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 1600);
    }

    #[test]
    fn interval_mode_fsyncs_in_the_background() {
        let dir = TestDir::new();
        let wal = open(&interval_config(&dir.0, Duration::from_millis(10)));
        assert!(append_lines(&wal, "a", b"a1\n", 1).is_ok());
        let deadline = Instant::now() + Duration::from_secs(5);
        while wal.stats().fsyncs == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!((wal.stats().fsyncs, wal.stats().synced_records), (1, 1));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append {
            tenant: u8,
            lines: u8,
        },
        Deliver {
            tenant: u8,
        },
        Checkpoint,
        /// A crash, with the first `torn` bytes of an unacknowledged record at the tail.
        Crash {
            torn: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..3, 1u8..4).prop_map(|(tenant, lines)| Op::Append { tenant, lines }),
            2 => (0u8..3).prop_map(|tenant| Op::Deliver { tenant }),
            1 => Just(Op::Checkpoint),
            1 => (0usize..40).prop_map(|torn| Op::Crash { torn }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random appends, deliveries, checkpoints and crashes (a torn record at the tail):
        /// every acknowledged, undelivered line comes back exactly once, and nothing at or
        /// below a written checkpoint ever does.
        #[test]
        fn no_acknowledged_line_is_lost_and_no_checkpointed_one_returns(
            ops in proptest::collection::vec(op(), 1..60),
            segment_bytes in 30u64..400,
            max_bytes in 200u64..3000,
        ) {
            let dir = TestDir::new();
            let cfg = config(&dir.0, max_bytes, segment_bytes);
            let mut wal = open(&cfg);
            let mut next_line = 0u32;
            // Acknowledged line -> its mark; lines settled since.
            let mut acked: BTreeMap<String, u64> = BTreeMap::new();
            let mut delivered: BTreeSet<String> = BTreeSet::new();
            let mut checkpointed = 0u64;
            for op in ops {
                match op {
                    Op::Append { tenant, lines } => {
                        let text: Vec<String> = (0..lines)
                            .map(|_| {
                                next_line += 1;
                                format!("l{next_line}")
                            })
                            .collect();
                        let body = text.iter().map(|l| format!("{l}\n")).collect::<String>();
                        let tenant = format!("t{tenant}");
                        match append_lines(&wal, &tenant, body.as_bytes(), text.len()) {
                            Ok(true) => {
                                let mark = wal.buffers().last_mark();
                                for line in text {
                                    acked.insert(line, mark);
                                }
                            }
                            Err(WalError::Full { .. }) => {}
                            other => prop_assert!(false, "append: {:?}", other),
                        }
                    }
                    Op::Deliver { tenant } => {
                        let tenant = format!("t{tenant}");
                        let buffers = wal.buffers();
                        while let Some((body, n)) =
                            buffers.drain(&tenant, usize::MAX).expect("nothing in flight")
                        {
                            buffers.settle(&tenant, n).expect("in flight");
                            let body = String::from_utf8(body).expect("text");
                            delivered.extend(body.lines().map(str::to_owned));
                        }
                    }
                    Op::Checkpoint => {
                        let through = wal.buffers().delivered_through();
                        prop_assert_eq!(wal.checkpoint(), Ok(()));
                        checkpointed = checkpointed.max(through);
                    }
                    Op::Crash { torn } => {
                        wal.abandon();
                        if let Some(path) = segments(&dir.0).pop() {
                            let mut record = Vec::new();
                            encode_record(&mut record, u64::MAX, "t0", b"torn\n", 1);
                            let mut f = OpenOptions::new().append(true).open(&path).expect("opens");
                            f.write_all(&record[..torn.min(record.len() - 1)]).expect("writes");
                        }
                        wal = open(&cfg);
                        let replayed: Vec<String> =
                            contents(&wal).into_values().flatten().collect();
                        let unique: BTreeSet<&String> = replayed.iter().collect();
                        prop_assert_eq!(unique.len(), replayed.len(), "a line replayed twice");
                        for line in &replayed {
                            let mark = acked.get(line).copied();
                            prop_assert!(mark.is_some(), "{} was never acknowledged", line);
                            prop_assert!(mark > Some(checkpointed), "{} is checkpointed", line);
                        }
                        for (line, _) in acked.iter().filter(|(l, _)| !delivered.contains(*l)) {
                            prop_assert!(unique.contains(line), "{} was lost", line);
                        }
                        // Replayed lines are to be delivered again (at least once).
                        for line in &replayed {
                            delivered.remove(line);
                        }
                        prop_assert_eq!(wal.replay_stats().corrupt_records, 0);
                    }
                }
            }
            wal.abandon();
        }
    }
}
