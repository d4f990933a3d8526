//! The writer thread: every append queued while the previous group was written goes out in
//! one `write` and (sync `Always`) one `fdatasync`; then its lines are stored and its appends
//! told (group commit).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};

use super::record::{self, Gathered, RecordLines};
use super::segment::{write_all_vectored_at, Files, Marks};
use super::{lock, Outcome, SyncMode, WalConfig, WalError, WalStats};
use crate::buffer::{Reservation, TenantBuffers};
use crate::wakeup::ThreadEnd;

/// A queued record's tenant, where its lines are in the queued group's `data`, and how many.
type QueuedLines = (String, Range<usize>, usize);

/// What is done once a queued append's records are written: store its reserved lines (from
/// the written data), and report to the completion list (`notify`: a submitted append) or to
/// the waiting thread (a compaction's copy).
pub(super) struct Entry {
    pub(super) ticket: u64,
    pub(super) store: Option<(Reservation, Vec<QueuedLines>)>,
    pub(super) notify: bool,
}

/// A queued group: the records of every append waiting for the next write.
#[derive(Default)]
pub(super) struct Queue {
    pub(super) data: Vec<u8>,
    pub(super) records: u64,
    pub(super) marks: Marks,
    pub(super) entries: Vec<Entry>,
}

/// A group's records as they are written.
pub(super) enum Records<'g, 'a> {
    /// Whole, in one buffer: the writer thread's queue.
    Whole(&'g mut Vec<u8>),
    /// Heads encoded, lines where they lie: an append written at once.
    Gathered(&'g mut Gathered<'a>),
}

impl Records<'_, '_> {
    fn len(&self) -> usize {
        match self {
            Records::Whole(data) => data.len(),
            Records::Gathered(gathered) => gathered.len(),
        }
    }

    /// XORs the segment's salt into each record's CRC (`record::salt_records`).
    fn salt(&mut self, salt: u32) {
        match self {
            Records::Whole(data) => record::salt_records(data, salt),
            Records::Gathered(gathered) => gathered.salt(salt),
        }
    }

