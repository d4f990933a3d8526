//! The maintenance thread: the spare segment, interval fsyncs, and every second the
//! checkpoint, the deletion of delivered segments and the compaction of held ones.

use std::fs::{self, File};
use std::time::{Duration, Instant};

use super::record::{encode_record, scan_segment};
use super::segment::{self, create_segment, segment_name, write_checkpoint, Checkpoint, Marks};
use super::writer::Shared;
use super::{describe, lock, SyncMode, WalError};

/// How often the delivered-through checkpoint is written (when it moved).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

impl Shared {
    /// Interval mode: fsyncs what was written since the last fsync (full segments, then the
    /// current one, through a duplicate handle so that appends go on meanwhile).
    pub(super) fn sync_interval(&self) -> Result<(), WalError> {
        let (files, records, dir) = {
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
            (
                todo,
                std::mem::take(&mut files.unsynced_records),
                std::mem::take(&mut files.dir_unsynced),
            )
        };
        let result = files.iter().try_for_each(File::sync_data).and_then(|()| {
            if dir {
                segment::sync_dir(&self.cfg.dir)
            } else {
                Ok(())
            }
        });
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
        if let Ok(file) = create_segment(&self.cfg.dir, id, true) {
            segment::preallocate(&file, self.cfg.segment_bytes);
            lock(&self.files).spare = Some((id, file));
        }
    }

    /// Deletes the unused spare segment (at close).
    pub(super) fn drop_spare(&self) {
        if let Some((id, _)) = lock(&self.files).spare.take() {
            let _ = fs::remove_file(self.cfg.dir.join(segment_name(id)));
        }
    }

    /// Writes the delivered-through checkpoint if it moved; then deletes every segment none
    /// of whose marks is still open (the current one too: the next append starts a new one),
    /// and, past half the cap, copies the open records of the oldest segment still held
    /// forward and deletes it, so a tenant whose database is down holds only its own records.
    pub(super) fn checkpoint(&self) -> Result<(), WalError> {
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
            segment::delete(&self.cfg.dir, *id)?;
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
        segment::delete(&self.cfg.dir, id)?;
        let mut state = lock(&self.state);
        state.bytes -= bytes;
        state.stats.deleted_segments += 1;
        state.stats.compacted_records += count;
        Ok(())
    }

    /// The maintenance thread: the spare segment, interval fsyncs, the checkpoint every second.
    pub(super) fn maintain(&self) {
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
    use super::super::testing::*;
    use super::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

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
}
