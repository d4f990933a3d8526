//! A thread beside an event loop: the loop hands it jobs, it runs them in order and hands the
//! results back, waking the loop through a `wakeup` socket as the write-ahead log's writer
//! does. Blocking work that needs no interpreter runs there without a Python thread: an
//! executor thread takes the interpreter from the loop's thread at every step of its own (the
//! queue, the call, each syscall's return, the result), and the loop's thread is the process's
//! bottleneck.
//!
//! Syscalls stay off the common path: `submit` wakes the thread only when it waits for work,
//! and the thread writes the wakeup byte only when its results go from none to some, so one
//! wake of the loop collects every result finished by then.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use crate::wakeup::{self, LoopEnd, ThreadEnd};

struct Queues<J, R> {
    jobs: VecDeque<J>,
    done: Vec<R>,
    /// The thread waits on `work` (a submit must wake it).
    waiting: bool,
    closed: bool,
}

struct Shared<J, R> {
    queues: Mutex<Queues<J, R>>,
    work: Condvar,
    wake: ThreadEnd,
}

impl<J, R> Shared<J, R> {
    fn lock(&self) -> MutexGuard<'_, Queues<J, R>> {
        // A job runs outside the lock: a poisoned lock only means a panic between two pushes.
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The thread, its queues and the loop's end of the wakeup socket. Dropping it finishes the
/// job in hand and stops the thread; jobs not started are dropped with it, on the dropping
/// thread. `run` must not panic:
/// a panic ends the thread, and the jobs after it would wait forever.
pub struct Handoff<J, R> {
    shared: Arc<Shared<J, R>>,
    wakeup: LoopEnd,
    thread: Option<JoinHandle<()>>,
}

impl<J: Send + 'static, R: Send + 'static> Handoff<J, R> {
    /// Start the thread, named `name`, running `run` on each job.
    pub fn start(name: &str, run: impl Fn(J) -> R + Send + 'static) -> io::Result<Self> {
        let (wakeup, wake) = wakeup::pair()?;
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues {
                jobs: VecDeque::new(),
                done: Vec::new(),
                waiting: false,
                closed: false,
            }),
            work: Condvar::new(),
            wake,
        });
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || serve(&theirs, run))?;
        Ok(Self {
            shared,
            wakeup,
            thread: Some(thread),
        })
    }

    /// The descriptor an event loop watches: readable while results wait for `take_done`.
    pub fn fd(&self) -> RawFd {
        self.wakeup.fd()
    }

    /// Queue a job.
    pub fn submit(&self, job: J) {
        let mut q = self.shared.lock();
        q.jobs.push_back(job);
        let wake = std::mem::take(&mut q.waiting);
        drop(q);
        if wake {
            self.shared.work.notify_one();
        }
    }

    /// The results finished so far, in the order of their jobs; drains the wakeup socket first,
    /// so a result finished after this call wakes the loop again.
    pub fn take_done(&self) -> Vec<R> {
        self.wakeup.drain();
        std::mem::take(&mut self.shared.lock().done)
    }
}

impl<J, R> Drop for Handoff<J, R> {
    fn drop(&mut self) {
        let jobs = {
            let mut q = self.shared.lock();
            q.closed = true;
            std::mem::take(&mut q.jobs)
        };
        self.shared.work.notify_one();
        drop(jobs);
        if let Some(thread) = self.thread.take() {
            // Err only if a job panicked, which `start` rules out.
            let _ = thread.join();
        }
    }
}

fn serve<J, R>(shared: &Shared<J, R>, run: impl Fn(J) -> R) {
    let mut q = shared.lock();
    loop {
        let Some(job) = q.jobs.pop_front() else {
            if q.closed {
                return;
            }
            q.waiting = true;
            q = shared.work.wait(q).unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        drop(q);
        let result = run(job);
        q = shared.lock();
        let first = q.done.is_empty();
        q.done.push(result);
        if first {
            shared.wake.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_done<J: Send + 'static, R: Send + 'static>(h: &Handoff<J, R>, n: usize) -> Vec<R> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = Vec::new();
        while out.len() < n {
            assert!(Instant::now() < deadline, "results did not arrive");
            let mut pfd = libc::pollfd {
                fd: h.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 100) };
            out.extend(h.take_done());
        }
        out
    }

    #[test]
    fn results_come_back_in_job_order_and_wake_the_fd() {
        let h = Handoff::start("test-handoff", |n: u64| n * 2).expect("the thread starts");
        for n in 0..1000 {
            h.submit(n);
        }
        let got = wait_done(&h, 1000);
        assert_eq!(got, (0..1000).map(|n| n * 2).collect::<Vec<_>>());
        // Nothing left, nothing signalled.
        assert!(h.take_done().is_empty());
    }

    #[test]
    fn a_result_after_a_take_signals_again() {
        let h = Handoff::start("test-handoff", |n: u64| n).expect("the thread starts");
        for round in 0..200 {
            h.submit(round);
            assert_eq!(wait_done(&h, 1), vec![round]);
        }
    }

    #[test]
    fn dropping_stops_the_thread_and_drops_what_was_not_started() {
        let h = Handoff::start("test-handoff", |n: Arc<()>| {
            std::thread::sleep(Duration::from_millis(1));
            n
        })
        .expect("the thread starts");
        let token = Arc::new(());
        for _ in 0..100 {
            h.submit(Arc::clone(&token));
        }
        drop(h);
        assert_eq!(Arc::strong_count(&token), 1);
    }
}