    fn write_at(&self, file: &File, offset: u64) -> io::Result<()> {
        match self {
            Records::Whole(data) => file.write_all_at(data, offset),
            Records::Gathered(gathered) => {
                write_all_vectored_at(file, &mut gathered.slices(), offset)
            }
        }
    }
}

pub(super) struct State {
    pub(super) queue: Queue,
    pub(super) next_ticket: u64,
    /// Outcomes of compaction copies the maintenance thread waits for.
    pub(super) results: HashMap<u64, Outcome>,
    /// Outcomes of `submit`ted appends, until `completed` takes them.
    pub(super) completed: Vec<(u64, Outcome)>,
    pub(super) failed: Option<String>,
    /// Bytes of all segments plus the queue, against `max_bytes`.
    pub(super) bytes: u64,
    pub(super) stats: WalStats,
    pub(super) closing: bool,
}

pub(super) struct Shared {
    pub(super) cfg: WalConfig,
    pub(super) state: Mutex<State>,
    /// The writer thread waits here for a queued group.
    pub(super) queued: Condvar,
    /// Notified after every group: the maintenance thread waits here for a compaction copy.
    pub(super) done: Condvar,
    /// The maintenance thread, woken to stop or to create a spare segment.
    pub(super) maintenance: Condvar,
    pub(super) files: Mutex<Files>,
    pub(super) buffers: Arc<TenantBuffers>,
    /// The delivered-through last written to the checkpoint file.
    pub(super) checkpointed: Mutex<u64>,
    /// Written to (one byte) when `completed` has outcomes: an event loop polls the other end.
    pub(super) wakeup: ThreadEnd,
}

impl Shared {
    /// Queues one submitted append's records, which `encode` appends (as for `write_now`),
    /// for the writer; its ticket.
    pub(super) fn queue<'a>(
        &self,
        reservation: Reservation,
        encode: impl FnOnce(&mut Vec<u8>, u64) -> Vec<RecordLines<'a>>,
    ) -> Result<u64, WalError> {
        let mut data = Vec::new();
        let lines: Vec<QueuedLines> = encode(&mut data, reservation.mark)
            .into_iter()
            .map(|(tenant, at, count)| (tenant.to_owned(), at, count))
            .collect();
        self.enqueue(
            data,
            lines.len() as u64,
            Marks::of(reservation.mark),
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

    /// Sync `Interval`: writes one append's records in the calling thread and stores its
    /// lines; the tenants now at a flush threshold. A 202 in this mode waits only for the
    /// `write` (the maintenance thread fsyncs every interval), so the writer thread's hop, the
    /// wakeup byte and the event loop's future cost more than the write itself. `gather`
    /// encodes the records' heads under the reservation's mark; their lines are written and
    /// stored from where they lie, copied only into the page cache and the buffers.
    pub(super) fn write_now<'a>(
        &self,
        reservation: Reservation,
        gather: impl FnOnce(u64) -> Gathered<'a>,
    ) -> Result<Vec<String>, WalError> {
        let mut gathered = gather(reservation.mark);
        let count = gathered.records.len() as u64;
        let marks = Marks::of(reservation.mark);
        match self.write_alone(&mut Records::Gathered(&mut gathered), count, marks) {
            Ok(()) => Ok(self.buffers.commit(
                reservation,
                gathered
                    .records
                    .iter()
                    .map(|r| (r.tenant, r.runs.iter().copied(), r.line_count)),
            )),
            Err(e) => {
                self.buffers.cancel(reservation);
                Err(e)
            }
        }
    }

    /// Writes `count` records in the calling thread, under the cap, and counts them.
    fn write_alone(&self, records: &mut Records, count: u64, marks: Marks) -> Result<(), WalError> {
        let bytes = records.len();
        {
            let mut state = lock(&self.state);
            if let Some(error) = self.refusal(&state, bytes, false) {
                return Err(error);
            }
            state.bytes += bytes as u64;
        }
        let result = self.write_group(records, count, marks);
        self.count_group(&mut lock(&self.state), (bytes, count), &result);
        result.map(|_| ())
    }

    /// Why `bytes` more cannot be logged now (`force`: past the cap), or None.
    fn refusal(&self, state: &State, bytes: usize, force: bool) -> Option<WalError> {
        if let Some(why) = &state.failed {
            Some(WalError::Failed(why.clone()))
        } else if state.closing {
            Some(WalError::Io("the write-ahead log is closed".to_owned()))
        } else if !force && state.bytes + bytes as u64 > self.cfg.max_bytes {
            Some(WalError::Full {
                max_bytes: self.cfg.max_bytes,
            })
        } else {
            None
        }
    }

    /// Counts a written group of `records` (`bytes` long), or, failed, gives its bytes back
    /// and fails the log.
    fn count_group(
        &self,
        state: &mut State,
        (bytes, records): (usize, u64),
        result: &Result<bool, WalError>,
    ) {
        match result {
            Ok(synced) => {
                state.stats.groups += 1;
                state.stats.appended_records += records;
                if *synced {
                    state.stats.fsyncs += 1;
                    state.stats.synced_records += records;
                }
            }
            Err(error) => {
                state.bytes -= bytes as u64;
                if let WalError::Failed(why) = error {
                    state.failed = Some(why.clone());
                    state.stats.failed = Some(why.clone());
                }
            }
        }
    }

    /// Adds records to the queued group; `force` skips the cap (compaction frees more than it
    /// writes). On refusal, the error and what was to be stored are handed back.
    #[allow(clippy::type_complexity)]
    pub(super) fn enqueue(
        &self,
        records: Vec<u8>,
        count: u64,
        marks: Marks,
        mut store: Option<(Reservation, Vec<QueuedLines>)>,
        notify: bool,
        force: bool,
    ) -> Result<u64, (WalError, Option<(Reservation, Vec<QueuedLines>)>)> {
        let mut state = lock(&self.state);
        if let Some(error) = self.refusal(&state, records.len(), force) {
            return Err((error, store));
        }
        state.bytes += records.len() as u64;
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        let queue = &mut state.queue;
        // The lines' ranges move with the records to the end of the queued data.
        let at = queue.data.len();
        for (_, lines, _) in store.iter_mut().flat_map(|(_, lines)| lines) {
            *lines = lines.start + at..lines.end + at;
        }
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
    pub(super) fn wait(&self, ticket: u64) -> Outcome {
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
    pub(super) fn write_groups(&self) {
        loop {
            let mut state = lock(&self.state);
            while state.queue.entries.is_empty() && !state.closing {
                state = self.queued.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if state.queue.entries.is_empty() {
                return;
            }
            let mut queue = std::mem::take(&mut state.queue);
            let failed = state.failed.clone();
            drop(state);
            let result = match failed {
                Some(why) => Err(WalError::Failed(why)),
                None => self.write_group(
                    &mut Records::Whole(&mut queue.data),
                    queue.records,
                    queue.marks,
                ),
            };
            // Stored before anyone is told: a 202 follows both the fsync and the buffering.
            let mut outcomes = Vec::with_capacity(queue.entries.len());
            for entry in std::mem::take(&mut queue.entries) {
                let outcome = match (&result, entry.store) {
                    (Ok(_), Some((reservation, lines))) => Ok(self.buffers.commit(
                        reservation,
                        lines
                            .iter()
                            .map(|(t, at, n)| (t.as_str(), [&queue.data[at.clone()]], *n)),
                    )),
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
            self.count_group(&mut state, (queue.data.len(), queue.records), &result);
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
                self.wakeup.wake();
            }
        }
    }

    /// Writes one group of `count` records at the end of the current segment (a new one when
    /// full or none), salted for that segment; returns whether it was fsynced.
    fn write_group(
        &self,
        records: &mut Records,
        count: u64,
        marks: Marks,
    ) -> Result<bool, WalError> {
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
            let durable = matches!(self.cfg.sync, SyncMode::Always);
            files.next_segment(durable).map_err(|e| {
                WalError::Io(format!(
                    "cannot start a segment in {}: {e}",
                    self.cfg.dir.display()
                ))
            })?;
        }
        let files = &mut *files;
        let file = files.current.as_mut().expect("a segment was just opened");
        let segment = files
            .segments
            .back()
            .expect("the current segment is listed");
        let before = segment.bytes;
        records.salt(segment.format.salt());
        if let Err(e) = records.write_at(file, before) {
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
                files.unsynced_records += count;
                false
            }
        };
        let segment = files
            .segments
            .back_mut()
            .expect("the current segment is listed");
        segment.bytes += records.len() as u64;
        segment.marks.add(marks);
        Ok(synced)
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::encode_record;
    use super::super::testing::*;
    use super::*;
    use std::collections::BTreeSet;
    use std::fs;

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
        // Each append's lines were stored from where its records sit in the shared group.
        let mut stored = contents(&wal).remove("a").expect("tenant a");
        stored.sort();
        let mut sent: Vec<String> = (0..8)
            .flat_map(|t| (0..200).map(move |i| format!("t{t} {i}")))
            .collect();
        sent.sort();
        assert_eq!(stored, sent);
        wal.abandon();
        let wal = open(&cfg);
        assert_eq!(wal.replay_stats().lines, 1600);
        let mut all = contents(&wal).remove("a").expect("tenant a");
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 1600);
    }
}
