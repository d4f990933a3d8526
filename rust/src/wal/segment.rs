//! The segment files and the checkpoint file in the log's directory: naming, creating,
//! deleting, and reading them all back at start-up.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::{self, Format, Record, RECYCLED_MAGIC, SEGMENT_MAGIC};
use super::{describe, ReplayStats, WalError};

const CHECKPOINT: &str = "checkpoint";

pub(super) fn segment_name(id: u64) -> String {
    format!("{id:020}.wal")
}

pub(super) fn segment_id(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes all of `slices`, in order, at `offset` (`pwritev`, resumed after a short write).
pub(super) fn write_all_vectored_at(
    file: &File,
    mut slices: &mut [IoSlice<'_>],
    mut offset: u64,
) -> io::Result<()> {
    // IOV_MAX on Linux: more slices in one call fail with EINVAL.
    const MAX_SLICES: usize = 1024;
    // Drops leading empty slices, so that no slices left means all written.
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let count = slices.len().min(MAX_SLICES);
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix, and the `count` slices
        // borrowed here outlive the call.
        let written = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                slices.as_ptr().cast::<libc::iovec>(),
                count as libc::c_int,
                offset as libc::off_t,
            )
        };
        match written {
            -1 => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => {
                offset += n as u64;
                IoSlice::advance_slices(&mut slices, n as usize);
            }
        }
    }
    Ok(())
}

/// What the checkpoint file holds: every mark up to `delivered_through` is delivered, and no
/// mark above `last_mark` was given (so marks keep increasing across restarts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Checkpoint {
    pub(super) delivered_through: u64,
    pub(super) last_mark: u64,
}

pub(super) fn read_checkpoint(dir: &Path) -> Result<Checkpoint, String> {
    let path = dir.join(CHECKPOINT);
    let data = match fs::read(&path) {
        Ok(data) => data,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Checkpoint::default()),
        Err(e) => return Err(describe("cannot read", &path, &e)),
    };
    if data.len() != 20 || record::crc32c([&data[..16]]) != record::le_u32(&data[16..]) {
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
pub(super) fn write_checkpoint(dir: &Path, checkpoint: Checkpoint) -> io::Result<()> {
    let tmp = dir.join("checkpoint.tmp");
    let mut data = checkpoint.delivered_through.to_le_bytes().to_vec();
    data.extend_from_slice(&checkpoint.last_mark.to_le_bytes());
    data.extend_from_slice(&record::crc32c([&data[..]]).to_le_bytes());
    let mut f = File::create(&tmp)?;
    f.write_all(&data)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(CHECKPOINT))?;
    sync_dir(dir)
}

#[derive(Clone, Copy)]
pub(super) struct Segment {
    pub(super) id: u64,
    /// Where its last record ends (its file may be longer: the rest of earlier lives).
    pub(super) bytes: u64,
    pub(super) format: Format,
    /// The marks of its records (`u64::MAX..=0` while it has none).
    pub(super) marks: Marks,
}

/// The smallest and largest of some marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Marks {
    pub(super) low: u64,
    pub(super) high: u64,
}

impl Marks {
    pub(super) const NONE: Marks = Marks {
        low: u64::MAX,
        high: 0,
    };

    pub(super) fn add(&mut self, other: Marks) {
        self.low = self.low.min(other.low);
        self.high = self.high.max(other.high);
    }

