//! How a Rust thread wakes an event loop: a non-blocking socket pair, the loop watching its end
//! (readable while a wakeup is unread), the thread writing one byte to the other. The
//! write-ahead log's writer and `handoff`'s thread use it.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

/// The end the event loop watches.
pub struct LoopEnd(UnixStream);

/// The end a thread wakes the loop through.
pub struct ThreadEnd(UnixStream);

/// A new pair of ends.
pub fn pair() -> io::Result<(LoopEnd, ThreadEnd)> {
    let (watched, written) = UnixStream::pair()?;
    for end in [&watched, &written] {
        end.set_nonblocking(true)?;
    }
    Ok((LoopEnd(watched), ThreadEnd(written)))
}

impl LoopEnd {
    /// The descriptor to watch.
    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Reads every unread wakeup: a wakeup after this call makes the descriptor readable again.
    pub fn drain(&self) {
        let mut buf = [0u8; 256];
        while matches!((&self.0).read(&mut buf), Ok(n) if n > 0) {}
    }
}

impl ThreadEnd {
    /// Makes the loop's end readable.
    pub fn wake(&self) {
        // A full socket already holds an unread wakeup: nothing is lost.
        let _ = (&self.0).write(&[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(end: &LoopEnd) -> bool {
        let mut byte = [0u8; 1];
        // SAFETY: reads at most one byte into a one-byte buffer, without consuming it.
        let n = unsafe {
            libc::recv(
                end.fd(),
                byte.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n == 1
    }

    #[test]
    fn a_wake_is_readable_until_drained_and_many_wakes_are_one() {
        let (watched, written) = pair().expect("a socket pair");
        assert!(!readable(&watched));
        for _ in 0..100_000 {
            written.wake(); // more than the socket holds: the rest are dropped
        }
        assert!(readable(&watched));
        watched.drain();
        assert!(!readable(&watched));
        written.wake();
        assert!(readable(&watched));
    }
}
