//! Line-protocol files: the embedded sink appends each tenant's bodies to them, and its stop
//! spills and dead letters too, under an exclusive `flock` that `tidegate replay` honours.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Append `data` under an exclusive lock to the file that is at `path` now, creating it and its
/// directories as needed.
///
/// replay renames a file away and then takes its lock once before reading it, so an append
/// lands either in what replay reads or in a new file at `path`, never after the read: once
/// locked, the file must still be the one at `path`, or the append starts again. A failed write
/// (disk full) cuts what it wrote off again, or a retry would glue a broken line onto the first
/// line of the next body.
pub fn append(path: &Path, data: &[u8]) -> io::Result<()> {
    loop {
        let mut file = match open(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A new tenant, or its directory was removed.
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir)?;
                }
                open(path)?
            }
            opened => opened?,
        };
        lock(&file)?;
        let opened = file.metadata()?;
        let current = match fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            current => current?,
        };
        if (opened.dev(), opened.ino()) != (current.dev(), current.ino()) {
            continue;
        }
        if let Err(e) = file.write_all(data) {
            let _ = file.set_len(opened.len());
            return Err(e);
        }
        return Ok(());
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o666)
        .open(path)
}

fn lock(file: &File) -> io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor `file` owns for the duration of the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tidegate-lp-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn appends_create_the_directories_and_add_up() {
        let dir = scratch("add");
        let path = dir.join("telemetry_t1").join("2026-12-06T22.lp");
        append(&path, b"a x=1 1\n").expect("scratch files work");
        append(&path, b"a x=2 2\n").expect("scratch files work");
        assert_eq!(
            fs::read(&path).expect("scratch files work"),
            b"a x=1 1\na x=2 2\n"
        );
        fs::remove_dir_all(dir).expect("scratch files work");
    }

    #[test]
    fn a_file_renamed_away_is_not_appended_to_again() {
        let dir = scratch("rename");
        let path = dir.join("t.lp");
        append(&path, b"first\n").expect("scratch files work");
        let away = dir.join("t.lp.replaying");
        fs::rename(&path, &away).expect("scratch files work");
        append(&path, b"second\n").expect("scratch files work");
        assert_eq!(fs::read(&away).expect("scratch files work"), b"first\n");
        assert_eq!(fs::read(&path).expect("scratch files work"), b"second\n");
        fs::remove_dir_all(dir).expect("scratch files work");
    }

    #[test]
    fn a_plain_file_where_the_directory_goes_is_an_error() {
        let dir = scratch("blocked");
        fs::create_dir_all(&dir).expect("scratch files work");
        fs::write(dir.join("telemetry_t1"), b"").expect("scratch files work");
        let err = append(&dir.join("telemetry_t1").join("h.lp"), b"x\n")
            .expect_err("a file is no directory");
        assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR));
        fs::remove_dir_all(dir).expect("scratch files work");
    }
}
