//! The maintenance thread: the spare segments, interval fsyncs, and every second the
//! checkpoint, the recycling or deletion of delivered segments and the compaction of held ones.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::record::{self, scan_records, Format, SEGMENT_MAGIC};
use super::segment::{self, segment_name, write_checkpoint, Checkpoint, Marks, Segment};
use super::writer::Shared;
use super::{describe, lock, SyncMode, WalError};

/// How often the delivered-through checkpoint is written (when it moved).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// At most this many delivered segments are kept as spares (and only within the cap): about
/// what a second of writing at full speed fills, so a rotation seldom needs new pages.
const MAX_SPARES: usize = 16;

/// Compaction reads a held segment this much at a time (more for a longer record).
const COPY_WINDOW: u64 = 1 << 20;

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

    /// Creates a spare segment if there is none (outside the files lock: the writer goes on);
    /// false when that failed.
    fn prepare_spare(&self) -> bool {
        // Spares are added under the checkpoint lock, so that `retire` counts them right when
        // an explicit checkpoint runs beside the thread.
        let _one_at_a_time = lock(&self.checkpointed);
        let id = {
            let mut files = lock(&self.files);
            if !files.spares.is_empty() {
                return true;
            }
            files.take_id()
        };
        // On failure the writer creates its segment itself, and reports the error.
        match segment::create_spare(&self.cfg.dir, id, self.cfg.segment_bytes) {
            Ok(file) => {
                lock(&self.files).spares.push_back((id, file));
                true
            }
            Err(_) => false,
        }
    }

    /// Deletes the unused spare segments (at close).
    pub(super) fn drop_spares(&self) {
        for (id, _) in std::mem::take(&mut lock(&self.files).spares) {
            let _ = fs::remove_file(self.cfg.dir.join(segment_name(id)));
        }
    }

    /// Recycles segments none of whose records is needed any more as spares while the log and
    /// its spares fit under the cap (so its files never take more disk than the cap, as
    /// without spares), and deletes the rest.
    fn retire(&self, segments: &[Segment]) -> Result<(), WalError> {
        let freed: u64 = segments.iter().map(Segment::records_bytes).sum();
        let (mut spares, mut taken) = {
            let kept = lock(&self.state).bytes - freed;
            let spares = lock(&self.files).spares.len();
            (spares, kept + spares as u64 * self.cfg.segment_bytes)
        };
        let mut recycled = Vec::new();
        for retired in segments {
            let (id, bytes) = (retired.id, retired.records_bytes());
            if matches!(retired.format, Format::V2 { .. })
                && spares < MAX_SPARES
                && taken + bytes <= self.cfg.max_bytes
            {
                let to = lock(&self.files).take_id();
                // A file that cannot be renamed is deleted instead.
                if let Ok(file) = segment::recycle(&self.cfg.dir, id, to) {
                    recycled.push((to, file));
                    spares += 1;
                    taken += bytes;
                    continue;
                }
            }
            segment::delete(&self.cfg.dir, id)?;
        }
        if !recycled.is_empty() && segment::sync_dir(&self.cfg.dir).is_err() {
            // Not offered as spares: renamed but not durably so, they are deleted after all.
            for (to, _) in recycled.drain(..) {
                segment::delete(&self.cfg.dir, to)?;
            }
        }
        let mut state = lock(&self.state);
        state.bytes -= freed;
        state.stats.deleted_segments += (segments.len() - recycled.len()) as u64;
        state.stats.recycled_segments += recycled.len() as u64;
        drop(state);
        lock(&self.files).spares.extend(recycled);
        Ok(())
    }

    /// Writes the delivered-through checkpoint if it moved; then retires every segment none
    /// of whose marks is still open (the current one too: the next append starts a new one),
    /// and, past half the cap, copies the open records of the oldest segment still held
    /// forward and retires it, so a tenant whose database is down holds only its own records.
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
                    deleted.push(*segment);
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
        self.retire(&deleted)?;
        match held {
            Some(id) => self.copy_forward(id),
            None => Ok(()),
        }
    }

    /// Re-logs the segment's records whose marks are open (fsynced like any append), a window
    /// at a time so that memory holds a window, not the segment; then retires it.
    fn copy_forward(&self, id: u64) -> Result<(), WalError> {
        let found = {
            let files = lock(&self.files);
            let segment = files.segments.iter().find(|s| s.id == id);
            segment.map(|s| (s.bytes, s.format))
        };
        let Some((end, format)) = found else {
            return Ok(());
        };
        let path = self.cfg.dir.join(segment_name(id));
        let file =
            File::open(&path).map_err(|e| WalError::Io(describe("cannot read", &path, &e)))?;
        let mut pos = SEGMENT_MAGIC.len() as u64;
        let mut window = COPY_WINDOW;
        let mut data = Vec::new();
        let mut count = 0;
        while pos < end {
            let len = window.min(end - pos);
            data.resize(len as usize, 0);
            file.read_exact_at(&mut data, pos)
                .map_err(|e| WalError::Io(describe("cannot read", &path, &e)))?;
            let scan = scan_records(&data, 0, format);
            if scan.end == 0 && len < end - pos {
                // A record longer than the window (or a bad stretch): read more at once.
                window *= 2;
                continue;
            }
            count += self.copy_open(&scan.records, format)?;
            if scan.end == 0 {
                break;
            }
            pos += scan.end as u64;
        }
        let retired = {
            let mut files = lock(&self.files);
            let at = files.segments.iter().position(|s| s.id == id);
            at.and_then(|at| files.segments.remove(at))
        };
        self.retire(retired.as_slice())?;
        lock(&self.state).stats.compacted_records += count;
        Ok(())
    }

    /// Re-logs those of `records` (of a segment of `format`) whose marks are open, as they
    /// were written (their CRCs unsalted: the writer salts them for their new segment), and
    /// waits for their write; how many.
    fn copy_open(
        &self,
        records: &[record::RecordRef<'_>],
        format: Format,
    ) -> Result<u64, WalError> {
        let mut out = Vec::new();
        let mut count = 0;
        let mut marks = Marks::NONE;
        for r in records
            .iter()
            .filter(|r| self.buffers.any_open(r.mark, r.mark))
        {
            out.extend_from_slice(r.raw);
            count += 1;
            marks.add(Marks::of(r.mark));
        }
        if count == 0 {
            return Ok(0);
        }
        record::salt_records(&mut out, format.salt());
        let ticket = self
            .enqueue(out, count, marks, None, false, true)
            .map_err(|(e, _)| e)?;
        self.wait(ticket)?;
        Ok(count)
    }

    /// The maintenance thread: the spare segment, interval fsyncs, the checkpoint every second.
    pub(super) fn maintain(&self) {
        let sync_every = match self.cfg.sync {
            SyncMode::Always => None,
            SyncMode::Interval(every) => Some(every),
        };
        let mut next_sync = sync_every.map(|every| Instant::now() + every);
        let mut next_checkpoint = Instant::now() + CHECKPOINT_EVERY;
        let mut next_spare = Instant::now();
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
            // Last: writing a spare whole takes a few tens of milliseconds, which the fsync
            // and the checkpoint should not wait for. After a failure (a full disk, most
            // likely) the next try waits a checkpoint period: each writes up to a segment.
            if now >= next_spare && !self.prepare_spare() {
                next_spare = now + CHECKPOINT_EVERY;
            }
            state = lock(&self.state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Wal;
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
    fn delivered_segments_are_recycled_and_their_records_never_return() {
        let dir = TestDir::new();
        let cfg = config(&dir.0, 1 << 20, 64);
        let wal = open(&cfg);
        for i in 0..40 {
            let line = format!("a{i} with some length\n");
            assert!(append_lines(&wal, "a", line.as_bytes(), 1).is_ok());
            deliver(&wal, "a");
            assert_eq!(wal.checkpoint(), Ok(()));
        }
        let stats = wal.stats();
        assert!(stats.recycled_segments > 5, "{stats:?}");
        assert!(
            stats.deleted_segments < stats.recycled_segments,
            "{stats:?}"
        );
        // Later segments are written over the recycled files.
        for line in ["b1\n", "b2\n"] {
            assert!(append_lines(&wal, "b", line.as_bytes(), 1).is_ok());
        }
        let files = fs::read_dir(&dir.0).expect("lists").count();
        assert!(files <= MAX_SPARES + 3, "{files} files");
        wal.abandon();

        let wal = open(&cfg);
        let replay = wal.replay_stats().clone();
        assert_eq!(
            (
                replay.records,
                replay.corrupt_records,
                replay.truncated_bytes
            ),
            (2, 0, 0),
            "{:?}",
            replay.problems
        );
        let expected = BTreeMap::from([("b".to_owned(), lines(&["b1", "b2"]))]);
        assert_eq!(contents(&wal), expected);
    }

    /// Appends `n` delivered lines of tenant a, then checkpoints.
    fn deliver_lines(wal: &Wal, n: usize) {
        for i in 0..n {
            let line = format!("a{i} with some length\n");
            assert!(append_lines(wal, "a", line.as_bytes(), 1).is_ok());
        }
        deliver(wal, "a");
        assert_eq!(wal.checkpoint(), Ok(()));
    }

    #[test]
    fn at_most_so_many_spares_are_kept() {
        let dir = TestDir::new();
        let wal = open(&config(&dir.0, 1 << 20, 64));
        deliver_lines(&wal, 40);
        let stats = wal.stats();
        assert!(
            stats.recycled_segments > 0 && stats.deleted_segments > 0,
            "{stats:?}"
        );
        assert!(lock(&wal.shared.files).spares.len() <= MAX_SPARES);
    }

    #[test]
    fn the_log_and_its_spares_take_no_more_disk_than_the_cap() {
        let dir = TestDir::new();
        let cap = 1200;
        let wal = open(&config(&dir.0, cap, 64));
        // b's records hold their segments.
        for i in 0..8 {
            let line = format!("b{i} with some length\n");
            assert!(append_lines(&wal, "b", line.as_bytes(), 1).is_ok());
        }
        for _ in 0..4 {
            deliver_lines(&wal, 14);
            let on_disk: u64 = fs::read_dir(&dir.0)
                .expect("lists")
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len().saturating_sub(SEGMENT_MAGIC.len() as u64))
                .sum();
            assert!(on_disk <= cap, "{on_disk} bytes on disk, {:?}", wal.stats());
        }
        assert!(wal.stats().recycled_segments > 0);
    }

    #[test]
    fn a_held_record_longer_than_the_copy_window_is_copied_forward_whole() {
        let dir = TestDir::new();
        // Past half the cap while a's segment is held: it is copied forward once full.
        let cfg = config(&dir.0, 3 << 20, 2 << 20);
        let wal = open(&cfg);
        let long = format!("{}\n", "x".repeat(COPY_WINDOW as usize * 3 / 2));
        assert!(append_lines(&wal, "a", long.as_bytes(), 1).is_ok());
        let other = format!("{}\n", "b".repeat(64 << 10));
        for _ in 0..64 {
            assert!(append_lines(&wal, "b", other.as_bytes(), 1).is_ok());
            deliver(&wal, "b");
            assert_eq!(wal.checkpoint(), Ok(()));
            if wal.stats().compacted_records > 0 {
                break;
            }
        }
        assert_eq!(wal.stats().compacted_records, 1, "{:?}", wal.stats());
        wal.abandon();
        let wal = open(&cfg);
        assert_eq!(contents(&wal)["a"], [long.trim_end()]);
        assert_eq!(wal.replay_stats().corrupt_records, 0);
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
