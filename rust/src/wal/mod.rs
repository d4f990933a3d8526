//! Write-ahead log: a request's accepted lines are on disk before its 202.
//!
//! Segments `NNNNNNNNNNNNNNNNNNNN.wal` in one directory, each a header then records (format in
//! `record`). An append (`submit`) only queues its records; one writer thread writes
//! everything queued while its previous write ran in one `write` and (sync `Always`) one
//! `fdatasync`, stores the lines and reports every append it covered through `completed` and
//! one byte on the wakeup socket (group commit, no sleep, no thread waiting per append).
//!
//! Each record carries the delivery mark its lines hold in the buffers. A segment is retired
//! once none of its marks is open in the buffers (all its lines written or dead-lettered), after
//! the checkpoint file (the buffers' delivered-through, fsynced and renamed into place) is
//! written: its file is recycled as a later segment (renamed; its pages are still cached) or
//! deleted; a restart replays only records above the checkpoint. Past half the cap, the open
//! records of the oldest held segment are copied forward and it is retired, so one tenant whose
//! database is down holds only its own records, not everyone's segments. Replay puts every
//! record above the checkpoint back into the buffers with its mark. A torn tail of the newest
//! segment is truncated; a bad record elsewhere is skipped and counted, found again by its
//! magic; the records of a recycled file's earlier life end its segment; a segment with a bad
//! header is renamed `.broken`. A failed `fdatasync` is never retried: the log fails every
//! waiter and refuses appends until restart.
//!
//! By job: `record` is the bytes on disk, `segment` the files and their reading at start-up,
//! `writer` the writer thread, `maintain` the maintenance thread; this module the log's API.

mod maintain;
mod record;
mod segment;
#[cfg(test)]
mod testing;
mod writer;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::batch::Batch;
use crate::buffer::{Reservation, TenantBuffers};
use crate::errors::UsageError;
use crate::wakeup;
use record::{encode_batch, encode_lines, Gathered};
use segment::{read_checkpoint, read_segments, Checkpoint, Files, Segment};
use writer::{Queue, Shared, State};

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
    /// Delivered segments whose files were kept as later segments rather than deleted.
    pub recycled_segments: u64,
    /// Open records re-logged to free an old segment.
    pub compacted_records: u64,
    pub failed: Option<String>,
}