    pub(super) fn of(mark: u64) -> Marks {
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
    pub(super) fn records_bytes(&self) -> u64 {
        self.bytes - SEGMENT_MAGIC.len() as u64
    }
}

/// The files: only the leader writes, the maintenance thread syncs and deletes.
pub(super) struct Files {
    pub(super) dir: PathBuf,
    /// The segment being appended to, open for appending; always `segments.back()`.
    pub(super) current: Option<File>,
    pub(super) segments: VecDeque<Segment>,
    pub(super) next_id: u64,
    /// The next segments, oldest id first: delivered segments' files renamed (recycled), or
    /// one created ahead by the maintenance thread, so that a rotation costs the writer no
    /// fsync and, recycled, no new pages.
    pub(super) spares: VecDeque<(u64, File)>,
    /// Interval mode: full segments written since the last fsync.
    pub(super) closed_unsynced: Vec<File>,
    /// Interval mode: a segment was created since the last fsync without fsyncs of its own
    /// (no spare was ready), so the directory is fsynced with the next interval.
    pub(super) dir_unsynced: bool,
    /// Records written since the last fsync (Interval mode).
    pub(super) unsynced_records: u64,
}

/// Creates segment `id` with its header; `durable`: the file and the directory fsynced now.
/// Open for writing at given offsets (not appending: a recycled file is longer than its
/// segment).
pub(super) fn create_segment(dir: &Path, id: u64, durable: bool) -> io::Result<File> {
    let path = dir.join(segment_name(id));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    let created = f.write_all(SEGMENT_MAGIC).and_then(|()| {
        if durable {
            f.sync_all().and_then(|()| sync_dir(dir))
        } else {
            Ok(())
        }
    });
    if let Err(e) = created {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(f)
}

/// Renames delivered segment `id` (of format V2) to the newer `to`, its records now stale:
/// the file, open for writing, is a spare segment whose pages are still cached. The caller
/// fsyncs the directory before anything is written to it: records salted for `to` in a file
/// still named `id` after a crash would read as corruption.
pub(super) fn recycle(dir: &Path, id: u64, to: u64) -> io::Result<File> {
    let path = dir.join(segment_name(to));
    fs::rename(dir.join(segment_name(id)), &path)?;
    let file = OpenOptions::new().write(true).open(&path)?;
    file.write_all_at(RECYCLED_MAGIC, 0)?;
    Ok(file)
}

/// `tail` without its trailing zeros.
fn written_len(tail: &[u8]) -> usize {
    // Whole zero blocks first: a spare's room is megabytes, a byte-wise search slow at start-up.
    let zeros: usize = tail
        .rchunks(64)
        .take_while(|block| block.iter().all(|&b| b == 0))
        .map(<[u8]>::len)
        .sum();
    let rest = &tail[..tail.len() - zeros];
    rest.iter().rposition(|&b| b != 0).map_or(0, |at| at + 1)
}

/// Zeros go into a new spare this much at a time.
const FILL_CHUNK: usize = 1 << 20;

/// Never written, so it costs no memory (its pages are the kernel's shared zero page).
static ZEROS: [u8; FILL_CHUNK] = [0; FILL_CHUNK];

/// Creates spare segment `id`, `bytes` long, written whole with zeros and fsynced before it is
/// offered (as PostgreSQL zero-fills its WAL segments): its blocks are then allocated and
/// written and its size final, so neither an append over it nor the fdatasync after it changes
/// the file's metadata, and its pages are cached in the large folios that writes of 1 MiB
/// leave. A 30 KB append into it takes about half the CPU time it takes at the end of a growing
/// file (benches/bench_page_cache.py). Replay reads the zeros after the last record as the
/// segment's end, and as no torn tail.
pub(super) fn create_spare(dir: &Path, id: u64, bytes: u64) -> io::Result<File> {
    // Its fsyncs come after the zeros.
    let file = create_segment(dir, id, false)?;
    let filled = fill_with_zeros(&file, SEGMENT_MAGIC.len() as u64, bytes)
        .and_then(|()| file.sync_data())
        .and_then(|()| sync_dir(dir));
    if let Err(e) = filled {
        let _ = fs::remove_file(dir.join(segment_name(id)));
        return Err(e);
    }
    Ok(file)
}

/// Writes zeros over `file`'s bytes `from..to`, `FILL_CHUNK` at a time.
fn fill_with_zeros(file: &File, mut from: u64, to: u64) -> io::Result<()> {
    while from < to {
        let n = (to - from).min(FILL_CHUNK as u64) as usize;
        file.write_all_at(&ZEROS[..n], from)?;
        from += n as u64;
    }
    Ok(())
}

impl Files {
    /// Whether `file` is still segment `id` in the directory (not unlinked, the directory not
    /// replaced): records written to an unlinked file would be lost at the next restart.
    pub(super) fn is_linked(&self, id: u64, file: &File) -> bool {
        use std::os::unix::fs::MetadataExt;
        let path = self.dir.join(segment_name(id));
        match (file.metadata(), fs::metadata(path)) {
            (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
            _ => false,
        }
    }

    /// A segment id never given before.
    pub(super) fn take_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id - 1
    }

    /// Starts appending to a new segment: the spare if it is newer than every segment, else
    /// one created now. `durable` false (sync Interval): a segment created now gets no fsync
    /// of its own but the next interval's; its two fsyncs would otherwise stall the caller (the
    /// event loop) behind the flush of every dirty page of the file system.
    pub(super) fn next_segment(&mut self, durable: bool) -> io::Result<()> {
        let newest = self.segments.back().map(|s| s.id);
        let (id, file) = match self.spares.pop_front() {
            Some((id, file)) if newest.is_none_or(|n| id > n) && self.is_linked(id, &file) => {
                (id, file)
            }
            stale => {
                if let Some((id, _)) = stale {
                    let _ = fs::remove_file(self.dir.join(segment_name(id)));
                }
                let id = self.take_id();
                let file = create_segment(&self.dir, id, durable)?;
                self.dir_unsynced |= !durable;
                (id, file)
            }
        };
        self.current = Some(file);
        self.segments.push_back(Segment {
            id,
            bytes: SEGMENT_MAGIC.len() as u64,
            format: Format::V2 {
                salt: record::salt(id),
            },
            marks: Marks::NONE,
        });
        Ok(())
    }
}

/// Reads every segment: the records above `checkpoint` sorted by mark (the order the
/// buffers need), the segments kept, and the largest mark seen.
pub(super) fn read_segments(
    dir: &Path,
    checkpoint: u64,
    replay: &mut ReplayStats,
) -> Result<(VecDeque<Segment>, Vec<Record>, u64), WalError> {
    let listing = fs::read_dir(dir).map_err(|e| WalError::Io(describe("cannot list", dir, &e)))?;
    let mut ids: Vec<u64> = listing
        .filter_map(|entry| entry.ok()?.file_name().to_str().and_then(segment_id))
        .collect();
    ids.sort_unstable();
    let mut read = Vec::new();
    for &id in &ids {
        if let Some(segment) = read_segment(dir, id, Some(id) == ids.last().copied(), replay)? {
            read.push(segment);
        }
    }
    // The segment written last: the newest one holding records or a torn first one (spare
    // segments, fresh or recycled, may follow it and hold neither).
    let newest = read
        .iter()
        .rposition(|r| !r.records.is_empty() || r.torn_bytes > 0);
    let mut segments = VecDeque::new();
    let mut records = Vec::new();
    let mut max_mark = 0;
    let mut seen = std::collections::HashSet::new();
    for (at, segment) in read.into_iter().enumerate() {
        let tail = segment.torn_bytes;
        if tail > 0 {
            if Some(at) == newest {
                truncate(&segment.path, segment.end)?;
                replay.truncated_bytes += tail;
                replay.problems.push(format!(
                    "{}: torn tail of {tail} bytes truncated",
                    segment.path.display()
                ));
            } else {
                replay.corrupt_records += 1;
                replay.problems.push(format!(
                    "{}: {tail} unreadable bytes at the end skipped",
                    segment.path.display()
                ));
            }
        }
        let mut marks = Marks::NONE;
        for record in segment.records {
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
            id: segment.id,
            bytes: segment.end as u64,
            format: segment.format,
            marks,
        });
    }
    records.sort_by_key(|r| r.mark);
    Ok((segments, records, max_mark))
}

/// One segment file as read at start-up.
struct ReadSegment {
    id: u64,
    path: PathBuf,
    format: Format,
    records: Vec<Record>,
    /// Where its intact part ends.
    end: usize,
    /// Bytes past `end` that are no earlier life of the file nor a spare's unwritten room: a
    /// torn or bad tail.
    torn_bytes: u64,
}

/// Reads and scans segment `id` (`last`: the file named last); None for a file that is no
/// segment (quarantined) or whose header was torn (removed, `last` only).
fn read_segment(
    dir: &Path,
    id: u64,
    last: bool,
    replay: &mut ReplayStats,
) -> Result<Option<ReadSegment>, WalError> {
    let path = dir.join(segment_name(id));
    let read = read_unless_spare(&path, id);
    let format = read.as_ref().ok().and_then(|data| Format::of(data, id));
    let (data, format) = match (read, format) {
        (Ok(data), Some(format)) => (data, format),
        (Ok(data), None) if last && data.len() < SEGMENT_MAGIC.len() => {
            // Torn before its header was whole: it holds nothing.
            replay.truncated_bytes += data.len() as u64;
            replay
                .problems
                .push(format!("{}: torn header, removed", path.display()));
            fs::remove_file(&path)
                .map_err(|e| WalError::Io(describe("cannot remove", &path, &e)))?;
            return Ok(None);
        }
        (outcome, _) => {
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
            return Ok(None);
        }
    };
    let scan = record::scan_segment(&data, format);
    replay.segments += 1;
    if scan.corrupt > 0 {
        replay.corrupt_records += scan.corrupt;
        replay.problems.push(format!(
            "{}: {} corrupt record(s) skipped",
            path.display(),
            scan.corrupt
        ));
    }
    // In a recycled file a torn tail cannot be told from the overwritten rest of an earlier
    // life's record, and holds no more than one. Zeros after the last record are a spare's
    // room never written (create_spare), not a torn tail.
    let torn_bytes = if scan.stale || record::is_recycled(&data) {
        0
    } else {
        written_len(&data[scan.end..]) as u64
    };
    Ok(Some(ReadSegment {
        id,
        format,
        records: scan.records.into_iter().map(|r| r.to_record()).collect(),
        end: scan.end,
        torn_bytes,
        path,
    }))
}

/// Bytes read of a segment before its first record is known: a recycled spare's first
/// record, an earlier life's, is whole in them (records are one request's lines, tens of KB).
const HEAD_BYTES: u64 = 1 << 20;

/// The segment file at `path` whole, or only its head when it is a recycled spare (its first
/// record is an earlier life's): the scan of the whole file would stop at that record, and a
/// recycled file has no torn tail to measure, so its other 16 MiB are not read. Up to 16 spares
/// wait at any time; start-up reads one MiB of each rather than all of them.
fn read_unless_spare(path: &Path, id: u64) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let mut head = Vec::new();
    (&file).take(HEAD_BYTES).read_to_end(&mut head)?;
    let first = SEGMENT_MAGIC.len();
    let spare = record::is_recycled(&head)
        && Format::of(&head, id).is_some_and(|format| {
            matches!(
                record::decode_record(&head[first..], format),
                record::Decoded::Stale
            )
        });
    if !spare {
        file.read_to_end(&mut head)?;
    }
    Ok(head)
}

