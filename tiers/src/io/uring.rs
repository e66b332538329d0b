//! io_uring worker threads.
//!
//! Each worker owns one ring and keeps up to `queue_depth` reads and writes in flight.
//! Requests arrive over a channel; a buffer travels with its request and comes back
//! with the completion, so the kernel never writes into memory that Rust has freed.
//! Short reads and writes are resubmitted for the remainder; `EINTR`/`EAGAIN` are
//! retried; end-of-file and zero-length writes are errors.
//!
//! A buffer the kernel may still write is never handed back: if the ring itself fails
//! (`io_uring_enter` errors other than `EINTR`/`EAGAIN`/`EBUSY`, `MAX_SUBMIT_FAILURES`
//! times in a row), the worker gives up on the ring, leaks the ring and the buffers of
//! every I/O in flight (their callers get [`PoolClosed`]) and exits.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use io_uring::{IoUring, opcode, types};
use tokio::sync::oneshot;

use super::AlignedBuf;
use crate::sync::lock;

/// Direction of one I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IoKind {
    Read,
    Write,
}

/// Consecutive failures of `io_uring_enter` after which a ring is abandoned.
const MAX_SUBMIT_FAILURES: u32 = 8;
/// Attempts to queue one entry when the submission queue is full.
const MAX_PUSH_ATTEMPTS: u32 = 8;

/// The result of one I/O, with the buffer handed back.
pub(crate) struct IoDone {
    pub buf: AlignedBuf,
    pub result: std::io::Result<()>,
}

struct IoRequest {
    kind: IoKind,
    file: Arc<File>,
    buf: AlignedBuf,
    offset: u64,
    len: usize,
    dsync: bool,
    reply: oneshot::Sender<IoDone>,
}

/// A set of io_uring worker threads.
pub(crate) struct UringPool {
    senders: Vec<Sender<IoRequest>>,
    next: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl UringPool {
    /// Starts `threads` workers, each with a ring of `queue_depth` entries.
    pub(crate) fn new(name: &str, threads: usize, queue_depth: u32) -> std::io::Result<UringPool> {
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let ring = IoUring::new(queue_depth.max(1))?;
            let (tx, rx) = mpsc::channel();
            let depth = queue_depth.max(1) as usize;
            let handle = std::thread::Builder::new()
                .name(format!("{name}-uring-{i}"))
                .spawn(move || Worker::new(ring, depth).run(rx))?;
            senders.push(tx);
            handles.push(handle);
        }
        Ok(UringPool {
            senders,
            next: AtomicUsize::new(0),
            threads: Mutex::new(handles),
        })
    }

    /// Reads or writes `len` bytes of `buf` at `offset` of `file`. `Err` only when the
    /// workers are gone (the buffer is lost with them).
    pub(crate) async fn submit(
        &self,
        kind: IoKind,
        file: Arc<File>,
        buf: AlignedBuf,
        offset: u64,
        len: usize,
        dsync: bool,
    ) -> Result<IoDone, PoolClosed> {
        let (reply, done) = oneshot::channel();
        let len = len.min(buf.capacity());
        let request = IoRequest {
            kind,
            file,
            buf,
            offset,
            len,
            dsync,
            reply,
        };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        self.senders[i].send(request).map_err(|_| PoolClosed)?;
        done.await.map_err(|_| PoolClosed)
    }
}

/// The worker threads have exited.
#[derive(Debug)]
pub(crate) struct PoolClosed;

impl Drop for UringPool {
    fn drop(&mut self) {
        // Closing the channels lets each worker finish what is in flight and exit.
        self.senders.clear();
        for handle in lock(&self.threads).drain(..) {
            if handle.join().is_err() {
                tracing::error!("an io_uring worker thread panicked");
            }
        }
    }
}

struct InFlight {
    req: IoRequest,
    done: usize,
}

struct Worker {
    ring: IoUring,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    completions: Vec<(u64, i32)>,
}

impl Worker {
    fn new(ring: IoUring, depth: usize) -> Worker {
        Worker {
            ring,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth).rev().collect(),
            completions: Vec::with_capacity(depth),
        }
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn run(mut self, rx: Receiver<IoRequest>) {
        let mut closed = false;
        let mut failures = 0u32;
        loop {
            // Admit new requests while there is room; block only when idle.
            while let Some(&idx) = self.free.last() {
                let req = if self.in_flight() == 0 {
                    if closed {
                        return;
                    }
                    match rx.recv() {
                        Ok(req) => req,
                        Err(_) => return,
                    }
                } else {
                    match rx.try_recv() {
                        Ok(req) => req,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                };
                self.free.pop();
                self.slots[idx] = Some(InFlight { req, done: 0 });
                self.push(idx);
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => failures = 0,
                Err(err) => match err.raw_os_error() {
                    Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY) => {}
                    _ => {
                        failures += 1;
                        if failures >= MAX_SUBMIT_FAILURES {
                            tracing::error!(%err, in_flight = self.in_flight(), "io_uring keeps failing; abandoning the ring");
                            self.abandon();
                            return;
                        }
                        tracing::warn!(%err, failures, "io_uring submit failed; retrying");
                        std::thread::sleep(std::time::Duration::from_millis(1 << failures));
                    }
                },
            }
            self.completions.clear();
            self.completions
                .extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            for i in 0..self.completions.len() {
                let (user_data, res) = self.completions[i];
                self.complete(user_data as usize, res);
            }
        }
    }