impl WalStats {
    /// The counters by name (not `failed`).
    pub fn counters(&self) -> [(&'static str, u64); 10] {
        [
            ("bytes", self.bytes),
            ("segments", self.segments as u64),
            ("fsyncs", self.fsyncs),
            ("synced_records", self.synced_records),
            ("appended_records", self.appended_records),
            ("groups", self.groups),
            ("checkpoints", self.checkpoints),
            ("deleted_segments", self.deleted_segments),
            ("recycled_segments", self.recycled_segments),
            ("compacted_records", self.compacted_records),
        ]
    }
}

/// An append's outcome: the tenants now at a flush threshold, or why it failed.
pub type Outcome = Result<Vec<String>, WalError>;

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
    wakeup: wakeup::LoopEnd,
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
            read_segments(&cfg.dir, checkpoint.delivered_through, &mut replay)?;
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
        let (wakeup, wakeup_writer) = wakeup::pair()
            .map_err(|e| WalError::Io(format!("cannot make a wakeup socket: {e}")))?;
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
                spares: VecDeque::new(),
                closed_unsynced: Vec::new(),
                dir_unsynced: false,
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
        let (reservation, groups) = self.shared.buffers.reserve(batch)?;
        if reservation.is_empty() {
            return Ok(None);
        }
        self.shared
            .queue(reservation, |out, mark| encode_batch(out, mark, &groups))
            .map(Some)
    }

    /// `queue_batch` for one tenant's encoded lines, all or nothing: `Ok(None)` when they do
    /// not fit the buffers (nothing logged).
    fn queue_lines(
        &self,
        tenant: &str,
        lines: &[u8],
        line_count: usize,
    ) -> Result<Option<u64>, WalError> {
        let Some(reservation) = self.reserve_lines(tenant, lines, line_count)? else {
            return Ok(None);
        };
        self.shared
            .queue(reservation, |out, mark| {
                encode_lines(out, mark, tenant, lines, line_count)
            })
            .map(Some)
    }

    /// Room in the buffers for one tenant's lines (None: they do not fit); a record holds
    /// tenant names of up to 64 KiB.
    fn reserve_lines(
        &self,
        tenant: &str,
        lines: &[u8],
        line_count: usize,
    ) -> Result<Option<Reservation>, WalError> {
        if tenant.len() > u16::MAX as usize {
            return Err(UsageError::TenantTooLong { len: tenant.len() }.into());
        }
        Ok(self
            .shared
            .buffers
            .reserve_lines(tenant, lines, line_count)?)
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

    /// Sync `Interval` only: `submit` done at once in the calling thread, without the writer
    /// thread, `completed` or the wakeup: the batch's accepted lines are written to the log and
    /// stored; returns the tenants now at a flush threshold. On an error nothing is stored.
    pub fn append(&self, batch: &mut Batch) -> Result<Vec<String>, WalError> {
        self.inline_only()?;
        let (reservation, groups) = self.shared.buffers.reserve(batch)?;
        if reservation.is_empty() {
            return Ok(Vec::new());
        }
        self.shared
            .write_now(reservation, |mark| Gathered::batch(mark, &groups))
    }

    /// `append` for one tenant's encoded lines, all or nothing: None when they do not fit the
    /// buffers (nothing logged).
    pub fn append_lines(
        &self,
        tenant: &str,
        lines: &[u8],
        line_count: usize,
    ) -> Result<Option<Vec<String>>, WalError> {
        self.inline_only()?;
        let Some(reservation) = self.reserve_lines(tenant, lines, line_count)? else {
            return Ok(None);
        };
        self.shared
            .write_now(reservation, |mark| {
                Gathered::lines(mark, tenant, lines, line_count)
            })
            .map(Some)
    }

    /// Sync `Always` answers after an fsync: waiting for it in the caller would block it.
    fn inline_only(&self) -> Result<(), WalError> {
        match self.shared.cfg.sync {
            SyncMode::Interval(_) => Ok(()),
            SyncMode::Always => Err(UsageError::BadSetting {
                name: "sync",
                rule: "\"interval\" for an append written at once",
            }
            .into()),
        }
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
        self.wakeup.drain();
        std::mem::take(&mut lock(&self.shared.state).completed)
    }

    /// The descriptor an event loop watches for `completed` outcomes.
    pub fn wakeup_fd(&self) -> i32 {
        self.wakeup.fd()
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
        self.shared.drop_spares();
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

#[cfg(test)]
mod tests {
    use super::record::encode_record;
    use super::testing::*;
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::fs::OpenOptions;
    use std::io::Write;

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
        let expected = BTreeMap::from([
            ("a".to_owned(), lines(&["a1", "a2"])),
            ("b".to_owned(), lines(&["b1"])),
        ]);
        assert_eq!(contents(&wal), expected);
        wal.abandon();
        let wal = open(&cfg);
        assert_eq!(contents(&wal), expected);
        deliver(&wal, "a");
        assert_eq!(wal.buffers().delivered_through(), 0);
        deliver(&wal, "b");
        assert_eq!(wal.buffers().take_delivered(), [1]);
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
        /// below a written checkpoint ever does. `inline`: sync interval, appends written at
        /// once in the caller (`append_lines`) rather than by the writer thread.
        #[test]
        fn no_acknowledged_line_is_lost_and_no_checkpointed_one_returns(
            ops in proptest::collection::vec(op(), 1..60),
            segment_bytes in 30u64..400,
            max_bytes in 200u64..3000,
            inline in any::<bool>(),
        ) {
            let dir = TestDir::new();
            let cfg = WalConfig {
                sync: if inline {
                    SyncMode::Interval(Duration::from_secs(3600))
                } else {
                    SyncMode::Always
                },
                ..config(&dir.0, max_bytes, segment_bytes)
            };
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
                        let appended = if inline {
                            wal.append_lines(&tenant, body.as_bytes(), text.len())
                                .map(|ready| ready.is_some())
                        } else {
                            append_lines(&wal, &tenant, body.as_bytes(), text.len())
                        };
                        match appended {
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
                        prop_assert_eq!(wal.replay_stats().corrupt_records, 0, "{:?}", wal.replay_stats().problems);
                    }
                }
            }
            wal.abandon();
        }
    }
}