/// Cuts a torn tail off the segment at `path`.
fn truncate(path: &Path, end: usize) -> Result<(), WalError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(end as u64).and_then(|()| f.sync_all()))
        .map_err(|e| WalError::Io(describe("cannot truncate", path, &e)))
}

/// Deletes segment `id` of `dir`; one already gone is fine.
pub(super) fn delete(dir: &Path, id: u64) -> Result<(), WalError> {
    let path = dir.join(segment_name(id));
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(WalError::Io(describe("cannot delete", &path, &e))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::encode_record;
    use super::super::testing::*;
    use super::*;

    #[test]
    fn a_vectored_write_of_more_slices_than_one_call_takes_lands_whole_in_order() {
        let dir = TestDir::new();
        fs::create_dir_all(&dir.0).expect("created");
        let path = dir.0.join("gathered");
        let file = File::create(&path).expect("created");
        file.write_all_at(b"head", 0).expect("written");
        let pieces: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| {
                if i % 7 == 0 {
                    Vec::new()
                } else {
                    format!("{i},").into_bytes()
                }
            })
            .collect();
        let mut slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
        write_all_vectored_at(&file, &mut slices, 4).expect("written");
        let want: Vec<u8> = b"head"
            .iter()
            .chain(pieces.iter().flatten())
            .copied()
            .collect();
        assert_eq!(fs::read(&path).expect("read"), want);
    }

    #[test]
    fn a_recycled_spare_is_read_to_its_first_record_and_a_live_segment_whole() {
        let dir = TestDir::new();
        fs::create_dir_all(&dir.0).expect("made");
        let mut records = Vec::new();
        encode_record(&mut records, 1, "a", b"a 1\n", 1);
        let size = 3 * HEAD_BYTES;
        // Segment 5 over a file whose last life was segment 1, and segment 6 of this life.
        for (id, magic, salt) in [(5, RECYCLED_MAGIC, 1), (6, SEGMENT_MAGIC, 6)] {
            let mut data = magic.to_vec();
            let mut salted = records.clone();
            record::salt_records(&mut salted, record::salt(salt));
            data.extend_from_slice(&salted);
            let path = dir.0.join(segment_name(id));
            fs::write(&path, &data).expect("written");
            File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(size))
                .expect("grown");
        }
        let read = |id| read_unless_spare(&dir.0.join(segment_name(id)), id).expect("read");
        assert_eq!(read(5).len() as u64, HEAD_BYTES);
        assert_eq!(read(6).len() as u64, size);
        let mut replay = ReplayStats::default();
        for (id, found) in [(5, 0), (6, 1)] {
            let segment = read_segment(&dir.0, id, id == 6, &mut replay)
                .expect("read")
                .expect("a segment");
            assert_eq!((segment.records.len(), segment.torn_bytes), (found, 0));
        }
    }

    #[test]
    fn a_spare_is_written_whole_and_its_zeros_are_no_torn_tail() {
        let dir = TestDir::new();
        fs::create_dir_all(&dir.0).expect("made");
        let bytes = 3 * FILL_CHUNK as u64 + 5;
        let file = create_spare(&dir.0, 1, bytes).expect("created");
        assert_eq!(file.metadata().expect("stat").len(), bytes);
        let path = dir.0.join(segment_name(1));
        let data = fs::read(&path).expect("read");
        assert_eq!(&data[..SEGMENT_MAGIC.len()], SEGMENT_MAGIC);
        assert!(data[SEGMENT_MAGIC.len()..].iter().all(|&b| b == 0));
        // A record, then half of one (a torn write) over the zeros.
        let mut records = Vec::new();
        encode_record(&mut records, 1, "a", b"a 1\n", 1);
        let whole = records.len();
        encode_record(&mut records, 2, "a", b"a 2 with a longer line\n", 1);
        record::salt_records(&mut records, record::salt(1));
        // Cut inside the line: a torn tail's own last zero bytes would read as room.
        let torn = records.len() - whole - 5;
        file.write_all_at(&records[..whole + torn], SEGMENT_MAGIC.len() as u64)
            .expect("written");
        let mut replay = ReplayStats::default();
        let read = read_segment(&dir.0, 1, true, &mut replay)
            .expect("read")
            .expect("a segment");
        assert_eq!((read.records.len(), read.torn_bytes), (1, torn as u64));
        // A spare that cannot be made whole is not left behind.
        assert!(create_spare(&dir.0, 1, bytes).is_err());
    }

    #[test]
    fn a_segment_made_without_a_spare_in_interval_mode_leaves_its_fsyncs_to_the_interval() {
        let dir = TestDir::new();
        fs::create_dir_all(&dir.0).expect("made");
        let mut files = Files {
            dir: dir.0.clone(),
            current: None,
            segments: VecDeque::new(),
            next_id: 1,
            spares: VecDeque::new(),
            closed_unsynced: Vec::new(),
            dir_unsynced: false,
            unsynced_records: 0,
        };
        files.next_segment(true).expect("created");
        assert!(!files.dir_unsynced);
        files.next_segment(false).expect("created");
        assert!(files.dir_unsynced);
        for id in [1, 2] {
            let header = fs::read(dir.0.join(segment_name(id))).expect("reads");
            assert_eq!(header, SEGMENT_MAGIC);
        }
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
    fn a_segment_from_before_recycling_replays_and_is_deleted_not_recycled() {
        let dir = TestDir::new();
        fs::create_dir_all(&dir.0).expect("made");
        let mut old = b"TGWAL01\n".to_vec();
        encode_record(&mut old, 1, "a", b"a1\n", 1);
        encode_record(&mut old, 2, "a", b"a2\n", 1);
        fs::write(dir.0.join(segment_name(3)), &old).expect("writes");
        let cfg = config(&dir.0, 4 << 20, 1 << 20);
        let wal = open(&cfg);
        assert_eq!(wal.replay_stats().records, 2);
        assert_eq!(contents(&wal)["a"], lines(&["a1", "a2"]));
        assert_eq!(mark_of(&wal, "b", b"b1\n", 1), Ok(3));
        deliver(&wal, "a");
        deliver(&wal, "b");
        assert_eq!(wal.checkpoint(), Ok(()));
        let stats = wal.stats();
        assert_eq!((stats.deleted_segments, stats.recycled_segments), (1, 1));
        assert!(!dir.0.join(segment_name(3)).exists());
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
}
