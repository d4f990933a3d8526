//! The bytes on disk: a segment is `SEGMENT_MAGIC`, then records, each
//!
//! ```text
//! magic u32 | len u32 | crc32c u32 (of len and body) | body: mark u64, tenant_len u16, tenant,
//! line_count u32, lines
//! ```
//! (little-endian), and reading them back with the corrupt stretches skipped.

use std::ops::Range;

use crate::batch::Batch;

pub(super) const SEGMENT_MAGIC: &[u8; 8] = b"TGWAL01\n";
pub(super) const RECORD_MAGIC: [u8; 4] = *b"TGr1";
pub(super) const RECORD_HEADER: usize = 12;
/// mark + tenant length + line count.
pub(super) const BODY_FIXED: usize = 8 + 2 + 4;

/// An encoded record's tenant, where its lines are in the encoded bytes, and how many: the
/// lines are stored from there once written, with no copy of their own.
pub(super) type RecordLines<'a> = (&'a str, Range<usize>, usize);

/// One record read back from a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    pub mark: u64,
    pub tenant: String,
    pub lines: Vec<u8>,
    pub line_count: usize,
}

/// Appends one record to `out`; `tenant` is at most `u16::MAX` bytes (valid ids are short).
/// Returns where the lines start in `out`.
pub(super) fn encode_record(
    out: &mut Vec<u8>,
    mark: u64,
    tenant: &str,
    lines: &[u8],
    line_count: usize,
) -> usize {
    encode_record_with(out, mark, tenant, (lines.len(), line_count), |out| {
        out.extend_from_slice(lines)
    })
}

/// One record per tenant of the batch's accepted lines (`Batch::tenant_groups`), appended to
/// `out` straight from the batch.
pub(super) fn encode_batch<'b>(
    out: &mut Vec<u8>,
    mark: u64,
    batch: &'b Batch,
) -> Vec<RecordLines<'b>> {
    let groups = batch.tenant_groups();
    out.reserve(groups.iter().map(|g| record_len(g.tenant, g.bytes)).sum());
    groups
        .iter()
        .map(|g| {
            let count = g.count();
            let start =
                encode_record_with(out, mark, g.tenant, (g.bytes, count), |out| g.write_to(out));
            (g.tenant, start..out.len(), count)
        })
        .collect()
}

/// One record of one tenant's lines, appended to `out` (as `encode_batch` for one tenant).
pub(super) fn encode_lines<'a>(
    out: &mut Vec<u8>,
    mark: u64,
    tenant: &'a str,
    lines: &[u8],
    line_count: usize,
) -> Vec<RecordLines<'a>> {
    out.reserve(record_len(tenant, lines.len()));
    let start = encode_record(out, mark, tenant, lines, line_count);
    vec![(tenant, start..out.len(), line_count)]
}

/// The encoded length of a record of `tenant` with `lines` bytes of lines.
fn record_len(tenant: &str, lines: usize) -> usize {
    RECORD_HEADER + BODY_FIXED + tenant.len() + lines
}

/// Appends one record whose `line_count` lines (`len` bytes) `lines` writes; returns where
/// the lines start in `out`.
fn encode_record_with(
    out: &mut Vec<u8>,
    mark: u64,
    tenant: &str,
    (len, line_count): (usize, usize),
    lines: impl FnOnce(&mut Vec<u8>),
) -> usize {
    let tenant = tenant.as_bytes();
    let body_len = (BODY_FIXED + tenant.len() + len) as u32;
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&mark.to_le_bytes());
    out.extend_from_slice(&(tenant.len() as u16).to_le_bytes());
    out.extend_from_slice(tenant);
    out.extend_from_slice(&(line_count as u32).to_le_bytes());
    let lines_start = out.len();
    lines(out);
    debug_assert_eq!(
        out.len() - lines_start,
        len,
        "the lines are as long as announced"
    );
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&out[start + 4..start + 8]),
        &out[start + 12..],
    );
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    lines_start
}

pub(super) fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().expect("4 bytes"))
}

/// The record at the start of `data` and its encoded length, if it is whole and intact.
pub(super) fn decode_record(data: &[u8]) -> Option<(Record, usize)> {
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
pub(super) struct Scan {
    pub(super) records: Vec<Record>,
    /// Bad stretches followed by an intact record.
    pub(super) corrupt: usize,
    /// Offset after the last intact record; bytes past it are a torn or bad tail.
    pub(super) end: usize,
}

pub(super) fn scan_segment(data: &[u8]) -> Scan {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(records: &[(u64, &str, &[u8], usize)]) -> Vec<u8> {
        let mut data = SEGMENT_MAGIC.to_vec();
        for &(mark, tenant, lines, count) in records {
            encode_record(&mut data, mark, tenant, lines, count);
        }
        data
    }

    #[test]
    fn a_batch_encodes_as_its_tenant_lines_would() {
        let batch = Batch::of_lines(&[
            ("a", "a 1\n"),
            ("bb", "b 1\n"),
            ("a", "a 2\n"),
            ("c", "c 1\n"),
        ]);
        let mut want = b"head".to_vec();
        for (tenant, lines, count) in batch.tenant_lines() {
            encode_record(&mut want, 9, tenant, &lines, count);
        }
        let mut got = b"head".to_vec();
        let spans = encode_batch(&mut got, 9, &batch);
        assert_eq!(got, want);
        let spans: Vec<(&str, &[u8], usize)> =
            spans.into_iter().map(|(t, r, n)| (t, &got[r], n)).collect();
        assert_eq!(
            spans,
            [
                ("a", &b"a 1\na 2\n"[..], 2),
                ("bb", b"b 1\n", 1),
                ("c", b"c 1\n", 1)
            ]
        );
    }

    #[test]
    fn records_read_back_as_written() {
        let data = segment(&[(1, "a", b"x 1\n", 1), (7, "tenant", b"y 1\ny 2\n", 2)]);
        let scan = scan_segment(&data);
        assert_eq!((scan.corrupt, scan.end), (0, data.len()));
        let read: Vec<(u64, &str, &[u8], usize)> = scan
            .records
            .iter()
            .map(|r| (r.mark, r.tenant.as_str(), r.lines.as_slice(), r.line_count))
            .collect();
        assert_eq!(
            read,
            [
                (1, "a", &b"x 1\n"[..], 1),
                (7, "tenant", &b"y 1\ny 2\n"[..], 2)
            ]
        );
    }

    #[test]
    fn a_bad_record_is_skipped_and_a_torn_one_ends_the_intact_part() {
        let data = segment(&[
            (1, "a", b"1\n", 1),
            (2, "a", b"2\n", 1),
            (3, "a", b"3\n", 1),
        ]);
        let one = (data.len() - SEGMENT_MAGIC.len()) / 3;
        let mut flipped = data.clone();
        // A byte of the second record's lines: its CRC no longer matches.
        flipped[SEGMENT_MAGIC.len() + one + RECORD_HEADER + BODY_FIXED + 1] ^= 0x01;
        let scan = scan_segment(&flipped);
        let marks: Vec<u64> = scan.records.iter().map(|r| r.mark).collect();
        assert_eq!((marks, scan.corrupt, scan.end), (vec![1, 3], 1, data.len()));
        let torn = &data[..data.len() - 2];
        let scan = scan_segment(torn);
        assert_eq!((scan.records.len(), scan.corrupt), (2, 0));
        assert_eq!(scan.end, SEGMENT_MAGIC.len() + 2 * one);
    }
}