    /// Queues the remainder of slot `idx`'s request.
    fn push(&mut self, idx: usize) {
        let Some(f) = self.slots[idx].as_mut() else {
            return;
        };
        let remaining = f.req.len - f.done;
        // SAFETY: `done < len <= capacity`, so the pointer stays inside the buffer.
        let ptr = unsafe { f.req.buf.as_mut_ptr().add(f.done) };
        let fd = types::Fd(f.req.file.as_raw_fd());
        let offset = f.req.offset + f.done as u64;
        let len = u32::try_from(remaining).unwrap_or(u32::MAX);
        let entry = match f.req.kind {
            IoKind::Read => opcode::Read::new(fd, ptr, len).offset(offset).build(),
            IoKind::Write => opcode::Write::new(fd, ptr, len)
                .offset(offset)
                .rw_flags(if f.req.dsync { libc::RWF_DSYNC } else { 0 })
                .build(),
        }
        .user_data(idx as u64);
        for _ in 0..MAX_PUSH_ATTEMPTS {
            // SAFETY: the buffer and the file stay alive in `slots[idx]` until the
            // completion for `idx` is reaped (or are leaked by `abandon`), and nothing
            // else touches the buffer meanwhile.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                return;
            }
            // The queue is full (cannot happen with depth <= ring size): flush it.
            if let Err(err) = self.ring.submit() {
                tracing::warn!(%err, "io_uring submit while draining a full queue");
            }
        }
        // Never queued, so the kernel never saw this buffer: safe to hand back.
        self.finish(
            idx,
            Err(std::io::Error::other(
                "io_uring submission queue stays full",
            )),
        );
    }

    fn complete(&mut self, idx: usize, res: i32) {
        let Some(f) = self.slots.get_mut(idx).and_then(|s| s.as_mut()) else {
            return;
        };
        if res < 0 {
            if res == -libc::EINTR || res == -libc::EAGAIN {
                self.push(idx);
            } else {
                self.finish(idx, Err(std::io::Error::from_raw_os_error(-res)));
            }
            return;
        }
        if res == 0 {
            let err = match f.req.kind {
                IoKind::Read => std::io::ErrorKind::UnexpectedEof,
                IoKind::Write => std::io::ErrorKind::WriteZero,
            };
            self.finish(idx, Err(err.into()));
            return;
        }
        f.done += res as usize;
        if f.done < f.req.len {
            // A short read or write: go on from where it stopped.
            self.push(idx);
        } else {
            self.finish(idx, Ok(()));
        }
    }

    fn finish(&mut self, idx: usize, result: std::io::Result<()>) {
        if let Some(f) = self.slots[idx].take() {
            self.free.push(idx);
            // The caller may have gone away; the buffer is then simply dropped.
            let _ = f.req.reply.send(IoDone {
                buf: f.req.buf,
                result,
            });
        }
    }

    /// Gives up on a ring that keeps failing. The kernel may still own the buffers of
    /// the I/Os in flight, so they are leaked with the ring rather than freed; their
    /// callers see [`PoolClosed`] (their reply channels close).
    fn abandon(self) {
        let Worker { ring, slots, .. } = self;
        for f in slots.into_iter().flatten() {
            std::mem::forget(f.req.buf);
            std::mem::forget(f.req.file);
            drop(f.req.reply);
        }
        std::mem::forget(ring);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn write_then_read_back_through_the_ring() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap(),
        );
        let pool = UringPool::new("test", 1, 8).unwrap();
        let mut buf = AlignedBuf::new(8192);
        for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let done = pool
            .submit(IoKind::Write, file.clone(), buf, 4096, 8192, false)
            .await
            .unwrap();
        done.result.unwrap();
        let back = pool
            .submit(
                IoKind::Read,
                file.clone(),
                AlignedBuf::new(8192),
                4096,
                8192,
                false,
            )
            .await
            .unwrap();
        back.result.unwrap();
        assert_eq!(back.buf.as_slice(), done.buf.as_slice());
        // Reading past the end of the file is an error, not silently short data.
        (&*file).flush().unwrap();
        let past = pool
            .submit(
                IoKind::Read,
                file,
                AlignedBuf::new(4096),
                1 << 20,
                4096,
                false,
            )
            .await
            .unwrap();
        assert_eq!(
            past.result.unwrap_err().kind(),
            std::io::ErrorKind::UnexpectedEof
        );
    }
}
